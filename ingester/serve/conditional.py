"""Conditional GETs and caching headers: ETag comparison, ``Last-Modified``, tiers.

``Cache-Control`` follows the data's age as the original server did: ``max-age=60``
while it is under 5 minutes old, ``max-age=30`` under 10, ``no-cache`` beyond; the age is
the answer's own ``ageMinutes`` (whole minutes, rounded to the nearest).
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
from datetime import UTC, datetime

from starlette.datastructures import Headers
from starlette.requests import Request

__all__ = [
    "body_etag",
    "cache_control",
    "etag_matches",
    "http_date",
    "if_none_match",
    "not_modified_headers",
]


@functools.lru_cache(maxsize=256)
def http_date(stamp: datetime) -> str:
    """``stamp`` as an HTTP date (RFC 9110 5.6.7)."""
    return email.utils.format_datetime(stamp, usegmt=True)


def body_etag(body: bytes) -> str:
    """A strong ``ETag`` for ``body``: its SHA-256, 24 hex digits, quoted. The same bytes
    always get the same tag (across restarts and replicas), other bytes another."""
    return '"' + hashlib.sha256(body).hexdigest()[:24] + '"'


def cache_control(age_minutes: int | None) -> str:
    """The ``Cache-Control`` value for data ``age_minutes`` old (``None``: unknown age)."""
    if age_minutes is None or age_minutes >= 10:
        return "no-cache"
    return "max-age=60" if age_minutes < 5 else "max-age=30"


def etag_matches(header: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 13.1.2): ``W/`` is ignored on both sides."""
    mine = etag.removeprefix("W/")
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == mine:
            return True
    return False


def if_none_match(request: Request | Headers) -> str | None:
    """The ``If-None-Match`` of ``request`` (or of its headers) as one value, or ``None``
    when it sent none.

    A list field sent on several lines is one field, its lines joined by commas (RFC
    9110 5.3): a tag on any line counts, not only on the first. Every route that reads
    the header reads it here, so none judges by its first line alone.
    """
    headers = request.headers if isinstance(request, Request) else request
    lines = headers.getlist("if-none-match")
    return ", ".join(lines) if lines else None


def not_modified_headers(headers: Headers, etag: str, modified: datetime | None) -> bool:
    """Whether a request's ``headers`` say the client's copy of a file that changes only
    when it is modified (``modified``, its mtime) is current: answer 304.

    ``If-None-Match`` decides when present; otherwise ``If-Modified-Since`` at or after
    ``modified`` (to the second). ``If-Modified-Since`` on more than one line is no valid
    date, and is ignored (RFC 9110 13.1.3). Not for an answer that moves on by itself
    (the latest's age): a date cannot say that it did.
    """
    inm = if_none_match(headers)
    if inm is not None:
        return etag_matches(inm, etag)
    dates = headers.getlist("if-modified-since")
    ims = dates[0] if len(dates) == 1 else None
    if ims is not None and modified is not None:
        try:
            since = email.utils.parsedate_to_datetime(ims)
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return modified.replace(microsecond=0) <= since
    return False
