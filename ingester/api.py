"""The history store as the Python API gives it (exported as :class:`ingester.HistoryStore`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .history.retention import RetentionPolicy
from .history.store import HistoryStore as _CoreStore

__all__ = ["HistoryStore"]


def _mirror_hold(
    history_dir: Path, sorted_names: Sequence[str], expired: int
) -> tuple[int, str | None]:
    # The commands' hold, imported at the first cleanup: importing the store stays light.
    from .settings.resolved import mirror_hold_hook

    return mirror_hold_hook(history_dir, sorted_names, expired)


class HistoryStore(_CoreStore):
    """The history as the Python API gives it: :class:`ingester.history.store.HistoryStore` whose
    retention keeps back the versions a configured mirror has not uploaded yet, as the
    commands' stores do (a store that deleted them would lose the only copy the mirror
    was still to make). Pass ``hold=None`` for a store that holds nothing back, or a
    hook of your own (:data:`ingester.history.cleanup.RetentionHold`)."""

    def __init__(
        self,
        history_dir: Path,
        latest_path: Path,
        policy: RetentionPolicy | None = None,
        **options: Any,
    ) -> None:
        options.setdefault("hold", _mirror_hold)
        super().__init__(history_dir, latest_path, policy, **options)
