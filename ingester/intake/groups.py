"""The drops the watcher knows of, and the groups it takes them in.

:class:`Backlog` holds the drops waiting, in arrival order, and those deferred to a later
look; it takes them a group at a time (steps 1-4 for each, 5-8 once for the group, as
``docs/design.md`` numbers them) and applies what became of each drop once: the counts,
the log lines, the per-drop waits and the whole pipeline's backoff. The service loop
(:mod:`.watcher`) decides when a group is due; this module decides what one is. Which
older drop a newer one must wait for is :mod:`.arrival_order`'s to say.
"""

from __future__ import annotations

import errno
import itertools
import logging
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..clock import Backoff
from ..errors import StorageError
from ..history.batch import Batch
from ..history.store import HistoryStore
from ..runtime.signals import StopFlag
from .arrival_order import ArrivalOrder
from .arrivals import How
from .intake import Intake
from .maintenance import Maintenance, fault_cause
from .metrics import Metrics
from .outcomes import (
    Abandoned,
    Behind,
    Blocked,
    Deferred,
    Dropped,
    GroupFailure,
    Ignored,
    Outcome,
    Recovered,
    Rejected,
    SecondName,
    Stored,
)
from .set_aside import size_words

__all__ = ["Backlog", "Counts", "group_limit"]

log = logging.getLogger("ingester.watcher")

_GROUP_MAX = 256  # most versions linked before one fsync of the history makes them durable
_GROUP_SECONDS = 1.0  # and at most this long, so the loop keeps pinging systemd


