"""The retention policy. Pure, no I/O.

A version is kept if it is among the newest ``max_versions`` **or** its name's timestamp
is within the last ``retention_days``; everything else is ``expired``. A version dated
more than a day ahead of the clock is ``future``: always kept, not counted among the
newest N. The newest version is therefore never deleted.

Because version names sort by their timestamp, the expired versions are always a prefix
of the sorted non-future names. :func:`expired_prefix` uses that to find them without
looking at the rest, so a cleanup after each save does not grow with the history.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from .base import FUTURE_SLACK
from .base import future_count as future_suffix
from .names import parse_timestamp_from_filename

__all__ = [
    "DEFAULT_HOLD_MAX",
    "FUTURE_SLACK",
    "Decision",
    "RetentionPlan",
    "RetentionPolicy",
    "expired_prefix",
    "future_suffix",
    "plan_retention",
]

DEFAULT_MAX_VERSIONS = 100
"""Retention keeps at least this many of the newest versions, unless told otherwise."""
DEFAULT_RETENTION_DAYS = 7.0
"""...and every version younger than this many days."""
DEFAULT_HOLD_MAX = 10_000
"""Default ``--mirror-hold``: about 35 days of one drop every 5 minutes.

At most this many expired versions a configured mirror has not uploaded yet are kept
(see :mod:`ingester.mirror.state`).
"""

# "not-mirrored" is never given by the policy itself: the store marks an expired
# version so when a configured mirror has not uploaded it yet.
Reason = Literal["newest-N", "within-D-days", "future", "expired", "not-mirrored"]


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep the newest ``max_versions`` or anything within ``retention_days`` (the union)."""

    max_versions: int = DEFAULT_MAX_VERSIONS
    retention_days: float = DEFAULT_RETENTION_DAYS

    def __post_init__(self) -> None:
        if self.max_versions < 1:
            raise ValueError("max_versions must be at least 1")
        if not self.retention_days > 0:
            raise ValueError("retention_days must be greater than 0")

    def cutoff(self, now: datetime) -> datetime:
        """Versions dated before this are expired unless among the newest N."""
        return now - timedelta(days=self.retention_days)


@dataclass(frozen=True)
class Decision:
    """What retention does to one version, and why."""

    name: str
    timestamp: datetime
    action: Literal["keep", "delete"]
    reason: Reason


@dataclass(frozen=True)
class RetentionPlan:
    """A decision for every version, oldest first."""

    decisions: tuple[Decision, ...]
    now: datetime
    policy: RetentionPolicy

    @property
    def keep(self) -> list[str]:
        """Names that stay."""
        return [d.name for d in self.decisions if d.action == "keep"]

    @property
    def delete(self) -> list[str]:
        """Names that go."""
        return [d.name for d in self.decisions if d.action == "delete"]

    @property
    def future(self) -> list[str]:
        """Names dated more than a day ahead of the clock."""
        return [d.name for d in self.decisions if d.reason == "future"]


def _dated(names: Iterable[str]) -> list[tuple[str, datetime]]:
    dated = []
    for name in names:
        stamp = parse_timestamp_from_filename(name)
        if stamp is not None:
            dated.append((name, stamp))
    dated.sort()
    return dated


def plan_retention(names: Iterable[str], now: datetime, policy: RetentionPolicy) -> RetentionPlan:
    """Decide keep or delete for every version name (other names are ignored)."""
    dated = _dated(names)
    horizon = now + FUTURE_SLACK
    present = [(n, s) for n, s in dated if s <= horizon]
    newest = {n for n, _ in present[-policy.max_versions :]}
    cutoff = policy.cutoff(now)
    decisions = []
    for name, stamp in dated:
        reason: Reason
        if stamp > horizon:
            reason = "future"
        elif name in newest:
            reason = "newest-N"
        elif stamp >= cutoff:
            reason = "within-D-days"
        else:
            reason = "expired"
        action: Literal["keep", "delete"] = "delete" if reason == "expired" else "keep"
        decisions.append(Decision(name, stamp, action, reason))
    return RetentionPlan(tuple(decisions), now, policy)


def expired_prefix(sorted_names: Sequence[str], now: datetime, policy: RetentionPolicy) -> int:
    """How many of the oldest names in ``sorted_names`` (sorted, all versions) are expired.

    Looks only at the expired names and the few after them, not at the whole list.
    The result equals ``len(plan_retention(sorted_names, now, policy).delete)``.
    """
    present = len(sorted_names) - future_suffix(sorted_names, now)
    deletable = max(0, present - policy.max_versions)
    cutoff = policy.cutoff(now)
    count = 0
    while count < deletable:
        stamp = parse_timestamp_from_filename(sorted_names[count])
        if stamp is None or stamp >= cutoff:
            break
        count += 1
    return count
