"""The two locks a watcher holds: its history's and its spool's; and what refuses a start.

The history's lock keeps one writer per history. The spool's keeps one watcher per
spool: claims are named after the claiming watcher's own versions, and recovery stores
every claim its history lacks, so a second watcher on the same spool with another
history would store drops the first stores too.

Both are flocks on files that must stay where they are (:class:`HistoryLock`). A lock
file removed or replaced by hand guards nothing any more, and a removed spool is not
even reported by the kernel while the lock file in it is open. So :meth:`WatcherLocks.
check` is run every tick: it takes a lock again at once, or says the watcher must stop.
A path that cannot be looked at (a folder on the way made unreadable) has not been
replaced, for all one knows: the lock is kept, and the check tried again next tick.

A latest link that points into another history, whose watcher runs, refuses the start
too: the two watchers would each point it at their own newest version. So does the
latest link's own lock (:func:`~ingester.history.lock.latest_link_lock`) held by
another history's watcher or writing command, even before the link exists.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

from ..errors import IngesterError, LockHeld, StorageError, describe_os_error
from ..history.lock import (
    STOPPING,
    HistoryLock,
    latest_link_holder,
    latest_link_lock,
    latest_link_refused,
    refusal,
    same_file,
)
from ..history.store import HistoryStore
from .spool import Spool, user_words

__all__ = [
    "LatestLinkKept",
    "LocksLost",
    "Unchecked",
    "WatcherLocks",
    "refused_words",
    "start_refused",
]

log = logging.getLogger("ingester.watcher")


class LocksLost(IngesterError):
    """A lock could not be held again: the watcher must stop (the words say why)."""


class LatestLinkKept(IngesterError):
    """The latest link points into another history, whose watcher runs: no start."""


class Unchecked:
    """Paths whose identity could not be checked, each logged once when the checks
    start failing and once when one passes again (they run every tick: a line for each
    would flood the journal). ``what`` names the path in the line ("the lock file")."""

    def __init__(self) -> None:
        self._failing: dict[Path, str] = {}

    def failed(self, what: str, path: Path, exc: OSError) -> None:
        """Log, once for this path and cause, that it could not be checked."""
        why = describe_os_error(OSError(exc.errno, exc.strerror)) if exc.errno else str(exc)
        if self._failing.get(path) != why:
            self._failing[path] = why
            log.error(
                "cannot check that %s %s is still the one in use: %s; carrying on with it "
                "and checking again",
                what,
                path,
                why,
            )

    def passed(self, what: str, path: Path) -> None:
        """Log, once, that a path that could not be checked can be again."""
        if self._failing.pop(path, None) is not None:
            log.info("%s %s can be checked again", what, path)


def refused_words(exc: LockHeld) -> str:
    """The line for a watcher refused a lock: which one, and who holds it."""
    if exc.what == "spool":
        return f"another watcher reads the spool: {exc}"
    return f"another writer holds the history: {exc}"


def start_refused(exc: OSError, folders: tuple[Path, ...]) -> str:
    """The words for a start that failed with ``exc``: what failed, where and why, and,
    where this user was refused (EACCES, EPERM), what to do about it. Never raises.

    A command run as root on the service's files (``adopt`` without the ``chown`` the
    migration guide gives, a restore) leaves them root's: the line names the file or
    folder that belongs to another user, for a ``chown -R`` to the service's user; only
    one of the service's own ``folders`` (the root, the history, the spool...) or one
    inside them, never a folder around them (``/var/lib`` is root's by right).
    """
    words = describe_os_error(exc)
    if exc.errno not in (errno.EACCES, errno.EPERM) or exc.filename is None:
        return words
    if exc.strerror != os.strerror(exc.errno):
        return words  # words of our own, which say what to do already
    path = Path(os.path.abspath(os.fsdecode(exc.filename)))
    me = os.geteuid()
    for where in (path.parent, path):
        if not any(where.is_relative_to(folder) for folder in folders):
            continue
        try:
            owner = os.lstat(where).st_uid
        except OSError:
            continue
        if owner != me and me != 0:
            return (
                f"{words}; {where} belongs to {user_words(owner)}, not to this service's "
                f"user ({user_words(me)}): chown -R it to that user (a command run as "
                "root, adopt or a restore, leaves it so), then start again"
            )
    return (
        f"{words}; this user may not use it: check the owner, mode and attributes of it "
        "and its folder (ls -ld, lsattr -d), then start again"
    )


class WatcherLocks:
    """The locks of ``store``'s history, ``spool``'s and the latest link, noted ``purpose``."""

    def __init__(self, store: HistoryStore, spool: Spool, purpose: str) -> None:
        self.spool = spool
        self.store = store
        self.history = HistoryLock(store.lock_path, purpose)
        self.latest = latest_link_lock(store.latest_path, purpose)
        self._spool_lock: HistoryLock | None = None
        self._spool_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the locked spool
        # The locked spool folder itself, wherever it is moved: what it holds can still
        # be reached after an operator moved it away (see detach_spool_folder).
        self._spool_fd: int | None = None
        self.purpose = purpose
        self.unchecked = Unchecked()

    def take(self) -> None:
        """Take both, then the latest link's (the latest link and the spool's lock looked
        at first); raises ``LockHeld``, :class:`LatestLinkKept` or ``OSError``.

        A second watcher of the spool is refused before it makes anything (the taking
        stays the real test), and so is one whose latest link another watcher keeps. The
        history's folder and the spool's are made if missing.
        """
        store = self.store
        kept = latest_link_holder(store.latest_path, store.history_dir, store.lock_path.name)
        if kept is not None:
            folder, pid = kept
            raise LatestLinkKept(
                f"the latest link {store.latest_path} points into the history {folder}, "
                f"whose watcher (pid {pid}) would point it back at its own versions; give "
                "each history its own --latest-path (if that watcher keeps another link "
                "now, remove this one)"
            )
        taken = refusal(self.spool.lock_path, "spool")
        if taken is not None:
            raise taken
        try:
            self.history.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError("create folder", self.history.path.parent, exc) from exc
        self.history.acquire()
        try:
            self.spool.ensure_folders()
            self.lock_spool()
            self._lock_latest()
        except BaseException:
            self.release()
            raise

    def _lock_latest(self) -> None:
        """Hold the latest link's lock; raises :class:`LatestLinkKept` when another
        history's process holds it. A lock file that cannot be made (the link's folder
        cannot be made, or is not writable) is no refusal: the link is a cache, and its
        folder's problem is said when the link is made."""
        latest = self.store.latest_path
        # Made now rather than by the start's recovery a moment later: a lock skipped
        # for a folder not there yet would stay skipped for the whole run, and let a
        # second history given this latest path in.
        with contextlib.suppress(OSError):
            latest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.latest.acquire()
        except LockHeld as exc:
            raise LatestLinkKept(latest_link_refused(latest, exc)) from None
        except StorageError as exc:
            log.debug("the latest link %s is not locked: %s", latest, exc)

    def note_stopping(self) -> None:
        """Say in each lock file held that this watcher is stopping: it takes no drop
        any more, though it holds its locks until it has finished. Said once."""
        if self.purpose.endswith(STOPPING):
            return
        stopping = self.purpose + STOPPING
        self.purpose = stopping
        for lock in (self.history, self._spool_lock, self.latest):
            if lock is not None:
                lock.renote(stopping)

    def release(self) -> None:
        """Drop all three (harmless when not held)."""
        self._unlock_spool()
        self.latest.release()
        self.history.release()

    def lock_spool(self) -> None:
        """Hold the spool's lock (again, on a spool made anew); raises ``LockHeld`` or
        ``OSError``, and then keeps what it held before: the folder held may have been
        moved away with drops taken in it, which the caller still has to bring back."""
        lock = HistoryLock(self.spool.lock_path, self.purpose, what="spool")
        lock.acquire()
        self._unlock_spool()
        self._spool_lock = lock
        try:
            fd = os.open(self.spool.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self._spool_id = None  # gone already: the next check locks it anew
            return
        self._spool_fd = fd
        st = os.fstat(fd)
        self._spool_id = (st.st_dev, st.st_ino)

    def detach_spool_folder(self) -> int | None:
        """A descriptor on the spool folder whose lock is held (``None`` when none), handed
        to the caller, who closes it: after the folder was moved away, it still reaches
        the drops the watcher had taken there."""
        fd, self._spool_fd = self._spool_fd, None
        return fd

    def _unlock_spool(self) -> None:
        if self._spool_fd is not None:
            os.close(self._spool_fd)
            self._spool_fd = None
        if self._spool_lock is not None:
            self._spool_lock.release()
            self._spool_lock = None

    def spool_unchanged(self) -> bool:
        """Whether the spool folder is still the one whose lock is held (logged once
        when that cannot be told, and then taken as unchanged: see :class:`Unchecked`)."""
        try:
            same = self._spool_id is not None and same_file(self.spool.dir, self._spool_id)
        except OSError as exc:
            self.unchecked.failed("the spool folder", self.spool.dir, exc)
            return True
        self.unchecked.passed("the spool folder", self.spool.dir)
        return same

    def check(self, spool_unchanged: bool) -> bool:
        """Lock again at once a lock file removed or replaced by hand (logged).
        ``spool_unchanged``: :meth:`spool_unchanged` a moment ago (a spool made anew is
        locked anew by whoever restarts its watch).

        Returns whether the spool folder is still the one locked: a spool lock file
        found gone may have gone with its folder, moved or removed since
        ``spool_unchanged`` was told, and then the folder is the caller's to watch anew,
        its lock untouched. Raises :class:`LocksLost` when a lock cannot be held again.
        """
        if not self._still_held(self.history):
            log.error(
                "the lock file %s was removed or replaced; locking it again", self.history.path
            )
            self.history.release()
            try:
                self.history.acquire()
            except (LockHeld, OSError) as exc:
                raise LocksLost(f"cannot hold the history any more: {exc}") from exc
        spool = self._spool_lock
        if spool is None or not spool_unchanged or self._still_held(spool):
            return spool_unchanged
        if not self.spool_unchanged():
            return False
        log.error("the lock file %s was removed or replaced; locking it again", spool.path)
        try:
            self.lock_spool()
        except LockHeld as exc:
            raise LocksLost(refused_words(exc)) from exc
        except OSError as exc:
            if not self.spool_unchanged():
                return False  # the folder went between the look and the lock
            raise LocksLost(f"cannot hold the spool any more: {exc}") from exc
        return True

    def _still_held(self, lock: HistoryLock) -> bool:
        """``lock.still_held()``, but ``True`` (logged once) when that cannot be told."""
        try:
            held = lock.still_held()
        except OSError as exc:
            self.unchecked.failed("the lock file", lock.path, exc)
            return True
        self.unchecked.passed("the lock file", lock.path)
        return held
