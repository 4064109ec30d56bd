"""``GET /metrics``: request counters and latency (a middleware), and gauges read from the
history, its metadata and the spool at scrape time (a collector)."""

from __future__ import annotations

import logging
import stat
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import VersionNotFound
from ..runtime.admission import format_peer
from .answers import (
    STALE_AFTER_MINUTES,
    age_minutes,
    ending_connection,
    json_answer,
    parse_last_updated,
)
from .context import ServeContext
from .reads import latest_snapshot, read_payload
from .routes import (
    API_PATH,
    FORECAST_PATH,
    HEALTH_PATH,
    METRICS_PATH,
    OPENAPI_PATH,
    TRIGGER_PATH,
    VERSION_PATH,
    VERSIONS_PATH,
)

__all__ = [
    "POST_OUTCOMES",
    "HistoryCollector",
    "MetricsMiddleware",
    "get_metrics",
    "request_metrics",
]

log = logging.getLogger("ingester.serve")

# Header floods: uvicorn refuses an unfinished request head over 16 KiB, but a large head
# that arrives in one read is parsed whole; these limits then refuse it.
MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024


# The outcomes ``ingester_http_posts_total`` counts by (its label values).
POST_OUTCOMES = (
    "accepted",
    "invalid",
    "unauthorized",
    "unsupported",
    "refused",
    "no_watcher",
    "spool_error",
)


def request_metrics(registry: CollectorRegistry) -> tuple[Counter, Histogram, Counter]:
    """The request counter, the latency histogram and the POST outcome counter."""
    requests = Counter(
        "ingester_http_requests",
        "HTTP requests answered",
        ["route", "method", "status"],
        registry=registry,
    )
    latency = Histogram(
        "ingester_http_request_duration_seconds",
        "Time to answer an HTTP request",
        ["route"],
        registry=registry,
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
    )
    posts = Counter(
        "ingester_http_posts",
        "POSTed snapshots by outcome",
        ["outcome"],
        registry=registry,
    )
    return requests, latency, posts


