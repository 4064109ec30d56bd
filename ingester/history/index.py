"""Reading the history for ``serve``: a small read interface and a sorted index over it.

``serve`` never writes the history (the watcher is its only writer); it reads it through
:class:`HistoryReader`, four methods that any backing can offer:

* :meth:`HistoryReader.change_token`: something cheap that changes whenever the set of
  versions may have changed (``None``: cannot tell, list again after a short while);
* :meth:`HistoryReader.list_versions`: every version, oldest first, with ingest time and size;
* :meth:`HistoryReader.read_version`: one version's bytes;
* :meth:`HistoryReader.read_metadata`: ``_metadata.json`` as stored.

:class:`LocalHistory` reads a history folder on local disk. Its change token is the
folder's ``(st_ino, st_mtime_ns, st_ctime_ns)``: every version added or deleted, and every
replacement of ``_metadata.json``, is an entry created or removed in the folder, which
moves the folder's mtime (a folder changed within the last 50 ms is listed again on
every look, as a second change within one clock tick may not move it again). Version
files are immutable, so their bytes need no revalidation.

:class:`HistoryIndex` keeps the sorted list of versions in memory and revalidates it with
one ``stat`` per lookup, so ``?version=N`` and ``?timestamp=`` cost a bisection, not a
listing, however long the history is.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from ..errors import StorageError, VersionNotFound
from ..names import is_version_name, parse_timestamp_from_filename
from ..store import METADATA_NAME, StorageMetadata

__all__ = [
    "BoundedCache",
    "HistoryIndex",
    "HistoryReader",
    "HistorySnapshot",
    "LocalHistory",
    "VersionEntry",
    "VersionNotFound",
]

K = TypeVar("K")
V = TypeVar("V")

# A version dated more than this far ahead of the clock is "future" and is never what
# "latest" means (the latest link skips it too).
FUTURE_SLACK = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class VersionEntry:
    """One version: its file name, its ingest time (UTC, to the second) and size in bytes."""

    name: str
    ingested_at: datetime
    size: int


class HistoryReader(Protocol):
    """Read-only access to a history, wherever it is kept.

    Every method raises :class:`ingester.durable.StorageError` (or, for another backing,
    an ``OSError``) when the history cannot be read at all.
    """

    def change_token(self) -> Hashable | None:
        """A value that differs whenever the set of versions may have changed.

        Compared with ``==`` to the token of the last listing: equal means the listing
        still holds. ``None`` means the backing cannot tell cheaply; the index then lists
        again once its ``ttl`` has passed. A token equal to nothing forces a listing.
        """
        ...

    def list_versions(self) -> list[VersionEntry]:
        """Every version, sorted by name (= ingestion order), oldest first."""
        ...

    def read_version(self, name: str) -> bytes:
        """The bytes of version ``name``; :class:`VersionNotFound` when there is none."""
        ...

    def read_metadata(self) -> StorageMetadata:
        """``_metadata.json`` as stored; defaults when it is missing or corrupt."""
        ...


class _Unsettled:
    """A change token equal to nothing, itself included: "list again every time"."""

    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return id(self)


class LocalHistory:
    """A :class:`HistoryReader` over a history folder on local disk.

    ``settle`` (seconds): a folder changed more recently than this gets a token equal to
    nothing, so it is listed again on every look until its times are settled. Two changes
    within the file system's timestamp granularity (a clock tick) could leave the same
    mtime; once the last change is older than a few ticks, the next one moves it.
    """

    def __init__(self, history_dir: Path, *, settle: float = 0.05) -> None:
        self.dir = Path(os.path.abspath(history_dir))
        self.settle = settle
        # Version files never change, so a size once read stays true while the name exists.
        self._sizes: dict[str, int] = {}

    def change_token(self) -> Hashable | None:
        """The folder's inode, mtime and ctime (in ns); ``"missing"`` while there is none."""
        try:
            st = os.stat(self.dir)
        except FileNotFoundError:  # not created yet: an empty history, not a broken one
            return "missing"
        except OSError as exc:
            raise StorageError("stat", self.dir, exc) from exc
        if time.time() - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 <= self.settle:
            return _Unsettled()
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)

    def list_versions(self) -> list[VersionEntry]:
        """Scan the folder; ``stat`` only the names not seen by the previous scan."""
        sizes: dict[str, int] = {}
        if not os.path.lexists(self.dir):
            self._sizes = {}
            return []
        try:
            with os.scandir(self.dir) as entries:
                for entry in entries:
                    if not is_version_name(entry.name):
                        continue
                    known = self._sizes.get(entry.name)
                    if known is not None:
                        sizes[entry.name] = known
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # deleted by retention meanwhile
                        continue
                    if st.st_mode & 0o170000 == 0o100000:  # regular files only
                        sizes[entry.name] = st.st_size
        except OSError as exc:
            raise StorageError("list", self.dir, exc) from exc
        self._sizes = sizes
        out = []
        for name in sorted(sizes):
            stamp = parse_timestamp_from_filename(name)
            if stamp is not None:
                out.append(VersionEntry(name, stamp, sizes[name]))
        return out

    def read_version(self, name: str) -> bytes:
        """The version file's bytes (never follows a symlink)."""
        if not is_version_name(name):
            raise VersionNotFound(name)
        path = self.dir / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise VersionNotFound(name) from None
        except OSError as exc:
            raise StorageError("open", path, exc) from exc
        try:
            with os.fdopen(fd, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise StorageError("read", path, exc) from exc

    def read_metadata(self) -> StorageMetadata:
        """``_metadata.json``, or defaults when missing or corrupt."""
        path = self.dir / METADATA_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return StorageMetadata()
        except OSError as exc:
            raise StorageError("read", path, exc) from exc
        try:
            return StorageMetadata.model_validate_json(raw)
        except ValueError:
            return StorageMetadata()


@dataclass(frozen=True)
class HistorySnapshot:
    """The versions at one moment: sorted by name, oldest first, and their ingest times."""

    entries: tuple[VersionEntry, ...]
    # The ingest times in POSIX seconds, parallel to ``entries``, for bisection.
    times: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.entries)

    def position(self, name: str) -> int | None:
        """The 0-based position of version ``name``, or ``None`` when it is not held."""
        i = bisect.bisect_left(self.entries, name, key=lambda e: e.name)
        if i < len(self.entries) and self.entries[i].name == name:
            return i
        return None

    def latest_position(self, now: datetime) -> int | None:
        """The newest version not dated more than a day ahead of ``now``: what latest means."""
        horizon = (now + FUTURE_SLACK).timestamp()
        i = bisect.bisect_right(self.times, horizon)
        return i - 1 if i > 0 else None

    def nearest_position(self, when: datetime) -> int | None:
        """The version whose ingest time is nearest ``when``.

        On a tie (several versions in one second, or equally far on both sides) the
        newer one wins: it is what was current at that instant.
        """
        if not self.entries:
            return None
        t = when.timestamp()
        right = bisect.bisect_right(self.times, t)  # first one strictly after t
        left = right - 1  # newest at or before t
        if right < len(self.times) and (left < 0 or self.times[right] - t <= t - self.times[left]):
            # The newest of the versions that share the time of the first one after t.
            return bisect.bisect_right(self.times, self.times[right]) - 1
        return left

    def page(
        self, *, limit: int, before: str | None = None, after: str | None = None
    ) -> list[VersionEntry]:
        """Up to ``limit`` versions, newest first, named below ``before`` and above ``after``."""
        hi = len(self.entries)
        lo = 0
        if before is not None:
            hi = bisect.bisect_left(self.entries, before, key=lambda e: e.name)
        if after is not None:
            lo = bisect.bisect_right(self.entries, after, key=lambda e: e.name)
        if hi <= lo:
            return []
        return list(reversed(self.entries[max(lo, hi - limit) : hi]))


