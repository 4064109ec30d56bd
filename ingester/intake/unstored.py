"""How long the oldest drop has waited while a watcher ran, and when that means the
watcher is not storing it: the one rule ``status``, ``check`` and ``serve``'s health
judge a running watcher's backlog by. Reads only."""

from __future__ import annotations

import os
from pathlib import Path

from ..settings.watch import WatchOptions

__all__ = ["UNSTORED_AFTER_S", "unstored_for", "unstored_words", "watcher_started"]

_WATCH = WatchOptions()
UNSTORED_AFTER_S = 3 * (_WATCH.rescan_interval + _WATCH.settle + _WATCH.retry_max)
"""Seconds (183) a drop may wait while a watcher runs before ``status``, ``check`` and
health say the watcher is not storing it. A running watcher takes a drop at once when
inotify tells it of one, else at its next rescan (``--rescan-interval``, 30 s) once the
drop has settled (``--settle``, 1 s); a store that fails is tried again within
``--retry-max`` (30 s). Three such rounds at the watcher's defaults is past any healthy
wait."""


def watcher_started(lock_path: Path) -> float | None:
    """When the holder of the history lock ``lock_path`` took it, in seconds since the
    epoch: the lock file's mtime, which the holder's note sets as it takes the lock.
    ``None`` when the file cannot be looked at. Reads only."""
    try:
        return os.stat(lock_path).st_mtime
    except OSError:
        return None


def unstored_for(oldest_mtime: float, started: float | None, now: float) -> float:
    """Seconds the oldest drop (its mtime ``oldest_mtime``, seconds since the epoch) has
    waited while the watcher that took the lock at ``started`` ran: counted from the later
    of the two, so a watcher that starts on an old backlog is given its own time to store
    it. Never negative."""
    since = oldest_mtime if started is None else max(oldest_mtime, started)
    return max(0.0, now - since)


def unstored_words(seconds: float) -> str:
    """What a drop left unstored for ``seconds`` by a running watcher likely means, as
    ``status``, ``check`` and health say it after "the watcher runs but"."""
    return (
        f"has not stored the oldest drop for {seconds:.0f} s "
        f"(more than {UNSTORED_AFTER_S:.0f} s); its log says why"
    )
