"""What became of one drop: the outcomes :meth:`~ingester.intake.intake.Intake.take` returns.

Each is a frozen dataclass the service loop applies once (counts, logs, per-drop waits,
when to look again): :class:`Stored`, :class:`Rejected`, :class:`Deferred`,
:class:`Dropped`, :class:`Ignored`, :class:`Blocked`, :class:`Abandoned` (a drop's
copy into the quarantine given up at a stop), :class:`Recovered` (a claim found already
stored) and :class:`SecondName` (a drop found to be a stored version's own file),
together :data:`Outcome`; :class:`GroupFailure` is a group's
commit stopped at one drop (``docs/design.md``, "One drop").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import StorageError

__all__ = [
    "Abandoned",
    "Behind",
    "Blocked",
    "Deferred",
    "Dropped",
    "GroupFailure",
    "Ignored",
    "Outcome",
    "Recovered",
    "Rejected",
    "SecondName",
    "Stored",
]


@dataclass(frozen=True)
class Stored:
    """``drop`` is stored as ``version`` (``size`` bytes; ``started`` is perf_counter).

    ``pending`` is True while the version still waits for its group's history fsync
    and :meth:`Intake.release` (step 7 and 8), False when it is durable already.
    """

    drop: str
    version: str
    size: int
    started: float
    pending: bool = True


@dataclass(frozen=True)
class Rejected:
    """``drop`` failed judgement (``reason``) and was moved to quarantine as ``where``."""

    drop: str
    reason: str
    where: str
    kind: str | None = None
    """``"schema"`` for a payload that breaks the model's rules (see PayloadRejected)."""


@dataclass(frozen=True)
class Deferred:
    """Not taken now: look again at ``until`` (monotonic), or on its next event (None).

    ``claim_left``: a claim may have stayed behind, for the recovery to finish.
    ``settling``: its mtime (ns since the epoch) where it waits only to settle, which
    holds newer drops back (:class:`Behind`); None where it waits for anything else.
    """

    drop: str
    until: float | None
    claim_left: bool = False
    settling: int | None = None


@dataclass(frozen=True)
class Behind:
    """Complete and valid, but an older drop still waits to settle: ``drop`` waits for
    it, looked at again at ``until`` (monotonic), so that drops are stored in the order
    they arrived."""

    drop: str
    until: float


@dataclass(frozen=True)
class Dropped:
    """``drop`` is gone (taken or removed by someone else): forget it."""

    drop: str


@dataclass(frozen=True)
class Ignored:
    """Never taken (``message`` says why, logged once per ``key``)."""

    drop: str
    key: str
    message: str


@dataclass(frozen=True)
class Blocked:
    """This drop alone cannot go on (``step``: "claim" or "quarantine"); the rest go on.

    The loop retries it after its own backoff. ``reason``: why it was being set aside.
    """

    drop: str
    step: str
    error: StorageError
    reason: str = ""


@dataclass(frozen=True)
class Abandoned:
    """A stop was asked while ``drop`` was being copied into the quarantine on another
    filesystem (``into``): the copy was given up after ``done`` of ``total`` bytes of
    data, its temp file and reason file removed, and the drop left where it was, to be
    set aside at the next start.

    Not a failure: nothing is retried, and the loop stops.
    """

    drop: str
    into: Path
    done: int
    total: int


@dataclass(frozen=True)
class GroupFailure:
    """What stopped a group: the ``error``, and the ``drop`` it hit (None: the group's).

    ``returned``: the drops put back in the spool (or left claimed), to be taken again.
    """

    drop: str | None
    error: StorageError
    returned: list[str]


@dataclass(frozen=True)
class Recovered:
    """A claim's version was already stored: the claim was removed."""

    version: str


@dataclass(frozen=True)
class SecondName:
    """The drop was ``version``'s own file under a second name: removed from the spool.

    Its bytes are stored already (a crash lost the spool's side of its claim, or an
    operator linked a version into the spool); storing it again would store it twice.
    """

    drop: str
    version: str


Outcome = (
    Stored
    | Rejected
    | Deferred
    | Behind
    | Dropped
    | Ignored
    | Blocked
    | Abandoned
    | Recovered
    | SecondName
)
