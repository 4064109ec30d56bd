"""Several fsyncs at once: a group's files and folders flushed together, each with its error.

:func:`fsync_each` gives the device a group's writes together (a few worker threads
named :data:`FSYNC_THREAD_PREFIX`; ``os.fsync`` releases the GIL), so the wait is for the
slowest rather than the sum; :func:`fsync_dirs` does the same for folders. Each fsync is
still its file's own: a failed one is a failed write of that file alone.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from ...errors import StorageError
from ...threads import StartedPool, started_pool
from .steps import StrPath, open_dir

__all__ = ["FSYNC_THREAD_PREFIX", "fsync_dirs", "fsync_each"]


FSYNC_THREAD_PREFIX = "ingester-fsync"
"""The name of the threads that run :func:`fsync_each`'s fsyncs (tests count their steps)."""


# Measured on ext4 on a virtio disk: 8 fresh files and their folder fsynced at once took
# 3.1 ms against 8.4 ms one after the other (32 files: 9 ms against 41 ms); 16 or 32
# workers gained nothing clear over 8.
_FSYNC_WORKERS = 8


_pool: StartedPool | None = None


_pool_lock = threading.Lock()


def _fsync_pool() -> StartedPool | None:
    """The workers, all started (so a submit never fails past queueing its task, which
    would then fsync the same descriptors beside the caller, or later other ones); None
    while not even one thread can be started (tried again at the next call)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            try:
                _pool = started_pool(_FSYNC_WORKERS, FSYNC_THREAD_PREFIX)
            except RuntimeError:
                return None
        return _pool


def _fsync_or_error(fd: int) -> OSError | None:
    try:
        os.fsync(fd)
    except OSError as exc:
        return exc
    return None


def fsync_each(fds: Sequence[int]) -> list[OSError | None]:
    """fsync every descriptor in ``fds`` at once; return each one's error (None: durable).

    The descriptors are dealt into up to :data:`_FSYNC_WORKERS` shares; the calling
    thread fsyncs the first share and the worker threads the others, each share one
    after the other (``os.fsync`` releases the GIL). The device is given the group's
    writes together instead of one file's at a time, and the wait is for the slowest
    share rather than the sum. One task per share, not per descriptor: for a group of
    hundreds, handing each fsync to a thread cost more than the fsync of an inode whose
    bytes were already on disk. Each fsync is still the file's own, and so is its
    error: a failed one is a failed write of that file alone, which its caller handles;
    the others stand. The descriptors stay open (the caller closes them).
    """
    if len(fds) <= 1:
        return [_fsync_or_error(fd) for fd in fds]
    pool = _fsync_pool()
    if pool is None:
        # No thread can be started (a limit on threads or memory): one after the
        # other, here. Slower, and as durable.
        return _fsync_share(fds)
    workers = pool.workers
    shares = [list(fds[n::workers]) for n in range(min(len(fds), workers))]
    futures = [pool.submit(_fsync_share, share) for share in shares[1:]]
    results = [_fsync_share(shares[0]), *(future.result() for future in futures)]
    # Back in the order given: descriptor i went to share i % n, as its (i // n)th.
    return [results[i % len(shares)][i // len(shares)] for i in range(len(fds))]


def _fsync_share(fds: Sequence[int]) -> list[OSError | None]:
    return [_fsync_or_error(fd) for fd in fds]


def fsync_dirs(directories: Sequence[StrPath]) -> list[StorageError | None]:
    """:func:`fsync_dir` for each folder, at once; each one's error (None: its names are durable).

    A folder named twice is fsynced once (both get its result).
    """
    unique: dict[str, int] = {}
    errors: dict[str, StorageError] = {}
    try:
        for directory in directories:
            key = os.fspath(directory)
            if key in unique or key in errors:
                continue
            try:
                unique[key] = open_dir(directory)
            except StorageError as exc:
                errors[key] = exc
        results = fsync_each(list(unique.values()))
    finally:
        for fd in unique.values():
            os.close(fd)
    for key, error in zip(unique, results, strict=True):
        if error is not None:
            errors[key] = StorageError("fsync folder", key, error)
    return [errors.get(os.fspath(directory)) for directory in directories]
