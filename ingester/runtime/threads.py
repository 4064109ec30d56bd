"""Worker threads started up front, so that handing work to them never starts one.

``ThreadPoolExecutor.submit`` queues its task before it starts a thread for it. When
that start fails (a limit on threads or memory: ``RuntimeError: can't start new
thread``), ``submit`` raises, yet the task it queued still runs later, on a thread the
pool already has. For a write whose caller answers from its result, that is a write
done while the caller was told it failed.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["started_pool"]

_START_S = 10.0  # how long the threads may take to start, all together


def started_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads (named ``name``), every one of them started now.

    Its ``submit`` then never starts a thread, so it can never fail past queueing its
    task. Raises ``RuntimeError`` when the threads cannot all be started (the pool is
    shut down first, its queued tasks cancelled).
    """
    pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
    # Each thread waits here until all have started: a busy one is not reused, so every
    # submit below starts a new thread.
    gate = threading.Barrier(workers + 1)
    try:
        for _ in range(workers):
            pool.submit(gate.wait, _START_S)
        gate.wait(_START_S)
    except BaseException:
        gate.abort()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    return pool
