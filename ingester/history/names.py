"""Version file names: ``YYYY-MM-DDTHH-mm-ss-XXXXXXXX.json``. Pure, no I/O.

A generated name is the UTC ingest time to the second, then 8 lowercase hex characters:
three for the milliseconds and five random. Names must sort in ingestion order, also for
thousands of versions in one second and across a clock stepped back, so a new name is
never allowed to sort at or below the previous newest: it is bumped just above it.
"""

from __future__ import annotations

import functools
import re
import secrets
from datetime import UTC, datetime, timedelta

from ..clock import iso_utc, utc_now

__all__ = [
    "STAMP_FORMAT",
    "VERSION_NAME_RE",
    "format_timestamp",
    "generate_version_filename",
    "is_version_name",
    "looks_like_version_name",
    "parse_timestamp_from_filename",
]

_STAMP_RE = r"(?P<date>\d{4}-\d{2}-\d{2})T(?P<h>\d{2})-(?P<m>\d{2})-(?P<s>\d{2})"
# Any "<timestamp>-<letters or digits>.json" counts, so files that older tools put in the
# history (e.g. 2026-01-05T00-00-00-test5.json) are versions too.
VERSION_NAME_RE = re.compile(
    rf"^{_STAMP_RE}-(?P<suffix>[A-Za-z0-9]+)\.json\Z",
    re.ASCII,  # \d is 0-9 only, and \Z (unlike $) refuses a name ending in a newline
)
# Named like a version, suffix aside: an operator probably meant it as one, a newline
# or a space in it or after its ".json" (invisible in a listing) included.
_VERSION_LIKE_RE = re.compile(rf"^{_STAMP_RE}-.*\.json\s*\Z", re.ASCII | re.DOTALL)
_OWN_SUFFIX_RE = re.compile(r"^[0-9a-f]{8}$")
STAMP_FORMAT = "%Y-%m-%dT%H-%M-%S"

MIRROR_STATE_NAME = "_mirror.json"
"""The mirror's state file in the history folder (present only where a mirror runs)."""
"""The timestamp part of version (and generated drop) names, in UTC."""
_MAX_SUFFIX = 0xFFFFFFFF


@functools.lru_cache(maxsize=4096)  # the newest names are parsed again on every save
def parse_timestamp_from_filename(filename: str) -> datetime | None:
    """The UTC time a version name carries, to the second, or ``None`` when it is not one.

    Read to the second only (the milliseconds in a generated suffix are for ordering),
    so that timestamps never decrease along the sorted names: retention relies on it.
    """
    match = VERSION_NAME_RE.match(filename)
    if match is None:
        return None
    year, month, day = match["date"].split("-")
    try:
        # The fields are all digits (the pattern says so); datetime checks their ranges
        # as strptime would, at a fraction of its cost (every new name is parsed).
        return datetime(
            int(year),
            int(month),
            int(day),
            int(match["h"]),
            int(match["m"]),
            int(match["s"]),
            tzinfo=UTC,
        )
    except ValueError:
        return None


def is_version_name(filename: str) -> bool:
    """True for any name that counts as a version."""
    return parse_timestamp_from_filename(filename) is not None


def looks_like_version_name(filename: str) -> bool:
    """True for a name with a version's timestamp and ``.json``, whatever its suffix."""
    return _VERSION_LIKE_RE.match(filename) is not None


def _compose(stamp: datetime, suffix: int) -> str:
    return f"{stamp.strftime(STAMP_FORMAT)}-{suffix:08x}.json"


def generate_version_filename(now: datetime | None = None, *, after: str | None = None) -> str:
    """A new version name for ingest time ``now`` (default: the clock), sorting above ``after``.

    ``after`` is the newest existing non-future version, if any. When the clock-based
    name would not sort above it (same millisecond, clock stepped back, or a legacy
    suffix that sorts high), the name is derived from ``after`` instead, so the order
    of names is always the order of ingestion.
    """
    now = (now or utc_now()).astimezone(UTC)
    millis = now.microsecond // 1000
    candidate = _compose(now, (millis << 20) | secrets.randbits(20))
    if after is None or candidate > after:
        return candidate
    match = VERSION_NAME_RE.match(after)
    after_stamp = parse_timestamp_from_filename(after)
    if match is None or after_stamp is None:
        raise ValueError(f"not a version name: {after!r}")
    base = after_stamp
    suffix = match["suffix"]
    if _OWN_SUFFIX_RE.match(suffix) and int(suffix, 16) < _MAX_SUFFIX:
        return _compose(base, int(suffix, 16) + 1)
    # A legacy suffix (letters sort above hex) or an exhausted second: the next second.
    return _compose(base + timedelta(seconds=1), 0)


def format_timestamp(stamp: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds and ``Z``, as the metadata spells times."""
    return None if stamp is None else iso_utc(stamp)
