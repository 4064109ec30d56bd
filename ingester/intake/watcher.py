"""``ingester watch``: the service loop that takes every drop from the spool exactly once.

The pipeline of one drop, its numbering and what a crash at each step leaves are
described once, in ``docs/design.md``. The modules, in the order a drop meets them:

* :mod:`ingester.intake.arrivals`: inotify or polling events from the spool folder;
* :mod:`ingester.intake.readiness`: whether a drop is complete (close-write, lease, settle);
* :mod:`ingester.intake.intake`: steps 1-4 for each drop, 5-6 for its group, and 8; it
  returns an outcome (stored, rejected, deferred, gone...);
* :mod:`ingester.intake.recovery`: the claims a crash or a failure left;
* :mod:`ingester.history.store`: the versioned history; a group of versions is made durable by
  one ``HistoryStore.batch()`` (step 7).

This module is the loop around them: it collects events, decides what is due, applies
each outcome once (counts, logs, per-drop waits), groups drops (at most 256 or one
second per fsync of the history), runs maintenance (recovery, cleanup, metadata, the
latest link's repair, the rejected folder's retention), backs off on failures, handles
signals and keeps systemd informed (READY, STATUS, WATCHDOG pings).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import resource
import signal
import stat
import threading
import time
from dataclasses import dataclass, field

from ..clock import Backoff, ClockJump
from ..errors import IngesterError, SettingError, StorageError, describe_os_error
from ..history.batch import Batch
from ..history.lock import WATCH, LockHeld, latest_link_holder, same_file
from ..history.names import is_version_name
from ..history.store import HistoryStore
from ..runtime.notify import SystemdNotifier
from ..runtime.signals import StopFlag, on_stop_signals
from ..settings import Settings, WatchOptions, check_layout
from .arrivals import (
    Arrival,
    Arrivals,
    DropSeen,
    FolderSeen,
    How,
    RescanNeeded,
    SpoolGone,
    start_arrivals,
    watch_problem,
)
from .intake import Intake
from .locks import LocksLost, WatcherLocks, refused_words
from .maintenance import Maintenance
from .metrics import NO_METRICS, Metrics
from .outcomes import (
    Blocked,
    Deferred,
    Dropped,
    GroupFailure,
    Ignored,
    Outcome,
    Recovered,
    Rejected,
    Stored,
)
from .readiness import Readiness
from .recovery import ClaimRecovery, take_back_claims
from .spool import Spool

__all__ = ["Backoff", "WatchOptions", "Watcher"]

log = logging.getLogger("ingester.watcher")

_TICK = 0.25  # seconds, the longest wait: bounds the reaction to signals and liveness checks
_GROUP_MAX = 256  # most versions linked before one fsync of the history makes them durable
_GROUP_SECONDS = 1.0  # and at most this long, so the loop keeps pinging systemd
_OBSERVER_RESTARTS = 5  # a dead observer restarted this often within a minute: give up


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
class _Counts:
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


class _Stop(IngesterError):
    """The loop cannot go on (it would run deaf, or on a history it does not lock)."""


class Watcher:
    """The service loop. ``run()`` returns the process exit code."""

    lock_purpose = WATCH  # noted in the lock file, for whoever finds it held

    def __init__(
        self,
        settings: Settings,
        options: WatchOptions,
        notifier: SystemdNotifier | None = None,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.settings = settings
        self.options = options
        self.notifier = notifier or SystemdNotifier.from_environ()
        self.store: HistoryStore = settings.store()
        self.spool = Spool(settings.spool_dir, settings.rejected_dir)
        self.locks: WatcherLocks  # made by run(), with the purpose of the moment
        self.intake = Intake(
            store=self.store,
            spool=self.spool,
            max_bytes=settings.max_bytes,
            readiness=Readiness(options.settle, options.rescan_interval),
            settle=options.settle,
        )
        self._recovery = ClaimRecovery(self.intake)
        self.clock_jump = ClockJump()
        self.counts = _Counts()
        self.maintenance = Maintenance(
            self.store,
            self.spool,
            settings,
            options.retry_max,
            recover=self._recover_claims,
            clock_jump=self.clock_jump,
            retries=not options.once,
        )
        self._pending: dict[str, How] = {}  # insertion order is arrival order
        self._deferred: dict[str, float] = {}  # name -> monotonic time to look again
        self._drop_waits = _DropWaits(options.retry_max)
        self._logged: set[str] = set()
        self._stop = StopFlag()
        self._arrivals: Arrivals | None = None
        self._backoff = Backoff(options.retry_max)  # the whole pipeline (history failures)
        self._group_limit = group_limit()
        self._group_max = self._group_limit
        self._observer_restarts: list[float] = []  # when a dead observer was restarted
        self._failures = 0  # pipeline failures so far: did this group meet one?
        self._next_rescan = 0.0
        self._unscanned = False  # the last scan of the spool failed: it may hold drops
        self._next_ping = 0.0
        self._last_status = ""
        self.metrics = metrics
        self.metrics.watch(
            lambda: len(self._pending) + len(self._deferred), lambda: self.maintenance.holding
        )

    # -- lifecycle ----------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        """Finish the drop in hand, then stop (signal handler)."""
        self._stop.set()

    def _install_signals(self) -> None:
        # SIGHUP too: the terminal it ran in was closed. Its default would end the
        # process at once, with no stop line and drops left claimed.
        on_stop_signals(self.request_stop)
        if threading.current_thread() is threading.main_thread():
            # A read lease broken by a writer sends SIGIO, whose default is to terminate.
            signal.signal(signal.SIGIO, signal.SIG_IGN)

    def run(self) -> int:
        """Take the history's lock and the spool's, recover, drain the backlog, then
        watch until stopped."""
        self._install_signals()
        store = self.store
        kept = latest_link_holder(store.latest_path, store.history_dir, store.lock_path.name)
        if kept is not None:
            log.error(
                "cannot start: the latest link %s points into the history %s, whose watcher "
                "(pid %d) would point it back at its own versions; give each history its own "
                "--latest-path (if that watcher keeps another link now, remove this one)",
                store.latest_path,
                *kept,
            )
            return 1
        self.locks = WatcherLocks(self.store.lock_path, self.spool, self.lock_purpose)
        try:
            self.locks.take()
        except LockHeld as exc:
            log.error("%s", refused_words(exc))
            return 1
        except OSError as exc:
            log.error("cannot start: %s", describe_os_error(exc))
            return 1
        try:
            return self._run_locked()
        finally:
            self.locks.release()

    def _run_locked(self) -> int:
        try:
            report = self.store.initialize()
            self.intake.start()
        except OSError as exc:
            log.error("cannot start: %s", describe_os_error(exc))
            return 1
        try:
            report.removed_temps += self.spool.sweep_temps()
        except StorageError as exc:
            log.warning("cannot sweep temp files in the quarantine folder: %s", exc)
        self.maintenance.started(report)
        self.maintenance.sweep_writer_temps(time.monotonic())
        try:
            self._recover_claims()
        except StorageError as exc:
            log.error("cannot finish drops claimed before a crash yet: %s", exc)
        if not self.options.once:
            try:
                self._start_arrivals()
            except (OSError, RuntimeError) as exc:
                log.error("cannot watch %s: %s", self.spool.dir, watch_problem(exc))
                return 1
        log.info(
            "watching %s -> %s (%s)",
            self.spool.dir,
            self.store.history_dir,
            "once" if self.options.once else "polling" if self.options.polling else "inotify",
        )
        self._rescan("start")
        try:
            # Drops that keep changing must not hold READY (or --once) back for ever.
            settling_until = time.monotonic() + max(5.0, 3 * self.options.settle)
            while self._pending or (
                time.monotonic() < settling_until
                and any(
                    n not in self._drop_waits and not self.intake.readiness.is_unfinished(n)
                    for n in self._deferred
                )
            ):
                self._step()
                if self._stop.is_set():
                    break
                if not self._backoff.due(time.monotonic()):
                    # --once does not wait out the backoff: what is left is said at its
                    # end; a service reports ready all the same and retries in its loop.
                    break
            self._maintain(force=True)
            if self.options.once or self._stop.is_set():
                # What a --once run left is said first: the stop line stays the last.
                left = self.options.once and not self._once_finished()
                code = self._shutdown()
                return 1 if left else code
            self.notifier.ready(self._status_text())
            self._next_rescan = time.monotonic() + self.options.rescan_interval
            while not self._stop.is_set():
                self._step()
                self._check_arrivals()
                if self._next_rescan <= time.monotonic():
                    self._rescan("interval")
                    self._next_rescan = time.monotonic() + self.options.rescan_interval
            return self._shutdown()
        except _Stop as exc:
            log.error("%s", exc)
            self._stop_arrivals()
            return 1

    def _once_finished(self) -> bool:
        """Whether a ``--once`` run took and stored or set aside every drop it saw, saw
        the whole spool, and left no claim unfinished (each that it did not is said in
        one line: the run exits 1)."""
        finished = True
        if self._pending:
            log.error(
                "%d drop(s) could not be stored: left in the spool for the next start",
                len(self._pending),
            )
            finished = False
        if self._drop_waits.quarantine:
            log.error("%d drop(s) could not be set aside", len(self._drop_waits.quarantine))
            finished = False
        if self._drop_waits.claim:
            log.error("%d drop(s) could not be taken", len(self._drop_waits.claim))
            finished = False
        if self._unscanned:
            log.error("the spool could not be scanned: drops it holds are left for the next start")
            finished = False
        try:
            left = [n for n in self.spool.claimed() if is_version_name(n)]
        except StorageError as exc:
            log.error("cannot tell whether claimed drops are left: %s", exc)
            return False
        if left:
            log.error(
                "%d claimed drop(s) could not be finished (in %s): left for the next start",
                len(left),
                self.spool.claimed_dir,
            )
            finished = False
        return finished

    def _shutdown(self) -> int:
        self.notifier.stopping(self._status_text())
        self.notifier.close()
        self.store.close()
        self._stop_arrivals()
        # The last round: what fails now waits for the next start, and says so.
        self.maintenance.retries = False
        self._maintain(force=True)
        try:
            # What the next start will find, not only the drops this loop had heard of.
            waiting = f"{self.spool.backlog()} waiting"
        except StorageError as exc:
            waiting = f"the drops waiting cannot be counted ({exc})"
        log.info(
            "stopped: %d ingested, %d rejected, %s",
            self.counts.ingested,
            self.counts.rejected,
            waiting,
        )
        return 0

    # -- arrivals -------------------------------------------------------------------

    def _start_arrivals(self) -> None:
        self._arrivals = start_arrivals(
            self.spool.dir,
            polling=self.options.polling,
            poll_interval=max(0.1, min(1.0, self.options.settle)),
        )

    def _stop_arrivals(self) -> None:
        if self._arrivals is not None:
            self._arrivals.stop()
            self._arrivals = None

    def _arrivals_alive(self) -> bool:
        if self.options.once:
            return True
        return self._arrivals is not None and self._arrivals.is_alive()

    def _check_arrivals(self) -> None:
        """Never keep running deaf: restart a dead event source, or give up (exit 1).

        Also never keep running on a history that is not the one locked: if the folder
        was removed or replaced, the lock guards nothing any more (a second watcher
        could start), so exit and let systemd start afresh.
        """
        history = self.store.history_dir
        try:
            same = same_file(history, self.intake.history_id)
        except OSError as exc:
            self.locks.unchecked.failed("the history folder", history, exc)
            same = True  # not seen replaced: keep it, and its lock, and look again
        else:
            self.locks.unchecked.passed("the history folder", history)
        if not same:
            raise _Stop(f"the history folder {self.store.history_dir} was removed or replaced")
        # The open lock file keeps the kernel from reporting a removed spool until it is
        # closed, so the spool's identity is checked here too.
        unchanged = self.locks.spool_unchanged()
        try:
            self.locks.check(unchanged)
        except LocksLost as exc:
            raise _Stop(str(exc)) from exc
        replaced = not self.options.once and not unchanged
        old_spool: int | None = None
        if replaced:
            log.error(
                "the spool folder %s was removed or replaced; restarting its watch on the "
                "folder there now",
                self.spool.dir,
            )
            old_spool = self.locks.detach_spool_folder()
        elif self._arrivals_alive():
            return
        else:
            now = time.monotonic()
            self._observer_restarts = [t for t in self._observer_restarts if now - t < 60]
            self._observer_restarts.append(now)
            if len(self._observer_restarts) > _OBSERVER_RESTARTS:
                # Restarting at every tick would run deaf for ever: exit, and let the
                # service manager start the whole process again (or say it cannot).
                raise _Stop(
                    f"the spool observer stopped {len(self._observer_restarts)} times "
                    "within a minute; exiting, for the service manager to start it afresh"
                )
            failure = self._arrivals.failure if self._arrivals is not None else None
            log.error(
                "the spool observer stopped%s; restarting it", f" ({failure})" if failure else ""
            )
        self._stop_arrivals()
        try:
            if replaced:
                # What stands at the spool's path now may be the history, or hold it:
                # its folders must not be made in there.
                s = self.settings
                check_layout(s.spool_dir, s.history_dir, s.rejected_dir, s.latest_path)
            self.spool.ensure_folders()
            if replaced:
                self.locks.lock_spool()
            self._start_arrivals()
        except (LockHeld, OSError, StorageError, RuntimeError, SettingError) as exc:
            if old_spool is not None:
                os.close(old_spool)  # its claims are never moved into another's spool
            if isinstance(exc, LockHeld):
                raise _Stop(refused_words(exc)) from exc
            if isinstance(exc, SettingError):
                why = exc.message  # the folders as they are now, not an option given
            elif isinstance(exc, RuntimeError) or (
                isinstance(exc, OSError) and not isinstance(exc, StorageError)
            ):
                why = watch_problem(exc)  # the kernel's limits, or a thread's
            else:
                why = str(exc)
            raise _Stop(f"cannot watch {self.spool.dir} any more: {why}") from exc
        # The drops taken in a folder moved away are this watcher's to finish.
        left = None if old_spool is None else take_back_claims(old_spool, self.spool)
        if left is not None and left.moved:
            self.maintenance.meta_dirty = True  # recovery runs with the next round too
            try:
                self._recover_claims()
            except StorageError as exc:
                log.error("cannot finish the drops brought back yet: %s", exc)
        self._rescan("observer restart")

    # -- the loop -------------------------------------------------------------------

    def _wait_time(self) -> float:
        now = time.monotonic()
        deadlines = [now + _TICK]
        if self._pending and self._backoff.due(now):
            return 0.0
        if self._deferred:
            deadlines.append(min(self._deferred.values()))
        if self._pending:
            deadlines.append(self._backoff.until)
        return max(0.0, min(deadlines) - now)

    def _step(self) -> None:
        """Collect events, process what is due, keep the caches and systemd informed."""
        if self._arrivals is None:  # --once: nothing to wait for but the clock
            self._stop.wait(self._wait_time())
        else:
            for item in self._arrivals.wait(self._wait_time()):
                self._absorb(item)
        now = time.monotonic()
        for name, due in list(self._deferred.items()):
            if due <= now:
                del self._deferred[name]
                self._pending.setdefault(name, How.SETTLE)
        # Maintenance first: after a backoff, recovery and cleanup (which may free the
        # space a failing batch needs) must not wait behind that batch.
        self._maintain(force=False)
        if self._pending and self._backoff.due(now):
            self._process_batch()
            self._maintain(force=False)
        self._ping()

    def _absorb(self, item: Arrival) -> None:
        if isinstance(item, DropSeen):
            if item.how is How.COMPLETE:
                self.intake.readiness.completed(item.name)
            current = self._pending.get(item.name)
            if current is None or item.how is How.COMPLETE:
                self._pending[item.name] = item.how
            self._deferred.pop(item.name, None)
        elif isinstance(item, RescanNeeded):
            log.warning("rescanning the spool: %s", item.why)
            self._rescan(item.why)
        elif isinstance(item, FolderSeen):
            self._log_folder(item.name)
        elif isinstance(item, SpoolGone):
            # Said once, as the liveness check finds the folder gone and watches anew.
            log.debug("the kernel reports the spool folder %s removed or moved", self.spool.dir)

    def _log_folder(self, name: str) -> None:
        self._log_once(name, f"ignoring {self.spool.dir / name}: a folder, not a drop")

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning("%s", message)

    def _rescan(self, why: str) -> None:
        try:
            self.spool.ensure_folders()
            candidates = self.spool.scan()
        except StorageError as exc:
            log.error("cannot scan the spool (%s): %s", why, exc)
            self._unscanned = True
            return
        self._unscanned = False
        log.debug("rescanned the spool (%s): %d candidate(s)", why, len(candidates))
        for c in candidates:
            if stat.S_ISDIR(c.mode):
                self._log_folder(c.name)
            elif c.name not in self._pending and c.name not in self._deferred:
                self._pending[c.name] = How.SETTLE
        # The history can change by hand too (a restored file): keep the index honest,
        # and repair the caches (a deleted metadata file or latest link) here rather
        # than on the next drop.
        if why != "start":
            self.maintenance.check_caches()

    # -- a group of drops -------------------------------------------------------------

    def _process_batch(self) -> None:
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
        claimed: dict[str, How] = {}
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
            self._fail(None, exc)
            return
        if failure is not None:
            # Taken again first, as they came: their turn in arrival order is not lost.
            returned = {name: claimed.get(name, How.SETTLE) for name in failure.returned}
            self._pending = {**returned, **self._pending}
            self._fail(failure.drop, failure.error)
        if progressed and self._failures == failures_before:
            # The whole group went through, its commit included: only then is the wait
            # reset. A drop claimed and staged proves nothing if its link then fails.
            self._backoff.succeeded()
            # Smaller groups after running out of descriptors: grown back, step by step.
            self._group_max = min(self._group_limit, 2 * self._group_max)
        if not stored:
            return
        for item, error in zip(stored, self.intake.release(stored), strict=True):
            if error is not None:
                self._fail(None, error)  # recovery removes the claim later
            self._ingested(item)
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
        for name, how in list(itertools.islice(self._pending.items(), 4 * self._group_max)):
            if self._stop.is_set():
                break
            try:
                outcome = self.intake.take(name, how, batch)
            except StorageError as exc:
                self._fail(name, exc)
                break
            self._pending.pop(name, None)
            if not (isinstance(outcome, Blocked) and outcome.step == "claim"):
                progressed = True
            if isinstance(outcome, Stored):
                claimed[name] = how
            self._apply(outcome)
            if len(claimed) >= self._group_max or time.monotonic() - began > _GROUP_SECONDS:
                break  # publish this group; the rest waits one loop (watchdog pings)
        return progressed

    def _apply(self, outcome: Outcome) -> None:
        """Apply what became of one drop to the loop's bookkeeping (once)."""
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
                self.spool.rejected_dir / outcome.where,
                extra={"event": "rejected", "drop": outcome.drop, "reason": outcome.reason},
            )
        elif isinstance(outcome, Deferred):
            if outcome.claim_left:
                self._drop_waits.forget(outcome.drop)
                self.maintenance.meta_dirty = True  # the next round finishes the claim left
            if outcome.until is not None:
                self._deferred[outcome.drop] = outcome.until
        elif isinstance(outcome, Dropped):
            self._drop_waits.forget(outcome.drop)
        elif isinstance(outcome, Ignored):
            self._log_once(outcome.key, outcome.message)
        elif isinstance(outcome, Blocked):
            retry = self._drop_waits.wait(outcome)
            self._deferred[outcome.drop] = time.monotonic() + retry
            if outcome.step == "claim":
                self.metrics.failed()
                log.error(
                    "cannot take drop %s: %s; %s",
                    outcome.drop,
                    outcome.error,
                    self._then(retry, "it"),
                )
            else:
                log.error(
                    "cannot set aside %s (%s): %s; %s",
                    outcome.drop,
                    outcome.reason,
                    outcome.error,
                    self._then(retry),
                )
        elif isinstance(outcome, Recovered):
            self.maintenance.latest_dirty = self.maintenance.meta_dirty = True
            log.info("%s was already stored; removed its claim", outcome.version)

    def _ingested(self, item: Stored) -> None:
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

    def _fail(self, name: str | None, exc: StorageError) -> None:
        self._failures += 1
        if exc.errno in (errno.EMFILE, errno.ENFILE) and self._group_max > 1:
            # Out of descriptors: a group holds one per drop, so the same group again
            # would fail the same way. Smaller groups from now on.
            self._group_max //= 2
            log.warning(
                "out of file descriptors: groups of at most %d drop(s) from now on",
                self._group_max,
            )
        retry = self._backoff.failed()
        self.metrics.failed()
        what = f"cannot store drop {name}" if name else "cannot update the history"
        log.error("%s: %s; %s", what, exc, self._then(retry))
        # Maintenance after the backoff also finishes any claim a failed commit left,
        # and sweeps the temp files a failed step could not remove.
        self.maintenance.after_failure(whole_group=name is None)

    def _then(self, retry: float, it: str = "") -> str:
        """What follows a failed step, for its log line: a service retries after
        ``retry`` seconds; a ``--once`` run does not, and leaves the drop for the next."""
        if self.options.once:
            return "left in the spool for the next start"
        return f"retrying {it + ' ' if it else ''}in {retry:.1f} s"

    # -- maintenance ------------------------------------------------------------------

    def _maintain(self, *, force: bool) -> None:
        """Latest link, cleanup and metadata: once per batch, not once per drop."""
        now = time.monotonic()
        if not self._backoff.due(now) and not force:
            return
        self.maintenance.run(now, force=force, busy=bool(self._pending))

    def _recover_claims(self) -> None:
        for outcome in self._recovery.recover():
            self._apply(outcome)

    # -- systemd ------------------------------------------------------------------------

    def _status_text(self) -> str:
        waiting = len(self._pending) + len(self._deferred)
        return (
            f"ingested {self.counts.ingested}, rejected {self.counts.rejected}, backlog {waiting}"
        )

    def _ping(self) -> None:
        if not self.notifier.enabled:
            return
        now = time.monotonic()
        interval = self.notifier.watchdog_interval
        if interval is not None and now >= self._next_ping and self._arrivals_alive():
            self.notifier.watchdog()
            self._next_ping = now + interval
        text = self._status_text()
        if text != self._last_status:
            self.notifier.status(text)
            self._last_status = text
