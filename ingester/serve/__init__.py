"""The HTTP face: what ``ingester serve`` answers, and how it runs; it owns both.

The first endpoints keep the original sync server's clients working unchanged:

* ``GET  /api/claude/console-usage[?version=N|?timestamp=ISO]``: a version's payload
  with ``isStale``, ``ageMinutes``, ``source`` and ``versionInfo``; ``ETag``,
  ``Last-Modified``, ``Cache-Control`` by freshness; 304 for a conditional request
  (:mod:`.reads`, :mod:`.conditional`).
* ``POST /api/claude/console-usage`` (``X-API-Key``): judged like any drop, then handed
  to the spool; 202 once the drop is durable (:mod:`.posts`, :mod:`.auth`, :mod:`.body`).
* ``GET  /api/health`` (:mod:`.health`), the versions list and a version's bytes,
  ``GET /metrics`` (:mod:`.metrics`), the forecast (:mod:`.forecast`), ``/openapi.json``
  (:mod:`.openapi`) and the usage page (:mod:`.page`).

The app is built by :func:`.app.create_app` from a :class:`.context.ServeConfig`;
running it is :mod:`.server` (uvicorn) with :mod:`.sockets` (bound, or passed by
systemd), :mod:`.http_protocol` (the h11 protocol with a head deadline) and
:mod:`.request_errors`; ``serve --watch`` runs the watcher beside it
(:mod:`.watch_thread`).

May import: :mod:`ingester.errors`, :mod:`ingester.clock`, :mod:`ingester.settings`,
:mod:`ingester.payload`, :mod:`ingester.runtime`, :mod:`ingester.usage`, the intake
(its spool; the watcher for ``--watch``) and the history only through its read
interface. Never the local store, the mirror's writer, the reports or the commands.
"""
