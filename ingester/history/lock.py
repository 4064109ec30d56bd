"""One writer per history: an ``flock`` on ``<history>/.lock``.

The kernel drops an flock when its holder dies, even by ``kill -9``, so a crashed
watcher never leaves a stale lock. The file is never unlinked (unlinking would let a
second process lock a fresh inode while the first still holds the old one); it holds the
holder's pid and purpose, for the message a second writer prints.

Read commands never take the lock. :func:`lock_holder` finds the holder through
``/proc/locks`` without taking anything.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ..errors import LockHeld, StorageError, describe_os_error
from . import durable

__all__ = [
    "SERVE_WATCH",
    "STOPPING",
    "WATCH",
    "WATCH_ONCE",
    "HistoryHolder",
    "HistoryLock",
    "LockHeld",
    "history_holder",
    "is_watcher",
    "latest_link_holder",
    "latest_link_lock",
    "latest_link_refused",
    "lock_holder",
    "lock_owner",
    "lock_table_readable",
    "refusal",
    "same_file",
]

LOCK_TABLE = "/proc/locks"
"""The kernel's table of file locks, read by :func:`lock_holder`."""

WATCH = "watch"
"""The purpose a watcher notes in the lock file when run as ``ingester watch``."""
SERVE_WATCH = "serve --watch"
"""The purpose noted by the watcher that ``serve --watch`` runs in its own process."""


WATCH_ONCE = "watch --once"
"""The purpose noted by ``ingester watch --once``: it takes what its start found, then
exits; a drop made meanwhile waits for the next run, so it is no watcher of new drops."""
STOPPING = " (stopping)"
"""Added to its purpose by a watcher that has begun to stop: it takes no drop any more,
though it still holds its locks while it finishes (see :meth:`HistoryLock.renote`)."""


def is_watcher(purpose: str | None) -> bool:
    """Whether a lock holder that noted ``purpose`` is a watcher (one that takes drops,
    new ones too: not a ``watch --once`` run, nor a watcher that is stopping).

    A holder that left no readable note (``None``) is given the benefit of the doubt.
    """
    return purpose in (None, WATCH, SERVE_WATCH)


def _note(path: Path) -> str | None:
    """What the lock's holder wrote in it (its pid and command); ``None`` when it cannot
    be read. Read as a file someone may have replaced: never waits on a FIFO, never
    reads more than a note holds."""
    try:
        raw = durable.read_regular(path, _NOTE_MAX_BYTES)
    except OSError:
        return None
    if raw is None:
        return None
    return raw[:_NOTE_MAX_BYTES].decode(errors="replace").strip()


_NOTE_MAX_BYTES = 4096


def lock_owner(path: Path) -> tuple[int, str | None] | None:
    """The pid holding the lock and the command it noted (``"watch"``, ``"ingest"``...).

    ``None`` when no one holds it; the command is ``None`` when the note is unreadable
    or left by an earlier holder. Never takes the lock.
    """
    pid = lock_holder(path)
    if pid is None:
        return None
    note = _note(path)
    if note is None:
        return pid, None
    noted_pid, _, command = note.partition(" ")
    return pid, (command or None) if noted_pid == str(pid) else None


def same_file(path: Path, ident: tuple[int, int], *, follow_symlinks: bool = True) -> bool:
    """Whether ``path`` still names the file or folder whose ``(st_dev, st_ino)`` is
    ``ident``: ``False`` when it names another one, or nothing (``ENOENT``, ``ENOTDIR``).

    Raises ``OSError`` when that cannot be told (``EACCES`` on a folder on the way,
    ``EIO``): a file one cannot look at has not been replaced, for all one knows, and
    taking it for replaced would give up a lock that is still good.
    """
    try:
        st = os.stat(path, follow_symlinks=follow_symlinks)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return (st.st_dev, st.st_ino) == ident


