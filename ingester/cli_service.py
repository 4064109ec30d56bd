"""The service commands: ``watch`` (the spool's consumer), ``submit`` (a writer's side)
and ``serve`` (the history over HTTP)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from .admission import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_CLIENT
from .cli_common import App, BoundedFloat, fail, read_limited, read_stream
from .errors import StorageError
from .model import PayloadRejected, judge_payload
from .settings import RESCAN_INTERVAL, RETRY_MAX, SETTLE, WatchOptions
from .watch_metrics import NO_METRICS, Metrics

__all__ = ["serve", "submit", "watch"]


@click.command()
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
    type=BoundedFloat(RESCAN_INTERVAL),
    default=WatchOptions.rescan_interval,
    show_default=True,
    metavar="S",
    help=f"Full rescan of the spool every S seconds ({RESCAN_INTERVAL.describe()}), the "
    "backstop for lost events.",
)
@click.option(
    "--retry-max",
    type=BoundedFloat(RETRY_MAX),
    default=WatchOptions.retry_max,
    show_default=True,
    metavar="S",
    help="Longest wait between retries while the history cannot be written "
    f"({RETRY_MAX.describe()}).",
)
@click.option(
    "--settle",
    type=BoundedFloat(SETTLE),
    default=WatchOptions.settle,
    show_default=True,
    metavar="S",
    help="A drop found by a scan (not by an event) is taken once its mtime is S seconds old "
    "or it has not changed for S seconds (and no one has it open for writing); "
    f"{SETTLE.describe()}.",
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
    from .watcher import Watcher

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


@click.command()
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
    from .queries import root_problem
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
    # A mistyped root must not become a spool no watcher reads: refused, in the words
    # every command uses for it.
    problem = root_problem(s, s.spool_dir)
    if problem is not None:
        raise fail(problem)
    try:
        path = Spool(s.spool_dir, s.rejected_dir).submit(data, name or drop_name_for_now())
    except FileExistsError as exc:
        raise fail(f"{exc.filename}: a drop of that name is still waiting") from None
    except StorageError as exc:
        raise fail(str(exc)) from None
    click.echo(str(path))


@click.command()
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default="127.0.0.1:8080",
    show_default=True,
    help="Address to listen on ([::1]:8080 for IPv6; port 0 picks a free one). Under systemd "
    "socket activation every passed socket is served instead, and nothing is bound.",
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
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    metavar="N",
    help="Connections open at once (idle keep-alive ones included); more are answered 503 at once.",
)
@click.option(
    "--max-connections-per-client",
    "max_per_client",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PER_CLIENT,
    show_default=True,
    metavar="N",
    help="Connections one client address (an IPv6 client: its /64) may hold at once; more "
    "are answered 503, so one client cannot take every slot. Behind a reverse proxy all "
    "clients have its address: raise this to --max-connections there.",
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
    max_per_client: int,
    source: str | None,
    endpoint_url: str | None,
) -> None:
    """Serve the history over HTTP and accept POSTed snapshots into the spool.

    Read API: GET /api/claude/console-usage (?version=N, ?timestamp=ISO), /versions,
    /forecast, /api/health, /metrics, /openapi.json. POST /api/claude/console-usage with X-API-Key
    validates the payload and drops it into the spool (202 once durable); the watcher
    stores it. Never writes the history. Exits 0 on SIGTERM/SIGINT, 1 when the address
    cannot be bound, the sockets systemd passes cannot be served, or the key file cannot
    be read. See docs/serve.md.
    """

    from .serve import ServeConfig, load_api_key, parse_listen
    from .server import serve as run_server
    from .sockets import ActivationError

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
            config,
            host,
            port,
            max_connections=max_connections,
            max_per_client=max_per_client,
            head_timeout=head_timeout,
        )
    except ActivationError as exc:
        raise fail(f"socket activation: {exc}") from None
    except OSError as exc:
        raise fail(f"cannot listen on {listen}: {exc.strerror}") from None
    raise click.exceptions.Exit(code)