class HistoryCollector(Collector):
    """Gauges read at scrape time from the history, its metadata and the spool."""

    def __init__(self, ctx: ServeContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterable[Metric]:
        # Each gauge goes only when its own source cannot be read: serve may be refused
        # the history (another uid, a mode changed) while it still lists the spool, and
        # the spool's gauges are what an alert on drops waiting needs then.
        yield from self._history()
        yield from self._metadata()
        yield from self._spool()

    def _history(self) -> Iterable[Metric]:
        """``ingester_history_readable`` and, when it is 1, what the versions tell."""
        ctx = self.ctx
        now = ctx.config.clock()
        readable = GaugeMetricFamily(
            "ingester_history_readable", "1 when the history folder can be read"
        )
        try:
            snap, pos = latest_snapshot(ctx, now)
        except OSError:
            readable.add_metric([], 0)
            yield readable
            return
        readable.add_metric([], 1)
        yield readable
        yield GaugeMetricFamily("ingester_versions", "Versions held in the history", len(snap))
        yield CounterMetricFamily(
            "ingester_history_listings",
            "Times serve listed the history folder (once per change, not per request)",
            ctx.index.relists,
        )
        if pos is not None:
            entry = snap.entries[pos]
            yield GaugeMetricFamily(
                "ingester_newest_version_timestamp_seconds",
                "Ingest time of the newest version (Unix seconds)",
                entry.ingested_at.timestamp(),
            )
            try:
                _obj, updated = read_payload(ctx, entry.name)
            except (OSError, VersionNotFound):
                pass  # not read this time: its age is unknown, not old
            else:
                stale = 1  # no time in it (damaged): stale, as the API's isStale says
                if updated is not None:
                    age = (now - updated).total_seconds()
                    stale = 1 if age_minutes(age) > STALE_AFTER_MINUTES else 0
                    yield GaugeMetricFamily(
                        "ingester_payload_age_seconds",
                        "Seconds since the newest version's lastUpdated",
                        age,
                    )
                yield GaugeMetricFamily(
                    "ingester_payload_stale",
                    "1 when the newest lastUpdated is older than 10 minutes, or cannot be read",
                    stale,
                )

    def _metadata(self) -> Iterable[Metric]:
        """What ``_metadata.json`` tells: read by its name, so a history that may not be
        listed (mode 0111) still gives it."""
        try:
            meta = self.ctx.index.read_metadata()
        except OSError:
            meta = None
        # Missing, corrupt or unreadable, the totals are unknown: left out, not 0, which
        # Prometheus would read as a counter reset (and rate() as thousands stored).
        if meta is not None:
            cleanup = parse_last_updated(meta.last_cleanup)
            if cleanup is not None:
                yield GaugeMetricFamily(
                    "ingester_last_cleanup_timestamp_seconds",
                    "When retention last ran (Unix seconds)",
                    cleanup.timestamp(),
                )
            yield CounterMetricFamily(
                "ingester_versions_stored",
                "Versions ever stored (totalVersionsCreated in _metadata.json; best effort "
                "after a crash)",
                meta.total_versions_created,
            )
            yield CounterMetricFamily(
                "ingester_versions_deleted",
                "Versions ever deleted by retention (totalVersionsDeleted in _metadata.json)",
                meta.total_versions_deleted,
            )

    def _spool(self) -> Iterable[Metric]:
        """The spool's backlog and its quarantine, each left out while it cannot be listed."""
        ctx = self.ctx
        try:
            # What the watcher takes: a folder named like a drop is never taken, and
            # counted it would age for ever (and an alert on the age never resolve).
            drops = [c for c in ctx.spool.scan() if stat.S_ISREG(c.mode)]
        except OSError:
            drops = None
        if drops is not None:
            yield GaugeMetricFamily(
                "ingester_spool_backlog", "Drops waiting in the spool", len(drops)
            )
            oldest = (time.time() - drops[0].mtime_ns / 1e9) if drops else 0.0
            yield GaugeMetricFamily(
                "ingester_spool_oldest_drop_age_seconds",
                "Age of the oldest waiting drop (0 when the spool is empty)",
                max(0.0, oldest),
            )
        try:
            rejected = ctx.spool.rejected_count()
        except OSError:
            return  # left out, as the spool's gauges are: a 0 would be a false count
        yield GaugeMetricFamily("ingester_rejected_drops", "Drops in quarantine", rejected)


async def get_metrics(request: Request) -> Response:
    """Prometheus text format."""
    ctx: ServeContext = request.app.state.ctx
    data = await run_in_threadpool(generate_latest, ctx.registry)
    watcher = ctx.config.watcher_metrics
    if watcher is not None:  # serve --watch: the watcher's families, named apart from ours
        data += await run_in_threadpool(generate_latest, watcher)
    return Response(data, headers={"Content-Type": CONTENT_TYPE_LATEST})


# Methods counted by name; any other (clients may send any token) is "other", so the
# metric's label values stay few.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def _route_label(path: str) -> str:
    if path.startswith(VERSIONS_PATH + "/"):
        return VERSION_PATH
    if path in (
        API_PATH,
        TRIGGER_PATH,
        VERSIONS_PATH,
        HEALTH_PATH,
        FORECAST_PATH,
        METRICS_PATH,
        OPENAPI_PATH,
    ):
        return path
    return "other"


class MetricsMiddleware:
    """Counts requests by route, method and status, and times them (pure ASGI, cheap)."""

    def __init__(self, app: ASGIApp, ctx: ServeContext) -> None:
        self.app = app
        self.ctx = ctx
        # The labelled children, looked up once: ``labels()`` takes a lock every call.
        self._timers: dict[str, Any] = {}
        self._counters: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]
        headers = scope["headers"]
        size = sum(len(k) + len(v) for k, v in headers)
        if len(headers) > MAX_HEADERS or size > MAX_HEADER_BYTES:
            status[0] = 431
            log.warning(
                "client %s: %s %s: sent %d headers, %d bytes in all (the limits: %d headers, "
                "%d bytes); answered 431",
                format_peer(scope.get("client")),
                scope["method"],
                scope["path"],
                len(headers),
                size,
                MAX_HEADERS,
                MAX_HEADER_BYTES,
                extra={"event": "refused", "status": 431},
            )
            # A client that floods headers is not kept on for its next request.
            await ending_connection(
                json_answer(
                    {
                        "error": "HeadersTooLarge",
                        "message": f"at most {MAX_HEADERS} headers of {MAX_HEADER_BYTES} "
                        "bytes in all",
                    },
                    431,
                )
            )(scope, receive, send)
            self._count("other", scope["method"], 431)
            return

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = _route_label(scope["path"])
            timer = self._timers.get(route)
            if timer is None:
                timer = self._timers[route] = self.ctx.latency.labels(route)
            timer.observe(time.perf_counter() - start)
            self._count(route, scope["method"], status[0])

    def _count(self, route: str, method: str, status: int) -> None:
        # A method outside the standard few is counted as "other": a label value per
        # token a client makes up would grow the registry (and /metrics) without bound.
        key = (route, method if method in _METHODS else "other", status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.ctx.requests.labels(*map(str, key))
        counter.inc()