def _describe_holder(path: Path) -> str:
    owner = lock_owner(path)
    if owner is None:
        # The kernel's lock table did not name a pid (e.g. no /proc): the note may.
        note = _note(path) or ""
        return f"pid {note}" if note else "another process"
    pid, command = owner
    return f"pid {pid} {command}" if command else f"pid {pid}"


def _give_to_folder_owner(fd: int, folder: Path) -> None:
    """As root, hand a root-owned lock file to the owner of its folder.

    An operator's command run as root on the service's history would otherwise leave
    a lock file the service's own user cannot open (EACCES at every start).
    """
    if os.geteuid() != 0:
        return
    try:
        st = os.fstat(fd)
        owner = os.stat(folder)
        if st.st_uid == 0 and owner.st_uid != 0:
            os.fchown(fd, owner.st_uid, owner.st_gid)
    except OSError:
        pass  # best effort: the lock works all the same for this command


class HistoryLock:
    """An exclusive, non-blocking flock; use as a context manager.

    ``what`` names what it guards in :class:`LockHeld`'s message (``"history"``, or
    ``"spool"`` for the lock a watcher also holds on the spool it reads).
    """

    def __init__(self, path: Path, purpose: str, what: str = "history") -> None:
        self.path = path
        self.purpose = purpose
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`LockHeld` at once."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP and os.path.islink(self.path):
                # Never followed (it could lead anywhere), so never locked by any of
                # our processes: the kernel's "Too many levels of symbolic links"
                # would only hide that.
                words = "a symbolic link, not a lock file: remove it"
                exc = OSError(errno.ELOOP, words, os.fspath(self.path))
            raise StorageError("open lock file", self.path, exc) from exc
        _give_to_folder_owner(fd, self.path.parent)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(self.path, _describe_holder(self.path), self.what) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError("lock", self.path, exc) from exc
        self._fd = fd
        self._write_note()

    def _write_note(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()} {self.purpose}\n".encode(), 0)
        except OSError:
            pass  # the note is a courtesy; the flock is what counts

    def renote(self, purpose: str) -> None:
        """Note ``purpose`` in the lock file held (nothing when not held): what its holder
        does now, for whoever looks (``serve`` asks whether a watcher will take a POST)."""
        self.purpose = purpose
        self._write_note()

    def still_held(self) -> bool:
        """Whether the lock is held and its path still names the file that is locked.

        A lock file removed or replaced by hand guards nothing any more: a second
        process would lock a fresh file at that path. Raises ``OSError`` when the path
        cannot be looked at (see :func:`same_file`); the lock is then still held.
        """
        if self._fd is None:
            return False
        mine = os.fstat(self._fd)
        return same_file(self.path, (mine.st_dev, mine.st_ino), follow_symlinks=False)

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> HistoryLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_holder(path: Path, *, strict: bool = False) -> int | None:
    """The pid holding an flock on ``path``, or ``None``; never takes the lock.

    ``None`` too when the lock table cannot be read (see :func:`lock_table_readable`)
    or ``path`` does not exist. With ``strict``, a ``path`` that cannot be looked at
    (``EACCES`` on a folder on the way) raises ``OSError`` rather than passing for a
    lock no one holds.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError:
        if strict:
            raise
        return None
    try:
        with open(LOCK_TABLE) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; blocked waiters have "->".
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
            continue
        if parts[5] == wanted:
            try:
                return int(parts[4])
            except ValueError:
                return None
    return None


def latest_link_holder(latest: Path, history: Path, lock_name: str) -> tuple[Path, int] | None:
    """Whether the latest link ``latest`` points into another history a watcher runs on.

    Returns the folder it points into and the pid of the watcher holding that folder's
    lock (``lock_name`` in it), when that folder is not ``history``; ``None`` otherwise
    (not a link, a link into ``history``, or into a folder no watcher holds: a command
    such as ``ingest`` holds a lock only for a moment). Two watchers of two histories
    given one latest link would each point it at their own newest version; the lock does
    not say which link its watcher keeps, so the caller says what to do either way.
    """
    try:
        target = os.readlink(latest)
    except OSError:
        return None
    folder = Path(os.path.realpath(os.path.join(latest.parent, os.path.dirname(target))))
    if folder == Path(os.path.realpath(history)):
        return None
    owner = lock_owner(folder / lock_name)
    if owner is None or owner[0] == os.getpid() or not is_watcher(owner[1]):
        return None
    return folder, owner[0]


def latest_link_lock(latest: Path, purpose: str) -> HistoryLock:
    """The lock that keeps one history per latest link: ``.<name>.lock`` beside the link
    ``latest``, taken by a watcher for its whole run and by a writing command for its
    own, after its history's lock.

    It is tied to the link's path, not to where the link points: a second history
    given the same ``--latest-path`` is refused even before the link exists, when
    there is nothing yet to point into the first history.
    """
    return HistoryLock(latest.parent / f".{latest.name}.lock", purpose, what="latest link")


def latest_link_refused(latest: Path, exc: LockHeld) -> str:
    """The one line for a command refused ``latest``'s lock (see :func:`latest_link_lock`):
    who keeps the link, and what to do."""
    return (
        f"the latest link {latest} is kept by {exc.holder}, for another history "
        f"({exc.path}); give each history its own --latest-path"
    )


def refusal(path: Path, what: str = "history") -> LockHeld | None:
    """The :class:`LockHeld` that taking the lock ``path`` would raise now, or ``None``
    when no one holds it; never takes it (the taking stays the one real test)."""
    if lock_holder(path) is None:
        return None
    return LockHeld(path, _describe_holder(path), what)


@dataclass(frozen=True)
class HistoryHolder:
    """Who holds a history's lock: ``pid``, the ``purpose`` it noted (``None``: no note),
    and whether, being a watcher, it also holds a given spool's lock (``reads_spool``):
    a watcher holds both, so one of this history that does not reads another spool.

    ``unknown``: why ``reads_spool`` cannot be told (the spool's lock file cannot be
    looked at: ``"PATH: Permission denied [EACCES]"``); ``reads_spool`` is then False.
    """

    pid: int
    purpose: str | None
    reads_spool: bool
    unknown: str | None = None

    @property
    def watcher(self) -> bool:
        """A watcher of the history, of whichever spool (see :func:`is_watcher`)."""
        return is_watcher(self.purpose)

    @property
    def watches_spool(self) -> bool | None:
        """A watcher of the history that takes the given spool's drops (``None``: a
        watcher, but whether of this spool cannot be told)."""
        if self.watcher and self.unknown is not None:
            return None
        return self.watcher and self.reads_spool


def history_holder(history_lock: Path, spool_lock: Path) -> HistoryHolder | None:
    """Who holds ``history_lock`` (``None``: no one, or the lock table is hidden), and
    whether it is the watcher of the spool whose lock is ``spool_lock``; never takes
    either lock.

    Raises ``OSError`` when ``history_lock`` cannot be looked at: that is no answer, and
    "no one" would be a false one. A ``spool_lock`` that cannot be looked at is said in
    :attr:`HistoryHolder.unknown`.
    """
    if lock_holder(history_lock, strict=True) is None:
        return None
    owner = lock_owner(history_lock)
    if owner is None:
        return None  # let go meanwhile
    pid, purpose = owner
    if not is_watcher(purpose):
        return HistoryHolder(pid, purpose, False)
    try:
        return HistoryHolder(pid, purpose, lock_holder(spool_lock, strict=True) == pid)
    except OSError as exc:
        return HistoryHolder(pid, purpose, False, describe_os_error(exc))


def lock_table_readable() -> bool:
    """Whether :func:`lock_holder` can see locks at all.

    Where the kernel's lock table is hidden (a sandbox with ``ProcSubset=pid``, no
    ``/proc``), ``lock_holder`` answers ``None`` for every file: "no holder" then means
    "cannot tell".
    """
    try:
        with open(LOCK_TABLE, "rb") as handle:
            handle.read(1)
    except OSError:
        return False
    return True
