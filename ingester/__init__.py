"""console-usage-ingester: a durable, versioned history of console usage snapshots.

The storage layer, usable without the watcher::

    from ingester import HistoryLock, HistoryStore, judge_payload

    store = HistoryStore(Path("console-usage-history"), Path("console-usage-synced.json"))
    with HistoryLock(store.lock_path, "my-tool"):   # one writer at a time; LockHeld if not
        store.initialize()
        judge_payload(raw_bytes)           # raises PayloadRejected, naming each bad field
        store.save_version(raw_bytes)      # stored byte for byte
        store.cleanup_old_versions()

Retention here, as in the commands, keeps back what a configured mirror has not uploaded
yet (``hold=None`` turns that off; :class:`ingester.history.store.HistoryStore`, the core class,
holds nothing unless given a hold).

Every error raised here derives from :class:`IngesterError`. The design (the pipeline of
one drop and what a crash at each step leaves) is described in ``docs/design.md``.

Each name is imported on first use: importing the package loads nothing else, so the
``ingester`` command (which starts in this package) can take charge of Ctrl-C before
it loads anything (:mod:`ingester.__main__`).
"""

from __future__ import annotations

from importlib import import_module

# Not typing's: importing typing takes about 20 ms, all of it before the command can
# hold Ctrl-C. Type checkers take any TYPE_CHECKING to be true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .api import HistoryStore
    from .errors import (
        CacheNotRefreshed,
        IngesterError,
        LockHeld,
        PayloadRejected,
        SettingError,
        StorageError,
    )
    from .history.cleanup import CleanupIncomplete, CleanupResult
    from .history.lock import HistoryLock
    from .history.metadata import StorageMetadata
    from .history.names import generate_version_filename, parse_timestamp_from_filename
    from .history.retention import Decision, RetentionPlan, RetentionPolicy, plan_retention
    from .history.store import InitReport
    from .payload.model import ConsoleUsageDataSync, UsageWindow, WeeklyLimits, judge_payload

# Where each public name lives. The payload model's classes are among them: building
# pydantic models loads its schema generator, which a watcher (judging drops through
# ingester.payload.gate) never needs.
_HOMES = {
    "CacheNotRefreshed": "errors",
    "CleanupIncomplete": "history.cleanup",
    "CleanupResult": "history.cleanup",
    "ConsoleUsageDataSync": "payload.model",
    "Decision": "history.retention",
    "HistoryLock": "history.lock",
    "HistoryStore": "api",
    "IngesterError": "errors",
    "InitReport": "history.store",
    "LockHeld": "errors",
    "PayloadRejected": "errors",
    "RetentionPlan": "history.retention",
    "RetentionPolicy": "history.retention",
    "SettingError": "errors",
    "StorageError": "errors",
    "StorageMetadata": "history.metadata",
    "UsageWindow": "payload.model",
    "WeeklyLimits": "payload.model",
    "generate_version_filename": "history.names",
    "judge_payload": "payload.model",
    "parse_timestamp_from_filename": "history.names",
    "plan_retention": "history.retention",
}


if not TYPE_CHECKING:  # to a type checker, a name not imported above does not exist

    def __getattr__(name: str) -> Any:
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(import_module(f"{__name__}.{home}"), name)
        globals()[name] = value  # found here directly from now on
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__all__ = [
    "CacheNotRefreshed",
    "CleanupIncomplete",
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
