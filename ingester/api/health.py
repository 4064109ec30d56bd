"""``GET /api/health``: healthy, degraded or unhealthy (503), with the numbers behind it."""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..history_index import VersionNotFound
from .answers import STALE_AFTER_S, UNHEALTHY_AFTER_S, iso, json_answer
from .context import ServeContext
from .reads import read_payload

__all__ = ["get_health", "health_facts"]


def health_facts(ctx: ServeContext) -> tuple[str, int, dict[str, Any]]:
    """``(status, http status, body)`` for ``/api/health``."""
    now = ctx.config.clock()
    body: dict[str, Any] = {"timestamp": iso(now)}
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
    body["latestIngestedAt"] = iso(entry.ingested_at)
    try:
        _payload_obj, updated = read_payload(ctx, entry.name)
    except (OSError, VersionNotFound) as exc:
        body.update(status="unhealthy", reason=f"latest version unreadable: {exc}")
        return "unhealthy", 503, body
    if updated is None:
        body.update(status="unhealthy", reason="latest version has no valid lastUpdated")
        return "unhealthy", 503, body
    age = (now - updated).total_seconds()
    body["lastUpdated"] = iso(updated)
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
    return json_answer(body, code, headers={"Cache-Control": "no-store"})
