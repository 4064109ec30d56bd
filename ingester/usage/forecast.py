"""Burn rate and a forecast for every usage limit, from a sequence of snapshots (pure: no I/O).

The question a user asks: at this rate, when do I reach 100 %, and is that before the
limit resets? In pseudo-code::

    newest = the snapshot with the latest lastUpdated, each taken as no later than
             when it was stored; of equals, the one stored last
    as_of  = its lastUpdated; a snapshot observed after it is left out
    for each limit read in the BASIS before as_of:   # any object with resetsIn and a
                                                     # percentageUsed of 0-100, by its
                                                     # dotted path
        if the newest snapshot lacks it:             # a partial scrape: HELD, see below
            skip it once its last reading's reset time has come by as_of
        points  = its readings observed in the BASIS before as_of, oldest first
        windows = points split where the limit reset  # split_windows()
        window  = the last of them: usage since the last reset
        rate    = median of the slopes from each of window's first 3 points to
                  each of its last 3, in %/hour: its net pace   # burn_rate()
                  (none from fewer than 2 points or less than 10 minutes of data)
        if the newest % is 100:                       # at the limit
            exhausts_at = the window's first point at 100 %
            rate        = that of the window up to that point (none when it is the
                          first: readings held at 100 % show no pace, only the cap)
            before_reset = true
        else:
            exhausts_at  = newest time + (100 - newest %) / rate, when rate > 0
                           and that is within HORIZON (a year) of the newest time
            before_reset = true when exhausts_at < resets_at (the earliest the reset's
                           words allow), false when at or after resets_at + within (the
                           latest they allow), none in between: which comes first,
                           words such as "2 hr" or "3 days" do not tell
            without exhausts_at (not rising, or rising too slowly to reach 100 %
            within HORIZON): before_reset = false when the rate is not rising (0 or
                           less to RATE_DECIMALS, as the JSON carries it) or
                           resets_at + within is within HORIZON (the reset surely
                           comes first), none otherwise: a reset over a year ahead is
                           set against no projected time

A snapshot's readings are :mod:`ingester.usage.readings`'s; what counts as a reset, which
readings are outliers and the rate are :mod:`ingester.usage.burn_rate`'s. The basis is
the window's last :data:`BASIS` (24 hours: a weekly limit's pace over a whole day and
night, its idle hours included, and a session shorter than that counts whole).

The newest reading anchors the projection: it is what the console shows now. Which
snapshot is newest is judged by ``lastUpdated``, so that snapshots a scraper sends late
(what it queued) are not taken for the console's present; but a snapshot cannot have
been observed after it was stored, so a ``lastUpdated`` past that counts as the time it
was stored. Without that, a snapshot from a scraper whose clock ran ahead would stay
newest until one observed later still came, while the data's own answer (the latest
link) showed the snapshots stored after it; with it, the newest snapshot is the latest
link's but where that one was observed before another stored earlier (a backfill).

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

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..history.names import format_timestamp
from .burn_rate import Point, burn_rate, split_windows
from .readings import CLOCK_AHEAD, Observation, Reading, path_parts
from .resets import ResetTime

__all__ = [
    "BASIS",
    "HORIZON",
    "LIMIT_ORDER",
    "MAX_LIMITS",
    "MAX_LIMIT_NAME",
    "NOTHING_TO_GO_BY",
    "RATE_DECIMALS",
    "Forecast",
    "LastReadings",
    "LimitForecast",
    "forecast",
    "last_readings",
    "newest_of",
]

BASIS = timedelta(hours=24)
"""How far back from the newest snapshot the rate looks (within the current window)."""
RATE_DECIMALS = 4
"""The decimals of a rate in %/hour as the JSON carries it."""
HORIZON = timedelta(days=366)
"""A projection further ahead than this is no projection (usage as good as flat)."""
MAX_LIMITS = 32
"""At most this many limits in a forecast, held and lapsed ones counted: every window of
every snapshot still held counts, so a payload made of thousands of windows would
otherwise make thousands of metric series, API rows and ``check`` items, and keep them
for as long as the history holds it. The console shows three; the rest is room for
windows it adds later. Which are kept: the console's own (:data:`LIMIT_ORDER`), then
those the newest snapshot holds, then the others, each by name."""
MAX_LIMIT_NAME = 100
"""A limit whose dotted path is longer than this many characters is left out: its path
becomes a metric label value and a word of ``check``'s line."""
NOTHING_TO_GO_BY = (
    "no version has a lastUpdated that is readable and at most "
    f"{int(CLOCK_AHEAD.total_seconds() // 3600)} h ahead of when it was stored"
)
"""Why there is no forecast although versions exist (``Forecast.as_of`` is ``None``),
in the words every surface gives."""


