"""A group of new versions made durable at once: :class:`Batch`, from ``HistoryStore.batch()``.

Inside the group each version is linked under its name (step 6); at the end the latest
link moves and the history folder is fsynced once, so one journal commit carries every
name (step 7, ``docs/design.md``). If that fsync fails the group's names are taken back:
a failed fsync is a failed write.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StorageError
from . import durable

if TYPE_CHECKING:
    from .store import HistoryStore

__all__ = ["Batch"]


log = logging.getLogger("ingester.store")


class Batch:
    """One group of new versions; made by :meth:`HistoryStore.batch`, valid inside it.

    ``names`` lists the versions added so far; ``latest_error`` is the latest link's
    failure at the end of the group, if any.
    """

    def __init__(self, store: HistoryStore) -> None:
        self._store = store
        self.names: list[str] = []
        self.latest_error: StorageError | None = None
        self.keep_spare = False

    def stage(self, data: bytes) -> durable.StagedFile:
        """The bytes under a temp name in the history, not fsynced yet (a context manager)."""
        return self._store._stage_version(data)

    def commit(self, staged: durable.StagedFile, name: str) -> Path:
        """Give ``staged`` (fsynced here if it was not) the new version name ``name``."""
        path = self._store._commit_version(staged, name)
        self.names.append(name)
        return path

    def link(self, source: durable.StrPath, name: str) -> str:
        """Make the fsynced, read-only file ``source`` version ``name`` by a hard link."""
        store = self._store
        store._ensure_loaded()
        path = os.path.join(store._history, name)
        durable.link_file(source, path)
        store._counted(name)
        self.names.append(name)
        return path

    def adopt(self, name: str) -> None:
        """Count a version already on disk (found after a crash), its name made durable now."""
        store = self._store
        durable.fsync_dir(store.history_dir)
        store._ensure_loaded()
        index = bisect.bisect_left(store._names, name)
        if index == len(store._names) or store._names[index] != name:
            store._names.insert(index, name)

    def _finish(self, update_latest: bool) -> None:
        store = self._store
        folders: list[Path] = [store.history_dir]
        if update_latest:
            try:
                store.update_latest(sync=False)
            except StorageError as exc:
                self.latest_error = exc
            else:
                folders.append(store.latest_path.parent)
        # The history's names and the latest link's, fsynced at once (one folder if
        # they share it).
        history_error, *latest_error = durable.fsync_dirs(folders)
        if latest_error and latest_error[0] is not None:
            self.latest_error = latest_error[0]
        if history_error is not None:
            # A failed fsync is a failed write: take the names back.
            for name in self.names:
                store._withdraw_version(name)
            with contextlib.suppress(StorageError):
                store.update_latest()  # not left naming a version taken back
            raise history_error
        if self.keep_spare:
            # The next copy's inode, made now rather than when its drop arrives.
            try:
                store._prepare_spare()
            except StorageError as exc:
                log.debug("no spare temp file: %s", exc)
