"""Running ``ingester serve``: sockets, uvicorn, the connection layer, start and stop lines.

::

    sockets   = the ones systemd passed, else one bound to --listen      (ingester.serve.sockets)
    app       = create_app(config), wrapped so nothing escapes as a traceback
                                                                     (ingester.serve.request_errors)
    protocol  = uvicorn's h11 protocol + admission, head deadline, client-naming lines
                                                                      (ingester.serve.http_protocol)
    log "serve: listening on URL[, URL] (...)"; run until SIGTERM/SIGINT;
    log "serve: stopped: N requests answered, ..."
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterable, Iterator, MutableMapping
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import describe_os_error
from ..runtime.admission import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_CLIENT,
    REFUSAL_REASONS,
    SEND_TIMEOUT_S,
    ConnectionLimits,
)
from ..runtime.logs import describe_exception
from ..runtime.signals import handled_stop_signals, take_held_stops
from .app import create_app, log_configuration
from .connections import ConnectionLayer
from .context import ServeConfig
from .http_protocol import protocol_class
from .request_errors import OneLineErrors
from .sockets import Listener, listeners

if TYPE_CHECKING:  # imported when used: serve alone does not load the watcher
    from .watch_thread import ThreadedWatcher

__all__ = ["GRACE_S", "serve"]

log = logging.getLogger("ingester.serve")

GRACE_S = 5  # in-flight requests get this long to finish after SIGTERM/SIGINT
KEEP_ALIVE_S = 5
MAX_HEAD_BYTES = 16 * 1024  # an unfinished request head larger than this is refused (400)


class ConnectionCollector(Collector):
    """Open connections, refusals and head timeouts, read at scrape time."""

    def __init__(self, layer: ConnectionLayer) -> None:
        self.layer = layer

    def collect(self) -> Iterable[Metric]:
        limits = self.layer.limits
        yield GaugeMetricFamily(
            "ingester_http_connections_open",
            "Connections open now (each holds a slot)",
            limits.total,
        )
        yield GaugeMetricFamily(
            "ingester_http_connections_max", "Connections allowed at once", limits.max_total
        )
        yield _by_label(
            "ingester_http_connections_refused",
            "Connections refused with a 503 on accept, by limit: per_client (the address "
            "held its share), total (every slot taken)",
            "reason",
            limits.refused,
            REFUSAL_REASONS,
        )
        yield _by_label(
            "ingester_http_head_timeouts",
            "Connections closed with a 408 because no request head came in time, by kind: "
            "partial (some bytes came), silent (none did)",
            "kind",
            self.layer.head_timeouts,
            ("partial", "silent"),
        )


def _by_label(
    name: str, documentation: str, label: str, counts: Counter[str], values: Iterable[str]
) -> CounterMetricFamily:
    """A counter family with one series per value of ``label``, each shown from 0."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value in values:
        family.add_metric([value], counts[value])
    return family


class _UvicornLines(logging.Filter):
    """uvicorn's own lines (not per connection): one line each, never a traceback.

    "Cancel N running task(s), timeout graceful shutdown exceeded" is dropped: each
    cancelled request says so itself, naming its client (:mod:`ingester.serve.request_errors`).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Cancel "):
            return False
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {describe_exception(record.exc_info[1])}"
            record.args = ()
        record.exc_info = None
        record.exc_text = None
        return True


def _route_uvicorn_logs() -> None:
    ours = logging.getLogger("ingester")
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = list(ours.handlers)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        logger.filters[:] = [_UvicornLines()]


# A listener out of descriptors or memory: asyncio reports every accept that fails
# (CPython 3.11 schedules another try for each failure of a wakeup, so there can be
# thousands a second): one line in this many seconds says it, with how many more.
_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_RESOURCE_SAY_EVERY = 10.0
_resource_said = {"at": -math.inf, "held": 0.0}


def _loop_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's "Fatal error on transport" and the like: one line, no traceback."""
    exc = context.get("exception")
    message = str(context.get("message") or "event loop error")
    if _accept_retry_after_close(context):
        return
    if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS:
        now = time.monotonic()
        if now - _resource_said["at"] < _RESOURCE_SAY_EVERY:
            _resource_said["held"] += 1
            return
        held = int(_resource_said["held"])
        _resource_said.update(at=now, held=0)
        more = f" ({held} more since the last such line)" if held else ""
        log.error(
            "%s: %s; the server goes on, and accepts again once some are free (the "
            "limit on open files: ulimit -n, the unit's LimitNOFILE=)%s",
            message,
            describe_os_error(exc),
            more,
        )
        return
    if isinstance(exc, ConnectionError | TimeoutError):
        log.info("connection closed: %s: %s", message, exc)
    elif exc is not None:
        log.error("%s: %s (please report)", message, describe_exception(exc))
    else:
        log.warning("%s", message)


def _accept_retry_after_close(context: dict[str, Any]) -> bool:
    """Whether ``context`` is an accept retried on a listener that was closed meanwhile.

    A listener out of descriptors stops accepting and schedules a retry a second later
    (many of them, one per failed wakeup); a stop in that second closes the listener,
    and each retry then fails on its closed socket (``ValueError: Invalid file
    descriptor: -1``) while the stop waits for requests still in flight. There is
    nothing left to accept, so these say nothing.
    """
    handle = context.get("handle")
    callback = getattr(handle, "_callback", None)
    if getattr(callback, "__name__", None) != "_start_serving":
        return False
    if not isinstance(context.get("exception"), ValueError):
        return False
    args = getattr(handle, "_args", None) or ()
    return any(isinstance(arg, socket.socket) and arg.fileno() == -1 for arg in args)