@dataclass(frozen=True)
class LimitForecast:
    """The forecast of one limit (see the module docstring for each rule).

    ``observed_at`` is the ``lastUpdated`` of the snapshot its reading comes from: the
    newest snapshot's, unless that one lacks the limit (``in_newest`` false: the reading is
    held, and ``missing_reason`` says why it is missing, in the newest snapshot's words
    where it has any). ``resets_within`` is how precise ``resets_at`` is (the reset lies in
    ``[resets_at, resets_at + resets_within)``: an hour for ``2 hr``); ``None`` when the
    reset time is unknown, or taken as exact.
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
    resets_within: timedelta | None = None

    @property
    def rate_as_carried(self) -> float | None:
        """The rate in %/hour as the JSON carries it, to :data:`RATE_DECIMALS` decimals
        (``None``: no rate): what the page reads, so words that judge the rate (rising
        or not) judge this one and say what the page says."""
        if self.rate_per_hour is None:
            return None
        return round(self.rate_per_hour, RATE_DECIMALS) + 0.0  # + 0.0: never -0.0

    def to_json(self) -> dict[str, Any]:
        """The limit as the API spells it (times ISO-8601 UTC; the rate to 4 decimals)."""
        pct = self.percentage
        return {
            "limit": self.limit,
            "percentageUsed": int(pct) if float(pct).is_integer() else pct,
            "resetsIn": self.resets_in,
            "resetsAt": format_timestamp(self.resets_at),
            "ratePerHour": self.rate_as_carried,
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
    have no forecast (the module docstring's rule) but are still missing. ``left_out``:
    the limits read that are in neither (over :data:`MAX_LIMITS`, or a path over
    :data:`MAX_LIMIT_NAME` characters), by name.
    """

    as_of: datetime | None
    limits: tuple[LimitForecast, ...]
    lapsed: tuple[tuple[str, datetime], ...] = ()
    left_out: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """``{"asOf", "limits": [...]}``."""
        return {
            "asOf": format_timestamp(self.as_of),
            "limits": [limit.to_json() for limit in self.limits],
        }


LIMIT_ORDER = ("currentSession", "weeklyLimits.allModels", "weeklyLimits.sonnetOnly")
"""The limits the payload model names, in the order the console shows them: every list
of limits puts these first, in this order, then any other window by its path."""


def _kept(names: Iterable[str], in_newest: set[str], most: int) -> tuple[set[str], tuple[str, ...]]:
    """The limits of ``names`` a forecast shows (at most ``most``), and those it leaves
    out, sorted: see :data:`MAX_LIMITS` for which come first."""

    def rank(name: str) -> tuple[int, int, str]:
        if name in LIMIT_ORDER:
            return 0, LIMIT_ORDER.index(name), ""
        return (1 if name in in_newest else 2), 0, name

    fitting = sorted((n for n in names if len(n) <= MAX_LIMIT_NAME), key=rank)
    kept = set(fitting[:most])
    return kept, tuple(sorted(n for n in names if n not in kept))


def _limit_order(limit: LimitForecast) -> tuple[int, str]:
    name = limit.limit
    if name in LIMIT_ORDER:
        return LIMIT_ORDER.index(name), ""
    return len(LIMIT_ORDER), name


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
    reset = reading.reset
    resets_at = reset.at if reset is not None else None
    exhausts_at: datetime | None = None
    before: bool | None = None
    if newest.pct >= 100:
        reached = next(i for i, p in enumerate(window) if p.pct >= 100)
        # The console shows no more than 100 %: readings held there say nothing of the
        # pace, so the rate is the rise to the first of them (none when that is the
        # window's first reading in the basis: at the limit since then or before).
        rate = burn_rate(window[: reached + 1])
        exhausts_at = _at(window[reached].t)
        before = True  # reached already, so before the next reset
    else:
        rate = burn_rate(window)
        if rate is not None:
            hours = (100 - newest.pct) / rate if rate > 0 else math.inf
            if hours <= HORIZON / timedelta(hours=1):
                exhausts_at = _at(newest.t + hours * 3600)
                before = None if reset is None else _before_reset(exhausts_at, reset)
            elif reset is not None and (
                round(rate, RATE_DECIMALS) <= 0
                or reset.at + reset.within <= _at(newest.t) + HORIZON
            ):
                # Not rising (as the JSON carries the rate), 100 % never comes; rising too
                # slowly to project, it comes after the horizon, so a reset sure to come by
                # then comes first. A reset that may come later still is set against no
                # projected time: unknown.
                before = False
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
        resets_within=reset.within if reset is not None else None,
    )


