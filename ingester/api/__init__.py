"""The HTTP API that ``ingester serve`` runs: routes, answers, auth, health and metrics.

The first three endpoints keep the original sync server's clients working unchanged:

* ``GET  /api/claude/console-usage[?version=N|?timestamp=ISO]``: a version's payload with
  ``isStale``, ``ageMinutes``, ``source`` and ``versionInfo``; ``ETag``, ``Last-Modified``,
  ``Cache-Control`` by freshness; conditional requests answer 304 (:mod:`.reads`,
  :mod:`.conditional`).
* ``POST /api/claude/console-usage`` (``X-API-Key``): judged like any drop, then handed to
  the spool through :meth:`ingester.spool.Spool.submit`; 202 once the drop is durable
  (:mod:`.posts`, :mod:`.auth`, :mod:`.body`).
* ``GET  /api/health``: healthy / degraded / unhealthy (503), with the numbers
  (:mod:`.health`).
* ``GET  /api/claude/console-usage/versions[?limit=&before=&after=]`` and
  ``GET  /api/claude/console-usage/versions/{name}`` (the bytes, immutable).
* ``GET  /metrics`` (Prometheus text format, :mod:`.metrics`), ``GET /openapi.json``.

The API only reads the history (through :class:`ingester.history.base.HistoryReader`);
the watcher stays its single writer. Build the app with :func:`create_app`
(:mod:`.app`); running it on a socket is :mod:`ingester.serve`'s job.
"""

from __future__ import annotations

from .answers import API_PATH, HEALTH_PATH
from .app import api_routes, create_app, log_configuration
from .auth import key_matches, load_api_key
from .context import ServeConfig, ServeContext

__all__ = [
    "API_PATH",
    "HEALTH_PATH",
    "ServeConfig",
    "ServeContext",
    "api_routes",
    "create_app",
    "key_matches",
    "load_api_key",
    "log_configuration",
]
