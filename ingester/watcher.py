"""``ingester watch``: take every drop from the spool exactly once, fast, through crashes.

What happens to one drop (``<spool>/foo.json``)::

    1. read     open O_NOFOLLOW|O_NONBLOCK, fstat: a regular file?, read <= max-bytes
    2. judge    judge_payload(bytes); invalid -> rejected/ with a reason file, done
    3. stage    copy path only: the bytes into <history>/.tmp-w-* (StagedFile; its
                empty file made ahead of time, after the previous group: SpareFile)
    4. claim    rename foo.json -> <spool>/.claimed/<version>.json
    5. seal     fsync the staged copy; or, zero-copy, fchmod 0444 + fsync the drop's own
                inode; then fsync .claimed/
    6. commit   link the staged copy (or the claimed inode) as <history>/<version>.json
    --- once per group of drops (all that were waiting, at most 256) ---
    7. publish  re-point the latest link, fsync <history>: the group's names are durable
    8. release  unlink the claims
    then, when idle or once a second: cleanup and the metadata.

Zero-copy is used when the watcher owns the drop (same user), it has one link and the
spool is on the history's filesystem: its inode becomes the version, as a rename would
make it. Otherwise (under systemd the scraper is another user) the bytes are copied, so
no one else can ever write to a version.

**The commit point is step 6**, made durable in step 7, and the claim of step 4 is the
record that makes a crash anywhere recoverable. The claim's name *is* the version name,
so recovery (run on start with the history lock held, and after each failure) is a pure
function of names:

* crash before 4: the drop is still in the spool and a staged temp is swept on start;
  the drop is taken again as if new. Nothing was stored.
* crash between 4 and 6: ``.claimed/<v>`` exists, ``<history>/<v>`` does not: the
  claimed bytes are validated and committed as ``<v>``. Stored once.
* crash between 6 and 8: both exist: the claim is removed, once its bytes are seen to
  be the version's (a claim whose name is taken by other bytes is stored anew). Stored
  once.

Recovery deletes, so it trusts nothing by name: ``.claimed/`` must be our own real
folder (checked at start and before every use; the watcher refuses to start otherwise,
naming the folder and its owner), and a claim and its version that are one directory
entry are never "duplicates". In the normal path too, what is claimed is what is
stored: the claimed bytes are compared with the bytes judged, and a claim holding
anything else goes back to the spool to be judged again.

Every version is complete before its name appears (its bytes were fsynced in step 5),
and a claim is durable before its version (a power cut cannot resurrect the drop in the
spool beside a stored version). The latest link and the metadata are caches of the
version files, repaired on start. The ordering of the fsyncs is deliberate: metadata
operations first, then one fsync, so that on ext4 a single journal commit carries them.

Store failures (permission, disk full, read-only filesystem) mostly happen in step 3,
before the drop is touched; a failure after the claim puts the drop back in the spool
(same inode and bytes) or, failing that, leaves the claim for recovery. The error is
logged with the drop, the path and the cause, and the whole pipeline backs off (0.5 s
doubling up to ``--retry-max``) and retries by itself until the fault clears.

Events: watchdog's inotify reader (``InotifyFD``) with our own callback and event mask
(IN_MOVED_TO, IN_CLOSE_WRITE, IN_CREATE, IN_DELETE_SELF). Leaving out IN_MOVED_FROM
matters: watchdog's observer holds each one 0.5 s waiting for its pair, and every drop
we claim makes one (FIELD-NOTES). ``--polling`` uses watchdog's PollingObserver. A full
rescan runs at start, every ``--rescan-interval`` and right after an inotify queue
overflow; the reader thread's liveness is checked every loop and it is restarted, or
we exit non-zero so systemd restarts us.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import queue
import signal
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchDescriptor,
)
from watchdog.observers.polling import PollingObserver

from . import durable
from .durable import StorageError
from .housekeeping import RejectedRetention
from .lock import HistoryLock, LockHeld
from .model import PayloadRejected, judge_payload
from .names import is_version_name
from .notify import SystemdNotifier
from .settings import Settings
from .spool import Opened, Spool, open_entry
from .store import VERSION_MODE, HistoryStore
from .watch_metrics import NO_METRICS, Metrics

__all__ = ["WatchOptions", "Watcher"]

log = logging.getLogger("ingester.watcher")

_MAINTENANCE_EVERY = 1.0  # seconds between cleanup/metadata rounds while drops keep coming
_TICK = 0.25  # longest wait: bounds the reaction to signals and liveness checks
_BACKOFF_START = 0.5
_GROUP_MAX = 256  # most versions linked before one fsync of the history makes them durable
_GROUP_SECONDS = 1.0  # and at most this long, so the loop keeps pinging systemd
_CLOCK_JUMP = 3600.0  # seconds the wall clock may gain on the boot clock before retention holds
# How long an invalid drop that may still be open for writing (another user's file found
# by a scan: no read lease to ask, no close-write seen) must stay unchanged before it is
# rejected: a slow writer pausing mid-file is not a bad drop.
_UNFINISHED_PATIENCE = 300.0
_UNFINISHED_RECHECK = 5.0


def _boot_clock() -> float:
    """Seconds since boot, suspend included (a suspend is not a clock jump)."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


@dataclass(frozen=True)
class WatchOptions:
    """The knobs of ``ingester watch``."""

    once: bool = False
    polling: bool = False
    rescan_interval: float = 30.0
    retry_max: float = 30.0
    settle: float = 1.0


class How(Enum):
    """How sure we are that a spool entry is complete."""

    COMPLETE = "complete"  # renamed in, or closed after writing: take it now
    CREATED = "created"  # just created: take it only if it cannot be written in place
    SETTLE = "settle"  # found by a scan or polling: take once its mtime is settle-old


# -- the observer ---------------------------------------------------------------------


