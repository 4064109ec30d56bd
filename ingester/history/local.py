"""The local backing's reader: a history folder on local disk, read without writing.

:class:`LocalHistory` lists the folder's regular files named like versions and opens
each with ``O_NOFOLLOW``: a symlink or a folder named like a version is no version, and
a symlink put in a version's place is never followed out of the history. It never
takes the history lock, never creates a folder, and works on a read-only copy.

Its change token is the folder's ``(st_ino, st_mtime_ns, st_ctime_ns)``: every version
added or deleted, and every replacement of ``_metadata.json``, is an entry created or
removed in the folder, which moves the folder's mtime (a folder changed within the last
50 ms is listed again on every look, as a second change within one clock tick may not
move it again; times ahead of a clock set back since are no such change). Version files
are immutable, so a size once read stays true while the name holds the same inode (a
version put back from a backup by a rename is a new one, seen in the listing itself).

Its writer, :class:`LocalWriter`, writes through :class:`ingester.history.store.HistoryStore`
(the one owner of the folder's format) and :mod:`ingester.history.durable`'s recipe: what
``restore`` and the contract tests write. The watcher writes through the store's own
batches, which group many versions under one folder fsync.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

from ..errors import (
    MetadataMissing,
    StorageError,
    VersionExists,
    VersionNotFound,
    VersionTooLarge,
)
from ..payload.gate import MAX_DROP_BYTES
from . import durable
from .base import VersionEntry, derive_metadata
from .metadata import StorageMetadata
from .metadata_file import METADATA_NAME, read_metadata_bytes, write_metadata_file
from .names import is_version_name, parse_timestamp_from_filename
from .store import VERSION_MODE, HistoryStore

__all__ = ["LocalHistory", "LocalWriter"]


class _Unsettled:
    """A change token equal to nothing, itself included: "list again every time"."""

    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return id(self)


class LocalHistory:
    """A :class:`~ingester.history.base.HistoryReader` over a history folder on local disk.

    ``settle`` (seconds): a folder changed more recently than this gets a token equal to
    nothing, so it is listed again on every look until its times are settled. Two changes
    within the file system's timestamp granularity (a clock tick) could leave the same
    mtime; once the last change is older than a few ticks, the next one moves it.

    ``max_version_bytes``: the most a version holds, in bytes (a larger file is never
    read whole: :class:`~ingester.errors.VersionTooLarge`).
    """

    def __init__(
        self, history_dir: Path, *, settle: float = 0.05, max_version_bytes: int = MAX_DROP_BYTES
    ) -> None:
        self.dir = Path(os.path.abspath(history_dir))
        self.location = os.fspath(self.dir)
        self.settle = settle
        self.max_version_bytes = max_version_bytes
        # Version files never change, so a size once read stays true while the name holds
        # the same inode; the listing gives the inode without a stat.
        self._sizes: dict[str, tuple[int, int]] = {}  # name -> (inode, size)

    def change_token(self) -> Hashable | None:
        """The folder's inode, mtime and ctime (in ns); ``"missing"`` while there is none."""
        try:
            st = os.stat(self.dir)
        except FileNotFoundError:  # not created yet: an empty history, not a broken one
            return "missing"
        except OSError as exc:
            raise StorageError("stat", self.dir, exc) from exc
        now = time.time()
        # Only a change near now may be followed by one the same tick hides. Times ahead
        # of the clock (it was set back since) are no such change: the next change moves
        # them back to now, so the token stays trusted rather than listing on every look
        # until the clock catches up.
        if any(abs(now - t / 1e9) <= self.settle for t in (st.st_mtime_ns, st.st_ctime_ns)):
            return _Unsettled()
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)

    def list_versions(self) -> list[VersionEntry]:
        """Scan the folder; ``stat`` only the names not seen by the previous scan.

        A missing folder is an empty history (nothing was ever stored).
        """
        sizes: dict[str, tuple[int, int]] = {}
        if not os.path.lexists(self.dir):
            self._sizes = {}
            return []
        try:
            with os.scandir(self.dir) as entries:
                for entry in entries:
                    if not is_version_name(entry.name):
                        continue
                    known = self._sizes.get(entry.name)
                    if known is not None and known[0] == entry.inode():
                        sizes[entry.name] = known
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # deleted by retention meanwhile
                        continue
                    if stat.S_ISREG(st.st_mode):  # regular files only
                        sizes[entry.name] = (st.st_ino, st.st_size)
        except OSError as exc:
            raise StorageError("list", self.dir, exc) from exc
        self._sizes = sizes
        out = []
        for name in sorted(sizes):
            stamp = parse_timestamp_from_filename(name)
            if stamp is not None:
                out.append(VersionEntry(name, stamp, sizes[name][1]))
        return out

    def read_version(self, name: str) -> bytes:
        """The version file's bytes (never follows a symlink, never reads a non-file).

        Raises :class:`~ingester.errors.VersionTooLarge` for a file over
        ``max_version_bytes``, having read at most one byte more.
        """
        if not is_version_name(name):
            raise VersionNotFound(name)
        path = self.dir / name
        try:
            fd = os.open(path, durable.READ_NOFOLLOW)
        except FileNotFoundError:
            raise VersionNotFound(name) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink in a version's place: no version
                raise VersionNotFound(name) from None
            raise StorageError("open", path, exc) from exc
        try:
            # Judged before the descriptor becomes a file object, which refuses a folder
            # with its own error (EISDIR): a folder in a version's place is no version.
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise StorageError("stat", path, exc) from exc
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise VersionNotFound(name)
        try:
            with os.fdopen(fd, "rb") as handle:
                limit = self.max_version_bytes
                if st.st_size > limit:
                    raise VersionTooLarge(name, self.location, st.st_size, limit)
                # Bounded even so: a file that grew since the fstat is not read whole.
                data = handle.read(limit + 1)
        except VersionTooLarge:
            raise
        except OSError as exc:
            raise StorageError("read", path, exc) from exc
        if len(data) > limit:
            raise VersionTooLarge(name, self.location, None, limit)
        return data

    def read_metadata(self) -> StorageMetadata:
        """``_metadata.json``: :class:`~ingester.errors.MetadataMissing` when there is
        none, :class:`~ingester.history.metadata.MetadataCorrupt` when it is not the metadata."""
        path = self.dir / METADATA_NAME
        try:
            raw = read_metadata_bytes(path)
        except FileNotFoundError:
            raise MetadataMissing(f"no {path}") from None
        return StorageMetadata.model_validate_json(raw)