def _before_reset(exhausts_at: datetime, reset: ResetTime) -> bool | None:
    """Whether 100 % at ``exhausts_at`` comes before ``reset``: ``None`` when it falls in
    the span the reset's words leave open (``2 hr``: any time in that hour), where the
    answer either way would claim more than the console said."""
    if exhausts_at < reset.at:
        return True
    if exhausts_at >= reset.at + reset.within:
        return False
    return None


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
    # Said after "not in the newest snapshot", so it adds what is known, not that again.
    if newest.partial:
        return "a partial scrape (isPartial); no extractionErrors entry names it"
    return "no extractionErrors entry names it"


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


def _newness(obs: Observation) -> datetime:
    # A snapshot cannot have been observed after it was stored: a lastUpdated past that
    # is its scraper's clock running ahead, and counts as the time it was stored.
    if obs.stored_at is None:
        return obs.observed_at
    return min(obs.observed_at, obs.stored_at)


def newest_of(observations: Sequence[Observation]) -> Observation:
    """The newest of ``observations`` (given in storage order, at least one): the latest
    ``lastUpdated``, each taken as no later than when its snapshot was stored; of
    equals, the last given (the module docstring's rule)."""
    found = observations[0]
    for obs in observations[1:]:
        if _newness(obs) >= _newness(found):
            found = obs
    return found


def forecast(
    observations: Iterable[Observation],
    *,
    basis: timedelta = BASIS,
    clock_ahead: timedelta = CLOCK_AHEAD,
    earlier: Mapping[str, tuple[Reading, datetime]] | None = None,
    max_limits: int = MAX_LIMITS,
) -> Forecast:
    """Every limit's forecast from ``observations`` (given in storage order).

    The newest observation is :func:`newest_of`'s; its ``observed_at`` is ``as_of``, and
    one observed after it is left out, in ``earlier`` too (stored before the newest, its
    scraper's clock ran ahead). The rate uses the observations within ``basis`` before
    it. The limits are those read in any observation given or in ``earlier`` (the
    :func:`last_readings` of snapshots not given, e.g. those stored before the basis), in
    :data:`LIMIT_ORDER`, then any other by name; one the newest observation lacks is held
    at its last reading while its reset time has not come, and is in ``lapsed`` after
    (the module docstring's rules). Observations more than ``clock_ahead`` ahead of their
    ``stored_at`` are left out (the scraper's clock was wrong). At most ``max_limits``
    limits are kept, in ``limits`` and ``lapsed`` together; the others are named in
    ``left_out`` (:data:`MAX_LIMITS` says which are kept).
    """
    usable = _usable(observations, clock_ahead)
    if not usable:
        return Forecast(None, ())
    newest = newest_of(usable)
    as_of = newest.observed_at
    start = as_of - basis
    ordered = sorted((o for o in usable if o.observed_at <= as_of), key=lambda o: o.observed_at)
    series: dict[str, list[Point]] = {}
    for obs in ordered:
        if obs.observed_at < start:
            continue
        t = obs.observed_at.timestamp()
        for reading in obs.readings:
            series.setdefault(reading.limit, []).append(Point(t, reading.percentage, reading.reset))
    held = {k: v for k, v in (earlier or {}).items() if v[1] <= as_of}
    last_read = last_readings(ordered, held, clock_ahead=clock_ahead)
    in_newest = {reading.limit for reading in newest.readings}
    kept, left_out = _kept(last_read, in_newest, max_limits)
    limits = []
    lapsed = []
    for name, (reading, observed_at) in last_read.items():
        if name not in kept:
            continue
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
    return Forecast(as_of, tuple(limits), tuple(lapsed), left_out)
