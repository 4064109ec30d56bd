"""What every handler of the API shares: the configuration and the per-app state."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

from ..clock import utc_now
from ..history.base import HistoryReader
from ..history.index import BoundedCache, HistoryIndex
from ..intake.spool import Spool
from ..settings.resolved import Settings
from .backlog import BacklogWarnings, WatcherProbe
from .read_faults import ReadFaults
from .trigger_command import TriggerCommand, TriggerRunner

__all__ = ["ServeConfig", "ServeContext", "StoreFaultsView"]


class StoreFaultsView(Protocol):
    """What ``/api/health`` reads of the in-process watcher's failing stores."""

    since: datetime | None
    failures: int
    cause: str


@dataclass(frozen=True)
class ServeConfig:
    """What the app needs: where the history and spool are, the key, the limits.

    ``api_key`` is compared in constant time; ``None`` makes every POST a 401
    (``api_key_source`` says where it came from, for the start-up line).
    ``body_timeout`` (seconds) bounds how long a POST body may take to arrive.
    ``require_watcher``: refuse POSTs (503) while no watcher runs.
    ``watcher_running``: set by ``serve --watch``, the state of the watcher this process
    runs (otherwise the history lock tells whether one runs elsewhere).
    ``trigger``: the command the trigger endpoint runs (``None``: it answers 501).
    ``watcher_metrics``: the in-process watcher's own metrics, served in ``/metrics`` too.
    ``store_faults``: whether the in-process watcher's stores are failing, since when and
    why (an object with ``since``, a UTC datetime or ``None``, ``failures`` and ``cause``,
    the last failure's error in one line), for ``/api/health``.
    ``read_only``: where the history served comes from when it is not the local one
    (``serve --from``); POSTs are then refused (503), as no watcher here stores them there.
    """

    settings: Settings
    api_key: bytes | None = None
    api_key_source: str | None = None
    body_timeout: float = 10.0
    reader: HistoryReader | None = None  # default: the local history folder
    clock: Callable[[], datetime] = field(default=utc_now)
    require_watcher: bool = False
    watcher_running: Callable[[], bool] | None = None
    trigger: TriggerCommand | None = None
    watcher_metrics: CollectorRegistry | None = None
    store_faults: StoreFaultsView | None = None
    read_only: str | None = None


@dataclass
class ServeContext:
    """Shared state of one app: the index over the history, the spool, the watcher's
    state, the trigger, the metrics."""

    config: ServeConfig
    index: HistoryIndex
    spool: Spool
    probe: WatcherProbe
    warnings: BacklogWarnings
    trigger: TriggerRunner | None
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    posts: Counter
    # Rendered GET bodies keyed by everything they depend on, and parsed payloads by name.
    # Budgets in bytes of JSON; a parsed payload costs several times its text in memory.
    rendered: BoundedCache[tuple[Any, ...], bytes] = field(
        default_factory=lambda: BoundedCache(2 << 20)
    )
    parsed: BoundedCache[str, tuple[dict[str, Any] | None, datetime | None]] = field(
        default_factory=lambda: BoundedCache(1 << 20)
    )
    read_faults: ReadFaults = field(default_factory=ReadFaults)
    # Why the last POST could not be written to the spool, and since when (ISO-8601 UTC);
    # None once one is written again. Health says so: the data's age alone would stay
    # healthy for ten minutes while every snapshot is refused.
    spool_fault: tuple[str, str] | None = None
    # The POSTs' writer threads, started at the first POST (serve.posts).
    writers: ThreadPoolExecutor | None = None

    @property
    def settings(self) -> Settings:
        """The resolved settings."""
        return self.config.settings
