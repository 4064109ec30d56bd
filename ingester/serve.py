"""``ingester serve``: its public entry points, in one place.

The HTTP API (routes, answers, auth, health, the trigger, metrics of the history) is
:mod:`ingester.api`; running it is :mod:`ingester.server` (sockets, uvicorn, the
connection layer, start and stop lines) with :mod:`ingester.sockets`,
:mod:`ingester.http_protocol` and :mod:`ingester.admission`; ``serve --watch`` runs the
watcher beside it through :mod:`ingester.watch_thread`.
"""

from __future__ import annotations

from .api import API_PATH, ServeConfig, ServeContext, create_app, load_api_key
from .server import serve

__all__ = [
    "API_PATH",
    "ServeConfig",
    "ServeContext",
    "create_app",
    "load_api_key",
    "parse_listen",
    "serve",
]


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> ``(host, port)``; ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)