class _SpoolInotify:
    """watchdog's inotify reader thread (``InotifyFD``) with our callback on the spool.

    One thread between the kernel and the work queue. watchdog's full observer adds two
    more (emitter and dispatcher, about 0.3 ms per drop here) and an event grouper that
    holds every IN_MOVED_FROM for 0.5 s; we do not even ask for IN_MOVED_FROM.
    """

    MASK = Mask(
        InotifyConstants.IN_MOVED_TO
        | InotifyConstants.IN_CLOSE_WRITE
        | InotifyConstants.IN_CREATE
        | InotifyConstants.IN_DELETE_SELF
        | InotifyConstants.IN_MOVE_SELF
        | InotifyConstants.IN_ONLYDIR
    )

    def __init__(self, spool_dir: Path, sink: Callable[[tuple[Any, ...]], None]) -> None:
        self._spool = spool_dir
        self._sink = sink
        self._lost = False
        self._fd = InotifyFD()
        try:
            self._fd.add_callback(os.fsencode(spool_dir), self.MASK, self, CallbackId(id(self)))
        except OSError:
            self._fd.close()
            raise

    def start(self) -> None:
        """Start reading events."""
        self._fd.start()

    def stop(self) -> None:
        """Stop reading (unblocks the reader thread)."""
        self._fd.stop()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the reader thread to end."""
        if self._fd.is_alive():
            self._fd.join(timeout)

    def is_alive(self) -> bool:
        """Reading, and the spool folder still watched."""
        return self._fd.is_alive() and not self._lost

    # WatchCallback, called on the reader thread:

    def on_event(self, event: InotifyEvent) -> None:
        if event.is_delete_self or event.is_move_self:
            self._lost = True
            self._sink(("spool-gone",))
            return
        name = os.fsdecode(event.name)
        if not name.endswith(".json") or name.startswith("."):
            return
        if event.is_directory:
            self._sink(("dir", name))
        elif event.is_close_write or event.is_moved_to:
            self._sink(("drop", name, How.COMPLETE))
        elif event.is_create:
            self._sink(("drop", name, How.CREATED))

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        self._lost = True

    def on_queue_overflow(self) -> None:
        self._sink(("rescan", "inotify queue overflow"))


class _Handler(FileSystemEventHandler):
    """For ``--polling``: runs on the observer thread, turns events into work items."""

    def __init__(self, spool_dir: Path, sink: Callable[[tuple[Any, ...]], None], polling: bool):
        self.spool_dir = os.fspath(spool_dir)
        self.sink = sink
        self.polling = polling

    def dispatch(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path)
        if event.event_type == "deleted" and src == self.spool_dir:
            self.sink(("spool-gone",))
            return
        path = dest if event.event_type == "moved" else src
        parent, name = os.path.split(path)
        if parent != self.spool_dir or not name.endswith(".json") or name.startswith("."):
            return
        if event.is_directory:
            self.sink(("dir", name))
        elif self.polling:
            if event.event_type in ("created", "modified", "moved"):
                self.sink(("drop", name, How.SETTLE))
        elif event.event_type in ("closed", "moved"):
            self.sink(("drop", name, How.COMPLETE))
        elif event.event_type == "created":
            self.sink(("drop", name, How.CREATED))


# -- the worker -----------------------------------------------------------------------


class _Stop(Exception):
    pass


class _DropWaits(Exception):
    """A failure of one drop alone (it cannot be claimed): it waits, the others go on."""

    def __init__(self, error: StorageError) -> None:
        super().__init__(str(error))
        self.error = error


def _open_for_writing(path: Path) -> bool | None:
    """Whether anyone has ``path`` open for writing; None when we may not ask.

    A read lease (``F_SETLEASE``) is refused with EAGAIN while the file is open for
    writing anywhere. Leases need the file's owner or CAP_LEASE.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return True if exc.errno in (errno.EAGAIN, errno.EBUSY) else None
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Linked:
    """A drop whose version is linked in the history, waiting for the group's fsync."""

    drop: str
    version: str
    size: int
    started: float


@dataclass
class _Counts:
    ingested: int = 0
    rejected: int = 0


