"""``ingester serve``: the HTTP face of the history and the spool (a Starlette app on uvicorn).

Endpoints (the first three keep the original sync server's clients working unchanged):

* ``GET  /api/claude/console-usage[?version=N|?timestamp=ISO]``: a version's payload with
  ``isStale``, ``ageMinutes``, ``source`` and ``versionInfo``; ``ETag``, ``Last-Modified``,
  ``Cache-Control`` by freshness; conditional requests answer 304.
* ``POST /api/claude/console-usage`` (``X-API-Key``): judged like any drop, then handed to
  the spool through :meth:`ingester.spool.Spool.submit`; 202 once the drop is durable.
* ``GET  /api/health``: healthy / degraded / unhealthy (503), with the numbers.
* ``GET  /api/claude/console-usage/versions[?limit=&before=&after=]`` and
  ``GET  /api/claude/console-usage/versions/{name}`` (the bytes, immutable).
* ``GET  /metrics`` (Prometheus text format), ``GET /openapi.json``.

``serve`` only reads the history (through :class:`ingester.history_index.HistoryReader`);
the watcher stays its single writer. Build the app with :func:`create_app`; other
modules add their pages by passing ``extra_routes`` (or adding a builder to
:func:`_route_builders`).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hmac
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admission import format_peer
from .clock import utc_now
from .errors import StorageError
from .forecast import parse_observed_at
from .forecast_api import FORECAST_PATH
from .forecast_api import install as install_forecast
from .history_index import (
    BoundedCache,
    HistoryIndex,
    HistoryReader,
    HistorySnapshot,
    LocalHistory,
    VersionNotFound,
)
from .metrics import MetricsRegistry
from .model import PayloadRejected, judge_payload
from .names import format_timestamp, is_version_name
from .page import routes as page_routes
from .settings import Settings
from .spool import Spool, drop_name_for_now

__all__ = [
    "API_PATH",
    "ServeConfig",
    "ServeContext",
    "create_app",
    "load_api_key",
    "parse_listen",
]

log = logging.getLogger("ingester.serve")

API_PATH = "/api/claude/console-usage"
VERSIONS_PATH = f"{API_PATH}/versions"
HEALTH_PATH = "/api/health"
STALE_AFTER_S = 10 * 60  # isStale, and "degraded" in health
UNHEALTHY_AFTER_S = 30 * 60
# Header floods: uvicorn refuses an unfinished request head over 16 KiB, but a large head
# that arrives in one read is parsed whole; these limits then refuse it.
MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024
DEFAULT_PAGE = 100
MAX_PAGE = 1000
TIMESTAMP_EXAMPLE = "2026-11-28T10:30:00Z"
JSON = "application/json"
# The outcomes ``ingester_http_posts_total`` counts by (its label values).
POST_OUTCOMES = ("accepted", "invalid", "unauthorized", "unsupported", "refused", "spool_error")
_INTEGER = re.compile(r"-?[0-9]{1,12}", re.ASCII)


@dataclass(frozen=True)
class ServeConfig:
    """What the app needs: where the history and spool are, the key, the limits.

    ``api_key`` is compared in constant time; ``None`` makes every POST a 401.
    ``body_timeout`` (seconds) bounds how long a POST body may take to arrive.
    """

    settings: Settings
    api_key: bytes | None = None
    body_timeout: float = 10.0
    reader: HistoryReader | None = None  # default: the local history folder
    clock: Callable[[], datetime] = field(default=utc_now)


@dataclass
class ServeContext:
    """Shared state of one app: the index over the history, the spool, the metrics."""

    config: ServeConfig
    index: HistoryIndex
    spool: Spool
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    posts: Counter
    # Rendered GET bodies keyed by everything they depend on, and parsed payloads by name.
    # Budgets in bytes of JSON; a parsed payload costs several times its text in memory.
    rendered: BoundedCache[tuple[Any, ...], bytes] = field(
        default_factory=lambda: BoundedCache(2 << 20)
    )
    parsed: BoundedCache[str, tuple[dict[str, Any] | None, datetime | None]] = field(
        default_factory=lambda: BoundedCache(1 << 20)
    )

    @property
    def settings(self) -> Settings:
        """The resolved settings."""
        return self.config.settings


# -- small helpers ---------------------------------------------------------------------


def _iso(stamp: datetime) -> str:
    return format_timestamp(stamp) or ""


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        status_code=status,
        media_type=JSON,
        headers=headers,
    )


def _error(status: int, error: str, message: str, **extra: Any) -> Response:
    return _json({"error": error, "message": message, **extra}, status)


_parse_last_updated = parse_observed_at  # lastUpdated read as the forecast reads it


def parse_instant(text: str) -> datetime | None:
    """An ISO-8601 time (UTC when it has no offset), or ``None`` when it is not one."""
    try:
        stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        stamp.astimezone(UTC).timestamp()
        return stamp
    except (ValueError, OverflowError, OSError):
        return None


@functools.lru_cache(maxsize=256)
def _http_date(stamp: datetime) -> str:
    return email.utils.format_datetime(stamp, usegmt=True)


def _cache_control(age_s: float | None) -> str:
    if age_s is None or age_s >= STALE_AFTER_S:
        return "no-cache"
    return "max-age=60" if age_s < 5 * 60 else "max-age=30"


def _etag_matches(header: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2): ``W/`` is ignored on both sides."""
    mine = etag.removeprefix("W/")
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == mine:
            return True
    return False


