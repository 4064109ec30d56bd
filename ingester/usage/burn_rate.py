"""Where a limit's usage reset, and how fast it rises since: its windows and burn rate (pure).

A limit's readings are points on the time axis (:class:`Point`: POSIX seconds, percentage
used, the reading's reset time), oldest first.

**A reset**, between two readings in time order, is one of:

* the reset time of the previous reading has passed (its ``resetsAt`` plus the precision
  of its wording: ``2 hr`` may mean up to 2 h 59 min), or
* a drop in ``percentageUsed`` that the following reading confirms (it is below the old
  level too), or that is the newest reading (nothing can confirm it yet), unless both
  readings name the same reset (their reset times' spans overlap) and it has not passed:
  usage cannot fall within a window, so that drop is a wrong reading or a correction,
  and it stays in the window, where the median of slopes weighs it as one reading. A
  one-point dip on a stale scrape would otherwise begin a new window with no rate,
  and an alert on the forecast would flap.

Within a window usage only rises, so a lone dip that the next reading does not confirm (a
scraper that read 0 for a moment) and a lone spike that the next reading falls back from
(to no less than the reading before the spike) are left out of the window as outliers.

**The rate** is the net pace over the window: the median of the slopes from each of its
first :data:`END_READINGS` readings to each of its last (a pair counted once, the older
reading first). Usage that rests for hours (a night, a day off) and rises for a few
counts as what it is: so many points over so many hours, the idle ones included, which
is the pace at which the limit comes nearer. A slope fitted through every reading would
not: the median of the pairwise slopes (Theil-Sen) is 0 once most readings lie on a flat
stretch, and least squares weighs the shape of the day, not where it ends. A median of
slopes still guards against a wrong reading: with five readings or more, one reading
however wrong cannot move the rate off the slope the others agree on (a wrong one among
the first or last three is outvoted by the other two, and one in between plays no part).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from .resets import ResetTime

__all__ = ["END_READINGS", "MIN_SPAN", "Point", "burn_rate", "split_windows"]

MIN_SPAN = timedelta(minutes=10)
"""No rate from readings spanning less than this: two readings a minute apart say little."""
END_READINGS = 3
"""The readings at each end of a window whose slopes make the rate: the fewest of which a
median outvotes one wrong reading (9 slopes, whatever the number of readings)."""


@dataclass(frozen=True, slots=True)
class Point:
    """One reading on the time axis: POSIX seconds, percentage, reset time."""

    t: float
    pct: float
    reset: ResetTime | None = None


def _same_reset(before: Point, after: Point) -> bool:
    """Whether both readings name one reset: each has a reset time, and their spans
    (``at`` to ``at + within``, the wording's precision) overlap. A reset brought forward
    or moved on comes with another reset time, so it is never taken for the same."""
    a, b = before.reset, after.reset
    if a is None or b is None:
        return False
    return a.at <= b.at + b.within and b.at <= a.at + a.within


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
                if _same_reset(level, point):
                    current.append(point)  # no reset between them: a lower reading
                else:
                    windows.append(current)
                    current = [point]
            # else: a dip the next reading does not confirm; left out
        else:
            current.append(point)
    windows.append(current)
    return windows


def burn_rate(points: Sequence[Point]) -> float | None:
    """Percent per hour over ``points`` (one window, oldest first): the median of the
    slopes from each of the first :data:`END_READINGS` points to each of the last (the
    module docstring says why); with fewer than 2 x END_READINGS points, every pair.

    ``None`` with fewer than 2 points or when they span less than :data:`MIN_SPAN`.
    """
    if len(points) < 2 or points[-1].t - points[0].t < MIN_SPAN.total_seconds():
        return None
    last = len(points) - 1
    slopes = [
        (points[j].pct - points[i].pct) / (points[j].t - points[i].t)
        for i in range(min(END_READINGS, last))
        for j in range(max(i + 1, len(points) - END_READINGS), len(points))
        if points[j].t > points[i].t
    ]
    # The pair of the first and the last point is always there: they span MIN_SPAN.
    return statistics.median(slopes) * 3600
