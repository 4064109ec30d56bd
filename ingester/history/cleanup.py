"""Retention applied to a local history: the hold, the deletions, what a cleanup did.

The rule itself is :mod:`.retention`'s (pure). Here: how many of the expired versions a
hold (:data:`RetentionHold`, the mirror's until it has uploaded them) lets go, the plan
with the held ones kept, the deletion of the rest (each tried, so one that will not go
does not keep the newer ones), and the result (:class:`CleanupResult`, or
:class:`CleanupIncomplete` when some would not go).
:meth:`~ingester.history.store.HistoryStore.cleanup_old_versions` runs them in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..errors import StorageError
from . import durable
from .retention import Decision, RetentionPlan

__all__ = [
    "CleanupIncomplete",
    "CleanupNotCounted",
    "CleanupResult",
    "RetentionHold",
    "allowed_deletions",
    "held_back",
    "log_cleanup",
    "remove_expired",
]

log = logging.getLogger("ingester.store")


RetentionHold = Callable[[Path, Sequence[str], int], tuple[int, str | None]]
"""Something that may keep expired versions from retention (the mirror, until it has
uploaded them): given the history folder, every version name (oldest first) and how
many of the oldest the policy would delete, it returns how many may go now and a
warning for the log (or ``None``). See :func:`ingester.mirror.state.mirror_hold`."""


@dataclass(frozen=True)
class CleanupResult:
    """What one cleanup did."""

    deleted: list[str]
    retained: int
    future: int
    at: datetime


class CleanupIncomplete(StorageError):
    """Retention deleted what it could, but some expired versions would not go.

    Raised by :meth:`HistoryStore.cleanup_old_versions` after it has tried every expired
    version, so one version that cannot be deleted (an immutable file, say) does not keep
    the newer expired ones too. ``failures`` are the errors, oldest version first (the
    first also gives this error's ``action``, ``path`` and ``errno``); ``result`` is what
    the cleanup did do, its ``deleted`` and ``retained`` counts included.
    """

    def __init__(self, result: CleanupResult, failures: Sequence[StorageError]) -> None:
        first = failures[0]
        super().__init__(first.action, first.path, first.cause)
        self.result = result
        self.failures = list(failures)

    def __str__(self) -> str:
        failed, deleted = len(self.failures), len(self.result.deleted)
        if not deleted:
            what = "1 expired version" if failed == 1 else f"{failed} expired versions"
            return f"could not delete {what}: {super().__str__()}"
        others = "the other one is" if deleted == 1 else f"the other {deleted} are"
        return (
            f"could not delete {failed} of {failed + deleted} expired versions "
            f"({others} deleted): {super().__str__()}"
        )


class CleanupNotCounted(StorageError):
    """Retention deleted expired versions, then the metadata that counts them could not
    be written (a full disk where the deletions freed nothing: each version had a second
    name, a snapshot's).

    Raised by :meth:`HistoryStore.cleanup_old_versions` in place of the metadata's own
    error (``failure``, which also gives this error's ``action``, ``path`` and ``errno``),
    so that the line says the deletions too: said alone, a failed write reads as a
    cleanup that did nothing. ``result`` is what the cleanup did. The store keeps the
    count, and its next metadata write (a watcher's retry) has it; a process that ends
    first leaves ``totalVersionsDeleted`` short by that many.
    """

    def __init__(self, result: CleanupResult, failure: StorageError) -> None:
        super().__init__(failure.action, failure.path, failure.cause)
        self.result = result
        self.failure = failure

    def __str__(self) -> str:
        deleted = len(self.result.deleted)
        what = "1 expired version was" if deleted == 1 else f"{deleted} expired versions were"
        return (
            f"{what} deleted, but the metadata that counts them could not be written: "
            f"{self.failure}"
        )


def allowed_deletions(
    hold: RetentionHold | None, history_dir: Path, names: Sequence[str], expired: int
) -> tuple[int, str | None]:
    """How many of the ``expired`` oldest of ``names`` (sorted, oldest first) may go
    now, and the hold's warning for the log (or ``None``); all of them without a hold."""
    if hold is None:
        return expired, None
    return hold(history_dir, names, expired)


def held_back(plan: RetentionPlan, allowed: int) -> RetentionPlan:
    """``plan`` with its deletions past the first ``allowed`` kept (``"not-mirrored"``)."""
    if allowed == len(plan.delete):
        return plan
    held = set(plan.delete[allowed:])
    decisions = tuple(
        Decision(d.name, d.timestamp, "keep", "not-mirrored") if d.name in held else d
        for d in plan.decisions
    )
    return RetentionPlan(decisions, plan.now, plan.policy)


def remove_expired(
    history_dir: Path, names: list[str], count: int
) -> tuple[list[str], list[StorageError]]:
    """Delete the ``count`` oldest of the sorted version ``names`` from ``history_dir``,
    and take each deleted one out of ``names`` (in place). The folder is not fsynced.

    Returns the names deleted and the errors of those that would not go (oldest first);
    raises nothing of its own.
    """
    doomed = names[:count]
    deleted: list[str] = []
    failures: list[StorageError] = []
    # Every expired version is tried: one that will not go (an immutable file) must
    # not keep the newer expired ones with it.
    for name in doomed:
        try:
            durable.remove_file(history_dir / name)
        except StorageError as exc:
            failures.append(exc)
            continue
        deleted.append(name)
    gone = set(deleted)
    names[:count] = [name for name in doomed if name not in gone]
    return deleted, failures


def log_cleanup(result: CleanupResult) -> None:
    """One line for a cleanup: at info when it deleted something, at debug when it did
    not (an idle watcher runs many)."""
    deleted = len(result.deleted)
    log.log(
        logging.INFO if deleted else logging.DEBUG,
        "cleanup deleted %d, retained %d%s",
        deleted,
        result.retained,
        f" ({result.future} future-dated)" if result.future else "",
        extra={"event": "cleanup", "deleted": deleted, "retained": result.retained},
    )
