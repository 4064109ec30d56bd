"""The ``ingester`` command line: a thin layer over the store, the spool and the watcher.

Exit codes: 0 success; 1 the command ran and something was refused or is wrong
(a rejected payload, a problem found, a storage failure, the history locked by
another writer, a file or folder it cannot read); 2 a usage error (a bad option or
setting), before anything is touched; 70 an internal error (a bug: please report it).
Whatever happens, the user sees one line on stderr, never a traceback
(:class:`IngesterGroup` is the one place that makes it so).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click

from .durable import StorageError
from .lock import HistoryLock, LockHeld
from .logs import LOG_FORMATS, escape_text, setup_logging
from .model import PayloadRejected, judge_payload
from .names import format_timestamp
from .quiet import hold_output, output_was_fine
from .settings import (
    RESCAN_INTERVAL,
    RETRY_MAX,
    SETTLE,
    Bounds,
    SettingError,
    Settings,
    resolve_settings,
)
from .store import CacheNotRefreshed, HistoryStore, utc_now
from .watch_metrics import NO_METRICS, Metrics

EXIT_INTERNAL = 70  # sysexits EX_SOFTWARE: a bug, not something the user did
_CHUNK = 1 << 16

__all__ = ["main"]


@dataclass(frozen=True)
class App:
    """What every command gets: the resolved settings and the logging choice."""

    settings: Settings
    log_format: str


def fail(message: str, code: int = 1) -> click.exceptions.Exit:
    """Print ``error: message`` to stderr and return the exit to raise."""
    click.echo(f"error: {escape_text(message)}", err=True)
    return click.exceptions.Exit(code)


def describe_os_error(exc: OSError) -> str:
    """One line for any ``OSError``: what failed, on which path, and the errno's name."""
    if isinstance(exc, StorageError):
        return str(exc)
    name = errno.errorcode.get(exc.errno or 0)
    cause = exc.strerror or str(exc) or type(exc).__name__
    tag = f" [{name}]" if name else ""
    if exc.filename is not None:
        where = os.fsdecode(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {os.fsdecode(exc.filename2)}"
        return f"{where}: {cause}{tag}"
    return f"{cause}{tag}"


def _guard_standard_streams() -> None:
    """Put /dev/null on a closed stdin, stdout or stderr.

    Otherwise the next file we open (a lock, a version) would get descriptor 0, 1 or 2,
    and anything that writes to "stdout" would write into it. ``sys.stdin`` stays
    ``None`` so that ``submit -`` can say the stream is closed.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                null = os.open(os.devnull, os.O_RDWR)
            except OSError:
                return
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _tolerant_stdout() -> None:
    """Let stdout carry file names that are not UTF-8, as their own bytes (as ``ls`` does).

    Outside the C locale Python's stdout is strict: printing such a name (a path given
    on the command line) would fail after the work was done.
    """
    stream = sys.stdout
    if isinstance(stream, io.TextIOWrapper):
        try:
            stream.reconfigure(errors="surrogateescape")
        except (OSError, ValueError):
            pass


class IngesterGroup(click.Group):
    """The command group, and the one place where any error becomes one line and an exit.

    click already turns usage errors into exit 2 and a broken stdout pipe into a quiet
    exit 1. Every other ``OSError`` that reaches here (a folder another user owns, a
    missing path, a symlink loop, an I/O error) becomes ``error: ...`` and exit 1; any
    other exception is a bug and becomes one line and exit 70.
    """

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> Any:
        if extra.get("standalone_mode") is False:
            # Called from Python (tests, embedding): the caller handles what is raised.
            return super().main(args, prog_name, **extra)
        _guard_standard_streams()
        _tolerant_stdout()
        try:
            super().main(args, prog_name, **extra)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                _silence_stdout()
                sys.exit(1)
            _last_words(f"error: {describe_os_error(exc)}")
            sys.exit(1)
        except MemoryError:
            _last_words("error: out of memory")
            sys.exit(1)
        except Exception as exc:
            detail = str(exc) or "no detail"
            _last_words(f"error: internal error: {type(exc).__name__}: {detail} (please report)")
            sys.exit(EXIT_INTERNAL)
        sys.exit(0)  # pragma: no cover (click's standalone main always exits)


def _silence_stdout() -> None:
    # The reader went away: nothing more can be shown, and the flush at exit must not
    # print "Exception ignored ... BrokenPipeError".
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno() if sys.stdout is not None else 1)
        os.close(null)
    except (OSError, ValueError):
        pass


def _last_words(line: str) -> None:
    try:
        click.echo(escape_text(line), err=True)
    except (OSError, ValueError):
        pass  # stderr itself is gone: the exit code is all that is left


class _BoundedFloat(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """A click option type for a number within :class:`ingester.settings.Bounds`."""

    name = "number"

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return float(self.bounds.parse(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def make_folder(folder: Path) -> None:
    """Create ``folder`` and any missing parents; raise ``OSError``.

    Run as root (an operator preparing the service's folders), each new folder takes
    the owner and group of the folder it is made in, so that the service, running as
    its own user, can use what was made for it.
    """
    missing: list[Path] = []
    probe = folder
    while not probe.is_dir() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise NotADirectoryError(
                    errno.ENOTDIR, "exists and is not a folder", path
                ) from None
            continue
        if os.geteuid() == 0:
            parent = path.parent.stat()
            if (parent.st_uid, parent.st_gid) != (0, 0):
                os.chown(path, parent.st_uid, parent.st_gid)


@contextmanager
def writing_store(settings: Settings, purpose: str) -> Iterator[HistoryStore]:
    """An initialized store with the history lock held; clear errors instead of tracebacks."""
    store = settings.store()
    try:
        make_folder(store.history_dir)
        with HistoryLock(store.lock_path, purpose):
            for error in store.initialize().cache_errors:
                # The latest link and metadata are caches: say so, and go on.
                click.echo(f"warning: {error}", err=True)
            yield store
    except LockHeld as exc:
        hint = "; use 'ingester submit' to hand a watcher drops" if purpose == "ingest" else ""
        raise fail(f"{exc}{hint}") from None
    except StorageError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        where = exc.filename or store.history_dir
        raise fail(str(StorageError("create folder", where, exc))) from None


@click.group(
    cls=IngesterGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
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
    help="Retention keeps the newest N versions (1 to 1000000). "
    "[env INGESTER_MAX_VERSIONS; default: 100]",
)
@click.option(
    "--retention-days",
    metavar="D",
    help="...and anything newer than D days (> 0, at most 36500). "
    "[env INGESTER_RETENTION_DAYS; default: 7]",
)
@click.option(
    "--max-bytes",
    metavar="N",
    help="Largest accepted drop in bytes (1 to 268435456). "
    "[env INGESTER_MAX_BYTES; default: 1048576]",
)
@click.option(
    "--rejected-retention-days",
    metavar="D",
    help="Rejected drops (and their reason files) are removed after D days (> 0, at most 36500). "
    "[env INGESTER_REJECTED_RETENTION_DAYS; default: 30]",
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
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log debug detail (-vv: also from libraries such as watchdog).",
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="For cron: print nothing when the command succeeds; on failure its output goes to "
    "stderr. Informational log lines are dropped.",
)
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
    quiet: bool,
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
    if quiet:
        hold_output(ctx)
    ctx.obj = App(settings, log_format)


@main.result_callback()
@click.pass_context
def _finished(ctx: click.Context, /, *_: Any, **__: Any) -> None:
    output_was_fine(ctx)


@main.command()
@click.pass_obj
def init(app: App) -> None:
    """Create the spool, history and metadata (idempotent).

    Run as root, each new folder takes the owner of the folder it is made in (and the
    lock file that of the history), so the service's own user can use them. The
    systemd service needs no init: it creates what it needs on start.
    """
    s = app.settings
    for folder in (s.spool_dir, s.writers_tmp_dir, s.rejected_dir):
        try:
            make_folder(folder)
        except OSError as exc:
            raise fail(str(StorageError("create folder", exc.filename or folder, exc))) from None
    with writing_store(s, "init") as store:
        meta = store.get_storage_metadata()
    click.echo(f"spool:   {s.spool_dir}")
    click.echo(f"history: {store.history_dir} ({meta.version_count} versions)")
    click.echo(f"latest:  {store.latest_path}")


def read_stream(handle: IO[bytes], max_bytes: int) -> bytes:
    """Read at most ``max_bytes + 1`` bytes: enough to know the input is too large.

    Read in chunks, so that a large limit never allocates memory the input does not fill.
    """
    chunks: list[bytes] = []
    left = max_bytes + 1
    while left > 0:
        chunk = handle.read(min(left, _CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class NotRegularFile(OSError):
    """An input that is not a regular file (a FIFO, a device, a folder, a socket)."""


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
    stat.S_IFSOCK: "a socket",
}


def read_limited(path: Path, max_bytes: int, *, regular_only: bool = False) -> bytes:
    """Read at most ``max_bytes + 1`` bytes of ``path`` (see :func:`read_stream`).

    With ``regular_only``, anything but a regular file raises :class:`NotRegularFile`
    without blocking: a FIFO is opened non-blocking and never read, so a command that
    holds the history lock cannot wait on a writer that never comes.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NONBLOCK if regular_only else 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if regular_only and not stat.S_ISREG(mode):
        os.close(fd)
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise NotRegularFile(errno.EINVAL, f"{kind}, not a regular file", os.fspath(path))
    with os.fdopen(fd, "rb") as handle:
        return read_stream(handle, max_bytes)


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
                data = read_limited(path, s.max_bytes, regular_only=True)
                judge_payload(data, max_bytes=s.max_bytes)
            except NotRegularFile as exc:
                rejected += 1
                click.echo(f"rejected {path}: {exc.strerror}")
                continue
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
            except CacheNotRefreshed as exc:
                # Past the commit point: stored. Saying "not stored" would invite a retry,
                # and a retry would store the same payload twice.
                click.echo(f"stored {path} -> {exc.version.name} ({len(data)} bytes)")
                click.echo(f"warning: stored, cache not refreshed: {exc}", err=True)
                continue
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

    Also removes rejected drops (with their reason files) older than
    --rejected-retention-days; --dry-run counts them.
    """
    from .housekeeping import PruneResult, prune_rejected

    s = app.settings

    def prune(dry: bool) -> PruneResult:
        # Removal runs with the lock held: only the lock holder quarantines drops, so a
        # pair cannot be half-replaced under us.
        try:
            return prune_rejected(s.rejected_dir, s.rejected_retention_days, utc_now(), dry_run=dry)
        except StorageError as exc:
            raise fail(f"rejected drops: {exc}") from None

    if dry_run:
        pruned = prune(True)
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
        if pruned.expired_pairs or pruned.kept:
            click.echo(
                f"rejected: would remove {pruned.expired_pairs} drop(s) older than "
                f"{s.rejected_retention_days:g} days, keep {pruned.kept}"
            )
        return
    # The text result is the log line's words: printed on stdout, not logged a second time.
    quiet = contextlib.nullcontext() if as_json else _result_printed_here("cleanup")
    with writing_store(s, "cleanup") as store, quiet:
        try:
            result = store.cleanup_old_versions()
        except StorageError as exc:
            raise fail(str(exc)) from None
        pruned = prune(False)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "deleted": result.deleted,
                    "retained": result.retained,
                    "future": result.future,
                    "rejectedRemoved": pruned.removed,
                    "rejectedKept": pruned.kept,
                },
                indent=2,
            )
        )
    else:
        click.echo(f"cleanup deleted {len(result.deleted)}, retained {result.retained}")
        if pruned.expired_pairs or pruned.kept:
            click.echo(f"rejected: removed {pruned.expired_pairs}, kept {pruned.kept}")


class _SkipEvent(logging.Filter):
    def __init__(self, event: str) -> None:
        super().__init__()
        self.event = event

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "event", None) != self.event


@contextmanager
def _result_printed_here(event: str) -> Iterator[None]:
    """Leave out the log line of ``event`` while the command prints the same result itself.

    The store logs each result for the service's journal; on a terminal a one-shot
    command would otherwise show it twice (stdout and stderr).
    """
    logger = logging.getLogger("ingester")
    skip = _SkipEvent(event)
    for handler in logger.handlers:
        handler.addFilter(skip)
    try:
        yield
    finally:
        for handler in logger.handlers:
            handler.removeFilter(skip)


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
    type=_BoundedFloat(RESCAN_INTERVAL),
    default=30.0,
    show_default=True,
    metavar="S",
    help="Full rescan of the spool every S seconds (0.1 to 86400), the backstop for lost events.",
)
@click.option(
    "--retry-max",
    type=_BoundedFloat(RETRY_MAX),
    default=30.0,
    show_default=True,
    metavar="S",
    help="Longest wait between retries while the history cannot be written (0.1 to 3600).",
)
@click.option(
    "--settle",
    type=_BoundedFloat(SETTLE),
    default=1.0,
    show_default=True,
    metavar="S",
    help="A drop found by a scan (not by an event) is taken once its mtime is S seconds old "
    "or it has not changed for S seconds (and no one has it open for writing); 0 to 3600.",
)
@click.option(
    "--metrics",
    "metrics_listen",
    metavar="HOST:PORT",
    help="Serve the watcher's own metrics (drops ingested and rejected, store failures, "
    "ingest latency, backlog) in the Prometheus text format at http://HOST:PORT/metrics "
    "([::1]:9464 for IPv6; port 0 picks a free one). Off by default. See docs/serve.md.",
)
@click.pass_obj
def watch(
    app: App,
    once: bool,
    polling: bool,
    rescan_interval: float,
    retry_max: float,
    settle: float,
    metrics_listen: str | None,
) -> None:
    """Run the service: take the backlog (oldest first), then every new drop.

    Each valid drop becomes one version in the history and the latest link moves
    to it within milliseconds; retention and the metadata follow when the spool
    is idle (at most once a second during a burst). Invalid drops go to the
    rejected folder with a reason file. Holds the history lock: a second watcher
    exits 1 at once. Stops on SIGTERM/SIGINT after finishing the drop in hand
    (exit 0). Under systemd it reports readiness, status and watchdog pings.
    A malformed --metrics address exits 2; one that cannot be bound (in use, not
    local) exits 1, before the spool is touched.
    """
    from .watcher import Watcher, WatchOptions

    metrics: Metrics = NO_METRICS
    if metrics_listen is not None:
        metrics = _start_watch_metrics(metrics_listen)

    options = WatchOptions(
        once=once,
        polling=polling,
        rescan_interval=rescan_interval,
        retry_max=retry_max,
        settle=settle,
    )
    raise click.exceptions.Exit(Watcher(app.settings, options, metrics=metrics).run())


def _start_watch_metrics(listen: str) -> Metrics:
    """Bind the watcher's metrics server on ``listen`` (HOST:PORT); exit 2 or 1 if it cannot."""
    from .serve import parse_listen
    from .watch_metrics import WatchMetrics

    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise fail(f"--metrics: {exc}", 2) from None
    metrics = WatchMetrics()
    try:
        bound = metrics.start(host, port)
    except OSError as exc:
        raise fail(f"cannot listen on {listen} for --metrics: {exc.strerror or exc}") from None
    logging.getLogger("ingester.watcher").info(
        "metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, bound
    )
    return metrics


@main.command()
@click.argument("source", metavar="FILE|-")
@click.option(
    "--name",
    metavar="NAME",
    help="Name of the drop (ends in .json, no leading dot, no '/'). "
    "Default: the UTC time and a random part.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate only: print 'valid FILE' (exit 0) or the reasons (exit 1); drop nothing.",
)
@click.pass_obj
def submit(app: App, source: str, name: str | None, dry_run: bool) -> None:
    """Drop FILE (or standard input, '-') into the spool atomically; print its path.

    The payload is validated first: an invalid one is refused with the reasons (exit 1)
    and nothing is dropped. The file is written into SPOOL/tmp/, fsynced, then linked
    into the spool, so the watcher never sees a partial drop. A drop of the same name
    still waiting is never replaced: that is refused (exit 1). With --dry-run the payload
    is only judged (a scraper's CI can check its output): nothing is dropped.
    """
    from .spool import Spool, drop_name_for_now, is_drop_name

    s = app.settings
    if name is not None and not is_drop_name(name):
        raise click.BadParameter(
            "must end in .json, not start with '.', and contain no '/'", param_hint="--name"
        )
    try:
        if source == "-":
            if sys.stdin is None:
                raise fail("cannot read standard input: it is closed")
            data = read_stream(sys.stdin.buffer, s.max_bytes)
        else:
            data = read_limited(Path(source), s.max_bytes)
    except OSError as exc:
        raise fail(f"cannot read {source}: {exc.strerror}") from None
    try:
        judge_payload(data, max_bytes=s.max_bytes)
    except PayloadRejected as exc:
        click.echo(f"refused {source}: {exc.reason}", err=True)
        raise click.exceptions.Exit(1) from None
    if dry_run:
        click.echo(f"valid {source}")
        return
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

from .cli_ops import check, schema, snapshot  # noqa: E402
from .cli_report import list_versions, show, status, verify  # noqa: E402

for _command in (status, list_versions, show, verify, snapshot, schema, check):
    main.add_command(_command)

from .cli_export import export  # noqa: E402

main.add_command(export)

from .cli_mirror import mirror, restore  # noqa: E402

main.add_command(mirror)
main.add_command(restore)


def run() -> None:
    """Entry point for ``python -m ingester``."""
    main(prog_name="ingester")


if __name__ == "__main__":  # pragma: no cover
    run()
