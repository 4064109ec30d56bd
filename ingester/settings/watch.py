"""The knobs of the commands that watch the spool: ``watch`` and ``serve --watch``.

Their ranges are in :mod:`ingester.settings.bounds`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DRAIN_S", "WatchOptions"]

DRAIN_S = 10.0
"""``serve --watch``'s default budget (seconds) at a stop for the watcher to store what
waits in the spool once the server has stopped taking requests. A drop is stored in
milliseconds, so this is room for thousands; with the server's 5 s grace period it stays
well inside the single unit's ``TimeoutStopSec=30s``."""


@dataclass(frozen=True)
class WatchOptions:
    """The knobs of ``ingester watch`` (options of that command only); durations in seconds.

    Their ranges are :data:`~ingester.settings.bounds.RESCAN_INTERVAL`,
    :data:`~ingester.settings.bounds.RETRY_MAX` and :data:`~ingester.settings.bounds.SETTLE`.
    """

    once: bool = False  # drain the backlog, then exit
    polling: bool = False  # poll the spool instead of inotify (NFS, some FUSE mounts)
    rescan_interval: float = 30.0  # seconds between full rescans of the spool
    retry_max: float = 30.0  # seconds, the longest wait between retries after a failure
    settle: float = 1.0  # seconds a drop not announced complete must stay unchanged
