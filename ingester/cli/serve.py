"""``ingester serve``: the HTTP API over the history and the spool, with ``--watch`` the
watcher in the same process (a one-process deployment, like the original server's)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import os_cause, shown
from ..runtime.admission import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_CLIENT, SEND_TIMEOUT_S
from ..runtime.signals import ignore_stop_signals
from ..settings.watch import DRAIN_S, WatchOptions
from .common import App, FiniteRange, PathParam, fail
from .service import refuse_unsafe_latest, serve_watch_loop_options

if TYPE_CHECKING:
    from ..serve.watch_thread import ThreadedWatcher

__all__ = ["DEFAULT_LISTEN", "resolve_listen", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_LISTEN = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
WATCH_ONLY = ("polling", "rescan_interval", "retry_max", "settle", "drain_timeout")


def resolve_listen(listen: str | None, environ: dict[str, str]) -> tuple[str, str | None]:
    """The address to listen on and where it came from (``None``: the default or --listen).

    ``--listen`` (or ``INGESTER_LISTEN``) wins; else ``PORT``, the original server's
    variable, sets the port on the loopback host; else ``127.0.0.1:8080``. Without
    ``--listen``, :func:`ingester.serve.server.serve` is asked to serve ``[::1]`` on the same
    port too. The host is never taken from ``PORT``'s presence: binding every interface
    is a choice made by naming the address. Raises ``ValueError`` for a ``PORT`` that is
    not a port number.
    """
    if listen is not None:
        return listen, None
    port = environ.get("PORT", "").strip()
    if not port:
        return DEFAULT_LISTEN, None
    from ..serve.query import whole_number

    # A value pasted by mistake may be a whole file: shown cut.
    number = whole_number(port)
    if number is None or number > 65535:
        raise ValueError(f"PORT={shown(port)} is not a port number (0 to 65535)")
    return f"{DEFAULT_HOST}:{number}", f"PORT={number}; on the loopback addresses only"


def _find_program(name: str) -> str | None:
    """``name`` as an executable path, or ``None``."""
    if "/" in name:
        return name if os.access(name, os.X_OK) and not os.path.isdir(name) else None
    return shutil.which(name)


@click.command()
@click.option(
    "--listen",
    metavar="HOST:PORT",
    envvar="INGESTER_LISTEN",
    help="Address to listen on ([::1]:8080 for IPv6; port 0 picks a free one). Without it, "
    f"port $PORT (when PORT is set, else {DEFAULT_PORT}) on both loopback addresses, "
    f"{DEFAULT_HOST} and ::1 (where the machine has IPv6). Under systemd socket activation "
    "every passed socket is served instead, and nothing is bound. [env INGESTER_LISTEN]",
)
@click.option(
    "--api-key-file",
    metavar="FILE",
    type=PathParam(as_path=True, dir_okay=False, readable=True),
    help="File holding the key POST requests must send as X-API-Key (surrounding whitespace "
    "ignored). [else env INGESTER_API_KEY, then CLAUDE_SYNC_API_KEY; none: every POST "
    "answers 401]",
)
@click.option(
    "--watch",
    "run_watcher",
    is_flag=True,
    help="Run the watcher in this process too (on its own thread, holding the history's "
    "and the spool's locks): a POSTed snapshot is stored within moments, as the original "
    "server stored it.",
)
@serve_watch_loop_options
@click.option(
    "--drain-timeout",
    type=FiniteRange(min=0, max=600),
    default=DRAIN_S,
    show_default=True,
    metavar="S",
    help="At SIGTERM/SIGINT/SIGHUP, once the server has stopped taking requests, the watcher "
    "stores what waits in the spool for at most S seconds before it stops; what is left "
    "is stored at the next start. [with --watch only]",
)
@click.option(
    "--require-watcher",
    is_flag=True,
    help="Answer POSTs 503 (nothing dropped) while no watcher runs, so the scraper keeps "
    "the snapshot and retries, instead of 202 for a drop that waits in the spool.",
)
@click.option(
    "--trigger-command",
    metavar="COMMAND",
    envvar="INGESTER_TRIGGER_COMMAND",
    help="Command that POST /api/claude/console-usage/trigger runs (the dashboard's refresh "
    "button), e.g. the scraper's: split like a shell would, run without a shell, one run "
    "at a time. Without it the endpoint answers 501. [env INGESTER_TRIGGER_COMMAND]",
)
@click.option(
    "--trigger-timeout",
    type=FiniteRange(min=1, max=3600),
    default=120.0,
    show_default=True,
    metavar="S",
    help="A trigger run still going after S seconds is stopped (SIGTERM, then SIGKILL) and "
    "answered 500.",
)
@click.option(
    "--body-timeout",
    type=FiniteRange(min=0.1),
    default=10.0,
    show_default=True,
    metavar="S",
    help="A POST body must arrive within S seconds (else 408).",
)
@click.option(
    "--head-timeout",
    type=FiniteRange(min=0.1),
    default=10.0,
    show_default=True,
    metavar="S",
    help="A request head must arrive within S seconds of the connection opening (or of the "
    "previous answer), else 408 and the connection is closed.",
)
@click.option(
    "--send-timeout",
    type=FiniteRange(min=0.1),
    default=SEND_TIMEOUT_S,
    show_default=True,
    metavar="S",
    help="A client that reads none of its answer for S seconds (its buffers full) has its "
    "connection closed.",
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
    "local one (read-only instances on any machine: POSTs are answered 503; see "
    "docs/mirror.md).",
)
@click.option(
    "--endpoint-url",
    metavar="URL",
    help="S3 endpoint for --from. [env AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL]",
)
@click.pass_context
def serve(
    ctx: click.Context,
    /,
    listen: str | None,
    api_key_file: Path | None,
    run_watcher: bool,
    polling: bool,
    rescan_interval: float,
    retry_max: float,
    settle: float,
    drain_timeout: float,
    require_watcher: bool,
    trigger_command: str | None,
    trigger_timeout: float,
    body_timeout: float,
    head_timeout: float,
    send_timeout: float,
    max_connections: int,
    max_per_client: int,
    source: str | None,
    endpoint_url: str | None,
) -> None:
    """Serve the history over HTTP and accept POSTed snapshots into the spool.

    Read API: GET /api/claude/console-usage (?version=N, ?timestamp=ISO), /versions,
    /forecast, /api/health, /metrics, /openapi.json. POST /api/claude/console-usage with X-API-Key
    validates the payload and drops it into the spool (202 once durable); a watcher
    stores it: with --watch, the one in this process. Without a watcher, each POST's
    answer, the log and /api/health say that drops wait. POST
    /api/claude/console-usage/trigger runs --trigger-command. Exits 0 on SIGTERM/SIGINT/SIGHUP
    (one ignored at its start, as under nohup, stays ignored; requests in flight and the
    drop in hand finished), 1 when the address cannot be bound, the sockets systemd
    passes cannot be served, the key file cannot be read, or (with --watch) the watcher
    cannot start or stops on its own (the server stops with it); 70 when the watcher
    stops on an internal error (a bug: please report the line). See docs/serve.md.
    """
    from ..serve.auth import load_api_key
    from ..serve.context import ServeConfig
    from ..serve.server import serve as run_server
    from ..serve.sockets import ActivationError, parse_listen
    from ..serve.trigger_command import TriggerCommand

    app: App = ctx.obj
    for name in WATCH_ONLY:
        given = ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        if given and not run_watcher:
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(f"{flag} is an option of the watcher: it needs --watch", ctx)
    if run_watcher and source is not None:
        raise click.UsageError("--watch stores into the local history: not with --from", ctx)
    try:
        listen_text, listen_source = resolve_listen(listen, dict(os.environ))
    except ValueError as exc:
        raise click.UsageError(str(exc), ctx) from None
    try:
        host, port = parse_listen(listen_text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    trigger = None
    if trigger_command is not None:
        try:
            trigger = TriggerCommand.parse(trigger_command, trigger_timeout)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--trigger-command") from None
        if _find_program(trigger.argv[0]) is None:
            raise click.BadParameter(
                f"{trigger.argv[0]!r} is not an executable program (a path, or a name on PATH)",
                param_hint="--trigger-command",
            )
    try:
        key, key_source = load_api_key(os.environ, api_key_file)
    except OSError as exc:
        raise fail(f"cannot read --api-key-file {api_key_file}: {os_cause(exc)}") from None
    except ValueError as exc:
        raise fail(str(exc)) from None
    reader = None
    if source is not None:
        from .stores import s3_reader

        reader = s3_reader(source, endpoint_url)
    threaded = None
    if run_watcher:
        threaded = _threaded_watcher(app, polling, rescan_interval, retry_max, settle)
    elif require_watcher and reader is None:
        from ..history.lock import lock_table_readable

        if not lock_table_readable():
            raise fail(
                "--require-watcher: cannot tell whether a watcher runs (the kernel's lock "
                "table, /proc/locks, is not readable here)"
            )
    if not run_watcher and reader is None:
        _warn_not_adopted(app)
    config = ServeConfig(
        app.settings,
        api_key=key,
        api_key_source=key_source,
        body_timeout=body_timeout,
        reader=reader,
        require_watcher=require_watcher,
        watcher_running=threaded.running if threaded is not None else None,
        trigger=trigger,
        watcher_metrics=threaded.metrics_registry if threaded is not None else None,
        store_faults=threaded.store_faults if threaded is not None else None,
        read_only=source,
    )
    try:
        code = run_server(
            config,
            host,
            port,
            max_connections=max_connections,
            max_per_client=max_per_client,
            head_timeout=head_timeout,
            send_timeout=send_timeout,
            watcher=threaded,
            drain_timeout=drain_timeout,
            listen_source=listen_source,
            ipv6_loopback=listen is None,
        )
    except ActivationError as exc:
        raise fail(f"socket activation: {exc}") from None
    except OSError as exc:
        raise fail(f"cannot listen on {listen_text}: {os_cause(exc)}") from None
    ignore_stop_signals()  # stopped: a second SIGHUP must not turn exit 0 into 129
    raise click.exceptions.Exit(code)


def _warn_not_adopted(app: App) -> None:
    """One warning when the history is laid out as the original server left it. A
    watcher refuses to start on it (``--watch`` too); ``serve`` alone only reads, so it
    starts, but would answer from the versions without a word about that file."""
    from ..ops.adopt import not_adopted

    problem = not_adopted(app.settings.store())
    if problem is not None:
        logging.getLogger("ingester.serve").warning(
            "serve: the history is laid out as the original server left it: %s; until "
            "then GET answers from the versions alone",
            problem,
            extra={"event": "not-adopted"},
        )


def _threaded_watcher(
    app: App, polling: bool, rescan_interval: float, retry_max: float, settle: float
) -> ThreadedWatcher:
    """The watcher for ``--watch``, not started; exit 1 now if another one holds the lock."""
    from ..history.lock import refusal
    from ..intake.metrics import WatchMetrics
    from ..intake.spool import Spool
    from ..runtime.notify import SystemdNotifier
    from ..serve.joint_notifier import JointNotifier
    from ..serve.watch_thread import ThreadedWatcher

    refuse_unsafe_latest(app)
    lock_path = app.settings.store().lock_path
    spool_lock = Spool(app.settings.spool_dir).lock_path
    for what, path in (("history", lock_path), ("spool", spool_lock)):
        taken = refusal(path, what)
        if taken is not None:
            raise fail(f"{taken}: one watcher per {what}")
    options = WatchOptions(
        polling=polling, rescan_interval=rescan_interval, retry_max=retry_max, settle=settle
    )
    joint = JointNotifier(SystemdNotifier.from_environ())
    return ThreadedWatcher(app.settings, options, joint, metrics=WatchMetrics())
