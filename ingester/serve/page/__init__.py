"""The usage page that ``ingester serve`` shows at ``/``, and the series it draws.

Routes (see :func:`routes`):

* ``GET /``: the page (``static/index.html``), revalidated by ETag on every load;
* ``GET /page/...``: its script, style sheet and the charting library (uPlot, shipped in
  ``static/vendor/``), each with ETag and ``Cache-Control: no-cache`` so an upgrade is
  picked up and an unchanged file costs a 304;
* ``GET /api/claude/console-usage/series[?since=ISO][&until=ISO][&by=lastUpdated]``: the
  versions whose ingest time (``by=lastUpdated``: whose ``lastUpdated``, the time of the
  observation) is within ``[since, until]`` as export rows (:mod:`ingester.usage.export`):
  ``{"columns": [...], "rows": [[...], ...], "count": N, "skipped": [{"version",
  "reason"}], "since", "until", "by"}``, oldest first by that time. ``ETag`` names the
  versions selected (and those of them it could not read or found damaged) and the
  console's time zone, so a poll that finds nothing
  new is answered 304 without reading a file. 400 with ``error``, ``message`` and
  ``example`` for a time that is not ISO-8601 or an unknown ``by``; 503 when the history
  cannot be read.

The page needs nothing from outside the server: no CDN, no fonts, no build step. Its
Content-Security-Policy allows requests to its own origin only.
"""

from __future__ import annotations

import bisect
import email.utils
import hashlib
import threading
from collections.abc import Hashable, Sequence
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ...clock import parse_iso_time
from ...errors import VersionNotFound, VersionTooLarge
from ...history.base import VersionEntry
from ...history.index import HistoryIndex, HistorySnapshot
from ...history.names import format_timestamp
from ...json_text import json_bytes
from ...payload.model import PayloadRejected
from ...usage.export import COLUMNS, Row, inverted_bounds, row_from_bytes
from ...usage.readings import CLOCK_AHEAD
from ..conditional import etag_matches, if_none_match, not_modified_headers
from ..context import ServeContext
from ..query import RepeatedParameter, query_value
from ..reads import snapshot_or_error
from ..routes import SERIES_PATH

__all__ = ["SERIES_PATH", "STATIC_DIR", "routes"]


STATIC_DIR = Path(__file__).resolve().parent / "static"
TIME_EXAMPLE = "2026-11-28T10:30:00Z"
SELECT_BY = ("ingestedAt", "lastUpdated")
_OBSERVED = COLUMNS.index("lastUpdated")
_UNREADABLE = "unreadable: "
"""How the reason of a version skipped because it could not be read this time begins."""

# The page loads from its own origin only (no inline script or style either), so a
# server with no internet shows it whole and injected markup cannot run.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json_bytes(body),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _etag_matches(request: Request, etag: str) -> bool:
    """Whether ``request``'s ``If-None-Match``, on any of its lines, names ``etag`` (weak
    comparison, as it asks)."""
    header = if_none_match(request)
    return header is not None and etag_matches(header, etag)


class _RevalidatedFiles(StaticFiles):
    """Static files that the browser revalidates on every use (an ETag hit is a 304)."""

    def is_not_modified(self, response_headers: Headers, request_headers: Headers) -> bool:
        """Whether the request's conditions say its copy is current: judged as every
        other route judges them (``If-None-Match`` on any of its lines)."""
        try:
            modified: datetime | None = email.utils.parsedate_to_datetime(
                response_headers.get("last-modified", "")
            )
        except (TypeError, ValueError, IndexError, OverflowError):
            modified = None
        return not_modified_headers(request_headers, response_headers["etag"], modified)

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


class _Page:
    """``GET /``: the page's HTML, read once."""

    def __init__(self) -> None:
        self.body = (STATIC_DIR / "index.html").read_bytes()
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'

    async def handle(self, request: Request) -> Response:
        headers = {**PAGE_HEADERS, "ETag": self.etag}
        if _etag_matches(request, self.etag):
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type="text/html; charset=utf-8", headers=headers)


