"""A sorted index over any history reader, kept current cheaply, with bounded caches.

``serve``, the page and the forecast answer from :class:`HistoryIndex`: it keeps the
sorted list of versions in memory and revalidates it with the reader's change token
(one ``stat`` on local disk, one ``HEAD`` a second on an object store) per lookup, so
``?version=N`` and ``?timestamp=`` cost a bisection, not a listing, however long the
history is. Their bytes are cached too, each checked against the file it came from (one
``lstat`` on local disk): versions never change, but an operator may put a good copy
back in a damaged one's place, and that copy is served at once.
"""

from __future__ import annotations

import bisect
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from ..errors import MetadataMissing
from .base import HistoryReader, VersionEntry, latest_position
from .local import LocalHistory
from .metadata import MetadataCorrupt, StorageMetadata

__all__ = ["BoundedCache", "HistoryIndex", "HistorySnapshot"]

K = TypeVar("K")
V = TypeVar("V")


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
        """The position of the latest version at ``now`` (see
        :func:`~ingester.history.base.latest_position`)."""
        return latest_position(self.entries, now)

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
        self._bytes: BoundedCache[str, tuple[Hashable, bytes]] = BoundedCache(cache_bytes)
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

    def version_stamp(self, name: str) -> Hashable | None:
        """What identifies the bytes held under version ``name`` now, for caches of what
        was made of them: equal stamps, the same bytes.

        On local disk the file's inode, size, mtime and ctime (ns), from one ``lstat``: a
        file put back in place (``os.replace``, ``cp``) or rewritten differs in one of
        them. ``None`` when that cannot be told now, so nothing cached may stand for the
        file: it changed within the reader's ``settle`` seconds (a second change the same
        clock tick could leave the same times), or the ``lstat`` failed (the read then
        says why). Other readers give ``()``: an object store proves each object's bytes
        as it reads them, so a name stands for its bytes.
        """
        reader = self.reader
        if not isinstance(reader, LocalHistory):
            return ()
        try:
            st = os.lstat(reader.location + os.sep + name)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        now = time.time()
        if any(abs(now - t / 1e9) <= reader.settle for t in (st.st_mtime_ns, st.st_ctime_ns)):
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def read_version(self, name: str) -> bytes:
        """A version's bytes, from a cache of at most ``cache_bytes`` bytes, each entry
        good while the file's :meth:`version_stamp` is the one it was read under.

        Raises what the reader raises (``VersionNotFound``, ``VersionTooLarge``,
        ``OSError``)."""
        stamp = self.version_stamp(name)
        if stamp is not None:
            cached = self._bytes.get(name)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        data = self.reader.read_version(name)
        if stamp is not None:
            # Stamped before the read: bytes that changed in between are kept under the
            # old stamp, which the next look no longer matches.
            self._bytes.put(name, (stamp, data), len(data))
        return data

    def read_metadata(self) -> StorageMetadata | None:
        """The stored metadata, ``None`` when it is missing or corrupt (not cached: read
        for metrics only); ``OSError`` when it cannot be read."""
        try:
            return self.reader.read_metadata()
        except (MetadataMissing, MetadataCorrupt):
            return None