def group_limit() -> int:
    """The most drops one group may hold under this process's limit on open files.

    Each drop of a group keeps a descriptor open until the group is durable (its claimed
    inode, or its copy), so a group may use at most a quarter of ``RLIMIT_NOFILE``: the
    rest is left to everything else the process holds open (the spool, the locks,
    inotify, the HTTP connections of ``serve --watch``). Under systemd's default soft
    limit (1,024) that is the full :data:`_GROUP_MAX`.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return _GROUP_MAX
    return max(1, min(_GROUP_MAX, soft // 4))


@dataclass
class Counts:
    """Drops ingested and rejected since the start (the stop line and systemd's status)."""

    ingested: int = 0
    rejected: int = 0


@dataclass
class _DropWaits:
    """Drops that cannot go on alone (claim or quarantine failures), each with its backoff."""

    limit: float
    claim: dict[str, Backoff] = field(default_factory=dict)
    quarantine: dict[str, Backoff] = field(default_factory=dict)

    def wait(self, outcome: Blocked) -> float:
        waits = self.claim if outcome.step == "claim" else self.quarantine
        return waits.setdefault(outcome.drop, Backoff(self.limit)).failed()

    def forget(self, name: str) -> None:
        self.claim.pop(name, None)
        self.quarantine.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self.claim or name in self.quarantine


class Backlog:
    """The drops waiting (``pending``, in arrival order) and deferred (``deferred``: name ->
    monotonic time of the next look), taken a group at a time.

    ``once`` is ``watch --once``'s: a failed step is left for the next start instead of
    retried. ``retry_max`` (seconds) bounds the backoffs. ``log_once(key, line)`` logs a
    warning once per key (the loop's, shared with its own lines).
    """

    def __init__(
        self,
        store: HistoryStore,
        intake: Intake,
        maintenance: Maintenance,
        metrics: Metrics,
        stop: StopFlag,
        *,
        once: bool,
        retry_max: float,
        log_once: Callable[[str, str], None],
    ) -> None:
        self.store = store
        self.intake = intake
        self.maintenance = maintenance
        self.metrics = metrics
        self.once = once
        self.counts = Counts()
        self.pending: dict[str, How] = {}  # insertion order is arrival order
        self.deferred: dict[str, float] = {}  # name -> monotonic time to look again
        self._drop_waits = _DropWaits(retry_max)
        self.backoff = Backoff(retry_max)  # the whole pipeline (history failures)
        self._stop = stop
        self._log_once = log_once
        self._group_limit = group_limit()
        self._group_max = self._group_limit
        self._failures = 0  # pipeline failures so far: did this group meet one?
        # Drops of the group under way, out of ``pending`` and not yet stored, and claims
        # left in .claimed/ for recovery: still the backlog. The metrics count it from
        # their own thread, so a drop's move between two of these (or between ``pending``
        # and ``deferred``) is made under the lock, never seen in both or in neither.
        # Reentrant: what becomes of a drop is applied under it.
        self._in_hand: dict[str, How] = {}
        # Drops whose copy into the quarantine a stop gave up: still waiting, not to be
        # stored but to be set aside (the end of ``watch --once`` says which).
        self._abandoned: set[str] = set()
        # Drops of a --once run left to a writer that still has them open (looked at
        # again on an event, which such a run never hears): still in the spool.
        self._held_open: set[str] = set()
        # Which drops settle, and which wait behind them: a newer drop is never stored
        # before an older one that settles (for a while at most).
        self._order = ArrivalOrder(intake.settle)
        # Drops that wait behind an older settling one (in ``deferred`` until it is
        # done), with how each was seen: a close-write is not lost by the wait.
        self._behind: dict[str, How] = {}
        self._left_claimed = 0
        self._counting = threading.RLock()

    def __len__(self) -> int:
        """Drops seen and not yet stored or set aside: waiting, deferred, in the group
        under way, or claimed by a group whose commit failed (until recovery finishes
        them). What systemd's status and the metrics call the backlog."""
        with self._counting:
            return len(self.pending) + len(self.deferred) + len(self._in_hand) + self._left_claimed

    def claims_left(self, count: int) -> None:
        """``count`` claims wait in ``.claimed/`` for recovery, as it last found them."""
        with self._counting:
            self._left_claimed = count

    # -- what is waiting ------------------------------------------------------------

    def seen(self, name: str, how: How) -> None:
        """A drop heard of by an event: waiting now (a close-write upgrades how it was seen)."""
        if how is How.COMPLETE:
            self.intake.readiness.completed(name)
            self._order.settled(name)
        with self._counting:
            current = self.pending.get(name)
            behind = self._behind.pop(name, None)
            if current is None:
                current = behind
            self.pending[name] = how if current is None or how is How.COMPLETE else current
            self.deferred.pop(name, None)

    def found(self, name: str) -> None:
        """A drop found by a scan: waiting, unless it is already known."""
        if name not in self.pending and name not in self.deferred:
            self.pending[name] = How.SETTLE

    def due(self, now: float) -> None:
        """Deferred drops whose time has come wait again (last, in the order deferred)."""
        for name, until in list(self.deferred.items()):
            if until <= now:
                with self._counting:
                    del self.deferred[name]
                    held = self._behind.pop(name, None)
                    if held is not None:
                        log.debug("%s is looked at again after waiting for older drops", name)
                    self.pending.setdefault(name, held or How.SETTLE)

    def ready(self, now: float) -> bool:
        """Whether a group is due: drops waiting, and the pipeline not backing off."""
        return bool(self.pending) and self.backoff.due(now)

    def settling(self) -> bool:
        """Whether a deferred drop only waits to settle (or for an older drop that does):
        not for its own retry after a failure, nor for a writer that still has it open."""
        readiness = self.intake.readiness
        return any(
            n not in self._drop_waits
            and not readiness.is_unfinished(n)
            and not readiness.is_open(n)
            for n in self.deferred
        )

    def all_taken(self) -> bool:
        """Whether every drop heard of was stored or set aside; each kind left is said in
        one line (the end of ``watch --once``)."""
        taken = True
        aside = sum(1 for name in self.pending if name in self._abandoned)
        if len(self.pending) > aside:
            log.error(
                "%d drop(s) could not be stored: left in the spool for the next start",
                len(self.pending) - aside,
            )
            taken = False
        if aside:
            log.error(
                "%d drop(s) could not be set aside before the stop: left in the spool "
                "for the next start",
                aside,
            )
            taken = False
        behind = [name for name in self._behind if name not in self.pending]
        if behind:
            log.error(
                "%d drop(s) wait for older drops still settling: left in the spool for "
                "the next start",
                len(behind),
            )
            taken = False
        # Deferred for their writer (still open, still changing, or an invalid payload
        # its writer may yet finish): not failures, but left all the same.
        writing = self._held_open.union(self.deferred).difference(self.pending, behind)
        writing = {name for name in writing if name not in self._drop_waits}
        if writing:
            log.error(
                "%d drop(s) may still be written (open for writing, changing, or not "
                "valid yet): left in the spool for the next start",
                len(writing),
            )
            taken = False
        if self._drop_waits.quarantine:
            log.error("%d drop(s) could not be set aside", len(self._drop_waits.quarantine))
            taken = False
        if self._drop_waits.claim:
            log.error("%d drop(s) could not be taken", len(self._drop_waits.claim))
            taken = False
        return taken

    def next_look(self, now: float) -> float | None:
        """The monotonic time something here is due (None: nothing is)."""
        if self.ready(now):
            return now
        deadlines = []
        if self.deferred:
            deadlines.append(min(self.deferred.values()))
        if self.pending:
            deadlines.append(self.backoff.until)
        return min(deadlines, default=None)

    # -- a group of drops -------------------------------------------------------------

    def take_group(self) -> None:
        """Take the pending drops in arrival order; make each group durable at once.

        Every drop of a group is claimed and staged first (steps 1-4); then the group's
        bytes are fsynced, the claims made durable by one fsync of ``.claimed/``, and
        the versions linked (steps 5-6, :meth:`Intake.commit_group`); then their names
        are made durable by one fsync of the history, after the latest link moved (so
        on one filesystem one journal commit carries both: step 7), and only then are
        the claims released (step 8).
        """
        stored: list[Stored] = []
        began = time.monotonic()
        update_latest = self.maintenance.cache_backoff.due(began)
        failure: GroupFailure | None = None
        claimed = self._in_hand
        failures_before = self._failures
        progressed = False
        try:
            with self.store.batch(update_latest=update_latest) as batch:
                try:
                    progressed = self._claim_group(batch, claimed)
                finally:
                    stored, failure = self.intake.commit_group(batch)
                batch.keep_spare = not self.intake.same_fs or self.intake.copied
        except StorageError as exc:
            # The group's fsync failed, so its names were taken back: a failed write.
            # Their claims stay and are committed again after the backoff.
            for item in stored:
                self.intake.withdrawn(item)
            # Drops a failed step of the group put back in the spool wait again, first.
            returned = {}
            if failure is not None:
                returned = {name: claimed.get(name, How.SETTLE) for name in failure.returned}
            with self._counting:
                self._left_claimed += len(stored)
                self.pending = {**returned, **self.pending}
                self._in_hand = {}
            if failure is not None:
                self.fail(failure.drop, failure.error)
            self.fail(None, exc)
            return
        returned = {}
        if failure is not None:
            # Taken again first, as they came: their turn in arrival order is not lost.
            returned = {name: claimed.get(name, How.SETTLE) for name in failure.returned}
        with self._counting:
            self.pending = {**returned, **self.pending}
            self._in_hand = {}
        if failure is not None:
            self.fail(failure.drop, failure.error)
        if progressed and self._failures == failures_before:
            # The whole group went through, its commit included: only then is the wait
            # reset. A drop claimed and staged proves nothing if its link then fails.
            self.backoff.succeeded()
            # Smaller groups after running out of descriptors: grown back, step by step.
            self._group_max = min(self._group_limit, 2 * self._group_max)
        if not stored:
            return
        kept: dict[int, tuple[StorageError, int]] = {}
        for item, error in zip(stored, self.intake.release(stored), strict=True):
            if error is not None:
                # One fault may keep a whole group's claims (the spool's fsync): said,
                # and backed off, once.
                _, count = kept.get(id(error), (error, 0))
                kept[id(error)] = (error, count + 1)
            self._ingested(item)
        for error, count in kept.values():
            self._release_failed(error, count)
        # After _ingested (which marks the link stale): the group moved it already.
        if not update_latest:
            self.maintenance.latest_dirty = True
        elif batch.latest_error is not None:
            self.maintenance.latest_failed(batch.latest_error)  # the versions are durable
        else:
            self.maintenance.latest_ok()

    def _claim_group(self, batch: Batch, claimed: dict[str, How]) -> bool:
        """Steps 1-4 for the pending drops, in arrival order, up to one group's worth.

        Adds each drop claimed to ``claimed`` (with how it was seen). A store failure
        stops the group (logged, and the pipeline backs off). Returns whether any drop
        got anywhere (anything but a claim that could not be made).
        """
        progressed = False
        began = time.monotonic()
        # A slice, not the whole backlog: a hundred thousand drops waiting at start
        # must not be copied into a list for every group of 256.
        for name, how in list(itertools.islice(self.pending.items(), 4 * self._group_max)):
            if self._stop.is_set():
                break
            try:
                outcome = self.intake.take(name, how, batch, self._waits_behind)
            except StorageError as exc:
                self.fail(name, exc)
                break
            self._order.looked_at(name, outcome)
            if isinstance(outcome, Abandoned):
                # A stop gave its copy up: it is still in the spool, so it stays waiting
                # (a --once run counts it as left), and the drops claimed before it are
                # committed as the group ends, as at any stop between two drops.
                self.apply(outcome)
                break
            with self._counting:
                self.pending.pop(name, None)
                if isinstance(outcome, Stored):
                    claimed[name] = how  # staged: stored once the group commits
                elif isinstance(outcome, Behind):
                    self._behind[name] = how  # a close-write is not lost by the wait
                self.apply(outcome)  # a drop deferred is never out of every count
            if not (isinstance(outcome, Blocked) and outcome.step == "claim"):
                progressed = True
            if len(claimed) >= self._group_max or time.monotonic() - began > _GROUP_SECONDS:
                break  # publish this group; the rest waits one loop (watchdog pings)
        return progressed

    # -- arrival order ----------------------------------------------------------------

    def _waits_behind(self, name: str, mtime_ns: int) -> float | None:
        """When to look again at drop ``name`` (found complete and valid, its mtime
        ``mtime_ns``) if an older drop still settles, else None (see
        :meth:`ArrivalOrder.waits_for`): at that drop's own next look, and not before
        now."""
        now = time.monotonic()
        older = self._order.waits_for(name, mtime_ns, now)
        if older is None:
            return None
        return max(now, self.deferred.get(older, now))

    # -- what became of a drop -------------------------------------------------------

    def apply(self, outcome: Outcome) -> None:
        """Apply what became of one drop to the bookkeeping (once)."""
        if isinstance(outcome, Stored):
            self._drop_waits.forget(outcome.drop)
            if not outcome.pending:
                self._ingested(outcome)
        elif isinstance(outcome, Rejected):
            self._drop_waits.forget(outcome.drop)
            self.counts.rejected += 1
            self.metrics.rejected(outcome.reason, outcome.kind)
            log.warning(
                "rejected %s: %s (moved to %s)",
                outcome.drop,
                outcome.reason,
                self.intake.spool.rejected_dir / outcome.where,
                extra={"event": "rejected", "drop": outcome.drop, "reason": outcome.reason},
            )
        elif isinstance(outcome, Deferred):
            if outcome.claim_left:
                self._drop_waits.forget(outcome.drop)
                self.maintenance.meta_dirty = True  # the next round finishes the claim left
            if outcome.until is not None:
                self.deferred[outcome.drop] = outcome.until
            elif self.once and not outcome.claim_left:
                self._held_open.add(outcome.drop)
        elif isinstance(outcome, Behind):
            self.deferred[outcome.drop] = outcome.until
        elif isinstance(outcome, Dropped):
            self._drop_waits.forget(outcome.drop)
        elif isinstance(outcome, Ignored):
            self._log_once(outcome.key, outcome.message)
        elif isinstance(outcome, Blocked):
            retry = self._drop_waits.wait(outcome)
            self.deferred[outcome.drop] = time.monotonic() + retry
            if outcome.step == "claim":
                self.metrics.failed(str(outcome.error))
                # A folder that refuses every claim is one fault, not a line a drop a try.
                self._say_failure(
                    f"cannot take drop {outcome.drop}: {outcome.error}",
                    self._then(retry, "it"),
                    outcome.error,
                    retry,
                )
            else:
                log.error(
                    "cannot set aside %s (%s): %s; %s",
                    outcome.drop,
                    outcome.reason,
                    outcome.error,
                    self._then(retry),
                )
        elif isinstance(outcome, Abandoned):
            self._abandoned.add(outcome.drop)
            log.info(
                "stopping: the copy of %s into %s abandoned (%s of %s copied); set aside "
                "at the next start",
                outcome.drop,
                outcome.into,
                size_words(outcome.done),
                size_words(outcome.total),
                extra={"event": "abandoned", "drop": outcome.drop},
            )
        elif isinstance(outcome, Recovered):
            self.maintenance.latest_dirty = self.maintenance.meta_dirty = True
            log.info("%s was already stored; removed its claim", outcome.version)
        elif isinstance(outcome, SecondName):
            self._drop_waits.forget(outcome.drop)
            log.warning(
                "%s is version %s itself (the same file under a second name, as a power "
                "cut can leave it): removed it from the spool, not stored twice",
                outcome.drop,
                outcome.version,
            )

    def _ingested(self, item: Stored) -> None:
        # A version durable is what proves the store works again: not a group that
        # only deferred its drops, nor one whose drops were set aside.
        self.maintenance.store_lines.healed(time.monotonic())
        self.counts.ingested += 1
        self.metrics.ingested(time.perf_counter() - item.started)
        self.maintenance.latest_dirty = True
        self.maintenance.meta_dirty = True
        log.info(
            "ingested %s -> %s (%d bytes, %.1f ms)",
            item.drop,
            item.version,
            item.size,
            (time.perf_counter() - item.started) * 1000,
            extra={
                "event": "ingested",
                "drop": item.drop,
                "version": item.version,
                "bytes": item.size,
            },
        )

    def fail(self, name: str | None, exc: StorageError) -> None:
        """A failed step of the history (or of drop ``name``): logged, and the whole
        pipeline backs off."""
        self._failures += 1
        if exc.errno in (errno.EMFILE, errno.ENFILE) and self._group_max > 1:
            # Out of descriptors: a group holds one per drop, so the same group again
            # would fail the same way. Smaller groups from now on.
            self._group_max //= 2
            log.warning(
                "out of file descriptors: groups of at most %d drop(s) from now on",
                self._group_max,
            )
        retry = self.backoff.failed()
        self.metrics.failed(str(exc))
        what = f"cannot store drop {name}" if name else "cannot update the history"
        self._say_failure(f"{what}: {exc}", self._then(retry), exc, retry)
        # Maintenance after the backoff also finishes any claim a failed commit left,
        # and sweeps the temp files a failed step could not remove.
        self.maintenance.after_failure(whole_group=name is None)

    def _release_failed(self, exc: StorageError, count: int) -> None:
        """``count`` stored drops whose claims could not be removed (step 8): logged once,
        and the pipeline backs off; recovery removes the claims in a later round."""
        self._failures += 1
        retry = self.backoff.failed()
        self.metrics.failed(str(exc))
        later = (
            "the next start removes them"
            if self.once
            else f"recovery removes them (retrying in {retry:.1f} s)"
        )
        what = f"{count} drop(s) stored, but their claims could not be removed: {exc}"
        self._say_failure(what, later, exc, retry)
        self.maintenance.after_failure(whole_group=False)

    def _say_failure(self, what: str, then: str, exc: StorageError, retry: float) -> None:
        """The pipeline's failed try, said by the store's fault lines (a fault that
        lasts is not an ERROR every retry); a ``--once`` run says each as it comes."""
        if self.once:
            log.error("%s; %s", what, then)
        else:
            self.maintenance.store_lines.failed(
                what, then, fault_cause(exc), retry, time.monotonic()
            )

    def _then(self, retry: float, it: str = "") -> str:
        """What follows a failed step, for its log line: a service retries after
        ``retry`` seconds; a ``--once`` run does not, and leaves the drop for the next."""
        if self.once:
            return "left in the spool for the next start"
        return f"retrying {it + ' ' if it else ''}in {retry:.1f} s"
