"""console-usage-ingester: a durable, versioned history of console usage snapshots.

The storage layer of the seed plan, usable without the watcher::

    from ingester import HistoryStore, judge_payload

    store = HistoryStore(Path("console-usage-history"), Path("console-usage-synced.json"))
    store.initialize()
    judge_payload(raw_bytes)           # raises PayloadRejected, naming each bad field
    store.save_version(raw_bytes)      # stored byte for byte
    store.cleanup_old_versions()
"""

from .durable import StorageError
from .model import ConsoleUsageDataSync, PayloadRejected, UsageWindow, WeeklyLimits, judge_payload
from .names import generate_version_filename, parse_timestamp_from_filename
from .retention import Decision, RetentionPlan, RetentionPolicy, plan_retention
from .store import CleanupResult, HistoryStore, StorageMetadata

__all__ = [
    "CleanupResult",
    "ConsoleUsageDataSync",
    "Decision",
    "HistoryStore",
    "PayloadRejected",
    "RetentionPlan",
    "RetentionPolicy",
    "StorageError",
    "StorageMetadata",
    "UsageWindow",
    "WeeklyLimits",
    "generate_version_filename",
    "judge_payload",
    "parse_timestamp_from_filename",
    "plan_retention",
]
