"""When a usage limit resets: ``resetsIn`` text read as an instant (pure: no I/O).

The console words a reset two ways, and the scraper copies the words:

* **relative**, counted from the snapshot's ``lastUpdated``: ``4 hr 12 min``, ``45 min``,
  ``2 hr``, ``3 days`` (any of weeks, days, hours, minutes and seconds, each at most
  once, optionally led by ``in`` or ``resets in``);
* **absolute**, a wall-clock time in the console's time zone: ``Mon 8:59 AM``,
  ``Dec 5, 8:59 AM``, ``Dec 5 at 8:59 AM``, ``5 Dec 20:59``, ``8:59 AM``,
  ``tomorrow at 8:59 AM``; 12-hour (``AM``/``PM``) or 24-hour clock.

Anything else (``unknown``, an empty string, a wording the console starts using later)
is *no reset time*: :func:`parse_resets_in` returns ``None`` and never raises.

How an absolute form becomes an instant::

    reference = lastUpdated in the console's zone, to the minute
    for each candidate date (the next 8 days for a weekday; this year, then the next
    ones, for a month and day; today then tomorrow for a time alone):
        instant = that date at that wall time in the zone
        if instant >= reference: that is the reset
    (a wall time that does not exist, in a spring-forward gap, is read with the offset
    before the change; one that happens twice, in a fall-back hour, is the first of
    the two that is not before the reference, precise only to the second of them)
    ``today`` and ``tomorrow`` name their date; ``today`` at a time before the
    reference is no reset time (the words cannot hold in that zone)

So ``Mon 8:59 AM`` seen on a Monday at 9:30 is next Monday (the console names the
*next* reset), ``Jan 2, 8:59 AM`` seen on December 30 is in the new year, and a date that
comes every four years (``Feb 29``) is the next one that exists.

Each answer says how precise the wording is (:attr:`ResetTime.within`): ``3 days`` is
anything from 3 to 4 days, ``2 hr`` 2 to 3 hours, minutes a minute (and a wall time a
fall-back hour shows twice, from the first of the two to the minute of the second); the
reset lies in ``[at, at + within)``. :attr:`ResetTime.at` is the earliest instant the words allow.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import shown

__all__ = [
    "MAX_RESET_AHEAD",
    "ResetTime",
    "load_zone",
    "machine_zone",
    "parse_resets_in",
]

MAX_RESET_AHEAD = timedelta(days=400)
"""A relative wording further ahead than this is not a reset time (a year and a margin:
limits reset daily, weekly or monthly; a larger number is a misreading)."""

_MAX_TEXT = 64  # longer text is no wording the console uses; do not spend time on it

_UNITS = {
    "w": 604_800,
    "wk": 604_800,
    "wks": 604_800,
    "week": 604_800,
    "weeks": 604_800,
    "d": 86_400,
    "day": 86_400,
    "days": 86_400,
    "h": 3_600,
    "hr": 3_600,
    "hrs": 3_600,
    "hour": 3_600,
    "hours": 3_600,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
}
_PREFIX = re.compile(r"^(?:resets?\s+)?(?:in\s+|on\s+|at\s+)?", re.ASCII)
_AMOUNT = re.compile(r"(\d{1,6})\s*([a-z]+)\s*(?:,\s*)?(?:and\s+)?", re.ASCII)
_TIME = r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?P<half>[ap])\.?\s*m\.?"
_TIME24 = r"(?P<hour24>\d{1,2}):(?P<minute24>\d{2})"
_CLOCK = rf"(?:{_TIME}|{_TIME24})"
_WORD = r"(?P<{}>[a-z]{{3,9}})\.?"
_WEEKDAY_FORM = re.compile(rf"{_WORD.format('weekday')},?\s+(?:at\s+)?{_CLOCK}$", re.ASCII)
_MONTH_DAY_FORM = re.compile(
    rf"{_WORD.format('month')}\s+(?P<day>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?:at\s+)?{_CLOCK}$",
    re.ASCII,
)
_DAY_MONTH_FORM = re.compile(
    rf"(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\s+{_WORD.format('month')},?\s+(?:at\s+)?{_CLOCK}$",
    re.ASCII,
)
_TIME_FORM = re.compile(rf"(?:(?P<which>today|tomorrow),?\s+(?:at\s+)?)?{_CLOCK}$", re.ASCII)

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_MINUTE = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class ResetTime:
    """A reset read from words: at ``at`` (UTC) at the earliest, before ``at + within``."""

    at: datetime
    within: timedelta


def _named(word: str, names: tuple[str, ...]) -> int | None:
    """The index of the name ``word`` abbreviates (at least 3 letters), or ``None``."""
    for i, name in enumerate(names):
        if name.startswith(word):
            return i
    return None


def _relative(text: str, observed_at: datetime) -> ResetTime | None:
    seconds = 0
    smallest = None
    seen: set[int] = set()
    pos = 0
    while pos < len(text):
        match = _AMOUNT.match(text, pos)
        if match is None:
            return None
        unit = _UNITS.get(match[2])
        if unit is None or unit in seen:
            return None
        seen.add(unit)
        seconds += int(match[1]) * unit
        smallest = unit if smallest is None else min(smallest, unit)
        pos = match.end()
    if smallest is None or seconds > MAX_RESET_AHEAD.total_seconds():
        return None
    return ResetTime(observed_at + timedelta(seconds=seconds), timedelta(seconds=smallest))


def _clock(match: re.Match[str]) -> time | None:
    if match["hour"] is not None:
        hour, minute = int(match["hour"]), int(match["minute"] or 0)
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if match["half"] == "p" else 0)
    else:
        hour, minute = int(match["hour24"]), int(match["minute24"])
        if hour > 23:
            return None
    if minute > 59:
        return None
    return time(hour, minute)


def _instants(day: date, at: time, zone: tzinfo) -> tuple[datetime, ...]:
    """The UTC instants wall time ``at`` on ``day`` names in ``zone``, earliest first: two
    in a fall-back hour, else one (in a spring-forward gap, read with the offset before
    the change)."""
    wall = datetime.combine(day, at, tzinfo=zone)
    first = wall.astimezone(UTC)
    second = wall.replace(fold=1).astimezone(UTC)
    # In a gap the two folds differ too, but the later offset's instant shows another
    # wall time: only a wall time that comes back from both is one that happens twice.
    if second != first and second.astimezone(zone).replace(tzinfo=None) == wall.replace(
        tzinfo=None
    ):
        return (min(first, second), max(first, second))
    return (first,)


def _first_from(days: list[date], at: time, zone: tzinfo, reference: datetime) -> ResetTime | None:
    """The first instant of ``days`` at wall time ``at`` in ``zone`` that is not before
    ``reference``; precise to the minute, or, when it is the first of the two a fall-back
    hour names, to the minute of the second (the words fit both)."""
    for day in days:
        instants = _instants(day, at, zone)
        for instant in instants:
            if instant >= reference:
                return ResetTime(instant, instants[-1] - instant + _MINUTE)
    return None


def _absolute(text: str, observed_at: datetime, zone: tzinfo) -> ResetTime | None:
    # The reference is the observation's minute: the console shows whole minutes, so a
    # reset named for the minute the snapshot was taken in is that one, not next week's.
    local = observed_at.astimezone(zone)
    reference = local.replace(second=0, microsecond=0).astimezone(UTC)
    today = local.date()
    match = _WEEKDAY_FORM.match(text)
    if match and (weekday := _named(match["weekday"], _WEEKDAYS)) is not None:
        at = _clock(match)
        days = [today + timedelta(days=k) for k in range(8)]
        chosen = [d for d in days if d.weekday() == weekday]
        return None if at is None else _first_from(chosen, at, zone, reference)
    match = _MONTH_DAY_FORM.match(text) or _DAY_MONTH_FORM.match(text)
    if match and (month := _named(match["month"], _MONTHS)) is not None:
        at = _clock(match)
        days = []
        for year in range(today.year, today.year + 9):  # Feb 29 comes within 8 years
            try:
                days.append(date(year, month + 1, int(match["day"])))
            except ValueError:  # Feb 30, Apr 31; Feb 29 of a common year
                continue
        return None if at is None else _first_from(days, at, zone, reference)
    match = _TIME_FORM.match(text)
    if match and (at := _clock(match)) is not None:
        if match["which"] is None:
            return _first_from([today, today + timedelta(days=1)], at, zone, reference)
        day = today + timedelta(days=1 if match["which"] == "tomorrow" else 0)
        # "today" at a time already past cannot be a reset still to come (the console's
        # zone is not the one given, most likely): no reset time rather than a wrong one.
        return _first_from([day], at, zone, reference)
    return None


def parse_resets_in(text: object, observed_at: datetime, zone: tzinfo) -> ResetTime | None:
    """``resetsIn`` as a :class:`ResetTime`, or ``None`` when it is not a known wording.

    ``observed_at`` is the snapshot's ``lastUpdated`` (timezone-aware); ``zone`` the
    console's time zone, for the absolute forms. Case, spacing (including the narrow
    no-break space browsers put before ``AM``) and a leading ``resets``/``in``/``on``/``at``
    do not matter. Never raises: anything it cannot read, of any type, gives ``None``.
    """
    if not isinstance(text, str) or len(text) > _MAX_TEXT:
        return None
    words = " ".join(text.lower().split())
    words = _PREFIX.sub("", words, count=1)
    if not words:
        return None
    try:
        if words[0].isdigit() and (found := _relative(words, observed_at)) is not None:
            return found
        return _absolute(words, observed_at, zone)
    except (OverflowError, ValueError):  # an instant beyond the calendar: no reset time
        return None


def load_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (``Europe/Berlin``, ``UTC``); ``ValueError`` naming it."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{shown(name)} is not a time zone name")
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"{shown(name)} is not a known IANA time zone "
            "(e.g. Europe/Berlin, America/New_York, UTC)"
        ) from None


def _zone_name_from_link(path: str) -> str | None:
    try:
        target = os.path.realpath(path)
    except OSError:
        return None
    marker = "/zoneinfo/"
    if marker not in target:
        return None
    return target.split(marker, 1)[1].removeprefix("posix/").removeprefix("right/")


log = logging.getLogger("ingester.forecast")

_UNREADABLE_TZ_SAID: set[str] = set()  # each $TZ said once per process


def machine_zone() -> tuple[tzinfo, str]:
    """This machine's time zone and its name: ``$TZ``, else ``/etc/localtime``, else UTC.

    A name is needed, not just today's offset: a reset next week may fall on the other
    side of a daylight-saving change. A ``$TZ`` that names no zone this can load (a POSIX
    rule such as ``CET-1CEST,M3.5.0,M10.5.0/3``, or a misspelt name) is UTC, as the C
    library takes an unknown name; since the reset times read in it may then be hours
    off, that is said once, as a WARNING naming ``--console-timezone``.
    """
    candidates = []
    tz = os.environ.get("TZ", "").removeprefix(":")
    if tz:
        candidates.append(_zone_name_from_link(tz) if tz.startswith("/") else tz)
    else:
        candidates.append(_zone_name_from_link("/etc/localtime"))
        try:
            with open("/etc/timezone", encoding="utf-8") as handle:
                candidates.append(handle.read().strip())
        except (OSError, UnicodeDecodeError):
            pass
    for name in candidates:
        if not name:
            continue
        try:
            return load_zone(name), name
        except ValueError:
            continue
    if tz and tz not in _UNREADABLE_TZ_SAID:
        _UNREADABLE_TZ_SAID.add(tz)
        log.warning(
            "TZ=%r names no time zone this can read (an IANA name such as Europe/Berlin, or "
            "a zoneinfo file): reset times such as 'Mon 8:59 AM' are read in UTC; set "
            "--console-timezone (INGESTER_CONSOLE_TIMEZONE) to the console's zone",
            tz,
        )
    return UTC, "UTC"
