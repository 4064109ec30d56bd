"""A history, whatever keeps it: the reader and writer interfaces, and what "latest" means.

A history is a set of **versions**: immutable JSON files, each under a name that carries
its ingest time (:mod:`ingester.history.names`) and sorts in ingestion order, beside one
``_metadata.json`` that summarises them. Three backings keep one:

* a folder on local disk (:class:`ingester.history.local.LocalHistory` reads it,
  :class:`ingester.history.store.HistoryStore` writes it: the watcher's store);
* a prefix in an S3-compatible object store (:mod:`ingester.mirror.s3_history`: what the
  mirror writes and ``--from s3://`` reads);
* memory (:class:`ingester.history.memory.MemoryHistory`, for tests).

Everything that reads a history (``serve``, the page, ``status``, ``list``, ``show``,
``verify``, ``export``, ``check``, the forecast, the mirror) reads it through
:class:`HistoryReader`; what writes one (the mirror, ``restore``) writes through
:class:`HistoryWriter`. One contract test suite (``tests/test_history_contract.py``)
holds every backing to both.

The rules every backing shares, defined once here:

* **latest** is the newest version not dated more than :data:`FUTURE_SLACK` ahead of
  the clock (a version from a clock that ran ahead must not hide the real newest);
* **at or before T** is the newest version whose ingest time is at or before T;
* a version's ingest time is the time in its name, to the second, so the times never
  decrease along the sorted names, and both rules are a bisection;
* a version holds at most :data:`~ingester.payload.gate.MAX_DROP_BYTES` (versions are
  drops): a larger one is damaged, and is never read whole
  (:class:`~ingester.errors.VersionTooLarge`).
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from .names import format_timestamp, parse_timestamp_from_filename

if TYPE_CHECKING:
    from .metadata import StorageMetadata

__all__ = [
    "FUTURE_SLACK",
    "HistoryReader",
    "HistoryWriter",
    "StagedVersion",
    "VersionEntry",
    "at_or_before",
    "at_or_before_position",
    "derive_metadata",
    "future_count",
    "is_future",
    "latest_name",
    "latest_position",
    "stored_metadata",
]

FUTURE_SLACK = timedelta(days=1)
"""How far ahead of the clock a version may be dated before it counts as *future*: never
"latest", never counted among retention's newest N, never deleted by retention."""


@dataclass(frozen=True, slots=True)
class VersionEntry:
    """One version: its file name, its ingest time (UTC, to the second) and size in bytes."""

    name: str
    ingested_at: datetime
    size: int


def _time_of(version: str | VersionEntry) -> datetime:
    if isinstance(version, VersionEntry):
        return version.ingested_at
    stamp = parse_timestamp_from_filename(version)
    if stamp is None:
        raise ValueError(f"not a version name: {version!r}")
    return stamp


def at_or_before_position(
    versions: Sequence[str] | Sequence[VersionEntry], when: datetime
) -> int | None:
    """The position of the newest version ingested at or before ``when``, or ``None``.

    ``versions``: version names or entries, sorted (oldest first). It reads one name
    when the newest is at or before ``when`` (the usual case), else it bisects: about
    log2(n) names, however long the history.
    """
    if not versions:
        return None
    if _time_of(versions[-1]) <= when:
        return len(versions) - 1  # the usual case, asked on every drop: one name read
    i = bisect.bisect_right(versions, when, key=_time_of)
    return i - 1 if i > 0 else None


def latest_position(versions: Sequence[str] | Sequence[VersionEntry], now: datetime) -> int | None:
    """The position of the latest version at ``now``: the newest not dated more than
    :data:`FUTURE_SLACK` ahead of it (``None`` when there is none)."""
    return at_or_before_position(versions, now + FUTURE_SLACK)


def at_or_before(names: Sequence[str], when: datetime) -> str | None:
    """The newest of the sorted version ``names`` ingested at or before ``when``."""
    i = at_or_before_position(names, when)
    return None if i is None else names[i]


def latest_name(names: Sequence[str], now: datetime) -> str | None:
    """The latest of the sorted version ``names`` at ``now`` (see :func:`latest_position`)."""
    i = latest_position(names, now)
    return None if i is None else names[i]


def is_future(name: str, now: datetime) -> bool:
    """Whether version ``name`` is dated more than :data:`FUTURE_SLACK` ahead of ``now``."""
    stamp = parse_timestamp_from_filename(name)
    return stamp is not None and stamp > now + FUTURE_SLACK


def future_count(names: Sequence[str], now: datetime) -> int:
    """How many of the sorted version ``names`` are future-dated at ``now`` (a suffix)."""
    i = latest_position(names, now)
    return len(names) - (0 if i is None else i + 1)


def stored_metadata(reader: HistoryReader) -> tuple[StorageMetadata, str | None]:
    """``reader``'s metadata as stored, and why it cannot be used (``None`` when it can).

    The reason is ``"missing"``, ``"corrupt"`` or the read error in the words of
    :func:`~ingester.errors.unreadable`; the metadata is then the defaults. Never raises.
    """
    from ..errors import MetadataMissing, unreadable
    from .metadata import MetadataCorrupt, StorageMetadata

    try:
        return reader.read_metadata(), None
    except MetadataMissing:
        return StorageMetadata(), "missing"
    except MetadataCorrupt:
        return StorageMetadata(), "corrupt"
    except OSError as exc:
        return StorageMetadata(), unreadable(exc)