def _not_modified(request: Request, etag: str, modified: datetime | None) -> bool:
    inm = request.headers.get("if-none-match")
    if inm is not None:
        return _etag_matches(inm, etag)
    ims = request.headers.get("if-modified-since")
    if ims is not None and modified is not None:
        try:
            since = email.utils.parsedate_to_datetime(ims)
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return modified.replace(microsecond=0) <= since
    return False


# -- the read side -----------------------------------------------------------------------


def _payload(ctx: ServeContext, name: str) -> tuple[dict[str, Any] | None, datetime | None]:
    """A version's payload as a dict (``None`` if it is not a JSON object) and lastUpdated."""
    hit = ctx.parsed.get(name)
    if hit is not None:
        return hit
    data = ctx.index.read_version(name)
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):  # a file someone else put in the history
        obj = None
    payload = obj if isinstance(obj, dict) else None
    stamp = _parse_last_updated(payload.get("lastUpdated")) if payload else None
    ctx.parsed.put(name, (payload, stamp), len(data))
    return payload, stamp


def _snapshot_or_error(ctx: ServeContext) -> HistorySnapshot | Response:
    try:
        return ctx.index.snapshot()
    except OSError as exc:
        log.error("history unreadable: %s", exc)
        return _error(503, "HistoryUnavailable", f"the history cannot be read: {exc.strerror}")


def _choose(request: Request, snap: HistorySnapshot, now: datetime) -> int | Response:
    """The position the query asks for, or the 400/404 answer."""
    total = len(snap)
    if total == 0:
        return _json(
            {
                "error": "NotFound",
                "message": "No console usage data has been stored yet",
                "versionsAvailable": 0,
            },
            404,
        )
    # Most requests ask for the latest: skip parsing an empty query string.
    params = request.query_params if request.scope["query_string"] else {}
    version = params.get("version")
    if version is not None:
        valid = f"1 to {total} (from the oldest) or -1 to -{total} (from the newest)"
        text = version.strip()
        n = int(text) if _INTEGER.fullmatch(text) else 0
        if n == 0 or abs(n) > total:
            return _error(
                400,
                "InvalidVersion",
                f"version must be a non-zero integer within the range; got {version!r}",
                validRange=valid,
            )
        return n - 1 if n > 0 else total + n
    stamp_text = params.get("timestamp")
    if stamp_text is not None:
        when = parse_instant(stamp_text)
        if when is None:
            return _error(
                400,
                "InvalidTimestamp",
                f"timestamp must be an ISO-8601 date-time, e.g. {TIMESTAMP_EXAMPLE}; "
                f"got {stamp_text!r}",
                example=TIMESTAMP_EXAMPLE,
            )
        pos = snap.nearest_position(when)
        assert pos is not None
        return pos
    latest = snap.latest_position(now)
    # Only future-dated versions: the oldest of them is the least surprising answer.
    return latest if latest is not None else 0


