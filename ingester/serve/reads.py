"""The read side: the latest (or a chosen) version with freshness fields, the versions
listing and one version's bytes.

``serve`` only reads the history (through :class:`ingester.history.index.HistoryIndex`);
the watcher stays its single writer.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..errors import VersionNotFound, VersionTooLarge
from ..history.index import HistorySnapshot
from ..history.names import is_version_name
from ..json_text import json_bytes
from ..payload.gate import load_json
from ..payload.model import PayloadRejected, judge_payload
from .answers import (
    JSON,
    STALE_AFTER_MINUTES,
    TIMESTAMP_EXAMPLE,
    age_minutes,
    error_answer,
    iso,
    json_answer,
    parse_instant,
    parse_last_updated,
)
from .conditional import (
    body_etag,
    cache_control,
    etag_matches,
    http_date,
    if_none_match,
)
from .context import ServeContext
from .query import RepeatedParameter, query_value, whole_number
from .read_faults import HISTORY, version_fault

__all__ = [
    "get_console_usage",
    "get_version",
    "latest_snapshot",
    "list_versions",
    "read_payload",
    "snapshot_or_error",
]

log = logging.getLogger("ingester.serve")

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def read_payload(ctx: ServeContext, name: str) -> tuple[dict[str, Any] | None, datetime | None]:
    """A version's payload as a dict (``None`` if it is not a JSON object) and lastUpdated.

    Raises :class:`VersionNotFound` when the version is gone and ``OSError`` when it
    cannot be read. A version larger than any drop is no JSON object here: damaged.
    """
    _file, payload, updated = _read_stamped(ctx, name)
    return payload, updated


def _read_stamped(
    ctx: ServeContext, name: str
) -> tuple[Hashable | None, dict[str, Any] | None, datetime | None]:
    """:func:`read_payload`, and the file's stamp it was read under
    (:meth:`~ingester.history.index.HistoryIndex.version_stamp`; ``None``: not cached)."""
    # A verdict is good while the file is the one it was made of: a damaged version put
    # right from a backup is served at the next request, not after a restart.
    stamp = ctx.index.version_stamp(name)
    # The stamp is part of the key: an entry of the file's former bytes is never found
    # again, and leaves the cache as the least recently used.
    key = f"{name} {stamp}" if stamp is not None else None
    hit = ctx.parsed.get(key) if key is not None else None
    if hit is not None:
        return stamp, hit[0], hit[1]
    try:
        data = ctx.index.read_version(name)
    except VersionTooLarge:
        # Never read whole: a file so large is damaged, as one that is no JSON is, and
        # answered so.
        if key is not None:
            ctx.parsed.put(key, (None, None), len(key))
        return stamp, None, None
    try:
        # As the gate reads it: a NaN or a number beyond a double (1e400) would be
        # rendered back as NaN or Infinity, which no client parses.
        obj = load_json(data)
    except (ValueError, RecursionError):  # a file someone else put in the history
        obj = None
    payload = obj if isinstance(obj, dict) else None
    updated = parse_last_updated(payload.get("lastUpdated")) if payload else None
    if key is not None:
        ctx.parsed.put(key, (payload, updated), len(data))
    return stamp, payload, updated


def _damage(ctx: ServeContext, name: str) -> str:
    """Why version ``name`` (not a JSON object) cannot be served, in the judge's words,
    as ``ingester show`` says it; read again, as only the verdict was kept."""
    try:
        judge_payload(ctx.index.read_version(name))
    except (PayloadRejected, VersionTooLarge) as exc:
        return f"version {name} is damaged: {exc.reason}"
    except (OSError, VersionNotFound):
        pass  # gone or unreadable since: what is known still holds
    return f"version {name} is damaged: not a JSON object"


def snapshot_or_error(ctx: ServeContext, request: Request) -> HistorySnapshot | Response:
    """The history as it is now, or the 503 answer when it cannot be read (logged
    through :class:`~ingester.serve.read_faults.ReadFaults`)."""
    try:
        snap = ctx.index.snapshot()
    except OSError as exc:
        ctx.read_faults.failed(request, HISTORY, exc)
        return error_answer(
            503, "HistoryUnavailable", f"the history cannot be read: {exc.strerror}"
        )
    ctx.read_faults.passed(HISTORY)
    return snap


def _valid_range(total: int) -> str:
    """The ``validRange`` of an InvalidVersion answer over ``total`` versions."""
    return f"1 to {total} (from the oldest) or -1 to -{total} (from the newest)"


def _choose(request: Request, snap: HistorySnapshot, now: datetime) -> int | Response:
    """The position the query asks for, or the 400/404 answer."""
    total = len(snap)
    if total == 0:
        return json_answer(
            {
                "error": "NotFound",
                "message": "No console usage data has been stored yet",
                "versionsAvailable": 0,
            },
            404,
        )
    # An empty parameter counts as not given, and timestamp wins over version (as the
    # original); a parameter given twice with different values has no one meaning.
    try:
        stamp_text = query_value(request, "timestamp") or None
    except RepeatedParameter as exc:
        return error_answer(400, "InvalidTimestamp", exc.message, example=TIMESTAMP_EXAMPLE)
    if stamp_text is not None:
        when = parse_instant(stamp_text)
        if when is None:
            return error_answer(
                400,
                "InvalidTimestamp",
                f"timestamp must be an ISO-8601 date-time, e.g. {TIMESTAMP_EXAMPLE}; "
                f"got {stamp_text!r}",
                example=TIMESTAMP_EXAMPLE,
            )
        pos = snap.nearest_position(when)
        assert pos is not None
        return pos
    try:
        version = query_value(request, "version") or None
    except RepeatedParameter as exc:
        return error_answer(400, "InvalidVersion", exc.message, validRange=_valid_range(total))
    if version is not None:
        n = whole_number(version.strip(), signed=True)
        if n is None or n == 0 or abs(n) > total:
            return error_answer(
                400,
                "InvalidVersion",
                f"version must be a non-zero integer within the range; got {version!r}",
                validRange=_valid_range(total),
            )
        return n - 1 if n > 0 else total + n
    latest = snap.latest_position(now)
    # Only future-dated versions: the oldest of them is the least surprising answer.
    return latest if latest is not None else 0


_LOOKS = 5
"""Looks at the history before a version deleted under a read is answered 503: with
retention deleting the oldest at every ingest of a burst, ``?version=1`` can lose the
race more than once."""


def latest_snapshot(ctx: ServeContext, now: datetime) -> tuple[HistorySnapshot, int | None]:
    """The history as it is now and the position of its latest at ``now`` (``None``:
    none), whose payload is then read (:func:`read_payload`'s cache answers the caller).

    A latest deleted since the history was last looked at (by hand: retention never
    deletes it) is no longer the latest: the history is looked at again and the latest
    chosen from what is left, so a caller judges the newest data there is, never a gone
    version as unreadable. After :data:`_LOOKS` looks the last choice stands. Raises
    ``OSError`` when the history cannot be looked at.
    """
    for look in range(1, _LOOKS + 1):
        snap = ctx.index.snapshot()
        pos = snap.latest_position(now)
        if pos is None or look == _LOOKS:
            return snap, pos
        try:
            read_payload(ctx, snap.entries[pos].name)
        except VersionNotFound:
            continue
        except OSError:
            pass  # not gone: the caller's own read meets the fault and says it
        return snap, pos
    raise AssertionError("unreachable")


def _locate(
    ctx: ServeContext, request: Request, now: datetime
) -> (
    tuple[HistorySnapshot, int, Hashable | None, dict[str, Any] | None, datetime | None] | Response
):
    """The snapshot, the chosen position, its file's stamp, its payload and lastUpdated;
    or the error answer."""
    for attempt in range(_LOOKS):
        snap = snapshot_or_error(ctx, request)
        if isinstance(snap, Response):
            return snap
        chosen = _choose(request, snap, now)
        if isinstance(chosen, Response):
            return chosen
        name = snap.entries[chosen].name
        try:
            stamp, payload, updated = _read_stamped(ctx, name)
        except VersionNotFound:
            # Retention deleted it after the folder was last looked at; the folder has
            # changed since, so a second look sees the versions as they are now.
            if attempt == _LOOKS - 1:
                gone = error_answer(503, "VersionGone", "the version was just deleted; retry")
                gone.headers["Retry-After"] = "1"
                return gone
            continue
        except OSError as exc:
            ctx.read_faults.failed(request, version_fault(name), exc)
            return error_answer(503, "HistoryUnavailable", f"version unreadable: {exc.strerror}")
        ctx.read_faults.passed(version_fault(name))
        return snap, chosen, stamp, payload, updated
    raise AssertionError("unreachable")


async def get_console_usage(request: Request) -> Response:
    """The original read endpoint."""
    ctx: ServeContext = request.app.state.ctx
    now = ctx.config.clock()
    found = _locate(ctx, request, now)
    if isinstance(found, Response):
        return found
    snap, chosen, stamp, payload, updated = found
    entry = snap.entries[chosen]
    if payload is None:
        return error_answer(502, "CorruptVersion", _damage(ctx, entry.name))
    minutes = age_minutes((now - updated).total_seconds()) if updated is not None else None
    stale = minutes is None or minutes > STALE_AFTER_MINUTES
    key = (entry.name, stamp, chosen, len(snap), minutes, stale)
    body = ctx.rendered.get(key) if stamp is not None else None
    if body is None:
        out = dict(payload)
        out["isStale"] = stale
        out["ageMinutes"] = minutes
        out["source"] = "ec2-sync"
        out["versionInfo"] = {
            "current": chosen + 1,
            "total": len(snap),
            "timestamp": iso(entry.ingested_at),
            "filename": entry.name,
        }
        body = json_bytes(out)
        ctx.rendered.put(key, body, len(body))
    # The tag is the body's own digest: the version's name alone would stay the same while
    # retention changes versionInfo or the age moves on, and a client revalidating by it
    # would keep showing a count of versions, or an age, that no longer holds.
    etag = body_etag(body)
    headers = {"ETag": etag, "Cache-Control": cache_control(minutes)}
    if updated is not None:
        # Made no later than the answer's Date where that is set (see http_protocol).
        headers["Last-Modified"] = http_date(updated)
    # The tag alone decides: the body moves on after lastUpdated (ageMinutes with the
    # clock, versionInfo as retention deletes), at moments no date sent back can show, so
    # a 304 judged by If-Modified-Since would confirm a count or an age that is gone.
    inm = if_none_match(request)
    if inm is not None and etag_matches(inm, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=JSON, headers=headers)


async def list_versions(request: Request) -> Response:
    """Version names, ingest times and sizes, newest first, a page at a time."""
    ctx: ServeContext = request.app.state.ctx
    try:
        limit_text = query_value(request, "limit")
    except RepeatedParameter as exc:
        return error_answer(400, "InvalidLimit", exc.message)
    limit = DEFAULT_PAGE if limit_text is None else whole_number(limit_text)
    if limit is None or not 1 <= limit <= MAX_PAGE:
        return error_answer(400, "InvalidLimit", f"limit must be an integer from 1 to {MAX_PAGE}")
    bounds: dict[str, str | None] = {}
    for key in ("before", "after"):
        try:
            value = query_value(request, key)
        except RepeatedParameter as exc:
            return error_answer(400, "InvalidCursor", exc.message)
        if value is not None and not is_version_name(value):
            return error_answer(
                400, "InvalidCursor", f"{key} must be a version name, e.g. from 'next'"
            )
        bounds[key] = value
    snap = snapshot_or_error(ctx, request)
    if isinstance(snap, Response):
        return snap
    rows = snap.page(limit=limit + 1, before=bounds["before"], after=bounds["after"])
    more = len(rows) > limit
    rows = rows[:limit]
    return json_answer(
        {
            "total": len(snap),
            "versions": [
                {"name": e.name, "timestamp": iso(e.ingested_at), "size": e.size} for e in rows
            ],
            "next": rows[-1].name if more and rows else None,
        },
        headers={"Cache-Control": "no-cache"},
    )


async def get_version(request: Request) -> Response:
    """One version's bytes, exactly as stored; immutable unless they are no JSON object
    (damaged: revalidated at each use, as they may be put right)."""
    ctx: ServeContext = request.app.state.ctx
    name = request.path_params["name"]
    if not is_version_name(name):
        return error_answer(404, "NotFound", "no such version")
    inm = if_none_match(request)
    try:
        data = ctx.index.read_version(name)
    except VersionNotFound:
        return error_answer(404, "NotFound", f"no version {name} (never stored, or deleted)")
    except VersionTooLarge as exc:
        # Refused, not streamed: no drop is so large, so these bytes are no version any
        # client could use, and streaming them would hand out gigabytes of what was put
        # in the history by other means. Answered as the latest route answers a damaged
        # version (never a truncated body under a 200).
        return error_answer(502, "CorruptVersion", f"version {name} is damaged: {exc.reason}")
    except OSError as exc:
        ctx.read_faults.failed(request, version_fault(name), exc)
        return error_answer(503, "HistoryUnavailable", f"version unreadable: {exc.strerror}")
    ctx.read_faults.passed(version_fault(name))
    # The digest of the bytes, not the name: a damaged version put right from a backup
    # holds other bytes under the same name, and a client's copy of the damaged ones
    # must not be confirmed by a 304. For the same reason bytes that are no snapshot are
    # revalidated at each use, not kept for a year.
    etag = body_etag(data)
    try:
        damaged = read_payload(ctx, name)[0] is None
    except (OSError, VersionNotFound):
        damaged = True  # replaced or gone since the read: nothing to promise of them
    cache = "no-cache" if damaged else "public, max-age=31536000, immutable"
    headers = {"ETag": etag, "Cache-Control": cache}
    if inm is not None and etag_matches(inm, etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=JSON, headers=headers)
