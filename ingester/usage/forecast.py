"""Burn rate and a forecast for every usage limit, from a sequence of snapshots (pure: no I/O).

The question a user asks: at this rate, when do I reach 100 %, and is that before the
limit resets? In pseudo-code::

    as_of  = the newest lastUpdated among the snapshots
    for each limit read in the BASIS before as_of:   # any object with resetsIn and a
                                                     # percentageUsed of 0-100, by its
                                                     # dotted path
        if the newest snapshot lacks it:             # a partial scrape: HELD, see below
            skip it once its last reading's reset time has come by as_of
        points  = its readings observed in the BASIS before as_of, oldest first
        windows = points split where the limit reset  # split_windows()
        window  = the last of them: usage since the last reset
        rate    = median of the pairwise slopes of window, in %/hour   # burn_rate()
                  (none from fewer than 2 points or less than 10 minutes of data)
        exhausts_at  = newest time + (100 - newest %) / rate, when rate > 0
        before_reset = exhausts_at < resets_at

**A reset**, between two readings in time order, is one of:

* the reset time of the previous reading has passed (its ``resetsAt`` plus the precision
  of its wording: ``2 hr`` may mean up to 2 h 59 min), or
* a drop in ``percentageUsed`` that the following reading confirms (it is below the old
  level too), or that is the newest reading (nothing can confirm it yet).

Within a window usage only rises, so a lone dip that the next reading does not confirm (a
scraper that read 0 for a moment) and a lone spike that the next reading falls back from
(to no less than the reading before the spike) are left out of the window as outliers.

**The rate** is the Theil-Sen estimator: the median of the slopes between every pair of
readings (at most :data:`MAX_FIT_POINTS`, spread evenly over the window when it holds more).
With five readings or more, one reading however wrong cannot move it off the slope the
others agree on; least squares would follow the outlier. The basis is the window's last
:data:`BASIS` (24 hours: a weekly limit's day-and-night rhythm averages out, and a
session shorter than that counts whole).

The newest reading anchors the projection: it is what the console shows now.

**A limit the newest snapshot lacks** (a partial scrape: ``isPartial``, an
``extractionErrors`` entry, or a window simply missing) is *held*: it keeps its last
reading, marked with the time that reading was observed and why it is missing, so a
scraper that fails to read a section now and then does not make the limit, its metrics
and the alerts on them vanish and come back. Every limit read in any snapshot given
(however old: the caller passes the last readings from before the basis as
``earlier``) is held until it is read again or its window is known to have ended: its
reset time (the earliest instant its wording allows) has come by ``as_of``. A limit whose
reset time is unknown is held as long as the history holds a reading of it.

**After its reset** a held limit's percentage says nothing (the window started again at
an unknown level), so it leaves ``limits`` and is listed in ``lapsed`` instead, with the
time it was last read: the forecast, the API and the metrics no longer show a
percentage for it, and ``check`` still names it as missing.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from ..history.names import format_timestamp
from .resets import ResetTime, parse_resets_in

__all__ = [
    "BASIS",
    "CLOCK_AHEAD",
    "HORIZON",
    "LIMIT_ORDER",
    "MAX_FIT_POINTS",
    "MIN_SPAN",
    "NOTHING_TO_GO_BY",
    "Forecast",
    "LimitForecast",
    "Observation",
    "Point",
    "Reading",
    "burn_rate",
    "forecast",
    "last_readings",
    "newer_readings",
    "observe",
    "parse_observed_at",
    "ran_ahead",
    "split_windows",
    "usage_windows",
]

BASIS = timedelta(hours=24)
"""How far back from the newest snapshot the rate looks (within the current window)."""
MIN_SPAN = timedelta(minutes=10)
"""No rate from readings spanning less than this: two readings a minute apart say little."""
HORIZON = timedelta(days=366)
"""A projection further ahead than this is no projection (usage as good as flat)."""
CLOCK_AHEAD = timedelta(hours=1)
"""A snapshot observed more than this after it was stored has a wrong clock: not used."""
NOTHING_TO_GO_BY = (
    "no version has a lastUpdated that is readable and at most "
    f"{int(CLOCK_AHEAD.total_seconds() // 3600)} h ahead of when it was stored"
)
"""Why there is no forecast although versions exist (``Forecast.as_of`` is ``None``),
in the words every surface gives."""
MAX_FIT_POINTS = 120
"""At most this many readings enter the pairwise slopes (7,140 pairs): the cost stays flat
however often the scraper runs."""

_MAX_DEPTH = 8  # how deep usage windows are looked for in a payload
_MAX_ERRORS = 16  # extractionErrors entries kept per snapshot (enough to name a section)
_MAX_ERROR_TEXT = 160  # characters kept of each message


@dataclass(frozen=True, slots=True)
class Reading:
    """One limit in one snapshot: its dotted path, percentage used, words and reset time."""

    limit: str
    percentage: float
    resets_in: str | None
    reset: ResetTime | None


@dataclass(frozen=True, slots=True)
class Observation:
    """One snapshot: when it was observed (``lastUpdated``, UTC), its readings, when it
    was stored (the version's ingest time; ``None`` when not known), whether it says it is
    partial (``isPartial``) and its ``extractionErrors`` as ``(key, message)`` pairs."""

    observed_at: datetime
    readings: tuple[Reading, ...]
    stored_at: datetime | None = None
    partial: bool = False
    errors: tuple[tuple[str, str], ...] = ()

    def ran_ahead(self, clock_ahead: timedelta = CLOCK_AHEAD) -> bool:
        """Whether it is left out: see :func:`ran_ahead`."""
        return ran_ahead(self.observed_at, self.stored_at, clock_ahead)


@dataclass(frozen=True, slots=True)
class Point:
    """One reading on the time axis: POSIX seconds, percentage, reset time."""

    t: float
    pct: float
    reset: ResetTime | None = None


@dataclass(frozen=True)
class LimitForecast:
    """The forecast of one limit (see the module docstring for each rule).

    ``observed_at`` is the ``lastUpdated`` of the snapshot its reading comes from: the
    newest snapshot's, unless that one lacks the limit (``in_newest`` false: the reading is
    held, and ``missing_reason`` says why it is missing, in the newest snapshot's words
    where it has any).
    """

    limit: str
    percentage: float
    resets_in: str | None
    resets_at: datetime | None
    rate_per_hour: float | None
    exhausts_at: datetime | None
    before_reset: bool | None
    points: int
    since: datetime
    observed_at: datetime
    in_newest: bool = True
    missing_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The limit as the API spells it (times ISO-8601 UTC; the rate to 4 decimals)."""
        pct = self.percentage
        return {
            "limit": self.limit,
            "percentageUsed": int(pct) if float(pct).is_integer() else pct,
            "resetsIn": self.resets_in,
            "resetsAt": format_timestamp(self.resets_at),
            "ratePerHour": None if self.rate_per_hour is None else round(self.rate_per_hour, 4),
            "exhaustsAt": format_timestamp(self.exhausts_at),
            "beforeReset": self.before_reset,
            "basis": {"points": self.points, "since": format_timestamp(self.since)},
            "observedAt": format_timestamp(self.observed_at),
            "inNewest": self.in_newest,
            "missingReason": self.missing_reason,
        }


