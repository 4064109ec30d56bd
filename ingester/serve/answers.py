"""The API's paths and limits, and the shapes of its JSON answers.

Every JSON answer is rendered here: compact, UTF-8, ``application/json``, and valid JSON
whatever a version holds (:func:`~ingester.json_text.json_bytes`). Errors of the
read side are ``{"error", "message", ...}``; answers to the POST endpoints are
``{"success", "message", "timestamp", ...}``, as the original sync server's clients
expect. An answer whose body carries the time it was made (``timestamp``) has its
``Date`` header from the same clock reading (:func:`http_date`), so the two never
disagree: uvicorn's own ``Date`` is renewed once a second by its main loop, taken when
the request came (a trigger's run may last minutes), and no longer renewed once the
server is stopping.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from starlette.responses import Response

from ..clock import parse_iso_time, utc_now
from ..history.names import format_timestamp
from ..json_text import json_bytes
from ..usage.readings import parse_observed_at
from .routes import API_PATH, HEALTH_PATH, VERSIONS_PATH

__all__ = [
    "API_PATH",
    "HEALTH_PATH",
    "JSON",
    "SERVED_VERSIONS",
    "STALE_AFTER_MINUTES",
    "TIMESTAMP_EXAMPLE",
    "UNHEALTHY_AFTER_MINUTES",
    "VERSIONS_PATH",
    "age_minutes",
    "announces_body",
    "ending_connection",
    "error_answer",
    "http_date",
    "iso",
    "json_answer",
    "parse_instant",
    "parse_last_updated",
    "post_answer",
    "post_body",
]

# Ages are judged in whole minutes, rounded as the original server rounded them, so the
# age an answer shows and the verdict it gets always agree.
STALE_AFTER_MINUTES = 10  # isStale beyond it, and "degraded" in health
UNHEALTHY_AFTER_MINUTES = 30
TIMESTAMP_EXAMPLE = "2026-11-28T10:30:00Z"
JSON = "application/json"
SERVED_VERSIONS = "HTTP/1.0 and 1.1"
"""The HTTP versions answered, in words (uvicorn's h11 protocol speaks both)."""


def iso(stamp: datetime) -> str:
    """``stamp`` as ISO-8601 UTC with milliseconds and ``Z``."""
    return format_timestamp(stamp) or ""


def age_minutes(seconds: float) -> int:
    """``seconds`` in whole minutes, rounded to the nearest, halves up.

    The original server computed ``Math.round(ms / 1000 / 60)``: JavaScript rounds a half
    towards +infinity (``Math.round(-0.5)`` is 0), which ``floor(x + 0.5)`` reproduces;
    Python's ``round`` would round halves to even.
    """
    return math.floor(seconds / 60 + 0.5)


def json_answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``body`` as compact JSON."""
    return Response(
        json_bytes(body),
        status_code=status,
        media_type=JSON,
        headers=headers,
    )


def announces_body(headers: Mapping[str, str]) -> bool:
    """Whether a request's head says a body follows (a ``Content-Length`` other than 0,
    or a ``Transfer-Encoding``)."""
    length = headers.get("content-length")
    return "transfer-encoding" in headers or (length is not None and length.strip() != "0")


def ending_connection(answer: Response) -> Response:
    """``answer`` marked ``Connection: close``, for a refusal that leaves the request's
    body (or the rest of it) unread. Kept open, the server would have to wait for that
    body, or read and discard it however large it is said to be, for a client it refused."""
    answer.headers["Connection"] = "close"
    return answer


def error_answer(status: int, error: str, message: str, **extra: Any) -> Response:
    """A read-side error: ``{"error", "message", **extra}``."""
    return json_answer({"error": error, "message": message, **extra}, status)


def http_date(stamp: datetime) -> str:
    """``stamp`` (aware) as an HTTP ``Date`` value: IMF-fixdate, in whole seconds (the
    part of a second cut off, so a body's ``10:30:00.900Z`` is ``10:30:00 GMT``)."""
    return email.utils.formatdate(stamp.timestamp(), usegmt=True)


def post_body(
    success: bool, message: str, *, at: datetime | None = None, **extra: Any
) -> dict[str, Any]:
    """A POST endpoint's answer body: ``{"success", "message", "timestamp", **extra}``;
    ``timestamp`` is ``at`` (default: now), the reading its ``Date`` should carry too."""
    stamp = utc_now() if at is None else at
    return {"success": success, "message": message, "timestamp": iso(stamp), **extra}


def post_answer(status: int, success: bool, message: str, **extra: Any) -> Response:
    """:func:`post_body` as a response with ``status``, dated as its ``timestamp``."""
    now = utc_now()
    body = post_body(success, message, at=now, **extra)
    return json_answer(body, status, headers={"Date": http_date(now)})


parse_last_updated = parse_observed_at
"""A payload's ``lastUpdated`` as an aware UTC time, or ``None`` (read as the forecast
reads it)."""


def parse_instant(text: str) -> datetime | None:
    """An ISO-8601 time in UTC (UTC when it has no offset), or ``None`` when it is not one:
    read as every time a user types is (:func:`~ingester.clock.parse_iso_time`), so an
    offset no clock shows (``+05:99``) is refused here as in ``/series`` and ``export``."""
    try:
        return parse_iso_time(text)
    except ValueError:
        return None