class _Series:
    """``GET /api/claude/console-usage/series``, with the rows of versions already read.

    Versions never change, so a row once made is good while its version exists; rows of
    versions that retention deleted are dropped when the cache outgrows the history. A
    version found damaged is judged again once its file is another
    (:meth:`~ingester.history.index.HistoryIndex.version_stamp`): put right from a
    backup, its row is drawn without a restart.
    """

    def __init__(self) -> None:
        self._rows: dict[str, Row | str] = {}  # a row, or why the version was skipped
        # The stamp of each damaged version's file when it was judged so.
        self._damaged: dict[str, Hashable | None] = {}
        self._reads = 0  # files read so far: none read, no verdict changed
        self._lock = threading.Lock()
        self._zone: tzinfo | None = None  # the console's, read from the settings once
        self._zone_name = ""

    def _row(self, index: HistoryIndex, name: str) -> Row | str | None:
        stamp: Hashable | None = None
        with self._lock:
            hit = self._rows.get(name)
            damaged = name in self._damaged
            held = self._damaged.get(name)
        if hit is not None and damaged:
            stamp = index.version_stamp(name)
            if stamp is not None and stamp == held:
                return hit
        elif hit is not None:
            return hit
        else:
            stamp = index.version_stamp(name)  # before the read: a later change is seen
        with self._lock:
            self._reads += 1
        try:
            data = index.reader.read_version(name)
        except VersionNotFound:
            return None  # deleted since the listing: no longer part of the history
        except VersionTooLarge as exc:  # damaged, as the gate's refusals are
            with self._lock:
                self._rows[name] = exc.reason
                self._damaged[name] = stamp
            return exc.reason
        except OSError as exc:
            return f"{_UNREADABLE}{exc.strerror}"  # may pass: not remembered
        result: Row | str
        try:
            assert self._zone is not None
            result = row_from_bytes(name, data, self._zone)
        except PayloadRejected as exc:
            result = exc.reason
        with self._lock:
            self._rows[name] = result
            if isinstance(result, str):
                self._damaged[name] = stamp
            else:
                self._damaged.pop(name, None)
        return result

    def _tag(
        self,
        index: HistoryIndex,
        head: str,
        selected: Sequence[VersionEntry],
        unread: Sequence[str] = (),
    ) -> str:
        """The weak tag of an answer over ``selected``: their names, the stamp of each one
        known damaged (its file put right is another answer), and ``unread``, the ones
        this answer could not read. One ``lstat`` per damaged version, none otherwise."""
        digest = hashlib.sha256(head.encode())
        for entry in selected:
            digest.update(entry.name.encode() + b"\n")
        with self._lock:
            damaged = [e.name for e in selected if e.name in self._damaged] if self._damaged else []
        for name in damaged:
            digest.update(f"damaged {name} {index.version_stamp(name)}\n".encode())
        if unread:
            # A version it could not read this time may be read the next: the body left
            # it out, so its tag must differ from the one of the body that has it.
            digest.update(("unreadable\n" + "\n".join(unread)).encode())
        return 'W/"' + digest.hexdigest()[:24] + '"'

    def _collect(
        self, index: HistoryIndex, entries: Sequence[VersionEntry], snap: HistorySnapshot
    ) -> tuple[list[Row], list[dict[str, str]]]:
        rows: list[Row] = []
        skipped: list[dict[str, str]] = []
        for entry in entries:
            result = self._row(index, entry.name)
            if result is None:
                continue
            if isinstance(result, str):
                skipped.append({"version": entry.name, "reason": result})
            else:
                rows.append(result)
        with self._lock:
            if len(self._rows) > 2 * len(snap) + 1024:
                keep = {e.name for e in snap.entries}
                self._rows = {k: v for k, v in self._rows.items() if k in keep}
                self._damaged = {k: v for k, v in self._damaged.items() if k in keep}
        return rows, skipped

    async def handle(self, request: Request) -> Response:
        try:
            by = query_value(request, "by") or "ingestedAt"
        except RepeatedParameter as exc:
            return _json(
                {"error": "InvalidBy", "message": exc.message, "example": "lastUpdated"}, 400
            )
        if by not in SELECT_BY:
            return _json(
                {
                    "error": "InvalidBy",
                    "message": f"by must be one of {', '.join(SELECT_BY)}; got {by!r}",
                    "example": "lastUpdated",
                },
                400,
            )
        bounds: dict[str, datetime | None] = {}
        for key in ("since", "until"):
            try:
                text = query_value(request, key)
            except RepeatedParameter as exc:
                return _json(
                    {"error": "InvalidTime", "message": exc.message, "example": TIME_EXAMPLE}, 400
                )
            if text is None or text == "":
                bounds[key] = None
                continue
            try:
                bounds[key] = parse_iso_time(text)
            except ValueError:
                return _json(
                    {
                        "error": "InvalidTime",
                        "message": f"{key} must be an ISO-8601 date-time, e.g. {TIME_EXAMPLE}; "
                        f"got {text!r}",
                        "example": TIME_EXAMPLE,
                    },
                    400,
                )
        inverted = inverted_bounds(bounds["since"], bounds["until"], names=("since", "until"))
        if inverted is not None:
            return _json(
                {"error": "InvalidRange", "message": inverted, "example": TIME_EXAMPLE}, 400
            )
        ctx: ServeContext = request.app.state.ctx
        if self._zone is None:
            self._zone, self._zone_name = ctx.settings.console_zone()
        # As every other read: a fault that lasts is one line, and the answer names the
        # cause, not the server's paths.
        snap = snapshot_or_error(ctx, request)
        if isinstance(snap, Response):
            return snap
        since, until = bounds["since"], bounds["until"]
        times = snap.times
        if by == "lastUpdated":
            # A snapshot is observed before it is stored (give or take a clock that runs
            # ahead): those observed since `since` were stored since a little before it,
            # and any time after `until`. Their rows are then filtered by lastUpdated.
            early = None if since is None else since.timestamp() - CLOCK_AHEAD.total_seconds()
            lo = 0 if early is None else bisect.bisect_left(times, early)
            hi = len(times)
        else:
            # To the second, as export's select_versions compares: a name's 14 s covers
            # 14.5 s, so a start within the second still takes it.
            first = None if since is None else since.replace(microsecond=0).timestamp()
            lo = 0 if first is None else bisect.bisect_left(times, first)
            hi = len(times) if until is None else bisect.bisect_right(times, until.timestamp())
        selected = snap.entries[lo:hi] if lo < hi else ()
        # Versions are immutable, so their names stand for their rows: the same names
        # give the same tag and a 304, without reading a file. The rows' reset times are
        # read in the console's zone: another zone (set after a restart) is another body.
        head = f"{by}\n{since}\n{until}\n{self._zone_name}\n"
        etag = self._tag(ctx.index, head, selected)
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if _etag_matches(request, etag):
            return Response(status_code=304, headers=headers)
        reads = self._reads
        rows, skipped = await run_in_threadpool(self._collect, ctx.index, selected, snap)
        unread = [s["version"] for s in skipped if s["reason"].startswith(_UNREADABLE)]
        # The versions this answer found damaged (or put right) count too: tagged again
        # when it read a file, never on the rows of the cache alone.
        after = (
            self._tag(ctx.index, head, selected, unread) if unread or self._reads != reads else etag
        )
        if after != etag:
            etag = headers["ETag"] = after
            if _etag_matches(request, etag):
                return Response(status_code=304, headers=headers)
        if by == "lastUpdated":
            low, high = format_timestamp(since), format_timestamp(until)
            # One spelling (ISO-8601 UTC, four-digit years): text order is time order.
            rows = sorted(
                (
                    r
                    for r in rows
                    if (low is None or str(r[_OBSERVED]) >= low)
                    and (high is None or str(r[_OBSERVED]) <= high)
                ),
                key=lambda r: str(r[_OBSERVED]),
            )
        body = {
            "columns": list(COLUMNS),
            "rows": rows,
            "count": len(rows),
            "skipped": skipped,
            "since": format_timestamp(since),
            "until": format_timestamp(until),
            "by": by,
        }
        return _json(body, headers=headers)


def routes() -> list[BaseRoute]:
    """The page's routes, for :func:`ingester.serve.app.create_app` (a fresh row cache each)."""
    static = _RevalidatedFiles(directory=STATIC_DIR)
    return [
        Route("/", _Page().handle, methods=["GET", "HEAD"]),
        Route(SERIES_PATH, _Series().handle, methods=["GET", "HEAD"]),
        Mount("/page", app=static, name="page"),
    ]
