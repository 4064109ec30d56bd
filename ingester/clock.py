"""Time, in one place: the UTC wall clock, the one ISO-8601 spelling, clock jumps, and
the one backoff (waits that double while failures go on).

Retention is measured from the wall clock, which can be stepped (a bad NTP answer, a VM
restored from a snapshot). :class:`ClockJump` notices a wall clock that gained more than
an hour on the boot clock, so that automatic deletions can be held back while it stands.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = [
    "AHEAD_TOLERATED",
    "CLOCK_JUMP",
    "JUST_NOW",
    "Backoff",
    "ClockJump",
    "boot_clock",
    "iso_utc",
    "offset_out_of_range",
    "parse_iso_time",
    "utc_now",
]

CLOCK_JUMP = 3600.0
"""Seconds the wall clock may gain on the boot clock before it counts as a jump."""


AHEAD_TOLERATED = timedelta(minutes=2)
"""How far a time may lie past this clock and still read "just now" wherever an age is
printed (the page's own rule): a scraper's clock may run a little fast, and a browser
knows the server's time only to the second."""

JUST_NOW = timedelta(seconds=5)
"""An age below this reads "just now" (the page's own rule)."""


def utc_now() -> datetime:
    """The wall clock, in UTC (timezone-aware)."""
    return datetime.now(UTC)


def iso_utc(stamp: datetime, timespec: str = "milliseconds") -> str:
    """``2026-11-27T14:05:00.000Z``: ISO-8601 in UTC with a ``Z``, as every file spells times.

    ``timespec`` as for :meth:`datetime.isoformat`; a naive ``stamp`` is local time.
    """
    stamp = stamp.astimezone(UTC).replace(tzinfo=None)
    # isoformat, not strftime: strftime writes year 1 as "1", not "0001".
    return stamp.isoformat(timespec=timespec) + "Z"


_OUT_OF_RANGE = re.compile(
    r"year \d+ is out of range|day is out of range for month"
    r"|(month|hour|minute|second) must be in \d+\.\.\d+"
)


_WRITTEN_OFFSET = re.compile(r"[+-]\d{2}(?::?(\d{2}))?(?::?(\d{2})(?:\.\d+)?)?\Z")


def offset_out_of_range(text: str) -> bool:
    """Whether the UTC offset ``text`` ends with (``+05:99``, ``-0560``) has minutes or
    seconds above 59. ``datetime.fromisoformat`` reads ``+05:99`` as 5 h 99 min, an
    offset no clock shows. For a text known to end with an offset (a date alone ends in
    ``-DD``, which would be read as one)."""
    offset = _WRITTEN_OFFSET.search(text)
    return offset is not None and any(int(part or 0) > 59 for part in offset.groups())


def parse_iso_time(text: str) -> datetime:
    """An ISO-8601 time a user typed (an option, a query parameter); without an offset, UTC.

    Surrounding whitespace is ignored. Raises ``ValueError`` with a message fit for the
    user, also for a text holding anything after the time (a NUL and more included).
    """
    value = text.strip()
    if not (value.isascii() and value.isprintable()):
        # datetime's parser reads its text only up to a NUL, so "…Z\x00junk" would pass
        # as the time before it; no ISO-8601 time holds a control character or one
        # beyond ASCII, so such a text is refused whole, as any other malformed one.
        raise ValueError(f"{text!r} is not an ISO-8601 time (e.g. 2026-11-28T10:30:00Z)")
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError as exc:
        # Well formed, but a field out of its range (February 30, hour 25): say that,
        # in datetime's own words, rather than blame the format.
        if _OUT_OF_RANGE.fullmatch(str(exc)):
            raise ValueError(f"{text!r} is not a time that exists ({exc})") from None
        raise ValueError(f"{text!r} is not an ISO-8601 time (e.g. 2026-11-28T10:30:00Z)") from None
    if stamp.tzinfo is not None and offset_out_of_range(value):
        raise ValueError(
            f"{text!r} is not a time that exists (an offset's minutes run from 00 to 59)"
        )
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    try:
        return stamp.astimezone(UTC)
    except OverflowError:
        # Valid with its offset but outside the range of dates once in UTC.
        raise ValueError(f"{text!r} is not a time that exists in UTC") from None


def boot_clock() -> float:
    """Seconds since boot, suspend included (a suspend is not a clock jump)."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


class ClockJump:
    """Whether the wall clock jumped ahead of the boot clock since the first look.

    ``wall`` and ``boot`` return seconds. The reference is the lowest offset (wall minus
    boot) seen so far: a step back only makes retention keep more, so it becomes the
    new reference; a step forward of more than ``limit`` seconds stands until the clock
    is set back (or the process restarts).
    """

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        boot: Callable[[], float] = boot_clock,
        limit: float = CLOCK_JUMP,
    ) -> None:
        self.wall = wall
        self.boot = boot
        self.limit = limit
        self._offset: float | None = None

    def gained(self) -> float:
        """Seconds gained beyond the limit's reference: > ``limit`` means a jump stands."""
        offset = self.wall() - self.boot()
        if self._offset is None or offset < self._offset:
            self._offset = offset
        return offset - self._offset

    def jumped(self) -> bool:
        """Whether a jump of more than ``limit`` seconds stands now."""
        return self.gained() > self.limit


@dataclass
class Backoff:
    """Waits that double from ``start`` up to ``limit`` seconds while failures go on."""

    limit: float
    start: float = 0.5
    delay: float = 0.0  # the current wait, seconds; 0 after a success
    until: float = 0.0  # monotonic time before which no retry is due

    def failed(self) -> float:
        """One more failure: the wait before the next try (seconds)."""
        self.delay = min(self.limit, max(self.start, self.delay * 2))
        self.until = time.monotonic() + self.delay
        return self.delay

    def succeeded(self) -> None:
        """A success: the next failure waits ``start`` again."""
        self.delay = 0.0

    def due(self, now: float) -> bool:
        """Whether a retry is due at monotonic time ``now``."""
        return now >= self.until
