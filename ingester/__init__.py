"""console-usage-ingester: a durable, versioned history of console usage snapshots.

The storage layer, usable without the watcher::

    from ingester import HistoryLock, HistoryStore, judge_payload

    store = HistoryStore(Path("console-usage-history"), Path("console-usage-synced.json"))
    with HistoryLock(store.lock_path, "my-tool"):   # one writer at a time; LockHeld if not
        store.initialize()
        judge_payload(raw_bytes)           # raises PayloadRejected, naming each bad field
        store.save_version(raw_bytes)      # stored byte for byte
        store.cleanup_old_versions()

A store made so deletes all its policy lets it; ``HistoryStore(..., hold=mirror_hold)``
(from :mod:`ingester.mirror_state`) keeps what a configured mirror has not uploaded yet,
as the commands' stores do.

Every error raised here derives from :class:`IngesterError`. The design (the pipeline of
one drop and what a crash at each step leaves) is described in ``docs/design.md``.
"""

from typing import TYPE_CHECKING, Any

from .errors import (
    CacheNotRefreshed,
    IngesterError,
    LockHeld,
    PayloadRejected,
    SettingError,
    StorageError,
)
from .lock import HistoryLock
from .names import generate_version_filename, parse_timestamp_from_filename
from .retention import Decision, RetentionPlan, RetentionPolicy, plan_retention
from .store import CleanupResult, HistoryStore, InitReport, StorageMetadata

if TYPE_CHECKING:
    from .model import ConsoleUsageDataSync, UsageWindow, WeeklyLimits, judge_payload

# The payload model's classes are built on first use: building pydantic models loads
# its schema generator, which a watcher (judging drops through ingester.gate) never needs.
_FROM_MODEL = ("ConsoleUsageDataSync", "UsageWindow", "WeeklyLimits", "judge_payload")


def __getattr__(name: str) -> Any:
    if name in _FROM_MODEL:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CacheNotRefreshed",
    "CleanupResult",
    "ConsoleUsageDataSync",
    "Decision",
    "HistoryLock",
    "HistoryStore",
    "IngesterError",
    "InitReport",
    "LockHeld",
    "PayloadRejected",
    "RetentionPlan",
    "RetentionPolicy",
    "SettingError",
    "StorageError",
    "StorageMetadata",
    "UsageWindow",
    "WeeklyLimits",
    "generate_version_filename",
    "judge_payload",
    "parse_timestamp_from_filename",
    "plan_retention",
]