def derive_metadata(
    names: Sequence[str],
    now: datetime,
    stored: StorageMetadata,
    base: StorageMetadata | None = None,
    *,
    holds_deleted: bool = False,
) -> StorageMetadata:
    """The metadata of the sorted version ``names`` at ``now``.

    Its facts (count, oldest, newest, latest, future) come from the names; the totals
    and the last cleanup are kept from ``stored`` (what the history held), or taken from
    ``base`` where that says more. Totals never decrease, and the count created is at least the
    count deleted plus the versions on hand, except with ``holds_deleted``: a store that
    keeps what retention deleted (a mirror's bucket in keep mode) has the deleted among
    its names, and the history's totals in ``base`` stand.
    """
    from .metadata import StorageMetadata

    created = max(stored.total_versions_created, len(names))
    deleted = stored.total_versions_deleted
    cleanup = stored.last_cleanup
    if base is not None:
        created = max(created, base.total_versions_created)
        deleted = max(deleted, base.total_versions_deleted)
        cleanup = base.last_cleanup or cleanup
    # Every version on hand was created, and so was every deleted one: a version the
    # totals do not count yet (a crash before the metadata was rewritten) raises the floor.
    if not holds_deleted:
        created = max(created, deleted + len(names))
    first = parse_timestamp_from_filename(names[0]) if names else None
    last = parse_timestamp_from_filename(names[-1]) if names else None
    return StorageMetadata(
        version_count=len(names),
        oldest_timestamp=format_timestamp(first),
        newest_timestamp=format_timestamp(last),
        last_cleanup=cleanup,
        total_versions_created=created,
        total_versions_deleted=deleted,
        latest_version=latest_name(names, now),
        future_versions=future_count(names, now),
    )


class HistoryReader(Protocol):
    """Read access to a history, wherever it is kept.

    Every method raises ``OSError`` (for local disk a
    :class:`~ingester.errors.StorageError`, naming the path) when the history cannot be
    read; its ``str()`` is one line, never holding a credential.
    """

    @property
    def location(self) -> str:
        """Where the history is, for messages: a folder's path or ``s3://BUCKET/PREFIX``."""
        ...

    def change_token(self) -> Hashable | None:
        """A value that differs whenever the set of versions may have changed.

        Compared with ``==`` to the token of the last listing: equal means the listing
        still holds. ``None`` means the backing cannot tell cheaply; a caller then lists
        again after a while. A token equal to nothing forces a listing.
        """
        ...

    def list_versions(self) -> list[VersionEntry]:
        """Every version, sorted by name (= ingestion order), oldest first.

        Only real versions: an entry named like one that is not a plain object (on
        local disk: a symlink, a folder) is not listed.
        """
        ...

    max_version_bytes: int
    """The most a version holds, in bytes: :data:`~ingester.payload.gate.MAX_DROP_BYTES`
    unless a test asks for less."""

    def read_version(self, name: str) -> bytes:
        """The bytes of version ``name``.

        Raises :class:`~ingester.errors.VersionNotFound` when there is none (never was,
        deleted since, not a version name, or not a plain object: a symlink is never
        followed), and :class:`~ingester.errors.VersionTooLarge` (an ``OSError``) when it
        holds more than :attr:`max_version_bytes`: at most one byte more is read, so a
        file larger than any drop never fills the memory. Nothing that copies versions
        byte for byte (the mirror, ``restore``) gets a truncated version this way.
        """
        ...

    def read_metadata(self) -> StorageMetadata:
        """``_metadata.json`` as stored.

        Raises :class:`~ingester.errors.MetadataMissing` when there is none and
        :class:`~ingester.history.metadata.MetadataCorrupt` when it does not hold the metadata.
        """
        ...


class StagedVersion(Protocol):
    """Bytes a :class:`HistoryWriter` has set down under no version name yet."""

    def discard(self) -> None:
        """Let go of the bytes (a no-op once committed)."""
        ...


class HistoryWriter(Protocol):
    """Write access to a history: ``stage``, ``commit``, ``publish``, ``remove``.

    Versions are immutable: a name once committed holds the same bytes until removed.
    A crash between any two calls leaves every committed version whole and nothing
    half-written under a version name; the latest and the metadata are caches of the
    versions, made to agree by the next ``publish``.
    """

    def stage(self, data: bytes) -> StagedVersion:
        """Set ``data`` down, ready to be committed (on local disk: a temp file, fsynced)."""
        ...

    def commit(self, staged: StagedVersion, name: str) -> None:
        """Make the staged bytes version ``name``, durably and whole.

        A name that already holds the same bytes is left as it is (committing again
        after an interruption is safe); one that holds other bytes raises
        :class:`~ingester.errors.VersionExists` and is never overwritten.
        """
        ...

    def publish(self, base: StorageMetadata | None = None) -> None:
        """Make the latest and the metadata follow the versions committed.

        The metadata's facts about the versions (count, oldest, newest, latest, future)
        are derived from the versions; what versions cannot tell (the totals created
        and deleted, the last cleanup) is kept from the stored metadata, or taken from
        ``base`` where that says more (the totals never decrease).
        """
        ...

    def remove(self, name: str) -> None:
        """Delete version ``name`` (retention's job); a name already gone is no error."""
        ...
