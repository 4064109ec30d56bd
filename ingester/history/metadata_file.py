"""``<history>/_metadata.json`` on disk: read, carried over by a writer, replaced.

The file is read as one someone else may have placed (no symlink followed, no FIFO
waited on, at most :data:`~ingester.history.metadata.METADATA_MAX_BYTES`). A writer
carries its totals over; a missing or corrupt file is rebuilt from a scan, but one that
cannot be read is left as it is (its totals cannot be rebuilt). A replacement never
lowers the totals a file written since holds. The model is :mod:`.metadata`'s; the
facts derived from the version names are :func:`.base.derive_metadata`'s.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import MetadataUnreadable, StorageError
from . import durable
from .metadata import METADATA_MAX_BYTES, MetadataCorrupt, StorageMetadata

__all__ = [
    "METADATA_MODE",
    "METADATA_NAME",
    "carried_metadata",
    "metadata_problem",
    "read_metadata_bytes",
    "with_larger_totals",
    "write_metadata_file",
]

METADATA_NAME = "_metadata.json"
METADATA_MODE = 0o644


def read_metadata_bytes(path: Path) -> bytes:
    """The bytes of the metadata file at ``path``, read as a file someone else may have
    placed (:func:`~ingester.history.durable.read_regular`: no symlink followed, no FIFO
    waited on, at most :data:`METADATA_MAX_BYTES` read).

    Raises ``FileNotFoundError`` when there is none; :class:`MetadataCorrupt` when
    something else is in its place (a symlink, a FIFO, a folder, a file over the limit);
    :class:`StorageError` when it cannot be read.
    """
    try:
        raw = durable.read_regular(path, METADATA_MAX_BYTES)
    except StorageError as exc:
        if exc.errno == errno.ENOENT:
            raise FileNotFoundError(errno.ENOENT, "no metadata", os.fspath(path)) from None
        if exc.errno == errno.ELOOP:
            raise MetadataCorrupt("a symlink in the metadata's place") from None
        raise
    if raw is None:
        try:
            folder = stat.S_ISDIR(os.lstat(path).st_mode)
        except OSError:
            folder = False
        if folder:
            # No file can be renamed over a folder: its totals cannot be rebuilt in its
            # place, so it is a file that cannot be read, not a corrupt one.
            raise StorageError("read", path, IsADirectoryError(errno.EISDIR, "Is a directory"))
        raise MetadataCorrupt("not a regular file")
    if len(raw) > METADATA_MAX_BYTES:
        raise MetadataCorrupt(f"over {METADATA_MAX_BYTES} bytes: not the metadata")
    return raw


def carried_metadata(path: Path) -> tuple[StorageMetadata, str | None]:
    """The metadata file at ``path`` as a writer carries its totals over: what it holds
    and ``None``, or the defaults with ``"missing"`` or ``"corrupt"`` (rebuilt then from
    a scan).

    Raises :class:`MetadataUnreadable` when the file exists but cannot be read: its
    totals cannot be rebuilt, so nothing may replace it.
    """
    try:
        raw = read_metadata_bytes(path)
    except FileNotFoundError:
        return StorageMetadata(), "missing"
    except MetadataCorrupt:
        return StorageMetadata(), "corrupt"
    except OSError as exc:
        raise MetadataUnreadable(path, exc) from exc
    try:
        return StorageMetadata.model_validate_json(raw), None
    except MetadataCorrupt:
        return StorageMetadata(), "corrupt"


def metadata_problem(
    stored: StorageMetadata, problem: str | None, derived: StorageMetadata
) -> str | None:
    """Why the stored metadata must be rewritten: ``problem`` as read (``"missing"``,
    ``"corrupt"``, ...), else ``"incomplete: no latestVersion"`` when it disagrees with
    ``derived`` (the same metadata with the facts recomputed) only by lacking keys (this
    project's, which the original server never wrote), else ``"out of date"`` when its
    scan facts differ (times to the second: see
    :meth:`~.metadata.StorageMetadata.facts_differing`), else ``None``."""
    if problem is not None:
        return problem
    differing = stored.facts_differing(derived)
    if not differing:
        return None
    if all(key in stored.absent for key in differing):
        return f"incomplete: no {', '.join(differing)}"
    return "out of date"


def with_larger_totals(ours: StorageMetadata, on_disk: StorageMetadata) -> StorageMetadata:
    """``ours`` with each total raised to ``on_disk``'s where that is larger: the totals
    never decrease, so a file written since by other means (restored from a backup while
    a watcher ran) keeps the larger of its and ours."""
    return ours.model_copy(
        update={
            "total_versions_created": max(
                ours.total_versions_created, on_disk.total_versions_created
            ),
            "total_versions_deleted": max(
                ours.total_versions_deleted, on_disk.total_versions_deleted
            ),
        }
    )


def write_metadata_file(history_dir: Path, meta: StorageMetadata) -> None:
    """Replace ``<history_dir>/_metadata.json`` with ``meta`` (atomically, durably).

    Raises :class:`StorageError`.
    """
    durable.write_file(
        history_dir, METADATA_NAME, meta.to_json_bytes(), mode=METADATA_MODE, replace=True
    )