def _sample(ctx: Any, name: str, **labels: str) -> int:
    value = ctx.registry.get_sample_value(name, labels)
    return int(value or 0)


class _Server(uvicorn.Server):
    """uvicorn's server, stopped the same way by each of the stop signals, at any time.

    Its handler is in place from before the server starts: uvicorn installs its own
    only once its loop runs, and a SIGTERM in between would otherwise be lost. A second
    Ctrl-C (SIGINT) is noted, as uvicorn notes it (``serve --watch`` then skips its
    drain), but never forces uvicorn's exit: that skips the app's lifespan shutdown,
    whose cancellation uvicorn then logs as an error with a traceback, and the graceful
    stop is bounded already. Other repeats change nothing: a closed terminal sends
    SIGHUP twice. Nothing is re-raised after the stop: the process exits 0 by itself.
    """

    interrupted_twice = False

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Our handler is in place for every stop signal before the server starts (see
        # above); uvicorn's own would also replace a SIGINT the parent had ignored.
        yield

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Plain attributes only: this runs as a signal handler (see runtime.signals).
        if self.should_exit and sig == signal.SIGINT:
            self.interrupted_twice = True
        self.should_exit = True


def serve(
    config: ServeConfig,
    host: str,
    port: int,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    max_per_client: int = DEFAULT_MAX_PER_CLIENT,
    head_timeout: float = 10.0,
    send_timeout: float = SEND_TIMEOUT_S,
    environ: MutableMapping[str, str] | None = None,
    watcher: ThreadedWatcher | None = None,
    drain_timeout: float | None = None,
    listen_source: str | None = None,
    ipv6_loopback: bool = False,
) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code.

    Serves every socket systemd passes (socket activation; ``host`` and ``port`` are
    then not used), else binds ``host:port``. ``environ`` (default ``os.environ``)
    holds the activation variables, which are removed from it. With ``watcher``
    (``serve --watch``) the watcher runs on its own thread meanwhile
    (:func:`ingester.serve.watch_thread.run_beside`): a stop signal stops the server first
    (requests in flight finish), then lets the watcher take what waits in the spool for
    at most ``drain_timeout`` seconds (default
    :data:`~ingester.settings.watch.DRAIN_S`), then stops it; the exit code is the
    watcher's (1 when it stopped on its own, which stops the server too).
    ``listen_source`` names where the address came from, for the log. With
    ``ipv6_loopback`` (no address named: ``host`` is ``127.0.0.1``) ``[::1]`` on the same
    port is served too, where it can be bound. Raises
    :class:`ingester.serve.sockets.ActivationError` when a passed descriptor cannot be served
    and ``OSError`` when the address cannot be bound.
    """
    environ = os.environ if environ is None else environ
    socks = listeners(host, port, environ, ipv6_loopback=ipv6_loopback)
    app = create_app(config)
    ctx = app.state.ctx
    layer = ConnectionLayer(
        ConnectionLimits(max_connections, max_per_client), head_timeout, send_timeout
    )
    ctx.registry.register(ConnectionCollector(layer))
    uv = uvicorn.Config(
        OneLineErrors(app, GRACE_S),
        http=protocol_class(layer),
        loop="asyncio",
        # On: the app's lifespan says whether a watcher will store POSTs, and keeps
        # watching the spool while none does.
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        ws="none",  # no WebSocket route: an Upgrade gets a plain answer, whatever is installed
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        limit_concurrency=None,  # admission is ours, on accept (ingester.runtime.admission)
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=GRACE_S,
    )
    server = _Server(uv)
    for sig in handled_stop_signals():
        signal.signal(sig, server.handle_exit)
    for came in take_held_stops():  # while the command started: the same stop
        server.handle_exit(came, None)
    _route_uvicorn_logs()
    _log_listening(socks, host, port, config)
    log_configuration(config, listen_source)

    async def run() -> None:
        asyncio.get_running_loop().set_exception_handler(_loop_errors)
        try:
            await server.serve(sockets=[listener.sock for listener in socks])
        finally:
            layer.close()

    code = 0
    if watcher is None:
        asyncio.run(run())
    else:
        from ..settings.watch import DRAIN_S
        from .watch_thread import run_beside

        budget = DRAIN_S if drain_timeout is None else drain_timeout
        code = run_beside(server, run(), watcher, socks[0].url, budget)
    log.info(
        "serve: stopped: %d requests answered, %d POSTs accepted, %d connections refused, "
        "%d closed at the head deadline",
        server.server_state.total_requests,
        _sample(ctx, "ingester_http_posts_total", outcome="accepted"),
        sum(layer.limits.refused.values()),
        sum(layer.head_timeouts.values()),
    )
    return code


def _log_listening(socks: list[Listener], host: str, port: int, config: ServeConfig) -> None:
    urls = ", ".join(listener.url for listener in socks)
    passed = [listener for listener in socks if listener.fd is not None]
    where = ""
    if passed:
        origin = ", ".join(listener.origin for listener in passed)
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        where = (
            f"{len(passed)} socket{'s' if len(passed) != 1 else ''} from systemd ({origin}; "
            f"--listen {shown} not used); "
        )
    if config.reader is not None:
        # Serving an object store: no local folder is read or written.
        served = f"history {config.reader.location}, read only"
    else:
        served = f"history {config.settings.history_dir}, spool {config.settings.spool_dir}"
    log.info("serve: listening on %s (%s%s)", urls, where, served)
