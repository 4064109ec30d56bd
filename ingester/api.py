"""The history store as the Python API gives it (exported as :class:`ingester.HistoryStore`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .history.retention import RetentionPolicy
from .history.store import HistoryStore as _CoreStore

if TYPE_CHECKING:
    from .payload.model import ConsoleUsageDataSync

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

    def save_version(self, data: bytes | ConsoleUsageDataSync) -> Path:
        """As :meth:`ingester.history.store.HistoryStore.save_version`: ``data`` is the
        payload's bytes (``bytearray`` too) or a model. Raises ``TypeError`` for anything
        else (text included), before anything is written."""
        if isinstance(data, bytearray):
            data = bytes(data)
        elif not isinstance(data, bytes) and not _is_model(data):
            hint = ": encode the text as UTF-8 first" if isinstance(data, str) else ""
            raise TypeError(
                "save_version takes the payload's bytes or a ConsoleUsageDataSync, "
                f"not {type(data).__name__}{hint}"
            )
        return super().save_version(data)


def _is_model(data: object) -> bool:
    # Imported only for what is not bytes: importing the store stays light (no pydantic).
    from .payload.model import ConsoleUsageDataSync

    return isinstance(data, ConsoleUsageDataSync)