class BoundedCache(Generic[K, V]):
    """A least-recently-used cache bounded by a byte budget (each entry's cost given).

    Thread-safe: the event loop and the metrics thread share them.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._used = 0
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value for ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
            return hit[0]

    def put(self, key: K, value: V, cost: int) -> None:
        """Keep ``value``; evict the least recently used until within budget.

        A value costing more than the whole budget is not kept.
        """
        if cost > self.budget:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._used -= old[1]
            self._items[key] = (value, cost)
            self._used += cost
            while self._used > self.budget:
                _key, (_value, gone) = self._items.popitem(last=False)
                self._used -= gone


def _snapshot(entries: Sequence[VersionEntry]) -> HistorySnapshot:
    return HistorySnapshot(tuple(entries), tuple(e.ingested_at.timestamp() for e in entries))


class HistoryIndex:
    """The sorted versions of a :class:`HistoryReader`, kept current cheaply.

    Each :meth:`snapshot` asks the reader for its change token (one ``stat`` on local
    disk) and lists again only when it differs from the one of the last listing.
    Readers without a token (``None``) are listed again after ``ttl`` seconds.

    Thread-safe: the app reads it from the event loop and from worker threads.
    """

    def __init__(
        self,
        reader: HistoryReader,
        *,
        ttl: float = 1.0,
        cache_bytes: int = 4 << 20,
    ) -> None:
        self.reader = reader
        self.ttl = ttl
        self._lock = threading.Lock()
        self._snap = _snapshot(())
        self._token: Hashable | None = None
        self._listed_at = float("-inf")
        self._bytes: BoundedCache[str, bytes] = BoundedCache(cache_bytes)
        self.relists = 0  # how many times the versions were listed (for metrics and tests)

    def snapshot(self) -> HistorySnapshot:
        """The current versions; raises ``StorageError``/``OSError`` when unreadable."""
        # Read before listing: a change during the listing then shows as a new token on
        # the next call, never as an old one.
        token = self.reader.change_token()
        with self._lock:
            now = time.monotonic()
            if token is None:
                fresh = now - self._listed_at < self.ttl
            else:
                fresh = self._token is not None and token == self._token
            if fresh:
                return self._snap
            self._snap = _snapshot(self.reader.list_versions())
            self._token = token
            self._listed_at = now
            self.relists += 1
            return self._snap

    def read_version(self, name: str) -> bytes:
        """A version's bytes, from a cache of at most ``cache_bytes`` (versions never change)."""
        cached = self._bytes.get(name)
        if cached is not None:
            return cached
        data = self.reader.read_version(name)
        self._bytes.put(name, data, len(data))
        return data

    def read_metadata(self) -> StorageMetadata:
        """The stored metadata (not cached: read for health and metrics only)."""
        return self.reader.read_metadata()
