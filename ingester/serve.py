"""``ingester serve``: running the HTTP API (:mod:`ingester.api`) on uvicorn.

This module owns the server's start-up and stop: the listening socket (or the one
systemd passes), uvicorn's settings, the request-head deadline, signals; with
``--watch``, :mod:`ingester.watch_thread` runs the watcher beside it. The routes,
answers, auth, health and metrics live in :mod:`ingester.api`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
from typing import TYPE_CHECKING

from .api import API_PATH, ServeConfig, ServeContext, create_app, load_api_key, log_configuration

if TYPE_CHECKING:  # imported when used: serve alone does not load the watcher
    from .watch_thread import ThreadedWatcher

__all__ = [
    "API_PATH",
    "ServeConfig",
    "ServeContext",
    "create_app",
    "head_timeout_protocol",
    "load_api_key",
    "parse_listen",
    "serve",
]

log = logging.getLogger("ingester.serve")


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> ``(host, port)``; ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def _listening_socket(host: str, port: int) -> socket.socket:
    """fd 3 when systemd passes a socket (socket activation), else a new bound socket."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS") == "1":
        sock = socket.socket(fileno=3)
        sock.setblocking(False)
        return sock
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio turns Nagle off (TCP_NODELAY) only on sockets that do,
    # and with Nagle on, a response's body waits ~40 ms behind its head for an ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def head_timeout_protocol(head_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, plus a deadline for each request head.

    uvicorn itself never times out a connection that has not finished sending a request
    head (it only closes idle keep-alive connections, and any byte resets that): a few
    clients trickling headers could hold every connection. Here a timer starts when a
    connection opens and after each response; if it fires while the next head is still
    incomplete, the client gets a 408 and the connection is closed.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    body = json.dumps(
        {
            "error": "RequestTimeout",
            "message": f"request head not received within {head_timeout:g} s",
        }
    ).encode()
    answer = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )

    class HeadTimeoutH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = None
            if not self.transport.is_closing():
                self._head_timer = self.loop.call_later(head_timeout, self._head_expired)

        def _head_expired(self) -> None:
            self._head_timer = None
            # IDLE: no complete head since the timer started (none in flight, none answered).
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(answer)
                self.transport.close()

    return HeadTimeoutH11Protocol


def serve(
    config: ServeConfig,
    host: str,
    port: int,
    *,
    max_connections: int = 256,
    head_timeout: float = 10.0,
    watcher: ThreadedWatcher | None = None,
    listen_source: str | None = None,
) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit code.

    With ``watcher`` (``serve --watch``) the watcher runs on its own thread meanwhile
    (:func:`ingester.watch_thread.run_beside`): a stop signal stops both, each finishing
    what is in hand, and the exit code is the watcher's (1 when it stopped on its own,
    which stops the server too). ``listen_source`` names where the address came from,
    for the log. Raises ``OSError`` when the address cannot be bound.
    """
    import uvicorn

    sock = _listening_socket(host, port)
    bound = sock.getsockname()
    app = create_app(config)
    uv = uvicorn.Config(
        app,
        http=head_timeout_protocol(head_timeout),
        loop="asyncio",
        # On: the app's lifespan says whether a watcher will store POSTs, and keeps
        # watching the spool while none does.
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        # Header floods: a request head larger than this is refused (400) and closed.
        h11_max_incomplete_event_size=16 * 1024,
        limit_concurrency=max_connections,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(uv)
    # uvicorn's own warnings (a malformed request, an error in a handler) go through our
    # handler: one line each, in the chosen log format, a traceback folded into the line.
    ours = logging.getLogger("ingester")
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = list(ours.handlers)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    address = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
    log.info(
        "serve: listening on http://%s (history %s, spool %s)",
        address,
        config.settings.history_dir,
        config.settings.spool_dir,
    )
    log_configuration(config, listen_source)
    # uvicorn re-raises the stop signal once it has shut down; with these handlers in
    # place that re-raise is a no-op, so a SIGTERM/SIGINT stop exits 0 like the watcher.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: None)
    if watcher is not None:
        from .watch_thread import run_beside

        return run_beside(server, server.serve(sockets=[sock]), watcher, f"http://{address}")
    server.run(sockets=[sock])
    return 0
