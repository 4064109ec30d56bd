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
"""

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import (
    CacheNotRefreshed,
    IngesterError,
    LockHeld,
    PayloadRejected,
    SettingError,
    StorageError,
)
from .history.lock import HistoryLock
from .history.metadata import StorageMetadata
from .history.names import generate_version_filename, parse_timestamp_from_filename
from .history.retention import Decision, RetentionPlan, RetentionPolicy, plan_retention
from .history.store import CleanupIncomplete, CleanupResult, InitReport
from .history.store import HistoryStore as _CoreStore

if TYPE_CHECKING:
    from .payload.model import ConsoleUsageDataSync, UsageWindow, WeeklyLimits, judge_payload


def _mirror_hold(
    history_dir: Path, sorted_names: Sequence[str], expired: int
) -> tuple[int, str | None]:
    # The commands' hold, imported at the first cleanup: importing the package stays light.
    from .settings import mirror_hold_hook

    return mirror_hold_hook(history_dir, sorted_names, expired)


class HistoryStore(_CoreStore):
    """The history as the Python API gives it: :class:`ingester.history.store.HistoryStore` whose
    retention keeps back the versions a configured mirror has not uploaded yet, as the
    commands' stores do (a store that deleted them would lose the only copy the mirror
    was still to make). Pass ``hold=None`` for a store that holds nothing back, or a
    hook of your own (:data:`ingester.history.store.RetentionHold`)."""

    def __init__(
        self,
        history_dir: Path,
        latest_path: Path,
        policy: RetentionPolicy | None = None,
        **options: Any,
    ) -> None:
        options.setdefault("hold", _mirror_hold)
        super().__init__(history_dir, latest_path, policy, **options)


# The payload model's classes are built on first use: building pydantic models loads
# its schema generator, which a watcher (judging drops through ingester.payload.gate) never needs.
_FROM_MODEL = ("ConsoleUsageDataSync", "UsageWindow", "WeeklyLimits", "judge_payload")


def __getattr__(name: str) -> Any:
    if name in _FROM_MODEL:
        from .payload import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
