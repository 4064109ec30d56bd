"""The ``ingester`` command line: a thin layer over the store, the spool and the watcher.

Exit codes: 0 success; 1 the command ran and something was refused or is wrong
(a rejected payload, a problem found, a storage failure, the history locked by
another writer); 2 a usage error (a bad option or setting), before anything is touched.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .durable import StorageError
from .lock import HistoryLock, LockHeld
from .logs import LOG_FORMATS, setup_logging
from .model import PayloadRejected, judge_payload
from .names import format_timestamp
from .settings import SettingError, Settings, resolve_settings
from .store import HistoryStore

__all__ = ["main"]


@dataclass(frozen=True)
class App:
    """What every command gets: the resolved settings and the logging choice."""

    settings: Settings
    log_format: str


def fail(message: str, code: int = 1) -> click.exceptions.Exit:
    """Print ``error: message`` to stderr and return the exit to raise."""
    click.echo(f"error: {message}", err=True)
    return click.exceptions.Exit(code)


@contextmanager
def writing_store(settings: Settings, purpose: str) -> Iterator[HistoryStore]:
    """An initialized store with the history lock held; clear errors instead of tracebacks."""
    store = settings.store()
    try:
        store.history_dir.mkdir(parents=True, exist_ok=True)
        with HistoryLock(store.lock_path, purpose):
            store.initialize()
            yield store
    except LockHeld as exc:
        hint = "; use 'ingester submit' to hand a watcher drops" if purpose == "ingest" else ""
        raise fail(f"{exc}{hint}") from None
    except StorageError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(str(StorageError("create folder", store.history_dir, exc))) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--root",
    metavar="DIR",
    help="Folder all default paths derive from. [env INGESTER_ROOT; default: current folder]",
)
@click.option(
    "--spool-dir", metavar="DIR", help="Drop folder. [env INGESTER_SPOOL_DIR; default: ROOT/spool]"
)
@click.option(
    "--rejected-dir",
    metavar="DIR",
    help="Quarantine for invalid drops. [env INGESTER_REJECTED_DIR; default: SPOOL/rejected]",
)
@click.option(
    "--history-dir",
    metavar="DIR",
    help="Version files and _metadata.json. "
    "[env INGESTER_HISTORY_DIR; default: ROOT/console-usage-history]",
)
@click.option(
    "--latest-path",
    metavar="FILE",
    help="Link to the newest version. "
    "[env INGESTER_LATEST_PATH; default: ROOT/console-usage-synced.json]",
)
@click.option(
    "--max-versions",
    metavar="N",
    help="Retention keeps the newest N versions (>= 1). [env INGESTER_MAX_VERSIONS; default: 100]",
)
@click.option(
    "--retention-days",
    metavar="D",
    help="...and anything newer than D days (> 0). [env INGESTER_RETENTION_DAYS; default: 7]",
)
@click.option(
    "--max-bytes",
    metavar="N",
    help="Largest accepted drop in bytes. [env INGESTER_MAX_BYTES; default: 1048576]",
)
@click.option(
    "--mirror",
    metavar="s3://BUCKET/PREFIX",
    help="Object store the 'mirror' command copies the history to. [env INGESTER_MIRROR]",
)
@click.option(
    "--mirror-retention",
    metavar="keep|follow",
    help="keep: remote versions stay (a bucket lifecycle rule may expire them); follow: "
    "deleted when local retention deletes them. [env INGESTER_MIRROR_RETENTION; default: keep]",
)
@click.option(
    "--mirror-hold",
    metavar="N",
    help="While a mirror lags, retention keeps at most N expired versions it has not "
    "uploaded (0: none). [env INGESTER_MIRROR_HOLD; default: 10000]",
)
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file with an [ingester] table; keys as the long options with '_'. "
    "Precedence: option > environment > config > default. [env INGESTER_CONFIG]",
)
@click.option("-v", "--verbose", count=True, help="Log debug detail.")
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="json: one object per line, for log shippers.",
)
@click.version_option(package_name="console-usage-ingester")
@click.pass_context
def main(
    ctx: click.Context,
    /,
    config_path: Path | None,
    verbose: int,
    log_format: str,
    **options: Any,
) -> None:
    """Keep a durable, versioned history of console usage snapshots dropped into a spool folder.

    A scraper drops JSON files into the spool (see 'ingester submit'); 'ingester watch'
    validates each one, stores it as an immutable version in the history, points the
    latest link at it, refreshes _metadata.json and applies retention.
    """
    try:
        settings = resolve_settings(options, config_path=config_path)
    except SettingError as exc:
        raise click.UsageError(str(exc), ctx) from None
    setup_logging(verbose, log_format)
    ctx.obj = App(settings, log_format)


@main.command()
@click.pass_obj
def init(app: App) -> None:
    """Create the spool, history and metadata (idempotent)."""
    s = app.settings
    for folder in (s.spool_dir, s.writers_tmp_dir, s.rejected_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise fail(str(StorageError("create folder", folder, exc))) from None
    with writing_store(s, "init") as store:
        meta = store.get_storage_metadata()
    click.echo(f"spool:   {s.spool_dir}")
    click.echo(f"history: {store.history_dir} ({meta.version_count} versions)")
    click.echo(f"latest:  {store.latest_path}")


def read_limited(path: Path, max_bytes: int) -> bytes:
    """Read at most ``max_bytes + 1`` bytes of ``path``: enough to know it is too large."""
    with path.open("rb") as handle:
        return handle.read(max_bytes + 1)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_obj
def ingest(app: App, files: tuple[Path, ...]) -> None:
    """Validate FILES and store each as a new version (the files are copied, not moved).

    Prints one line per file. Exits 1 if any file was rejected or unreadable; the
    valid ones are stored all the same. Refuses while a watcher holds the history.
    """
    s = app.settings
    rejected = 0
    with writing_store(s, "ingest") as store:
        for path in files:
            try:
                data = read_limited(path, s.max_bytes)
                judge_payload(data, max_bytes=s.max_bytes)
            except OSError as exc:
                rejected += 1
                click.echo(f"rejected {path}: cannot read: {exc.strerror}")
                continue
            except PayloadRejected as exc:
                rejected += 1
                click.echo(f"rejected {path}: {exc.reason}")
                continue
            try:
                version = store.save_version(data)
            except StorageError as exc:
                raise fail(f"{path} not stored: {exc}") from None
            click.echo(f"stored {path} -> {version.name} ({len(data)} bytes)")
        try:
            store.cleanup_old_versions()
        except StorageError as exc:
            raise fail(f"cleanup failed: {exc}") from None
    if rejected:
        raise click.exceptions.Exit(1)


@main.command()
@click.option("--dry-run", is_flag=True, help="Show keep or delete, and why, for every version.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def cleanup(app: App, dry_run: bool, as_json: bool) -> None:
    """Apply retention now: keep the newest N versions or anything within D days.

    With --dry-run nothing changes (and no lock is taken): every version is listed
    with keep/delete and the reason: newest-N, within-D-days, future, expired.
    """
    s = app.settings
    if dry_run:
        store = s.store()
        try:
            plan = store.plan_cleanup()
        except StorageError as exc:
            raise fail(str(exc)) from None
        if as_json:
            click.echo(
                json.dumps(
                    [
                        {
                            "name": d.name,
                            "timestamp": format_timestamp(d.timestamp),
                            "action": d.action,
                            "reason": d.reason,
                        }
                        for d in reversed(plan.decisions)
                    ],
                    indent=2,
                )
            )
            return
        width = max((len(d.name) for d in plan.decisions), default=4)
        click.echo(f"{'VERSION':<{width}}  ACTION  REASON")
        for d in reversed(plan.decisions):
            click.echo(f"{d.name:<{width}}  {d.action:<6}  {d.reason}")
        click.echo(f"would delete {len(plan.delete)}, retain {len(plan.keep)}")
        return
    with writing_store(s, "cleanup") as store:
        try:
            result = store.cleanup_old_versions()
        except StorageError as exc:
            raise fail(str(exc)) from None
    if as_json:
        click.echo(
            json.dumps(
                {"deleted": result.deleted, "retained": result.retained, "future": result.future},
                indent=2,
            )
        )
    else:
        click.echo(f"cleanup deleted {len(result.deleted)}, retained {result.retained}")


@main.command()
@click.option(
    "--once",
    is_flag=True,
    help="Drain the backlog already in the spool, then exit (0; 1 if the history cannot be "
    "written).",
)
@click.option(
    "--polling",
    is_flag=True,
    help="Poll the spool instead of inotify (NFS, CIFS); drops written in place are taken "
    "once their size and mtime are --settle seconds old.",
)
@click.option(
    "--rescan-interval",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    metavar="S",
    help="Full rescan of the spool every S seconds, the backstop for lost events.",
)
@click.option(
    "--retry-max",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    metavar="S",
    help="Longest wait between retries while the history cannot be written.",
)
@click.option(
    "--settle",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    metavar="S",
    help="A drop found by a scan (not by an event) is taken once its mtime is S seconds old "
    "or it has not changed for S seconds (and no one has it open for writing).",
)
@click.pass_obj
def watch(
    app: App, once: bool, polling: bool, rescan_interval: float, retry_max: float, settle: float
) -> None:
    """Run the service: take the backlog (oldest first), then every new drop.

    Each valid drop becomes one version in the history and the latest link moves
    to it within milliseconds; retention and the metadata follow when the spool
    is idle (at most once a second during a burst). Invalid drops go to the
    rejected folder with a reason file. Holds the history lock: a second watcher
    exits 1 at once. Stops on SIGTERM/SIGINT after finishing the drop in hand
    (exit 0). Under systemd it reports readiness, status and watchdog pings.
    """
    from .watcher import Watcher, WatchOptions

    options = WatchOptions(
        once=once,
        polling=polling,
        rescan_interval=rescan_interval,
        retry_max=retry_max,
        settle=settle,
    )
    raise click.exceptions.Exit(Watcher(app.settings, options).run())


@main.command()
@click.argument("source", metavar="FILE|-")
@click.option(
    "--name",
    metavar="NAME",
    help="Name of the drop (ends in .json, no leading dot, no '/'). "
    "Default: the UTC time and a random part.",
)
@click.pass_obj
def submit(app: App, source: str, name: str | None) -> None:
    """Drop FILE (or standard input, '-') into the spool atomically; print its path.

    The payload is validated first: an invalid one is refused with the reasons (exit 1)
    and nothing is dropped. The file is written into SPOOL/tmp/, fsynced, then renamed
    into the spool, so the watcher never sees a partial drop.
    """
    from .spool import Spool, drop_name_for_now, is_drop_name

    s = app.settings
    if name is not None and not is_drop_name(name):
        raise click.BadParameter(
            "must end in .json, not start with '.', and contain no '/'", param_hint="--name"
        )
    try:
        if source == "-":
            data = sys.stdin.buffer.read(s.max_bytes + 1)
        else:
            data = read_limited(Path(source), s.max_bytes)
    except OSError as exc:
        raise fail(f"cannot read {source}: {exc.strerror}") from None
    try:
        judge_payload(data, max_bytes=s.max_bytes)
    except PayloadRejected as exc:
        click.echo(f"refused {source}: {exc.reason}", err=True)
        raise click.exceptions.Exit(1) from None
    try:
        path = Spool(s.spool_dir, s.rejected_dir).submit(data, name or drop_name_for_now())
    except FileExistsError as exc:
        raise fail(f"{exc.filename}: a drop of that name is still waiting") from None
    except StorageError as exc:
        raise fail(str(exc)) from None
    click.echo(str(path))


@main.command()
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default="127.0.0.1:8080",
    show_default=True,
    help="Address to listen on ([::1]:8080 for IPv6; port 0 picks a free one). Under systemd "
    "socket activation the passed socket is used instead.",
)
@click.option(
    "--api-key-file",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the key POST requests must send as X-API-Key (surrounding whitespace "
    "ignored). [else env INGESTER_API_KEY; neither: every POST answers 401]",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    metavar="S",
    help="A POST body must arrive within S seconds (else 408).",
)
@click.option(
    "--head-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    metavar="S",
    help="A request head must arrive within S seconds of the connection opening (or of the "
    "previous answer), else 408 and the connection is closed.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    metavar="N",
    help="Connections served at once; more are answered 503.",
)
@click.option(
    "--from",
    "source",
    metavar="s3://BUCKET/PREFIX",
    help="Serve the history that 'ingester mirror' keeps in an object store instead of the "
    "local one (read-only instances on any machine; see docs/mirror.md).",
)
@click.option(
    "--endpoint-url",
    metavar="URL",
    help="S3 endpoint for --from. [env AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL]",
)
@click.pass_obj
def serve(
    app: App,
    listen: str,
    api_key_file: Path | None,
    body_timeout: float,
    head_timeout: float,
    max_connections: int,
    source: str | None,
    endpoint_url: str | None,
) -> None:
    """Serve the history over HTTP and accept POSTed snapshots into the spool.

    Read API: GET /api/claude/console-usage (?version=N, ?timestamp=ISO), /versions,
    /api/health, /metrics, /openapi.json. POST /api/claude/console-usage with X-API-Key
    validates the payload and drops it into the spool (202 once durable); the watcher
    stores it. Never writes the history. Exits 0 on SIGTERM/SIGINT, 1 when the address
    cannot be bound or the key file cannot be read. See docs/serve.md.
    """
    import os

    from .serve import ServeConfig, load_api_key, parse_listen
    from .serve import serve as run_server

    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    try:
        key = load_api_key(dict(os.environ), api_key_file)
    except OSError as exc:
        raise fail(f"cannot read --api-key-file {api_key_file}: {exc.strerror}") from None
    except ValueError as exc:
        raise fail(f"--api-key-file: {exc}") from None
    reader = None
    if source is not None:
        from .cli_mirror import s3_reader

        reader = s3_reader(source, endpoint_url)
    config = ServeConfig(app.settings, api_key=key, body_timeout=body_timeout, reader=reader)
    try:
        code = run_server(
            config, host, port, max_connections=max_connections, head_timeout=head_timeout
        )
    except OSError as exc:
        raise fail(f"cannot listen on {listen}: {exc.strerror}") from None
    raise click.exceptions.Exit(code)


# -- commands defined in their own modules ------------------------------------------------
# (kept at the end so each module registers itself without touching the ones above)

from .cli_report import list_versions, show, status, verify  # noqa: E402

for _command in (status, list_versions, show, verify):
    main.add_command(_command)

from .cli_mirror import mirror, restore  # noqa: E402

main.add_command(mirror)
main.add_command(restore)


def run() -> None:
    """Entry point for ``python -m ingester``."""
    main(prog_name="ingester")


if __name__ == "__main__":  # pragma: no cover
    run()
