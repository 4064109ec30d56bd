"""``ingester watch``: the service loop that takes every drop from the spool exactly once.

The pipeline of one drop, its numbering and what a crash at each step leaves are
described once, in ``docs/design.md``. The modules, in the order a drop meets them:

* :mod:`ingester.intake.arrivals`: inotify or polling events from the spool folder;
* :mod:`ingester.intake.readiness`: whether a drop is complete (close-write, lease, settle);
* :mod:`ingester.intake.arrival_order`: a complete drop waits behind an older settling one;
* :mod:`ingester.intake.intake`: steps 1-4 for each drop, 5-6 for its group, and 8; it
  returns an outcome (stored, rejected, deferred, gone...);
* :mod:`ingester.intake.groups`: the drops waiting, taken a group at a time, and what
  became of each applied once;
* :mod:`ingester.intake.recovery`: the claims a crash or a failure left;
* :mod:`ingester.history.store`: the versioned history; a group of versions is made durable by
  one ``HistoryStore.batch()`` (step 7).

This module is the loop around them: it takes the locks, collects events, decides when
a group is due, runs maintenance (recovery, cleanup, metadata, the latest link's
repair, the rejected folder's retention), never runs deaf (a dead event source is
restarted, a spool made anew watched anew), handles signals and keeps systemd informed
(READY, STATUS, WATCHDOG pings, and EXTEND_TIMEOUT_USEC while a long copy before READY
makes progress).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import threading
import time
from pathlib import Path

from ..clock import ClockJump
from ..errors import IngesterError, SettingError, StorageError
from ..history.lock import WATCH, WATCH_ONCE, LockHeld, same_file
from ..history.names import is_version_name
from ..history.store import HistoryStore
from ..runtime.notify import SystemdNotifier
from ..runtime.signals import StopFlag, on_stop_signals
from ..settings.layout import check_layout
from ..settings.resolved import Settings
from ..settings.watch import WatchOptions
from .arrival_order import hold_limit
from .arrivals import (
    Arrival,
    Arrivals,
    DropSeen,
    FolderSeen,
    RescanNeeded,
    SpoolGone,
    start_arrivals,
    watch_problem,
)
from .groups import Backlog
from .intake import Intake
from .locks import LatestLinkKept, LocksLost, WatcherLocks, refused_words, start_refused
from .maintenance import Maintenance
from .metrics import NO_METRICS, Metrics
from .readiness import Readiness
from .recovery import ClaimRecovery, take_back_claims
from .spool import Spool

__all__ = ["WatchOptions", "Watcher"]

log = logging.getLogger("ingester.watcher")

_TICK = 0.25  # seconds, the longest wait: bounds the reaction to signals and liveness checks
_OBSERVER_RESTARTS = 5  # a dead observer restarted this often within a minute: give up


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
        self._stop = StopFlag()
        self.intake = Intake(
            store=self.store,
            spool=self.spool,
            max_bytes=settings.max_bytes,
            readiness=Readiness(options.settle, options.rescan_interval),
            settle=options.settle,
            alive=self._alive,
            stop=self._stop,
        )
        self._recovery = ClaimRecovery(self.intake)
        self.clock_jump = ClockJump()
        self.metrics = metrics
        self.maintenance = Maintenance(
            self.store,
            self.spool,
            settings,
            options.retry_max,
            recover=self._recover_claims,
            clock_jump=self.clock_jump,
            retries=not options.once,
            metrics=metrics,
        )
        self._logged: set[str] = set()
        self.backlog = Backlog(
            self.store,
            self.intake,
            self.maintenance,
            metrics,
            self._stop,
            once=options.once,
            retry_max=options.retry_max,
            log_once=self._log_once,
        )
        self._arrivals: Arrivals | None = None
        self._observer_restarts: list[float] = []  # when a dead observer was restarted
        self._next_rescan = 0.0
        self._unscanned = False  # the last scan of the spool failed: it may hold drops
        self._next_ping = 0.0
        self._next_extension = 0.0
        self._ready_said = False  # READY=1 sent: systemd's start-up timeout is over
        self._last_status = ""
        self.metrics.watch(lambda: len(self.backlog), lambda: self.maintenance.holding)

    # -- lifecycle ----------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        """Finish the drop in hand, then stop (signal handler); a drop being copied into a
        quarantine on another filesystem is left in the spool at the copy's next piece."""
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
        # A --once run takes only what its start finds: noted as such, so that serve
        # never counts on it for a drop made meanwhile.
        purpose = WATCH_ONCE if self.options.once else self.lock_purpose
        self.locks = WatcherLocks(self.store, self.spool, purpose)
        try:
            self.locks.take()
        except LockHeld as exc:
            log.error("%s", refused_words(exc))
            return 1
        except LatestLinkKept as exc:
            log.error("cannot start: %s", exc)
            return 1
        except OSError as exc:
            log.error("cannot start: %s", start_refused(exc, self._own_folders()))
            return 1
        try:
            return self._run_locked()
        finally:
            self.locks.release()

    def _own_folders(self) -> tuple[Path, ...]:
        """The folders that are the service's own: what a refused start may say to
        hand to its user."""
        s = self.settings
        return (s.root, s.spool_dir, s.rejected_dir, s.history_dir, s.latest_path)

    def _run_locked(self) -> int:
        try:
            report = self.store.initialize()
            self.intake.start()
        except OSError as exc:
            log.error("cannot start: %s", start_refused(exc, self._own_folders()))
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
            settling_until = time.monotonic() + hold_limit(self.options.settle)
            backlog = self.backlog
            while backlog.pending or (time.monotonic() < settling_until and backlog.settling()):
                self._step()
                if self._stop.is_set():
                    break
                # The locks are looked at as in the loop below: a backlog after an outage
                # can take minutes, and a lock file removed meanwhile must not leave the
                # history or the spool unguarded that long. The event source and a spool
                # made anew wait for that loop: the backlog is drained first.
                self._check_locks()
                if not backlog.backoff.due(time.monotonic()):
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
            self._ready_said = True
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
        finished = self.backlog.all_taken()
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
        # It takes no drop from now on: said where serve looks before a promise.
        self.locks.note_stopping()
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
            self.backlog.counts.ingested,
            self.backlog.counts.rejected,
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

    def _check_locks(self) -> bool:
        """Take a lock file removed by hand again at once; returns whether the spool
        folder is still the one locked.

        If the history folder was removed or replaced, its lock guards nothing any more
        (a second watcher could start): raises :class:`_Stop`, to exit and let systemd
        start afresh, as when a lock cannot be held again.
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
            return self.locks.check(unchanged)
        except LocksLost as exc:
            raise _Stop(str(exc)) from exc

    def _check_arrivals(self) -> None:
        """Never keep running deaf: restart a dead event source, or give up (exit 1).

        Also never keep running on a history that is not the one locked (see
        :meth:`_check_locks`).
        """
        unchanged = self._check_locks()
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
        due = self.backlog.next_look(now)
        deadline = now + _TICK if due is None else min(now + _TICK, due)
        return max(0.0, deadline - now)

    def _step(self) -> None:
        """Collect events, process what is due, keep the caches and systemd informed."""
        if self._arrivals is None:  # --once: nothing to wait for but the clock
            self._stop.wait(self._wait_time())
        else:
            for item in self._arrivals.wait(self._wait_time()):
                self._absorb(item)
        now = time.monotonic()
        self.backlog.due(now)
        # Maintenance first: after a backoff, recovery and cleanup (which may free the
        # space a failing batch needs) must not wait behind that batch.
        self._maintain(force=False)
        if self.backlog.ready(now):
            self.backlog.take_group()
            self._maintain(force=False)
        self._ping()

    def _absorb(self, item: Arrival) -> None:
        if isinstance(item, DropSeen):
            self.backlog.seen(item.name, item.how)
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
            else:
                self.backlog.found(c.name)
        # The history can change by hand too (a restored file): keep the index honest,
        # and repair the caches (a deleted metadata file or latest link) here rather
        # than on the next drop.
        if why != "start":
            self.maintenance.check_caches()

    # -- maintenance ------------------------------------------------------------------

    def _maintain(self, *, force: bool) -> None:
        """Latest link, cleanup and metadata: once per batch, not once per drop."""
        if self._stop.is_set():
            # Stopped amid a group: it takes no drop from now on. Said before this
            # upkeep (the latest link, cleanup, the metadata: seconds on a slow disk),
            # not only once it is done.
            self.locks.note_stopping()
        now = time.monotonic()
        if not self.backlog.backoff.due(now) and not force:
            return
        self.maintenance.run(now, force=force, busy=bool(self.backlog.pending))

    def _recover_claims(self) -> None:
        try:
            self._recovery.recover(self.backlog.apply)
        finally:
            # What is left, counted as it stands: a recovery that stopped midway had
            # finished some, and one that returned may have left a claim it could not
            # take (set aside later, or a stop amid its copy).
            with contextlib.suppress(StorageError):
                left = [n for n in self.spool.claimed() if is_version_name(n)]
                self.backlog.claims_left(len(left))

    # -- systemd ------------------------------------------------------------------------

    def _status_text(self) -> str:
        counts = self.backlog.counts
        waiting = len(self.backlog)
        return f"ingested {counts.ingested}, rejected {counts.rejected}, backlog {waiting}"

    def _ping(self) -> None:
        if not self.notifier.enabled:
            return
        if self._arrivals_alive():
            self._watchdog_due()
        text = self._status_text()
        if text != self._last_status:
            self.notifier.status(text)
            self._last_status = text

    def _alive(self) -> None:
        """A long step of the loop (a drop copied into a quarantine on another
        filesystem) put another piece on disk: ping the watchdog if a ping is due, as
        between steps, and before ``READY=1`` extend the start-up timeout too.

        A step that makes no progress (a hung disk) never calls this, so the watchdog
        still fires on it, and before ``READY=1`` the start-up timeout does once the
        last extension has run out. The observer is not looked at here: the loop looks
        at it (and restarts it) as soon as the step ends, and the rescan that follows a
        restart finds what it missed.
        """
        if self.notifier.enabled:
            self._watchdog_due()
            if not self._ready_said and not self._stop.is_set():
                self._extension_due()

    def _watchdog_due(self) -> None:
        """``WATCHDOG=1`` if one is due (every ``watchdog_interval`` seconds)."""
        now = time.monotonic()
        interval = self.notifier.watchdog_interval
        if interval is not None and now >= self._next_ping:
            self.notifier.watchdog()
            self._next_ping = now + interval

    def _extension_due(self) -> None:
        """``EXTEND_TIMEOUT_USEC`` if one is due: as often as the pings, or every quarter
        of the extension when there is no watchdog.

        Before ``READY=1`` systemd's watchdog is not armed: its start-up timeout runs,
        and the pings do not extend it. A backlog that holds a copy of gigabytes (one a
        stop gave up, set aside at the next start) could outlast it, and every restart
        would begin the copy anew. Once a stop was asked no copy needs more time: it is
        given up at its next piece.
        """
        now = time.monotonic()
        if now < self._next_extension:
            return
        extension = self.notifier.timeout_extension
        interval = self.notifier.watchdog_interval
        self.notifier.extend_timeout(extension)
        self._next_extension = now + (interval if interval is not None else extension / 4)
