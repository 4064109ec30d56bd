"""Worker threads started up front, so that handing work to them never starts one.

``ThreadPoolExecutor.submit`` queues its task before it starts a thread for it. When
that start fails (a limit on threads or memory: ``RuntimeError: can't start new
thread``), ``submit`` raises, yet the task it queued still runs later, on a thread the
pool already has. For a write whose caller answers from its result, that is a write
done while the caller was told it failed.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = [
    "THREAD_LIMIT",
    "InlineExecutor",
    "OffLoop",
    "StartedPool",
    "in_order",
    "is_thread_limit",
    "started_pool",
    "workers_or_inline",
]

T = TypeVar("T")
A = TypeVar("A")
P = ParamSpec("P")

_START_S = 10.0  # how long the threads may take to start, all together
_END_S = 1.0  # how long the threads of a pool that could not start may take to end

THREAD_LIMIT = (
    "cannot start a thread: a limit on threads or memory is reached "
    "(ulimit -u, systemd's TasksMax or MemoryMax)"
)
"""What a thread that cannot start means, in the words every command and answer use."""


def is_thread_limit(exc: BaseException) -> bool:
    """Whether ``exc`` is Python's failure to start a thread (the same words in 3.11-3.13)."""
    return isinstance(exc, RuntimeError) and str(exc) == "can't start new thread"


class StartedPool(ThreadPoolExecutor):
    """A thread pool whose ``workers`` threads are all running (:func:`started_pool`)."""

    workers: int


def started_pool(workers: int, name: str) -> StartedPool:
    """A pool of up to ``workers`` threads (named ``name``), every one of them started now.

    Its ``submit`` then never starts a thread, so it can never fail past queueing its
    task. Where not all can start (a limit on threads), half as many are tried, down to
    one. Raises ``RuntimeError`` when not even one can be started.
    """
    while True:
        try:
            return _all_started(workers, name)
        except RuntimeError:
            if workers == 1:
                raise
            workers //= 2


def _all_started(workers: int, name: str) -> StartedPool:
    """:func:`started_pool` of exactly ``workers`` threads; ``RuntimeError`` if not all
    start (the pool shut down first, its queued tasks cancelled)."""
    before = _kernel_threads()
    pool = StartedPool(workers, thread_name_prefix=name)
    pool.workers = workers
    # Each thread waits here until all have started: a busy one is not reused, so every
    # submit below starts a new thread.
    gate = threading.Barrier(workers + 1)
    try:
        for _ in range(workers):
            pool.submit(gate.wait, _START_S)
        gate.wait(_START_S)
    except BaseException:
        gate.abort()
        # Joined, not left to end on their own: a thread still ending counts against
        # the same limit, and the smaller pool tried next would not start either.
        pool.shutdown(wait=True, cancel_futures=True)
        _wait_for_kernel_threads(before)
        raise
    return pool


def _kernel_threads() -> int | None:
    """How many threads the kernel counts for this process; None without ``/proc``."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _wait_for_kernel_threads(count: int | None) -> None:
    """Wait, up to ``_END_S`` seconds, until the kernel counts no more than ``count``
    threads for this process.

    ``join`` returns as a thread's Python side ends, a moment before the kernel lets the
    thread go; on a busy machine that moment lasts. Until then the thread still counts
    against the limit the next, smaller, pool must fit under, and without this wait that
    pool fails too: measured on 2 busy cores, a limit that allows two threads gave none
    in more than half the tries. Other threads of the process may come and go meanwhile,
    so the wait is bounded rather than exact."""
    if count is None:
        return
    deadline = time.monotonic() + _END_S
    while (_kernel_threads() or 0) > count and time.monotonic() < deadline:
        time.sleep(0.001)  # the kernel offers no wait for another thread's end


class OffLoop:
    """Blocking calls of an event loop's housekeeping, on one thread started up front.

    Where that thread cannot start (a limit on threads), every call runs on the loop's
    own thread instead (:class:`InlineExecutor`): the loop waits for it, and nothing
    fails. ``asyncio.to_thread`` would raise there, and the call it queued could still
    run later, a second time. Raises ``RuntimeError`` for any other failure to start
    the thread.
    """

    def __init__(self, name: str) -> None:
        self._pool, threads = workers_or_inline(1, name)
        self.inline = threads == 0
        """Whether the calls run on the loop's own thread (no thread could start)."""

    async def run(self, func: Callable[[], T]) -> T:
        """``func()``, on the thread or, without one, right here."""
        # Imported here: only an event loop's caller gets here, and the watcher, which
        # imports this module for its fsyncs, would otherwise load asyncio (and ssl)
        # for nothing: 2.5 MB of its peak memory.
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(self._pool, func)

    def close(self) -> None:
        """Let the thread go once its call in hand, if any, is done."""
        self._pool.shutdown(wait=False)


class InlineExecutor(Executor):
    """An executor without threads: each call runs as it is submitted, on the caller's
    thread, and its future is done when ``submit`` returns. For where no thread can
    start: the same work, one call after the other."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # the caller reads it from the future, as from a pool's
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future


def workers_or_inline(workers: int, name: str) -> tuple[Executor, int]:
    """Up to ``workers`` started threads (:func:`started_pool`) or, where not even one
    can start, an :class:`InlineExecutor`; and how many threads it has (0 for inline).
    Raises ``RuntimeError`` for any other failure to start a thread."""
    try:
        pool = started_pool(workers, name)
    except RuntimeError as exc:
        if not is_thread_limit(exc):
            raise
        return InlineExecutor(), 0
    return pool, pool.workers


def in_order(
    pool: Executor, fn: Callable[[A], T], items: Iterable[A], threads: int
) -> Generator[T, None, None]:
    """``fn(item)`` for each of ``items``, run on ``pool``, yielded in the items' order.

    Unlike ``Executor.map``, which submits every call before it yields the first result,
    only a few calls run ahead of the one the caller reads: two per thread (one running,
    one queued), or none where ``threads`` is 0 (an :class:`InlineExecutor`, whose calls
    run as they are submitted). So the results held at once stay few however many items
    there are, and when a call raises, the exception reaches the caller before more than
    that few further calls have begun; those not begun are cancelled when the caller
    stops reading.
    """
    ahead = max(1, 2 * threads)
    pending: deque[Future[T]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