@dataclass(frozen=True)
class Forecast:
    """Every limit's forecast as of the newest snapshot (``as_of`` ``None``: no snapshot).

    ``lapsed``: the limits the newest snapshot lacks whose window has ended since their
    last reading, as ``(limit, observed_at of that reading)``, oldest reading first; they
    have no forecast (the module docstring's rule) but are still missing.
    """

    as_of: datetime | None
    limits: tuple[LimitForecast, ...]
    lapsed: tuple[tuple[str, datetime], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """``{"asOf", "limits": [...]}``."""
        return {
            "asOf": format_timestamp(self.as_of),
            "limits": [limit.to_json() for limit in self.limits],
        }


# -- snapshots to readings ---------------------------------------------------------------


def _percentage(window: Mapping[str, Any]) -> float:
    # + 0.0 turns a -0.0 into 0.0, which would otherwise be shown as "-0 %".
    return float(window["percentageUsed"]) + 0.0


def ran_ahead(
    observed_at: datetime, stored_at: datetime | None, clock_ahead: timedelta = CLOCK_AHEAD
) -> bool:
    """Whether a snapshot observed at ``observed_at`` claims a time more than
    ``clock_ahead`` after it was stored (``stored_at``; ``None``: not known, never): its
    scraper's clock ran ahead, so every reader leaves it out."""
    return stored_at is not None and observed_at > stored_at + clock_ahead


def parse_observed_at(value: object) -> datetime | None:
    """``lastUpdated`` as a UTC datetime, or ``None`` when it is not an ISO-8601 time."""
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        return stamp.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _is_window(value: Mapping[str, Any]) -> bool:
    # The payload model's rule for its named windows (a non-empty resetsIn, a number
    # from 0 to 100), applied to the ones it does not name: a reading outside it is no
    # usage, and would give rates and projections no limit can have (or an infinite
    # rate, which JSON cannot carry).
    pct = value.get("percentageUsed")
    text = value.get("resetsIn")
    return (
        isinstance(text, str)
        and text != ""
        and isinstance(pct, int | float)
        and not isinstance(pct, bool)
        and 0 <= pct <= 100
    )


def path_part(key: str) -> str:
    """``key`` as one part of a dotted path: as it is, or as a JSON string when it holds
    a dot or starts with a double quote (``"a.b"``), so that a key ``a.b`` and a key
    ``b`` inside ``a`` never share a name (nor ``"a`` with ``b"`` inside it)."""
    if "." in key or key.startswith('"'):
        return json.dumps(key, ensure_ascii=False)
    return key


def path_parts(path: str) -> list[str]:
    """The keys a dotted path names, :func:`path_part` undone: ``'x."y.z"'`` gives
    ``["x", "y.z"]``. A part that starts with a quote but is no JSON string is taken as
    it is written."""
    parts: list[str] = []
    i = 0
    while True:
        if path.startswith('"', i):
            try:
                key, end = _JSON_STRING.raw_decode(path, i)
            except ValueError:
                key, end = None, i
            if isinstance(key, str) and (end == len(path) or path[end] == "."):
                parts.append(key)
                if end == len(path):
                    return parts
                i = end + 1
                continue
        dot = path.find(".", i)
        if dot < 0:
            parts.append(path[i:])
            return parts
        parts.append(path[i:dot])
        i = dot + 1


_JSON_STRING = json.JSONDecoder()


LIMIT_ORDER = ("currentSession", "weeklyLimits.allModels", "weeklyLimits.sonnetOnly")
"""The limits the payload model names, in the order the console shows them: every list
of limits puts these first, in this order, then any other window by its path."""


def _limit_order(limit: LimitForecast) -> tuple[int, str]:
    name = limit.limit
    if name in LIMIT_ORDER:
        return LIMIT_ORDER.index(name), ""
    return len(LIMIT_ORDER), name


def usage_windows(payload: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Every usage window in ``payload``, by dotted path, in the payload's order.

    A window is any object holding a non-empty string ``resetsIn`` and a number from 0 to
    100 ``percentageUsed`` (the payload model's rule for the windows it names), at any
    depth up to 8: ``currentSession``, ``weeklyLimits.allModels``,
    ``weeklyLimits.sonnetOnly``, and whatever the console adds later, a window inside
    another included. A key holding a
    dot is quoted in the path (:func:`path_part`).
    """
    found: list[tuple[str, Mapping[str, Any]]] = []

    def walk(obj: Mapping[str, Any], prefix: str, depth: int) -> None:
        for key, value in obj.items():
            if not isinstance(value, dict) or not isinstance(key, str):
                continue
            path = f"{prefix}{path_part(key)}"
            if _is_window(value):
                found.append((path, value))
            # A window may hold others (extra fields beside a group's own): each counts.
            if depth < _MAX_DEPTH:
                walk(value, path + ".", depth + 1)

    walk(payload, "", 1)
    return found


def observe(
    payload: object, zone: tzinfo, stored_at: datetime | None = None
) -> tuple[Observation | None, list[tuple[str, str]]]:
    """A payload (parsed JSON) as an :class:`Observation`, and its unreadable ``resetsIn``.

    Returns ``(None, [])`` when the payload is not an object with a valid ``lastUpdated``.
    The list names each window whose ``resetsIn`` gave no reset time: ``(path, text)``.
    """
    if not isinstance(payload, dict):
        return None, []
    observed_at = parse_observed_at(payload.get("lastUpdated"))
    if observed_at is None:
        return None, []
    readings = []
    unreadable = []
    for path, window in usage_windows(payload):
        text = window.get("resetsIn")
        reset = parse_resets_in(text, observed_at, zone)
        if reset is None:
            unreadable.append((path, str(text)[:80]))
        words = text if isinstance(text, str) else None
        readings.append(Reading(path, _percentage(window), words, reset))
    found = payload.get("extractionErrors")
    errors = (
        tuple(
            (str(key)[:_MAX_ERROR_TEXT], str(message)[:_MAX_ERROR_TEXT])
            for key, message in list(found.items())[:_MAX_ERRORS]
        )
        if isinstance(found, dict)
        else ()
    )
    partial = payload.get("isPartial") is True
    return Observation(observed_at, tuple(readings), stored_at, partial, errors), unreadable


def newer_readings(
    payload: object,
    zone: tzinfo,
    held: Mapping[str, datetime],
    stored_at: datetime | None = None,
    *,
    clock_ahead: timedelta = CLOCK_AHEAD,
) -> list[tuple[Reading, datetime]]:
    """The readings of ``payload`` observed after ``held[limit]`` (or of a limit not in
    ``held``), each with the payload's ``lastUpdated``.

    What :func:`observe` then :func:`last_readings` give for one snapshot, but ``resetsIn``
    is parsed only for the readings returned: reading a long history newest first, most
    snapshots hold nothing newer, and parsing the reset times is most of the cost. Empty
    when the payload is no snapshot or its clock ran ahead of ``stored_at``.
    """
    if not isinstance(payload, dict):
        return []
    observed_at = parse_observed_at(payload.get("lastUpdated"))
    if observed_at is None or ran_ahead(observed_at, stored_at, clock_ahead):
        return []
    found = []
    for path, window in usage_windows(payload):
        before = held.get(path)
        if before is None or before < observed_at:
            text = window.get("resetsIn")
            reset = parse_resets_in(text, observed_at, zone)
            words = text if isinstance(text, str) else None
            found.append((Reading(path, _percentage(window), words, reset), observed_at))
    return found


# -- windows and the rate ----------------------------------------------------------------


def _reset_passed(before: Point, after: Point) -> bool:
    reset = before.reset
    return reset is not None and after.t >= (reset.at + reset.within).timestamp()


def split_windows(points: Sequence[Point]) -> list[list[Point]]:
    """``points`` (oldest first) split at each reset, outliers left out; oldest window first.

    The rules are the module docstring's. Every point is in exactly one window or is an
    outlier; the newest point is never an outlier.
    """
    if not points:
        return []
    windows: list[list[Point]] = []
    current = [points[0]]
    for i in range(1, len(points)):
        point, level = points[i], current[-1]
        if _reset_passed(level, point):
            windows.append(current)
            current = [point]
        elif point.pct < level.pct:
            if len(current) >= 2 and point.pct >= current[-2].pct:
                current[-1] = point  # the level was a spike: this point carries on from before
                continue
            following = points[i + 1] if i + 1 < len(points) else None
            if following is None or following.pct < level.pct:
                windows.append(current)
                current = [point]
            # else: a dip the next reading does not confirm; left out
        else:
            current.append(point)
    windows.append(current)
    return windows


def _spread(points: Sequence[Point], most: int) -> Sequence[Point]:
    if len(points) <= most:
        return points
    step = (len(points) - 1) / (most - 1)
    return [points[round(k * step)] for k in range(most)]


def burn_rate(points: Sequence[Point]) -> float | None:
    """Percent per hour over ``points`` (one window, oldest first): the Theil-Sen slope.

    ``None`` with fewer than 2 points or when they span less than :data:`MIN_SPAN`.
    """
    if len(points) < 2 or points[-1].t - points[0].t < MIN_SPAN.total_seconds():
        return None
    sample = _spread(points, MAX_FIT_POINTS)
    slopes = [
        (b.pct - a.pct) / (b.t - a.t)
        for i, a in enumerate(sample)
        for b in sample[i + 1 :]
        if b.t > a.t
    ]
    return statistics.median(slopes) * 3600 if slopes else None


# -- the forecast ------------------------------------------------------------------------


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _limit_forecast(
    reading: Reading,
    points: Sequence[Point],
    observed_at: datetime,
    missing_reason: str | None = None,
) -> LimitForecast:
    window = split_windows(points)[-1]
    newest = window[-1]
    resets_at = reading.reset.at if reading.reset is not None else None
    rate = burn_rate(window)
    exhausts_at: datetime | None = None
    before: bool | None = None
    if newest.pct >= 100:
        exhausts_at = _at(next(p.t for p in window if p.pct >= 100))
        before = True  # reached already, so before the next reset
    elif rate is not None:
        hours = (100 - newest.pct) / rate if rate > 0 else math.inf
        if hours <= HORIZON / timedelta(hours=1):
            exhausts_at = _at(newest.t + hours * 3600)
            before = None if resets_at is None else exhausts_at < resets_at
        else:
            before = None if resets_at is None else False
    return LimitForecast(
        limit=reading.limit,
        percentage=reading.percentage,
        resets_in=reading.resets_in,
        resets_at=resets_at,
        rate_per_hour=rate,
        exhausts_at=exhausts_at,
        before_reset=before,
        points=len(window),
        since=_at(window[0].t),
        observed_at=observed_at,
        in_newest=missing_reason is None,
        missing_reason=missing_reason,
    )


def _missing_reason(limit: str, newest: Observation) -> str:
    """Why ``newest`` lacks ``limit``: its extractionErrors entry for it, if any.

    An entry counts when its key is the limit's path, a section holding it
    (``weeklyLimits``) or one of its parts (``sonnetOnly``): the scraper names what it
    failed to read in its own words, and those are the best reason there is.
    """
    parts = path_parts(limit)
    sections = {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
    for key, message in newest.errors:
        if key == limit or key in sections or key in parts:
            return f"extractionErrors.{key}: {message}"
    if newest.partial:
        return "the newest snapshot is partial (isPartial) and lacks it"
    return "the newest snapshot lacks it"


LastReadings = dict[str, tuple[Reading, datetime]]
"""Each limit's newest reading and when it was observed, by limit, in the order first read."""


def _usable(observations: Iterable[Observation], clock_ahead: timedelta) -> list[Observation]:
    return [o for o in observations if not o.ran_ahead(clock_ahead)]


def last_readings(
    observations: Iterable[Observation],
    into: LastReadings | None = None,
    *,
    clock_ahead: timedelta = CLOCK_AHEAD,
) -> LastReadings:
    """Each limit's newest reading (by ``observed_at``; of equals, the last given).

    Adds to ``into`` when given (and returns it), so a caller can fold in versions as they
    leave the basis, each once. Observations more than ``clock_ahead`` ahead of their
    ``stored_at`` are left out, as in :func:`forecast`.
    """
    found: LastReadings = {} if into is None else into
    for obs in _usable(observations, clock_ahead):
        for reading in obs.readings:
            held = found.get(reading.limit)
            if held is None or held[1] <= obs.observed_at:
                found[reading.limit] = (reading, obs.observed_at)
    return found


def forecast(
    observations: Iterable[Observation],
    *,
    basis: timedelta = BASIS,
    clock_ahead: timedelta = CLOCK_AHEAD,
    earlier: Mapping[str, tuple[Reading, datetime]] | None = None,
) -> Forecast:
    """Every limit's forecast from ``observations`` (given in storage order).

    The newest observation (by ``observed_at``; of equals, the last given) is ``as_of``.
    The rate uses the observations within ``basis`` before it. The limits are those read
    in any observation given or in ``earlier`` (the :func:`last_readings` of snapshots
    not given, e.g. those stored before the basis), in :data:`LIMIT_ORDER`, then any
    other by name; one the
    newest observation lacks is held at its last reading while its reset time has not
    come, and is in ``lapsed`` after (the module docstring's rules). Observations more
    than ``clock_ahead`` ahead of their ``stored_at`` are left out (the scraper's clock
    was wrong).
    """
    usable = _usable(observations, clock_ahead)
    if not usable:
        return Forecast(None, ())
    as_of = max(o.observed_at for o in usable)
    start = as_of - basis
    ordered = sorted(usable, key=lambda o: o.observed_at)
    series: dict[str, list[Point]] = {}
    for obs in ordered:
        if obs.observed_at < start:
            continue
        t = obs.observed_at.timestamp()
        for reading in obs.readings:
            series.setdefault(reading.limit, []).append(Point(t, reading.percentage, reading.reset))
    last_read = last_readings(ordered, dict(earlier or {}), clock_ahead=clock_ahead)
    newest = ordered[-1]
    in_newest = {reading.limit for reading in newest.readings}
    limits = []
    lapsed = []
    for name, (reading, observed_at) in last_read.items():
        points = series.get(name) or [
            Point(observed_at.timestamp(), reading.percentage, reading.reset)
        ]
        if name in in_newest:
            limits.append(_limit_forecast(reading, points, observed_at))
        elif reading.reset is None or reading.reset.at > as_of:
            reason = _missing_reason(name, newest)
            limits.append(_limit_forecast(reading, points, observed_at, reason))
        else:  # its window has reset since it was last read: the reading says nothing now
            lapsed.append((name, observed_at))
    lapsed.sort(key=lambda item: item[1])
    # An order that follows from the history alone (not from which versions a
    # long-running reader happened to read first), in which a limit keeps its row while a
    # partial snapshot lacks it: the console's own limits as it shows them, then any
    # other by name.
    limits.sort(key=_limit_order)
    return Forecast(as_of, tuple(limits), tuple(lapsed))
