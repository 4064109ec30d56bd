"""A forecast in words: the percentages, times and verdicts people read.

The same words serve ``ingester forecast``'s table and ``ingester check``'s summary; the
numbers behind them are :mod:`ingester.usage.forecast`'s, and the JSON, the metrics and
the perfdata carry them exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal

from .forecast import LimitForecast
from .readings import CLOCK_AHEAD

__all__ = [
    "NOT_WITHIN_HORIZON",
    "RESET_PASSED",
    "dated_ahead",
    "format_when",
    "in_words",
    "percent_words",
    "reset_words",
    "seconds_words",
]

NOT_WITHIN_HORIZON = "100 % not within a year"
"""The verdict of a limit rising too slowly to reach 100 % within
:data:`~ingester.usage.forecast.HORIZON` (366 days), its reset time unknown."""

RESET_PASSED = " (the reset has passed since)"
"""Added to a reading, or its verdict, whose reset time has passed: it says nothing of now."""


def percent_words(value: float, bounds: Iterable[float] = (100.0,)) -> str:
    """A percentage used as shown to people: ``"42 %"`` when whole, else one decimal
    (``"42.5 %"``), except where rounding would carry it across one of ``bounds``.

    Those are the numbers the reading is judged against (100, where the limit is
    reached; a check's thresholds): 99.97 is shown as ``"99.97 %"``, not ``"100.0 %"``,
    which would say the limit is reached. Then the shortest text that reads back as the
    exact value is shown. The exact value is always in the JSON, metrics and perfdata.

    The decimal is rounded half up from the exact value, as the page's cards round it
    (JavaScript's ``toFixed``): 12.25 is ``"12.3 %"`` on both, not ``"12.2 %"`` (Python's
    rounding, half to even).
    """
    value = float(value)
    if value.is_integer():
        return f"{value:g} %"
    text = str(Decimal(value).quantize(_TENTH, rounding=ROUND_HALF_UP))
    if any((value >= bound) != (float(text) >= bound) for bound in bounds):
        text = repr(value)
    return text + " %"


_TENTH = Decimal("0.1")


def seconds_words(seconds: float) -> str:
    """A duration for a monitoring line: ``45 s``, ``12 min``, ``3.5 h``, ``2.1 days``
    (whole seconds and minutes, cut down; one decimal above)."""
    if seconds < 120:
        return f"{int(seconds)} s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def dated_ahead(updated: datetime, now: datetime) -> str | None:
    """Why the age of data observed at ``updated`` cannot be told at ``now``: dated ahead
    of this clock by more than :data:`~ingester.usage.readings.CLOCK_AHEAD` (a clock's
    drift); ``None`` when it can. Called fresh instead, such data would stay fresh for
    as long as it is ahead, however long its scraper has stopped."""
    ahead = (updated - now).total_seconds()
    if ahead <= CLOCK_AHEAD.total_seconds():
        return None
    return (
        f"newest data dated {seconds_words(ahead)} ahead of this clock: its age cannot be "
        "told (the scraper's clock or this one is wrong)"
    )


def _millis(stamp: datetime) -> int:
    """``stamp`` in whole milliseconds since the epoch, cut down, as the JSON carries it."""
    return (stamp - _EPOCH) // timedelta(milliseconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _duration_words(start: datetime, end: datetime) -> str:
    """From ``start`` to ``end`` in words, worked out as the page's cards work it out (from
    the times as the JSON carries them, to the millisecond; each step rounded half up, as
    JavaScript's ``Math.round`` and ``toFixed`` round), so both say the same:
    ``42 min``, ``1 h 12 min``, ``11 h``, ``3.3 days``."""
    millis = max(0, _millis(end) - _millis(start))
    minutes = (millis + 30_000) // 60_000
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 600:
        # Under ten hours the minutes matter: 1 h 12 min is not "1 h" to someone
        # deciding whether to wait for the reset.
        hours, rest = divmod(minutes, 60)
        return f"{hours} h {rest} min" if rest else f"{hours} h"
    hours = (minutes + 30) // 60
    if hours < 72:
        return f"{hours} h"
    tenths = (hours * 20 + 24) // 48  # hours / 24 to one decimal, half up
    return f"{tenths // 10}.{tenths % 10} days"


def format_when(stamp: datetime, zone: tzinfo, near: datetime) -> str:
    """``stamp`` in ``zone`` as ``Mon 08:59``, with the date (``Mon 07 Dec 2026 08:59``)
    when it is 6 days or more from ``near``, where a weekday alone would be ambiguous."""
    local = stamp.astimezone(zone)
    if abs(stamp - near) < timedelta(days=6):
        return local.strftime("%a %H:%M")
    return local.strftime("%a %d %b %Y %H:%M")


def reset_words(limit: LimitForecast, zone: tzinfo, near: datetime) -> str:
    """When ``limit`` resets, as :func:`format_when` says it (``Mon 08:59``), or, for words
    less precise than a minute (``2 hr``, ``3 days``), the span they allow, from its first
    minute to its last: ``Fri 10:30 to Fri 11:29``, so no time is shown to the minute that
    the console gave to the hour. Across a change of UTC offset each end names its zone
    (``Sun 01:30 EDT to Sun 01:30 EST``: a wall time a fall-back hour shows twice).
    ``ValueError`` when its reset time is unknown."""
    if limit.resets_at is None:
        raise ValueError(f"{limit.limit} has no reset time")
    at = format_when(limit.resets_at, zone, near)
    within = limit.resets_within
    if within is None or within <= _MINUTE:
        return at
    end = limit.resets_at + within - _MINUTE
    until = format_when(end, zone, near)
    first, last = limit.resets_at.astimezone(zone), end.astimezone(zone)
    if first.utcoffset() != last.utcoffset():
        # The wall times alone would hide the hour between them.
        at, until = f"{at} {first.strftime('%Z')}", f"{until} {last.strftime('%Z')}"
    return f"{at} to {until}"


_MINUTE = timedelta(minutes=1)


def in_words(limit: LimitForecast, zone: tzinfo, as_of: datetime) -> str:
    """The forecast of ``limit`` as a sentence, times in ``zone``.

    ``at this rate 100 % by Sat 14:00, 41 h before the reset (Mon 08:59)`` (to the
    earliest instant the reset's words allow), ``at this rate 100 % by Fri 10:45, about
    when it resets (Fri 10:30 at the earliest)`` (100 % within the span those words allow,
    an hour for ``2 hr``: which comes first is not known),
    ``resets before the limit``, ``not enough data``, ``at the limit since ...`` (``since
    at least ...`` when the first reading of the basis is at 100 % already),
    ``at this rate 100 % by ... (reset time unknown)``, ``100 % not within a year`` (a
    rising rate, the reset time unknown, 100 % beyond
    :data:`~ingester.usage.forecast.HORIZON`), ``100 % not within a year; whether before
    or after the reset (... at the earliest) is not known`` (the same, with a reset that
    may come more than a year ahead too) or ``not rising`` (a rate of 0 or less as the
    JSON carries it, :attr:`~ingester.usage.forecast.LimitForecast.rate_as_carried`, the
    reset time unknown); for a held
    limit (not in the newest snapshot) followed by ``; last read Fri 07:15, not in the
    newest snapshot``.
    """
    words = _verdict(limit, zone, as_of)
    if not limit.in_newest:
        words += (
            f"; last read {format_when(limit.observed_at, zone, as_of)}, not in the newest snapshot"
        )
    return words


def _verdict(limit: LimitForecast, zone: tzinfo, as_of: datetime) -> str:
    if limit.percentage >= 100 and limit.exhausts_at is not None:
        # Already at 100 % in the first reading the basis holds of its window: reached
        # then or before, and the versions before the basis keep no more than each
        # limit's last reading to tell when.
        at_least = " at least" if limit.exhausts_at <= limit.since else ""
        return f"at the limit since{at_least} {format_when(limit.exhausts_at, zone, as_of)}"
    if limit.rate_per_hour is None:
        return "not enough data"
    if limit.exhausts_at is None:
        if limit.resets_at is not None and limit.before_reset is None:
            # Rising too slowly to reach 100 % within a year, and the reset may come
            # later than that too: no projected time to set it against.
            resets = format_when(limit.resets_at, zone, as_of)
            return (
                f"{NOT_WITHIN_HORIZON}; whether before or after the reset ({resets} at the "
                "earliest) is not known"
            )
        if limit.resets_at is not None:
            return "resets before the limit"
        # A rise too slow to project (past HORIZON) is still a rise: "not rising" beside
        # its own positive rate would contradict the row it stands in. The rate as the
        # JSON carries it decides, as on the page: one too small to show there is none.
        rate = limit.rate_as_carried
        return "not rising" if rate is None or rate <= 0 else NOT_WITHIN_HORIZON
    by = f"at this rate 100 % by {format_when(limit.exhausts_at, zone, as_of)}"
    if limit.resets_at is None:
        return by + " (reset time unknown)"
    resets = format_when(limit.resets_at, zone, as_of)
    if limit.before_reset is None:
        # 100 % falls in the span the reset's words allow (an hour for "2 hr"): either
        # order may come true. Said from what the JSON carries, as the page says it.
        return f"{by}, about when it resets ({resets} at the earliest)"
    if limit.before_reset:
        ahead = _duration_words(limit.exhausts_at, limit.resets_at)
        return f"{by}, {ahead} before the reset ({resets})"
    return "resets before the limit"