def _locate(
    ctx: ServeContext, request: Request, now: datetime
) -> tuple[HistorySnapshot, int, dict[str, Any] | None, datetime | None] | Response:
    """The snapshot, the chosen position, its payload and lastUpdated; or the error answer."""
    for attempt in range(2):
        snap = _snapshot_or_error(ctx)
        if isinstance(snap, Response):
            return snap
        chosen = _choose(request, snap, now)
        if isinstance(chosen, Response):
            return chosen
        name = snap.entries[chosen].name
        try:
            payload, updated = _payload(ctx, name)
        except VersionNotFound:
            # Retention deleted it after the folder was last looked at; the folder has
            # changed since, so a second look sees the versions as they are now.
            if attempt:
                return _error(503, "VersionGone", "the version was just deleted; retry")
            continue
        except OSError as exc:
            log.error("cannot read version %s: %s", name, exc)
            return _error(503, "HistoryUnavailable", f"version unreadable: {exc.strerror}")
        return snap, chosen, payload, updated
    raise AssertionError("unreachable")


async def get_console_usage(request: Request) -> Response:
    """The original read endpoint."""
    ctx: ServeContext = request.app.state.ctx
    now = ctx.config.clock()
    found = _locate(ctx, request, now)
    if isinstance(found, Response):
        return found
    snap, chosen, payload, updated = found
    entry = snap.entries[chosen]
    if payload is None:
        return _error(502, "CorruptVersion", f"version {entry.name} is not a JSON object")
    age_s = (now - updated).total_seconds() if updated is not None else None
    etag = f'W/"{entry.name.removesuffix(".json")}"'
    headers = {"ETag": etag, "Cache-Control": _cache_control(age_s)}
    if updated is not None:
        headers["Last-Modified"] = _http_date(updated)
    if _not_modified(request, etag, updated):
        return Response(status_code=304, headers=headers)
    age_minutes = math.floor(age_s / 60) if age_s is not None else None
    stale = age_s is None or age_s > STALE_AFTER_S
    key = (entry.name, chosen, len(snap), age_minutes, stale)
    body = ctx.rendered.get(key)
    if body is None:
        out = dict(payload)
        out["isStale"] = stale
        out["ageMinutes"] = age_minutes
        out["source"] = "ec2-sync"
        out["versionInfo"] = {
            "current": chosen + 1,
            "total": len(snap),
            "timestamp": _iso(entry.ingested_at),
            "filename": entry.name,
        }
        body = json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()
        ctx.rendered.put(key, body, len(body))
    return Response(body, media_type=JSON, headers=headers)


async def list_versions(request: Request) -> Response:
    """Version names, ingest times and sizes, newest first, a page at a time."""
    ctx: ServeContext = request.app.state.ctx
    params = request.query_params
    limit_text = params.get("limit", str(DEFAULT_PAGE))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE:
        return _error(400, "InvalidLimit", f"limit must be an integer from 1 to {MAX_PAGE}")
    bounds: dict[str, str | None] = {}
    for key in ("before", "after"):
        value = params.get(key)
        if value is not None and not is_version_name(value):
            return _error(400, "InvalidCursor", f"{key} must be a version name, e.g. from 'next'")
        bounds[key] = value
    snap = _snapshot_or_error(ctx)
    if isinstance(snap, Response):
        return snap
    limit = int(limit_text)
    rows = snap.page(limit=limit + 1, before=bounds["before"], after=bounds["after"])
    more = len(rows) > limit
    rows = rows[:limit]
    return _json(
        {
            "total": len(snap),
            "versions": [
                {"name": e.name, "timestamp": _iso(e.ingested_at), "size": e.size} for e in rows
            ],
            "next": rows[-1].name if more and rows else None,
        },
        headers={"Cache-Control": "no-cache"},
    )


