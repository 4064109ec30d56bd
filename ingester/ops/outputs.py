"""A command's output file (or temp folder) written beside the user's own files, and
what a killed one left.

``export -o FILE`` and ``snapshot --tar FILE`` write FILE under a temp name beside it
(:data:`~ingester.history.durable.OUTPUT_TEMP_PREFIX` and twelve hex digits) and rename
it at the end. A run killed before the rename (``kill -9``, a power cut) leaves that
temp file, which no one else would ever remove: the next run writing into the same
folder removes it.

What tells a leftover from a file being written: each writer holds an ``flock`` on its
temp file for as long as it writes it (the lock goes with the writer, even on
``kill -9``), so only an unlocked one is a leftover. The moment between the temp
file's creation and its lock is covered by a lock on the folder: writers hold it
shared across that moment, and a sweep runs only when it gets it exclusively. A
folder or filesystem where these locks cannot be taken is never swept: nothing there
could be told apart.

A snapshot's temp folder (``.tmp-snapshot-*``, beside its destination or in
``$TMPDIR``) is kept the same way (:func:`locked_temp_folder`): its maker holds an
``flock`` on the folder itself until it is renamed into place or removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..history import durable

__all__ = [
    "is_output_temp_name",
    "locked_output",
    "locked_temp_folder",
    "swept_lines",
]

_TEMP_NAME = re.compile(re.escape(durable.OUTPUT_TEMP_PREFIX) + r"[0-9a-f]{12}")


def is_output_temp_name(name: str) -> bool:
    """Whether ``name`` is one a writer of an output file gives its temp file."""
    return _TEMP_NAME.fullmatch(name) is not None


def swept_lines(folder: Path, names: list[str]) -> list[str]:
    """The line that says the leftovers ``names`` were removed from ``folder`` (none
    when there were none), for the command's output."""
    if not names:
        return []
    return [
        f"removed {len(names)} temp file(s) left in {folder} by an export or a "
        f"snapshot --tar stopped before its end: {', '.join(names)}"
    ]


def _folder_fd(folder: Path) -> int | None:
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None  # a folder this user may not read: no lock, and no sweep


def _try_flock(fd: int, how: int) -> bool:
    try:
        fcntl.flock(fd, how)
    except OSError:
        return False  # held (EWOULDBLOCK) or not supported here (ENOLCK, EOPNOTSUPP)
    return True


def _remove_if_left(folder: Path, name: str) -> bool:
    """Remove the temp file ``name`` in ``folder`` when no writer holds it."""
    path = folder / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            # Not what a writer of ours makes (as this user): never ours to remove.
            return False
        if not _try_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
            return False  # a writer holds it: being written now
        if not os.path.samestat(st, os.lstat(path)):
            return False  # replaced since it was opened
        os.unlink(path)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def _sweep(folder: Path) -> list[str]:
    removed: list[str] = []
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if is_output_temp_name(e.name)]
    except OSError:
        return removed
    for name in sorted(names):
        if _remove_if_left(folder, name):
            removed.append(name)
    if removed:
        with contextlib.suppress(durable.StorageError):
            durable.fsync_dir(folder)
    return removed


@contextlib.contextmanager
def locked_output(
    final: Path, *, mode: int = 0o644, replace: bool = True, swept: list[str] | None = None
) -> Iterator[BinaryIO]:
    """:func:`ingester.history.durable.streamed_file` for ``final``, its temp file held
    locked while it is written, after removing the temp files that stopped writers left
    beside ``final`` (each name removed is appended to ``swept``).

    Raises what ``streamed_file`` raises; a leftover that cannot be removed is left as it
    is, and never fails the write.
    """
    folder = final.parent
    dfd = _folder_fd(folder)
    try:
        if dfd is not None:
            if _try_flock(dfd, fcntl.LOCK_EX | fcntl.LOCK_NB):
                found = _sweep(folder)
                if swept is not None:
                    swept.extend(found)
            # Shared from here until this run's temp file is locked: a sweep of another
            # run waits for no one, it just does not run meanwhile.
            if not _try_flock(dfd, fcntl.LOCK_SH):
                os.close(dfd)
                dfd = None
        with durable.streamed_file(final, mode=mode, replace=replace) as handle:
            # Held until the file is renamed to ``final`` or removed: the lock belongs to
            # the open file, which streamed_file keeps open to the end.
            # Where flock is not supported, a sweep's lock fails the same way, so the
            # file is never taken for a leftover.
            with contextlib.suppress(OSError):
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            if dfd is not None:
                os.close(dfd)  # lets a sweep run: it sees this file locked
                dfd = None
            yield handle
    finally:
        if dfd is not None:
            os.close(dfd)


def _remove_left_folder(folder: Path, name: str) -> bool:
    """Remove the temp folder ``name`` in ``folder`` when no maker holds it."""
    path = folder / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # not a folder (a link, a file), gone, or not ours to read
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            return False  # another user's: never ours to remove
        if not _try_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
            return False  # its maker runs
        if not os.path.samestat(st, os.lstat(path)):
            return False  # replaced since it was opened
        # Hard links and copies only: removing them touches no live version.
        shutil.rmtree(path)
    except OSError:
        return False  # what is left of it is swept by the next run
    finally:
        os.close(fd)
    return True


@contextlib.contextmanager
def locked_temp_folder(
    make: Callable[[], Path], folder: Path, is_temp: Callable[[str], bool], swept: list[str]
) -> Iterator[tuple[Path, int]]:
    """A new temp folder made by ``make()`` in ``folder``, held locked for the block, after
    removing the temp folders (names ``is_temp`` says are) that killed makers left there
    (each name removed is appended to ``swept``).

    Yields the new folder and a descriptor on it, open and locked until the block ends:
    a folder renamed or removed meanwhile stays locked (the lock is the inode's), so a
    sweep never takes it. Raises what ``make()`` raises (nothing is swept then but what
    was swept before); a leftover that cannot be removed is left, and never fails it.
    """
    dfd = _folder_fd(folder)
    try:
        if dfd is not None:
            if _try_flock(dfd, fcntl.LOCK_EX | fcntl.LOCK_NB):
                swept.extend(_sweep_folders(folder, is_temp))
            # Shared from here until the new folder is locked: no sweep runs meanwhile.
            if not _try_flock(dfd, fcntl.LOCK_SH):
                os.close(dfd)
                dfd = None
        made = make()
        try:
            pin = os.open(made, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rmdir(made)
            raise
        # Locked before the folder's lock goes. Where flock is not supported, a sweep's
        # lock on the folder fails the same way, so this one is never taken for a
        # leftover.
        with contextlib.suppress(OSError):
            fcntl.flock(pin, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        if dfd is not None:
            os.close(dfd)
    try:
        yield made, pin
    finally:
        os.close(pin)


def _sweep_folders(folder: Path, is_temp: Callable[[str], bool]) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if is_temp(e.name)]
    except OSError:
        return []
    removed = [name for name in sorted(names) if _remove_left_folder(folder, name)]
    if removed:
        with contextlib.suppress(durable.StorageError):
            durable.fsync_dir(folder)
    return removed
