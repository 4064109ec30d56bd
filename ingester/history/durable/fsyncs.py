"""Several fsyncs (or other steps) at once: a group's files flushed together, each with its error.

:func:`each_at_once` runs one step for each item of a group on a few worker threads
named :data:`FSYNC_THREAD_PREFIX` (the system calls release the GIL), so the wait is for
the slowest rather than the sum. :func:`fsync_each` gives the device a group's writes
together that way, and :func:`fsync_dirs` does the same for folders; the watcher
removes a group's copied claims through it too. Each step is still its file's own: a
failed one is a failed write (or removal) of that file alone.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import wait
from typing import TypeVar

from ...errors import StorageError
from ...threads import StartedPool, started_pool
from .steps import StrPath, open_dir

__all__ = ["FSYNC_THREAD_PREFIX", "each_at_once", "fsync_dirs", "fsync_each"]

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


FSYNC_THREAD_PREFIX = "ingester-fsync"
"""The name of the threads that run :func:`each_at_once`'s steps (tests count them)."""


# Measured on ext4 on a virtio disk: 8 fresh files and their folder fsynced at once took
# 3.1 ms against 8.4 ms one after the other (32 files: 9 ms against 41 ms); 16 or 32
# workers gained nothing clear over 8.
_FSYNC_WORKERS = 8


# Up to this many items are done one after the other on the calling thread. Measured on
# ext4 on a virtio disk, one drop's inode and its folder (2 fsyncs) took 420-460 µs one
# after the other against 590-610 µs at once, and the two folders of a publish 374 µs
# against 499; with three, one after the other still won by 60 µs whether the files'
# bytes were dirty or not; from five on, at once won where the bytes were dirty. Handing
# a step to a worker and waking the caller again costs more than a small set gains.
_ONE_AFTER_THE_OTHER_UP_TO = 3


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


def each_at_once(step: Callable[[_Item], _Result], items: Sequence[_Item]) -> list[_Result]:
    """``step(item)`` for every item, at once; each one's result, in the order given.

    Up to :data:`_ONE_AFTER_THE_OTHER_UP_TO` items are done here, one after the other
    (cheaper than any handoff). More are dealt into up to :data:`_FSYNC_WORKERS` shares;
    the calling thread takes the first share and the worker threads the others, each
    share one item after the other (the system calls release the GIL). One task per
    share, not per item: for
    a group of hundreds, handing each item to a thread cost more than the fsync of an
    inode whose bytes were already on disk. ``step`` should return its error, not raise
    it; if one raises all the same, every other step has ended before the exception is
    raised here, so nothing still runs once the caller hears of it. Where no thread can
    be started, every item is done here, one after the other.
    """

    def run(share: Sequence[_Item]) -> list[_Result]:
        return [step(item) for item in share]

    pool = _fsync_pool() if len(items) > _ONE_AFTER_THE_OTHER_UP_TO else None
    if pool is None:
        # A few items, or no thread can be started (a limit on threads or memory): one
        # after the other, here. As durable.
        return run(items)
    workers = pool.workers
    shares = [list(items[n::workers]) for n in range(min(len(items), workers))]
    futures = [pool.submit(run, share) for share in shares[1:]]
    try:
        first = run(shares[0])
    finally:
        wait(futures)  # every step ended, whatever raised
    results = [first, *(future.result() for future in futures)]
    # Back in the order given: item i went to share i % n, as its (i // n)th.
    return [results[i % len(shares)][i // len(shares)] for i in range(len(items))]


def fsync_each(fds: Sequence[int]) -> list[OSError | None]:
    """fsync every descriptor in ``fds`` at once (:func:`each_at_once`); each one's error.

    None means durable. The device is given the group's writes together instead of one
    file's at a time, and the wait is for the slowest share rather than the sum. Each
    fsync is still the file's own, and so is its error: a failed one is a failed write
    of that file alone, which its caller handles; the others stand. The descriptors
    stay open (the caller closes them).
    """
    return each_at_once(_fsync_or_error, fds)


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