class Watcher:
    """The service loop. ``run()`` returns the process exit code."""

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
        self._rejected_retention = RejectedRetention(
            settings.rejected_dir, settings.rejected_retention_days
        )
        self.counts = _Counts()
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._pending: dict[str, How] = {}  # insertion order is arrival order
        self._deferred: dict[str, float] = {}  # name -> monotonic time to look again
        self._dirs_logged: set[str] = set()
        self._quarantine_backoff: dict[str, float] = {}
        self._drop_backoff: dict[str, float] = {}  # drops that cannot be claimed, each alone
        self._copied_claims: dict[str, tuple[int, int]] = {}  # version -> claim's size, mtime
        self._unfinished: dict[str, tuple[tuple[int, int, int], float]] = {}
        self._writing: set[str] = set()  # created in place, close-write not seen yet
        self._watched: dict[str, tuple[tuple[int, int, int], float]] = {}  # settle checks
        self._stop = threading.Event()
        self._observer: BaseObserver | _SpoolInotify | None = None
        self._blocked_until = 0.0
        self._backoff = 0.0
        self._latest_dirty = False
        self._meta_dirty = True
        self._sweep_needed = False
        self._last_maintenance = 0.0
        self._maintenance_until = 0.0
        self._maintenance_backoff = 0.0
        self._next_rescan = 0.0
        self._next_ping = 0.0
        self._last_status = ""
        self._euid = os.geteuid()
        self._umask = durable.current_umask()
        self._same_fs = False
        self._history_id = (0, 0)
        self._claimed_id = (0, 0)
        self._cache_until = 0.0  # latest link retries wait for this (monotonic)
        self._cache_backoff = 0.0
        self._cache_reported: set[str] = set()
        self._wall_clock: Callable[[], float] = time.time
        self._clock_offset: float | None = None  # wall minus boot clock at the first look
        self._holding = False  # automatic deletions held back after a wall-clock jump
        self._copied = False  # drops of another user seen: keep a spare temp file ready
        self.metrics = metrics
        self.metrics.watch(lambda: len(self._pending) + len(self._deferred), lambda: self._holding)

    # -- lifecycle ----------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        """Finish the drop in hand, then stop (signal handler)."""
        self._stop.set()

    def _install_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():

            def handler(signum: int, frame: FrameType | None) -> None:
                self.request_stop()

            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)
            # A read lease broken by a writer sends SIGIO, whose default is to terminate.
            signal.signal(signal.SIGIO, signal.SIG_IGN)

    def run(self) -> int:
        """Take the lock, recover, drain the backlog, then watch until stopped."""
        self._install_signals()
        try:
            self.store.history_dir.mkdir(parents=True, exist_ok=True)
            lock = HistoryLock(self.store.lock_path, "watch")
            lock.acquire()
        except LockHeld as exc:
            log.error("another writer holds the history: %s", exc)
            return 1
        except (StorageError, OSError) as exc:
            log.error("cannot start: %s", exc)
            return 1
        try:
            return self._run_locked()
        finally:
            lock.release()

    def _run_locked(self) -> int:
        try:
            report = self.store.initialize()
            self.spool.ensure_folders()
            history = os.stat(self.store.history_dir)
            self._history_id = (history.st_dev, history.st_ino)
            self._claimed_id = self.spool.check_claimed(self._euid, self._history_id)
            self._same_fs = self._claimed_id[0] == history.st_dev
        except OSError as exc:
            log.error("cannot start: %s", exc)
            return 1
        try:
            report.removed_temps += self.spool.sweep_temps()
        except StorageError as exc:
            log.warning("cannot sweep temp files in the quarantine folder: %s", exc)
        if report.removed_temps:
            log.info("removed %d stale temp file(s)", len(report.removed_temps))
        if report.metadata_created:
            log.info("new history in %s", self.store.history_dir)
        if report.metadata_rebuilt:
            log.warning("metadata rebuilt from a scan (it was %s)", report.metadata_rebuilt)
        if report.latest_repaired:
            log.warning("latest link repaired (it %s)", report.latest_repaired)
        for error in report.cache_errors:
            # Caches never gate ingest: logged, and retried by the maintenance rounds.
            log.error("cannot refresh a cache (drops are still stored): %s", error)
            self._latest_dirty = self._meta_dirty = True
        self._recover_claims_safely()
        if not self.options.once:
            try:
                self._start_observer()
            except OSError as exc:
                log.error("cannot watch %s: %s", self.spool.dir, exc)
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
                    n not in self._quarantine_backoff
                    and n not in self._drop_backoff
                    and n not in self._unfinished
                    for n in self._deferred
                )
            ):
                self._step()
                if self._stop.is_set():
                    break
                if self._blocked_until > time.monotonic():
                    if self.options.once:
                        log.error("the backlog cannot be stored now; drops stay in the spool")
                        self._stop_observer()
                        return 1
                    break  # report ready all the same; the retries go on in the main loop
            self._maintain(force=True)
            if self.options.once or self._stop.is_set():
                code = self._shutdown()
                if self.options.once and self._quarantine_backoff:
                    log.error("%d drop(s) could not be set aside", len(self._quarantine_backoff))
                    return 1
                if self.options.once and self._drop_backoff:
                    log.error("%d drop(s) could not be taken", len(self._drop_backoff))
                    return 1
                return code
            self.notifier.ready(self._status_text())
            self._next_rescan = time.monotonic() + self.options.rescan_interval
            while not self._stop.is_set():
                self._step()
                self._check_observer()
                if self._next_rescan <= time.monotonic():
                    self._rescan("interval")
                    self._next_rescan = time.monotonic() + self.options.rescan_interval
            return self._shutdown()
        except _Stop as exc:
            log.error("%s", exc)
            self._stop_observer()
            return 1

    def _shutdown(self) -> int:
        self.notifier.stopping(self._status_text())
        self.notifier.close()
        self.store.drop_spare()
        self._stop_observer()
        self._maintain(force=True)
        log.info(
            "stopped: %d ingested, %d rejected, %d waiting",
            self.counts.ingested,
            self.counts.rejected,
            len(self._pending) + len(self._deferred),
        )
        return 0

    # -- observer -----------------------------------------------------------------

    def _sink(self, item: tuple[Any, ...]) -> None:
        self._events.put(item)

    def _start_observer(self) -> None:
        observer: BaseObserver | _SpoolInotify
        if self.options.polling:
            observer = PollingObserver(timeout=max(0.1, min(1.0, self.options.settle)))
            observer.schedule(
                _Handler(self.spool.dir, self._sink, polling=True),
                os.fspath(self.spool.dir),
                recursive=False,
            )
        else:
            observer = _SpoolInotify(self.spool.dir, self._sink)
        observer.start()
        self._observer = observer

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None

    def _observer_alive(self) -> bool:
        observer = self._observer
        if self.options.once:
            return True
        if observer is None or not observer.is_alive():
            return False
        if isinstance(observer, BaseObserver):
            return all(e.is_alive() for e in observer.emitters)
        return True

    def _check_observer(self) -> None:
        """Never keep running deaf: restart a dead observer, or give up (exit 1).

        Also never keep running on a history that is not the one locked: if the folder
        was removed or replaced, the lock guards nothing any more (a second watcher
        could start), so exit and let systemd start afresh.
        """
        try:
            st = os.stat(self.store.history_dir)
            same = (st.st_dev, st.st_ino) == self._history_id
        except OSError:
            same = False
        if not same:
            raise _Stop(f"the history folder {self.store.history_dir} was removed or replaced")
        if self._observer_alive():
            return
        log.error("the spool observer stopped; restarting it")
        self._stop_observer()
        try:
            self.spool.ensure_folders()
            self._start_observer()
        except (OSError, StorageError) as exc:
            raise _Stop(f"cannot watch {self.spool.dir} any more: {exc}") from exc
        self._rescan("observer restart")

    # -- the loop -------------------------------------------------------------------

    def _wait_time(self) -> float:
        now = time.monotonic()
        deadlines = [now + _TICK]
        if self._pending and now >= self._blocked_until:
            return 0.0
        if self._deferred:
            deadlines.append(min(self._deferred.values()))
        if self._pending:
            deadlines.append(self._blocked_until)
        return max(0.0, min(deadlines) - now)

    def _step(self) -> None:
        """Collect events, process what is due, keep the caches and systemd informed."""
        try:
            item = self._events.get(timeout=self._wait_time())
        except queue.Empty:
            pass
        else:
            self._absorb(item)
            while True:
                try:
                    self._absorb(self._events.get_nowait())
                except queue.Empty:
                    break
        now = time.monotonic()
        for name, due in list(self._deferred.items()):
            if due <= now:
                del self._deferred[name]
                self._pending.setdefault(name, How.SETTLE)
        # Maintenance first: after a backoff, recovery and cleanup (which may free the
        # space a failing batch needs) must not wait behind that batch.
        self._maintain(force=False)
        if self._pending and now >= self._blocked_until:
            self._process_batch()
            self._maintain(force=False)
        self._ping()

    def _absorb(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "drop":
            name, how = item[1], item[2]
            if how is How.COMPLETE:
                self._writing.discard(name)
                self._watched.pop(name, None)
            current = self._pending.get(name)
            if current is None or how is How.COMPLETE:
                self._pending[name] = how
            self._deferred.pop(name, None)
        elif kind == "rescan":
            log.warning("rescanning the spool: %s", item[1])
            self._rescan(item[1])
        elif kind == "dir":
            self._log_dir(item[1])
        elif kind == "spool-gone":
            log.error("the spool folder %s was removed", self.spool.dir)

    def _log_dir(self, name: str) -> None:
        self._log_once(name, f"ignoring {self.spool.dir / name}: a folder, not a drop")

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._dirs_logged:
            self._dirs_logged.add(key)
            log.warning("%s", message)

    def _rescan(self, why: str) -> None:
        try:
            self.spool.ensure_folders()
            candidates = self.spool.scan()
        except StorageError as exc:
            log.error("cannot scan the spool (%s): %s", why, exc)
            return
        log.debug("rescanned the spool (%s): %d candidate(s)", why, len(candidates))
        for c in candidates:
            if stat.S_ISDIR(c.mode):
                self._log_dir(c.name)
            elif c.name not in self._pending and c.name not in self._deferred:
                self._pending[c.name] = How.SETTLE
        # The history can change by hand too (a restored file): keep the index honest,
        # and repair the caches (a deleted metadata file or latest link) here rather
        # than on the next drop.
        if why == "start":
            return
        try:
            self.store.scan()
            meta_problem, latest_problem = self.store.cache_problems()
        except StorageError as exc:
            log.error("cannot scan the history: %s", exc)
            return
        for key, problem, dirty in (
            ("metadata", meta_problem, self._meta_dirty),
            ("latest", latest_problem, self._latest_dirty),
        ):
            if problem is None or dirty:
                continue  # fine, or about to be rewritten anyway (drops are coming in)
            if key not in self._cache_reported:
                self._cache_reported.add(key)
                what = "the metadata" if key == "metadata" else "the latest link"
                log.warning("%s needs repair (%s); rewriting it", what, problem)
            self._meta_dirty = True
            if key == "latest":
                self._latest_dirty = True

    def _process_batch(self) -> None:
        """Take the pending drops in arrival order; make each group durable at once.

        Each version's bytes are fsynced and its claim is durable before its name
        appears; the names of a group are made durable by one fsync of the history
        (after the latest link moved, so on one filesystem one journal commit carries
        both), and only then are the claims released.
        """
        linked: list[_Linked] = []
        began = time.monotonic()
        try:
            for name, how in list(self._pending.items()):
                if self._stop.is_set():
                    break
                try:
                    done = self._take(name, how)
                except _DropWaits as exc:
                    self._pending.pop(name, None)
                    self._drop_waits(name, exc.error)
                    continue
                except StorageError as exc:
                    self._fail(name, exc)
                    break
                self._pending.pop(name, None)
                self._backoff = 0.0
                if done is not None:
                    linked.append(done)
                if len(linked) >= _GROUP_MAX or time.monotonic() - began > _GROUP_SECONDS:
                    break  # publish this group; the rest waits one loop (watchdog pings)
        finally:
            if linked:
                self._make_durable(linked)

    def _make_durable(self, linked: list[_Linked]) -> None:
        """Latest link, one fsync of the history, then release the claims and log."""
        if self._cache_until <= time.monotonic():
            try:
                self.store.update_latest()
                self._latest_dirty = False
                self._cache_backoff = 0.0
                self._cache_reported.discard("latest")
            except StorageError as exc:
                self._cache_failed(exc)  # a cache: the versions below are still made durable
        else:
            self._latest_dirty = True
        try:
            self.store.sync()
        except StorageError as exc:
            # A failed fsync is a failed write: take the names back; their claims stay
            # and are committed again after the backoff.
            for item in linked:
                self.store.withdraw_version(item.version)
                self._copied_claims.pop(item.version, None)
            self._latest_dirty = True
            with contextlib.suppress(StorageError):
                self.store.update_latest()  # not left naming a version taken back
                self._latest_dirty = False
            self._fail(None, exc)
            return
        for item in linked:
            claim = self.spool.claimed_dir / item.version
            seen = self._copied_claims.pop(item.version, None)
            if seen is not None and self._written_since(claim, seen):
                # A writer still holding the file added to it after its copy was
                # stored: those bytes are not stored, so the claim is not deleted; it
                # goes back to the spool as a new drop (or stays for recovery).
                log.warning("%s was written to after it was stored; taking it again", item.drop)
                self._unclaim(claim, self.spool.dir / item.drop)
                self._meta_dirty = True
                self._ingested(item.drop, item.version, item.size, item.started)
                continue
            try:
                durable.remove_file(claim)
            except StorageError as exc:
                self._fail(None, exc)  # recovery removes it later: its version exists
            self._ingested(item.drop, item.version, item.size, item.started)
        if not self._same_fs or self._copied:
            # The next copy's inode, made now rather than when its drop arrives.
            try:
                self.store.prepare_spare()
            except StorageError as exc:
                log.debug("no spare temp file: %s", exc)

    def _drop_waits(self, name: str, exc: StorageError) -> None:
        """One drop cannot be taken: it waits alone, with its own backoff."""
        retry = self._drop_backoff.get(name, _BACKOFF_START)
        self._drop_backoff[name] = min(self.options.retry_max, retry * 2)
        self._deferred[name] = time.monotonic() + retry
        self.metrics.failed()
        log.error("cannot take drop %s: %s; retrying it in %.1f s", name, exc, retry)

    def _fail(self, name: str | None, exc: StorageError) -> None:
        self._backoff = min(
            self.options.retry_max, max(_BACKOFF_START, self._backoff * 2 or _BACKOFF_START)
        )
        self._blocked_until = time.monotonic() + self._backoff
        self.metrics.failed()
        what = f"cannot store drop {name}" if name else "cannot update the history"
        log.error("%s: %s; retrying in %.1f s", what, exc, self._backoff)
        if name is None:
            self._latest_dirty = True
        # Maintenance after the backoff also finishes any claim a failed commit left,
        # and sweeps the temp files a failed step could not remove.
        self._meta_dirty = True
        self._sweep_needed = True

    def _cache_failed(self, exc: StorageError) -> None:
        """The latest link could not be written: log it, retry later; ingest goes on."""
        self._latest_dirty = True
        self._cache_backoff = min(
            self.options.retry_max, max(_BACKOFF_START, self._cache_backoff * 2)
        )
        self._cache_until = time.monotonic() + self._cache_backoff
        log.error(
            "cannot refresh the latest link (drops are still stored): %s; retrying in %.1f s",
            exc,
            self._cache_backoff,
        )

    def _maintain(self, *, force: bool) -> None:
        """Latest link, cleanup and metadata: once per batch, not once per drop."""
        now = time.monotonic()
        if now < self._blocked_until and not force:
            return
        if self._latest_dirty and (force or now >= self._cache_until):
            try:
                self.store.update_latest()
                self._latest_dirty = False
                self._cache_backoff = 0.0
                self._cache_reported.discard("latest")
            except StorageError as exc:
                self._cache_failed(exc)
        self._rejected_retention.run_if_due()  # at most every 10 min; logs its own errors
        if not self._meta_dirty:
            return
        if not force and (
            now < self._maintenance_until
            or (self._pending and now - self._last_maintenance < _MAINTENANCE_EVERY)
        ):
            return
        if self._sweep_needed:
            self._sweep_needed = False
            self.store.drop_spare()  # or the sweep would take it for a leftover
            try:
                self._sweep_temps()
            except StorageError as exc:
                log.warning("cannot remove temp files left by a failed step: %s", exc)
        try:
            self._recover_claims()
            self.store.cleanup_old_versions(hold_deletions=self._clock_jumped())
            self._cache_reported.discard("metadata")
        except StorageError as exc:
            # The metadata and retention are not on the ingest path: they back off on
            # their own, and drops go on being stored meanwhile.
            self._maintenance_backoff = min(
                self.options.retry_max, max(_BACKOFF_START, self._maintenance_backoff * 2)
            )
            self._maintenance_until = now + self._maintenance_backoff
            log.error(
                "cannot finish claims, clean up or write the metadata: %s; retrying in %.1f s",
                exc,
                self._maintenance_backoff,
            )
            return
        self._maintenance_backoff = 0.0
        self._meta_dirty = False
        self._last_maintenance = now

    def _clock_jumped(self) -> bool:
        """Whether the wall clock has gained more than an hour on the boot clock.

        Retention is measured from the wall clock: a forward step of days would make
        the watcher's own cleanup delete versions ingested seconds ago. While the jump
        stands, automatic deletions are held back (logged once); an operator's
        ``ingester cleanup``, or a restart, applies the rule from the clock as it is.
        """
        offset = self._wall_clock() - _boot_clock()
        if self._clock_offset is None or offset < self._clock_offset:
            # The first look, or a step back (which only makes retention keep more).
            self._clock_offset = offset
        gained = offset - self._clock_offset
        if gained > _CLOCK_JUMP:
            if not self._holding:
                log.warning(
                    "the wall clock jumped %.0f s ahead of the boot clock; automatic "
                    "retention holds deletions back (run 'ingester cleanup' with the "
                    "watcher stopped, or restart it, to apply the rule)",
                    gained,
                    extra={"event": "clock-jump", "seconds": round(gained)},
                )
                self._holding = True
            return True
        if self._holding:
            log.info("the wall clock agrees with the boot clock again; retention resumes")
            self._holding = False
        return False

    def _sweep_temps(self) -> None:
        """Remove temps left by failed steps; safe here, between drops, with the lock held."""
        removed = durable.remove_stale_temps(self.store.history_dir)
        for prefix in (".tmp-link-", ".tmp-w-"):
            removed += durable.remove_stale_temps(self.store.latest_path.parent, prefix)
        removed += self.spool.sweep_temps()
        if removed:
            log.info("removed %d temp file(s) left by a failed step", len(removed))

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
        if interval is not None and now >= self._next_ping and self._observer_alive():
            self.notifier.watchdog()
            self._next_ping = now + interval
        text = self._status_text()
        if text != self._last_status:
            self.notifier.status(text)
            self._last_status = text

    # -- one drop -------------------------------------------------------------------

    def _take(self, name: str, how: How) -> _Linked | None:
        """Steps 1-5 of the module docstring for ``<spool>/name``.

        Returns the linked version, still to be made durable by :meth:`_make_durable`,
        or None when the drop was rejected, deferred, or is gone.
        """
        path = self.spool.dir / name
        may_be_open: os.stat_result | None = None  # judged complete by stability alone
        if how is not How.COMPLETE:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                self._forget(name)
                return None
            except OSError as exc:
                raise StorageError("stat drop", path, exc) from exc
            if stat.S_ISDIR(st.st_mode):
                self._log_dir(name)
                return None
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                # Not announced complete (created, or found by a scan): never take it
                # while someone has it open for writing (a read lease tells; its
                # close-write event will come). A hard link makes IN_CREATE and no
                # close-write: taken once it has settled. Where we may not ask
                # (another user's file, no CAP_LEASE), an empty new file is taken to
                # be in the writing, anything else is judged by the settle time.
                busy = _open_for_writing(path)
                if busy or (busy is None and how is How.CREATED):
                    self._writing.add(name)
                    return None
                if busy is None:
                    # No lease to ask (another user's file, no CAP_LEASE): judge by
                    # stability alone, never by the mtime's age, and for much longer
                    # when inotify saw it created in place (its close-write is awaited).
                    patient = name in self._writing
                    if not self._settled(name, st, stable_only=True, patient=patient):
                        return None
                    may_be_open = st
                self._writing.discard(name)
                if not self._settled(name, st):
                    return None
        started = time.perf_counter()
        try:
            opened = open_entry(path, self.settings.max_bytes)
        except StorageError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM):
                raise
            # The writer gave it a mode we cannot read: a problem of this drop alone, so
            # set it aside instead of holding up every drop behind it.
            self._reject(path, name, f"cannot read: {exc.strerror}")
            return None
        if opened is None:
            return None
        if not isinstance(opened, Opened):
            if opened.is_dir:
                self._log_dir(name)
            else:
                self._reject(path, name, f"not a regular file: a {opened.kind}, never opened")
            return None
        try:
            if opened.size > self.settings.max_bytes:
                raise PayloadRejected(
                    f"drop is {opened.size} bytes, over the limit of {self.settings.max_bytes}"
                )
            judge_payload(opened.data, max_bytes=self.settings.max_bytes)
        except PayloadRejected as exc:
            if may_be_open is not None and self._may_still_be_written(name, may_be_open):
                return None
            self._reject(path, name, exc.reason, exc.errors)
            return None
        # Zero-copy when the drop is ours alone and on the history's filesystem: its own
        # inode becomes the version (as a rename would), made read-only and fsynced.
        # Otherwise (another user's file, other filesystem) the bytes are copied.
        zero_copy = self._same_fs and opened.uid == self._euid and opened.nlink == 1
        if not zero_copy:
            self._copied = True
        staged = None if zero_copy else self.store.stage_version(opened.data, sync=False)
        try:
            version = self._claim_and_link(path, name, opened, staged)
        finally:
            if staged is not None:
                staged.discard()  # a no-op once committed; never leave a copy behind
        self._forget(name)
        if version is None:
            return None
        return _Linked(name, version, len(opened.data), started)

    def _claim_and_link(
        self, path: Path, name: str, opened: Opened, staged: durable.StagedFile | None
    ) -> str | None:
        """Steps 4-5 (the history fsync waits for the group); None if the drop went away.

        What is claimed is what is stored: after the claim, its bytes are compared with
        the bytes judged (an inode number alone can name another file by then). If they
        differ, the claim goes back to the spool, to be judged again as it is now.
        Raises :class:`_DropWaits` when this drop alone cannot be claimed.
        """
        version = self.store.next_version_name()
        claim = self.spool.claimed_dir / version
        self._check_claimed()
        if os.path.lexists(claim):
            # Only this process writes in .claimed/, so the check cannot race; a claim
            # of that name waits for recovery and must never be replaced.
            raise StorageError("claim", claim, FileExistsError(errno.EEXIST, "claim exists"))
        try:
            os.rename(path, claim)
        except FileNotFoundError as exc:
            if not os.path.lexists(path):
                return None  # taken or removed meanwhile
            # .claimed/ is gone (removed by hand?): make it again, and retry the drop.
            self.spool.ensure_folders()
            raise StorageError("claim", path, exc) from exc
        except OSError as exc:
            # The drop itself cannot be moved (made immutable, say): it waits alone.
            raise _DropWaits(StorageError("claim", path, exc)) from exc
        # The data fsync comes after the claim rename so that, on ext4, one journal
        # commit carries both; the .claimed fsync after it is then nearly free.
        try:
            if staged is None:
                sealed = self._seal(claim, opened)
                if sealed != "sealed":
                    with contextlib.suppress(OSError):
                        os.chmod(claim, stat.S_IMODE(opened.mode))
                if sealed == "copy":
                    # Someone may still hold it open for writing, or leases are not
                    # offered here: store a copy of the bytes judged (the claim's own,
                    # compared below), never the inode itself.
                    staged = self.store.stage_version(opened.data, sync=False)
                    self._copied = True
                elif sealed != "sealed":
                    self._changed(claim, path, name)
                    return None
            if staged is not None:
                seen = self._holds(claim, opened.data)
                if seen is None:
                    staged.discard()
                    self._changed(claim, path, name)
                    return None
                self._copied_claims[version] = seen
            if staged is not None:
                staged.sync()
            durable.fsync_dir(self.spool.claimed_dir)
            if staged is None:
                self.store.link_version(claim, version)
            else:
                self.store.commit_version(staged, version, sync=False)
        except StorageError:
            self._copied_claims.pop(version, None)
            if staged is not None:
                staged.discard()
            if self.store.has_version(version):
                # The name could not be taken back: the claim stays, and recovery
                # (after the backoff) makes sure this drop is stored exactly once.
                raise
            if staged is None:
                with contextlib.suppress(OSError):
                    os.chmod(claim, stat.S_IMODE(opened.mode))
            self._unclaim(claim, path)
            raise
        return version

    def _changed(self, claim: Path, path: Path, name: str) -> None:
        """The claimed file is not the one judged: another file, or other bytes.

        Nothing is stored and nothing is deleted: the claim goes back to the spool as
        it is (or, if its name is taken meanwhile, stays for recovery, which judges
        the claimed bytes), and the drop is looked at again.
        """
        log.warning("%s changed while being taken; looking at it again", name)
        self._unclaim(claim, path)
        self._meta_dirty = True  # the maintenance round finishes a claim left behind
        self._deferred[name] = time.monotonic() + self.options.settle

    @staticmethod
    def _written_since(claim: Path, seen: tuple[int, int]) -> bool:
        try:
            st = os.lstat(claim)
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) != seen

    def _holds(self, claim: Path, data: bytes) -> tuple[int, int] | None:
        """The claim's ``(st_size, st_mtime_ns)`` if it holds exactly ``data``, else None.

        Read without following links. The stat lets the release see a later write.
        """
        try:
            fd = os.open(claim, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError("open claim", claim, exc) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or os.pread(fd, len(data) + 1, 0) != data:
                return None
            return st.st_size, st.st_mtime_ns
        except OSError as exc:
            raise StorageError("read claim", claim, exc) from exc
        finally:
            os.close(fd)

    def _seal(self, claim: Path, opened: Opened) -> str:
        """Make the claimed drop's own inode a version: read-only (less the umask), fsynced.

        Returns ``"sealed"``; or, with nothing sealed: ``"changed"`` (another file, another
        link to it, or bytes other than those judged), ``"copy"`` (the bytes judged, but
        someone may hold it open for writing: a read lease is refused or not offered).
        """
        try:
            fd = os.open(claim, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageError("open claim", claim, exc) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_ino, st.st_nlink, st.st_size) != (
                opened.ino,
                1,
                len(opened.data),
            ):
                return "changed"
            os.fchmod(fd, VERSION_MODE & ~self._umask)
            try:
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
            except OSError:
                return "copy"  # the copy path compares the claim's bytes first
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            if os.pread(fd, len(opened.data) + 1, 0) != opened.data:
                return "changed"
            os.fsync(fd)
            return "sealed"
        except OSError as exc:
            raise StorageError("seal", claim, exc) from exc
        finally:
            os.close(fd)

    def _back_in_spool(self, claim: Path) -> bool:
        """Whether a spool entry is the claimed inode itself (see :meth:`_unclaim`)."""
        try:
            st = os.lstat(claim)
            if st.st_nlink < 2:
                return False
            return any(
                (c.ino, c.dev) == (st.st_ino, st.st_dev)
                for c in self.spool.scan()
                if stat.S_ISREG(c.mode)
            )
        except OSError:
            return False

    def _unclaim(self, claim: Path, path: Path) -> None:
        """Put a claimed drop back in the spool, untouched, after a failure to store it.

        If that fails too (or the name was reused meanwhile), the claim stays and is
        finished by the recovery path once the fault clears: nothing is lost either way.
        """
        try:
            os.link(claim, path)  # never clobbers a new drop of the same name
        except OSError as exc:
            log.warning("%s stays in %s for now: %s", claim.name, claim.parent, exc.strerror)
            return
        try:
            os.unlink(claim)
        except OSError as exc:
            # Both names now hold the drop: keep the claim only, or it would be stored twice.
            log.warning("%s stays in %s for now: %s", claim.name, claim.parent, exc.strerror)
            try:
                os.unlink(path)
            except OSError:
                log.error("%s is both in the spool and claimed; remove one by hand", path)

    def _may_still_be_written(self, name: str, st: os.stat_result) -> bool:
        """Whether an invalid drop judged by stability alone should wait, not be rejected.

        A writer that started before we watched (no close-write will tell us about its
        start), or pauses mid-file, leaves a partial file that looks stable. Rejecting
        it would move an inode the writer still holds into quarantine, where it finishes
        writing. So it waits: for its close-write (then it is judged as complete), or
        until it has been unchanged for a long time (then it is rejected).
        """
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        now = time.monotonic()
        first = self._unfinished.get(name)
        if first is None or first[0] != seen:
            if first is None:
                log.info(
                    "%s is not valid yet and may still be written; waiting up to %.0f s "
                    "for it to be closed or finished",
                    name,
                    _UNFINISHED_PATIENCE,
                )
            first = self._unfinished[name] = (seen, now)
        remaining = _UNFINISHED_PATIENCE - (now - first[1])
        if remaining <= 0:
            return False
        self._deferred[name] = now + min(remaining, _UNFINISHED_RECHECK)
        return True

    def _forget(self, name: str) -> None:
        """Drop what is remembered about a name that is gone or taken."""
        self._unfinished.pop(name, None)
        self._drop_backoff.pop(name, None)
        self._watched.pop(name, None)
        self._writing.discard(name)
        self._quarantine_backoff.pop(name, None)

    def _settled(
        self, name: str, st: os.stat_result, *, stable_only: bool = False, patient: bool = False
    ) -> bool:
        """Whether a file found by a scan or by polling is done being written.

        Yes when its mtime is ``settle`` seconds old, or when its size and mtime have
        not changed since we first looked, ``settle`` seconds ago (a writer's clock may
        be ahead of ours). Otherwise look again in ``settle`` seconds, never later.
        """
        now = time.monotonic()
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        first = self._watched.get(name)
        age = time.time() - st.st_mtime_ns / 1e9
        window = self.options.settle
        if patient:
            window = max(10 * self.options.settle, self.options.rescan_interval)
        if (not stable_only and window <= age) or (
            first is not None and first[0] == seen and now - first[1] >= window
        ):
            if not stable_only:
                self._watched.pop(name, None)
            return True
        if first is None or first[0] != seen:
            self._watched[name] = (seen, now)
        wait = window - age if 0 <= age < window and not stable_only else window
        self._deferred[name] = now + max(0.01, min(wait, window))
        return False

    def _ingested(self, name: str, version: str, size: int, started: float) -> None:
        self.counts.ingested += 1
        self.metrics.ingested(time.perf_counter() - started)
        self._latest_dirty = True
        self._meta_dirty = True
        log.info(
            "ingested %s -> %s (%d bytes, %.1f ms)",
            name,
            version,
            size,
            (time.perf_counter() - started) * 1000,
            extra={"event": "ingested", "drop": name, "version": version, "bytes": size},
        )

    def _reject(
        self, path: Path, name: str, reason: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        try:
            where = self.spool.quarantine(path, name, reason, errors or [{"msg": reason}])
        except StorageError as exc:
            # A problem of this drop (or of the rejected folder), not of the history:
            # it waits on its own, and the valid drops behind it go on.
            retry = self._quarantine_backoff.get(name, _BACKOFF_START)
            self._quarantine_backoff[name] = min(self.options.retry_max, retry * 2)
            self._deferred[name] = time.monotonic() + retry
            log.error("cannot set aside %s (%s): %s; retrying in %.1f s", name, reason, exc, retry)
            return
        self._quarantine_backoff.pop(name, None)
        self.counts.rejected += 1
        self.metrics.rejected(reason)
        log.warning(
            "rejected %s: %s (moved to %s)",
            name,
            reason,
            self.spool.rejected_dir / where,
            extra={"event": "rejected", "drop": name, "reason": reason},
        )

    # -- recovery -------------------------------------------------------------------

    def _recover_claims_safely(self) -> None:
        try:
            self._recover_claims()
        except StorageError as exc:
            log.error("cannot finish drops claimed before a crash yet: %s", exc)

    def _recover_claims(self) -> None:
        names = self.spool.claimed()
        if names:
            self._check_claimed()
        for version in names:
            self._recover_claim(version)

    def _check_claimed(self) -> None:
        """Every use of ``.claimed/`` checks it is still our own real folder.

        One removed by hand is made again (as at start); anything else in its place
        raises :class:`StorageError` naming the folder and what is wrong.
        """
        try:
            self._claimed_id = self.spool.check_claimed(self._euid, self._history_id)
        except StorageError as exc:
            if exc.errno != errno.ENOENT:
                raise
            self.spool.ensure_folders()
            self._claimed_id = self.spool.check_claimed(self._euid, self._history_id)

    def _stored_as(self, claim: Path, version: str) -> bool:
        """Whether the claim's bytes are stored as ``version`` (so the claim may go).

        A claim and its version that are one directory entry (seen through a link) are
        never "duplicates"; hard links to one inode are; two files are when their
        bytes are equal. Raises :class:`StorageError` when a claim cannot be judged.
        """
        stored = self.store.version_path(version)
        try:
            a, b = os.lstat(claim), os.lstat(stored)
        except OSError as exc:
            raise StorageError("stat claim", claim, exc) from exc
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            if a.st_nlink < 2:
                raise StorageError(
                    "finish claim",
                    claim,
                    OSError(errno.EPERM, f"unsafe: it is the version {stored} itself"),
                )
            return True
        if not (stat.S_ISREG(a.st_mode) and stat.S_ISREG(b.st_mode)) or a.st_size != b.st_size:
            return False
        opened = open_entry(claim, max(a.st_size, 1))
        if not isinstance(opened, Opened):
            return False
        try:
            return stored.read_bytes() == opened.data
        except OSError as exc:
            raise StorageError("read", stored, exc) from exc

    def _recover_claim(self, version: str, display: str | None = None) -> None:
        claim = self.spool.claimed_dir / version
        name = display or version
        if not is_version_name(version):
            self._log_once(claim.name, f"ignoring {claim}: not a name this watcher gives claims")
            return
        target = version
        if self.store.has_version(version):
            if self._stored_as(claim, version):
                self.store.sync()  # the version's name durable before its claim goes
                durable.remove_file(claim)
                # It may be new to this process too (its claim could not be removed at once).
                self.store.adopt_version(version)
                self._latest_dirty = self._meta_dirty = True
                log.info("%s was already stored; removed its claim", version)
                return
            # Its name is taken by other bytes: nothing claimed is deleted unless its
            # bytes are stored, so it is stored under a new name.
            target = self.store.next_version_name()
        elif self._back_in_spool(claim):
            # A crash while putting a failed drop back: the spool has it again, as a
            # drop like any other; the claim is only a second name for it.
            durable.remove_file(claim)
            log.info("%s is back in the spool; removed its claim", version)
            return
        started = time.perf_counter()
        opened = open_entry(claim, self.settings.max_bytes)
        if opened is None:
            return
        if not isinstance(opened, Opened):
            self._reject(claim, name, f"not a regular file: a {opened.kind}, never opened")
            return
        try:
            judge_payload(opened.data, max_bytes=self.settings.max_bytes)
        except PayloadRejected as exc:
            self._reject(claim, name, exc.reason, exc.errors)
            return
        self.store.write_version(target, opened.data)
        durable.remove_file(claim)
        self._ingested(name, target, len(opened.data), started)
