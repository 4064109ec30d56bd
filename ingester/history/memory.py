"""The in-memory backing: a history in a dict, reader and writer, for tests.

It keeps the contract of :mod:`ingester.history.base` with nothing underneath, so the
contract suite can tell a rule of the interface from a quirk of a store, and tests of
what reads a history need no folder. Thread-safe; nothing survives the process.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime

from ..errors import MetadataMissing, VersionExists, VersionNotFound, VersionTooLarge
from ..payload.gate import MAX_DROP_BYTES
from .base import VersionEntry, derive_metadata, latest_name
from .metadata import StorageMetadata
from .names import is_version_name, parse_timestamp_from_filename

__all__ = ["MemoryHistory"]


@dataclass
class _Staged:
    data: bytes | None

    def discard(self) -> None:
        self.data = None


class MemoryHistory:
    """A :class:`~ingester.history.base.HistoryReader` and
    :class:`~ingester.history.base.HistoryWriter` in memory.

    ``clock`` says what "now" is for the latest (the future slack); ``latest`` and
    ``metadata_bytes`` are what :meth:`publish` left, as a store would hold them.
    ``max_version_bytes``: the most a version may hold to be read back, in bytes (as
    the other backings refuse a larger one).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] | None = None,
        location: str = "memory:",
        max_version_bytes: int = MAX_DROP_BYTES,
    ) -> None:
        self.location = location
        self.max_version_bytes = max_version_bytes
        self._clock = clock
        self._versions: dict[str, bytes] = {}
        self._metadata: bytes | None = None
        self.latest: str | None = None
        self._changes = itertools.count()
        self._token = next(self._changes)
        self._lock = threading.Lock()

    def _now(self) -> datetime:
        return self._clock() if self._clock is not None else datetime.now(UTC)

    # -- reading -----------------------------------------------------------------------

    def change_token(self) -> Hashable | None:
        """A counter moved by every change."""
        return self._token

    def list_versions(self) -> list[VersionEntry]:
        """Every version, oldest first."""
        with self._lock:
            held = sorted(self._versions.items())
        out = []
        for name, data in held:
            stamp = parse_timestamp_from_filename(name)
            assert stamp is not None  # commit takes version names only
            out.append(VersionEntry(name, stamp, len(data)))
        return out

    def read_version(self, name: str) -> bytes:
        """A version's bytes; :class:`~ingester.errors.VersionNotFound` when there is none,
        :class:`~ingester.errors.VersionTooLarge` when it is over ``max_version_bytes``."""
        with self._lock:
            data = self._versions.get(name)
        if data is None:
            raise VersionNotFound(name)
        if len(data) > self.max_version_bytes:
            raise VersionTooLarge(name, self.location, len(data), self.max_version_bytes)
        return data

    def read_metadata(self) -> StorageMetadata:
        """The metadata :meth:`publish` (or :meth:`put_metadata`) left."""
        raw = self._metadata
        if raw is None:
            raise MetadataMissing(f"no metadata in {self.location}")
        return StorageMetadata.model_validate_json(raw)

    def put_metadata(self, raw: bytes) -> None:
        """Store ``raw`` as the metadata's bytes, whatever they hold (for tests)."""
        with self._lock:
            self._metadata = raw
            self._token = next(self._changes)

    # -- writing -----------------------------------------------------------------------

    def stage(self, data: bytes) -> _Staged:
        """Hold ``data`` until it is committed."""
        return _Staged(bytes(data))

    def commit(self, staged: _Staged, name: str) -> None:
        """``staged``'s bytes as version ``name`` (never over other bytes)."""
        if not is_version_name(name):
            raise ValueError(f"not a version name: {name!r}")
        data = staged.data
        if data is None:
            raise RuntimeError("staged bytes already committed or discarded")
        with self._lock:
            held = self._versions.get(name)
            if held is not None and held != data:
                raise VersionExists(name, self.location)
            self._versions[name] = data
            self._token = next(self._changes)
        staged.data = None

    def publish(self, base: StorageMetadata | None = None) -> None:
        """Point the latest at the newest version; derive the metadata from the versions."""
        now = self._now()
        with self._lock:
            names = sorted(self._versions)
            try:
                stored = (
                    StorageMetadata.model_validate_json(self._metadata)
                    if self._metadata is not None
                    else StorageMetadata()
                )
            except ValueError:
                stored = StorageMetadata()
            self.latest = latest_name(names, now)
            self._metadata = derive_metadata(names, now, stored, base).to_json_bytes()
            self._token = next(self._changes)

    def remove(self, name: str) -> None:
        """Delete version ``name`` (gone already: no error)."""
        with self._lock:
            if self._versions.pop(name, None) is not None:
                self._token = next(self._changes)