async def get_version(request: Request) -> Response:
    """One version's bytes, exactly as stored; immutable."""
    ctx: ServeContext = request.app.state.ctx
    name = request.path_params["name"]
    if not is_version_name(name):
        return _error(404, "NotFound", "no such version")
    etag = f'"{name.removesuffix(".json")}"'
    headers = {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable"}
    inm = request.headers.get("if-none-match")
    try:
        data = ctx.index.read_version(name)
    except VersionNotFound:
        return _error(404, "NotFound", f"no version {name} (never stored, or deleted)")
    except OSError as exc:
        return _error(503, "HistoryUnavailable", f"version unreadable: {exc.strerror}")
    if inm is not None and _etag_matches(inm, etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=JSON, headers=headers)


# -- health and metrics ------------------------------------------------------------------


def health_facts(ctx: ServeContext) -> tuple[str, int, dict[str, Any]]:
    """``(status, http status, body)`` for ``/api/health``."""
    now = ctx.config.clock()
    body: dict[str, Any] = {"timestamp": _iso(now)}
    try:
        snap = ctx.index.snapshot()
    except OSError as exc:
        body.update(status="unhealthy", reason=f"history unreadable: {exc.strerror}")
        return "unhealthy", 503, body
    body["versionCount"] = len(snap)
    pos = snap.latest_position(now)
    if pos is None:
        body.update(status="unhealthy", reason="no data stored yet")
        return "unhealthy", 503, body
    entry = snap.entries[pos]
    body["latestVersion"] = entry.name
    body["latestIngestedAt"] = _iso(entry.ingested_at)
    try:
        _payload_obj, updated = _payload(ctx, entry.name)
    except (OSError, VersionNotFound) as exc:
        body.update(status="unhealthy", reason=f"latest version unreadable: {exc}")
        return "unhealthy", 503, body
    if updated is None:
        body.update(status="unhealthy", reason="latest version has no valid lastUpdated")
        return "unhealthy", 503, body
    age = (now - updated).total_seconds()
    body["lastUpdated"] = _iso(updated)
    body["ageSeconds"] = round(age, 3)
    body["ageMinutes"] = math.floor(age / 60)
    body["staleAfterMinutes"] = STALE_AFTER_S // 60
    body["unhealthyAfterMinutes"] = UNHEALTHY_AFTER_S // 60
    if age > UNHEALTHY_AFTER_S:
        body.update(status="unhealthy", reason="newest data is older than 30 minutes")
        return "unhealthy", 503, body
    if age > STALE_AFTER_S:
        body.update(status="degraded", reason="newest data is older than 10 minutes")
        return "degraded", 200, body
    body.update(status="healthy", reason="newest data is under 10 minutes old")
    return "healthy", 200, body


async def get_health(request: Request) -> Response:
    """Health verdict with the numbers behind it."""
    ctx: ServeContext = request.app.state.ctx
    _status, code, body = health_facts(ctx)
    return _json(body, code, headers={"Cache-Control": "no-store"})


class HistoryCollector(Collector):
    """Gauges read at scrape time from the history, its metadata and the spool."""

    def __init__(self, ctx: ServeContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterable[Metric]:
        ctx = self.ctx
        now = ctx.config.clock()
        readable = GaugeMetricFamily(
            "ingester_history_readable", "1 when the history folder can be read"
        )
        try:
            snap = ctx.index.snapshot()
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
        pos = snap.latest_position(now)
        if pos is not None:
            entry = snap.entries[pos]
            yield GaugeMetricFamily(
                "ingester_newest_version_timestamp_seconds",
                "Ingest time of the newest version (Unix seconds)",
                entry.ingested_at.timestamp(),
            )
            try:
                _obj, updated = _payload(ctx, entry.name)
            except (OSError, VersionNotFound):
                updated = None
            if updated is not None:
                age = (now - updated).total_seconds()
                yield GaugeMetricFamily(
                    "ingester_payload_age_seconds",
                    "Seconds since the newest version's lastUpdated",
                    age,
                )
                yield GaugeMetricFamily(
                    "ingester_payload_stale",
                    "1 when the newest lastUpdated is older than 10 minutes",
                    1 if age > STALE_AFTER_S else 0,
                )
        try:
            meta = ctx.index.read_metadata()
        except OSError:
            meta = None
        if meta is not None:
            cleanup = _parse_last_updated(meta.last_cleanup)
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
        try:
            drops = ctx.spool.scan()
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
        yield GaugeMetricFamily(
            "ingester_rejected_drops", "Drops in quarantine", ctx.spool.rejected_count()
        )


async def get_metrics(request: Request) -> Response:
    """Prometheus text format."""
    ctx: ServeContext = request.app.state.ctx
    data = await run_in_threadpool(generate_latest, ctx.registry)
    return Response(data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def get_openapi(request: Request) -> Response:
    """The OpenAPI description of this API (also committed as docs/openapi.json)."""
    from .openapi import openapi_bytes

    return Response(openapi_bytes(), media_type=JSON)


# -- the write side ----------------------------------------------------------------------


def _post_answer(status: int, success: bool, message: str, **extra: Any) -> Response:
    body = {"success": success, "message": message, "timestamp": _iso(utc_now())}
    body.update(extra)
    return _json(body, status)


def _is_json_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON or (media.startswith("application/") and media.endswith("+json"))


def key_matches(given: str | None, expected: bytes | None) -> bool:
    """Constant-time comparison of the ``X-API-Key`` header with the configured key."""
    if expected is None or given is None:
        return False
    # Starlette decodes header bytes as latin-1: encoding back gives the bytes sent.
    return hmac.compare_digest(given.encode("latin-1"), expected)


async def _read_body(request: Request, max_bytes: int, timeout: float) -> bytes | Response:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            return _post_answer(400, False, "Content-Length is not a number")
        if int(declared) > max_bytes:
            return _post_answer(413, False, f"body over the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    return _post_answer(413, False, f"body over the limit of {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        log.warning(
            "client %s: %s %s: body not received within %g s (%d bytes came); answered 408",
            format_peer(request.client and tuple(request.client)),
            request.method,
            request.scope["path"],  # not request.url: a malformed Host header breaks it
            timeout,
            size,
        )
        return _post_answer(408, False, f"body not received within {timeout:g} s")
    return b"".join(chunks)


def _submit(spool: Spool, data: bytes) -> str:
    """Drop ``data`` into the spool under a fresh name; the name it got."""
    for _attempt in range(5):
        try:
            return spool.submit(data, drop_name_for_now()).name
        except FileExistsError:  # a name is never reused while its drop waits: take another
            continue
    raise StorageError("submit", spool.dir, OSError(17, "no free drop name after 5 tries"))


async def post_console_usage(request: Request) -> Response:
    """The scraper's upload: key, content type, size, validation, then a durable drop."""
    ctx: ServeContext = request.app.state.ctx
    s = ctx.settings
    if not key_matches(request.headers.get("x-api-key"), ctx.config.api_key):
        ctx.posts.labels("unauthorized").inc()
        return _post_answer(401, False, "missing or wrong X-API-Key")
    if not _is_json_type(request.headers.get("content-type")):
        ctx.posts.labels("unsupported").inc()
        return _post_answer(415, False, "Content-Type must be application/json")
    try:
        body = await _read_body(request, s.max_bytes, ctx.config.body_timeout)
    except ClientDisconnect:
        return Response(status_code=400)  # nobody is listening; nothing was dropped
    if isinstance(body, Response):
        ctx.posts.labels("refused").inc()
        return body
    try:
        await run_in_threadpool(judge_payload, body, max_bytes=s.max_bytes)
    except PayloadRejected as exc:
        ctx.posts.labels("invalid").inc()
        return _post_answer(400, False, f"invalid payload: {exc.reason}", errors=exc.errors)
    try:
        drop = await run_in_threadpool(_submit, ctx.spool, body)
    except OSError as exc:
        ctx.posts.labels("spool_error").inc()
        log.error("POST not accepted: spool not writable: %s", exc)
        return _post_answer(503, False, f"the spool cannot be written: {exc.strerror}")
    ctx.posts.labels("accepted").inc()
    log.info("accepted POST as drop %s (%d bytes)", drop, len(body))
    return _post_answer(
        202, True, f"Accepted: durable in the spool as {drop}; the watcher stores it", drop=drop
    )


# -- the app -----------------------------------------------------------------------------


# Methods counted by name; any other (clients may send any token) is "other", so the
# metric's label values stay few.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def _route_label(path: str) -> str:
    if path.startswith(VERSIONS_PATH + "/"):
        return VERSIONS_PATH + "/{name}"
    if path in (API_PATH, VERSIONS_PATH, HEALTH_PATH, FORECAST_PATH, "/metrics", "/openapi.json"):
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
        if (
            len(headers) > MAX_HEADERS
            or sum(len(k) + len(v) for k, v in headers) > MAX_HEADER_BYTES
        ):
            status[0] = 431
            await _json(
                {
                    "error": "HeadersTooLarge",
                    "message": f"at most {MAX_HEADERS} headers of {MAX_HEADER_BYTES} bytes in all",
                },
                431,
            )(scope, receive, send)
            self.ctx.requests.labels("other", scope["method"], "431").inc()
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
            method = scope["method"] if scope["method"] in _METHODS else "other"
            key = (route, method, status[0])
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = self.ctx.requests.labels(*map(str, key))
            counter.inc()


async def console_usage(request: Request) -> Response:
    """One route for both methods, so a 405 names them all in ``Allow``."""
    if request.method == "POST":
        return await post_console_usage(request)
    return await get_console_usage(request)


def api_routes() -> list[BaseRoute]:
    """The API's routes (method-specific endpoints share paths)."""
    return [
        Route(API_PATH, console_usage, methods=["GET", "HEAD", "POST"]),
        Route(VERSIONS_PATH, list_versions, methods=["GET", "HEAD"]),
        Route(VERSIONS_PATH + "/{name}", get_version, methods=["GET", "HEAD"]),
        Route(HEALTH_PATH, get_health, methods=["GET", "HEAD"]),
        Route("/metrics", get_metrics, methods=["GET"]),
        Route("/openapi.json", get_openapi, methods=["GET"]),
    ]


def _route_builders() -> list[Callable[[], Sequence[BaseRoute]]]:
    """Every group of routes the app serves, in match order (add page routes here)."""
    return [api_routes, page_routes]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    return _json(
        {"error": "HTTPError", "message": str(exc.detail)}, exc.status_code, headers=headers
    )


def create_app(config: ServeConfig, *, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The ASGI app for ``config``.

    ``extra_routes`` are matched after the API's (e.g. a page at ``/``). Handlers reach
    the shared state as ``request.app.state.ctx`` (a :class:`ServeContext`: the history
    index, the spool, the settings).
    """
    s = config.settings
    registry = MetricsRegistry(auto_describe=True)
    ctx = ServeContext(
        config=config,
        index=HistoryIndex(config.reader or LocalHistory(s.history_dir)),
        spool=Spool(s.spool_dir, s.rejected_dir),
        registry=registry,
        requests=Counter(
            "ingester_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=registry,
        ),
        latency=Histogram(
            "ingester_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["route"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        ),
        posts=Counter(
            "ingester_http_posts",
            "POSTed snapshots by outcome",
            ["outcome"],
            registry=registry,
        ),
    )
    for outcome in POST_OUTCOMES:
        ctx.posts.labels(outcome)  # each shows from the start, at 0
    registry.register(HistoryCollector(ctx))
    routes: list[BaseRoute] = []
    for build in _route_builders():
        routes.extend(build())
    routes.extend(extra_routes)
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.ctx = ctx
    install_forecast(app, index=ctx.index, settings=s, registry=registry, clock=config.clock)
    app.add_middleware(MetricsMiddleware, ctx=ctx)
    return app


# -- running it --------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> ``(host, port)``; ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def load_api_key(environ: dict[str, str], key_file: Path | None) -> bytes | None:
    """The POST key from ``--api-key-file`` (wins) or ``INGESTER_API_KEY``; ``None`` if neither.

    Surrounding whitespace (a trailing newline) is not part of the key. Raises ``OSError``
    when the file cannot be read and ``ValueError`` when it holds no key.
    """
    if key_file is not None:
        key = key_file.read_bytes().strip()
        if not key:
            raise ValueError(f"{key_file} is empty")
        return key
    value = environ.get("INGESTER_API_KEY", "").strip()
    return value.encode() if value else None