@dataclass
class _StagedLocal:
    """A version's bytes in an fsynced temp file in the history folder."""

    data: bytes
    file: durable.StagedFile

    def discard(self) -> None:
        self.file.discard()


class LocalWriter:
    """A :class:`~ingester.history.base.HistoryWriter` over ``store``'s folder.

    Call it with the history lock held. Each commit is the durable recipe (temp file,
    fsync, link under the name without clobbering, fsync the folder); raises
    :class:`~ingester.errors.StorageError` when the folder cannot be written.
    """

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self.reader = LocalHistory(store.history_dir)
        self.location = self.reader.location

    def stage(self, data: bytes) -> _StagedLocal:
        """The bytes in a temp file in the history folder, fsynced, read-only."""
        return _StagedLocal(data, durable.StagedFile(self.store.history_dir, data, VERSION_MODE))

    def _holds(self, name: str, data: bytes) -> bool | None:
        """Whether version ``name`` holds ``data`` (``None``: there is no such entry)."""
        if not os.path.lexists(self.store.version_path(name)):
            return None
        try:
            return self.reader.read_version(name) == data
        except VersionNotFound:  # a symlink or a folder in the version's place
            return False
        except VersionTooLarge:  # larger than any drop, so not ``data``
            return False

    def commit(self, staged: _StagedLocal, name: str) -> None:
        """Link the staged file in as version ``name`` (never over another entry)."""
        if not is_version_name(name):
            raise ValueError(f"not a version name: {name!r}")
        held = self._holds(name, staged.data)
        if held is not None:
            staged.discard()
            if not held:
                raise VersionExists(name, self.location)
            return
        try:
            staged.file.commit(name)
        except StorageError as exc:
            if not isinstance(exc.__cause__, FileExistsError):
                raise
            if not self._holds(name, staged.data):  # written by another meanwhile
                raise VersionExists(name, self.location) from None

    def publish(self, base: StorageMetadata | None = None) -> None:
        """Rewrite ``_metadata.json`` from the versions on disk and re-point the latest
        link (each atomically); the totals carried as :func:`derive_metadata` says."""
        store = self.store
        names = store.scan()
        stored, _problem = store.metadata_to_carry()
        meta = derive_metadata(names, store.clock(), stored, base)
        write_metadata_file(store.history_dir, meta)
        store.load()
        store.update_latest()

    def remove(self, name: str) -> None:
        """Unlink version ``name`` and fsync the folder (gone already: no error)."""
        if not is_version_name(name):
            raise ValueError(f"not a version name: {name!r}")
        durable.remove_file(self.store.version_path(name))
        durable.fsync_dir(self.store.history_dir)
