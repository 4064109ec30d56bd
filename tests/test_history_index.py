"""The sorted index ``serve`` answers from: pure lookups checked against brute force
(hypothesis), revalidation against a real folder, and the bounded caches."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from support import wait_for

from ingester.errors import VersionNotFound
from ingester.history.base import VersionEntry
from ingester.history.index import BoundedCache, HistoryIndex, _snapshot
from ingester.history.local import LocalHistory

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def entries(offsets: list[int]) -> list[VersionEntry]:
    """Versions at T0 + each offset (seconds), named in that order."""
    out = []
    for i, off in enumerate(sorted(offsets)):
        at = T0 + timedelta(seconds=off)
        out.append(VersionEntry(f"{at.strftime('%Y-%m-%dT%H-%M-%S')}-{i:08x}.json", at, 10))
    return out


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=60), st.integers(-100, 10_100))
def test_nearest_matches_brute_force(offsets: list[int], query: int) -> None:
    snap = _snapshot(entries(offsets))
    when = T0 + timedelta(seconds=query)
    pos = snap.nearest_position(when)
    assert pos is not None
    best = min(abs((e.ingested_at - when).total_seconds()) for e in snap.entries)
    assert abs((snap.entries[pos].ingested_at - when).total_seconds()) == best
    # Ties go to the newest of the nearest.
    nearest = [
        i for i, e in enumerate(snap.entries) if abs((e.ingested_at - when).total_seconds()) == best
    ]
    assert pos == max(nearest)


@given(
    st.lists(st.integers(0, 500), min_size=0, max_size=40, unique=True),
    st.integers(1, 50),
    st.one_of(st.none(), st.integers(-5, 505)),
    st.one_of(st.none(), st.integers(-5, 505)),
)
def test_page_matches_brute_force(
    offsets: list[int], limit: int, before: int | None, after: int | None
) -> None:
    es = entries(offsets)
    snap = _snapshot(es)

    def name_at(off: int) -> str:
        at = T0 + timedelta(seconds=off)
        return f"{at.strftime('%Y-%m-%dT%H-%M-%S')}-zzzzzzzz.json" if off >= 0 else "0"

    b = name_at(before) if before is not None else None
    a = name_at(after) if after is not None else None
    expected = [e for e in reversed(es) if (b is None or e.name < b) and (a is None or e.name > a)][
        :limit
    ]
    assert snap.page(limit=limit, before=b, after=a) == expected


def test_latest_skips_future_versions() -> None:
    now = T0 + timedelta(days=10)
    es = entries([0, 60, 86400 * 30])  # the last one is 20 days ahead of "now"
    snap = _snapshot(es)
    assert snap.latest_position(now) == 1
    assert snap.latest_position(T0 - timedelta(days=5)) is None


def test_bounded_cache_keeps_within_budget() -> None:
    cache: BoundedCache[str, bytes] = BoundedCache(100)
    cache.put("a", b"a" * 40, 40)
    cache.put("b", b"b" * 40, 40)
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", b"c" * 40, 40)  # evicts b, the least recent
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    cache.put("huge", b"x" * 101, 101)  # over the whole budget: not kept, nothing evicted
    assert cache.get("huge") is None and cache.get("a") is not None


def test_index_lists_again_only_when_the_folder_changes(tmp_path: Path) -> None:
    history = tmp_path / "history"
    index = HistoryIndex(LocalHistory(history, settle=0.05))
    assert len(index.snapshot()) == 0  # no folder yet: empty, not an error
    history.mkdir()
    name = f"{T0.strftime('%Y-%m-%dT%H-%M-%S')}-00000000.json"
    (history / name).write_bytes(b"{}")
    # Once the folder's last change is older than the settle time, a listing is trusted.
    wait_for(lambda: time.time() - os.stat(history).st_ctime > 0.1, 5, "the folder to settle")
    assert [e.name for e in index.snapshot().entries] == [name]
    listed = index.relists
    for _ in range(50):
        index.snapshot()
    assert index.relists == listed
    (history / "notes.txt").write_text("not a version")  # any change makes it look again
    assert len(index.snapshot()) == 1
    assert index.relists == listed + 1
    assert index.read_version(name) == b"{}"
    try:
        index.read_version("2026-01-01T00-00-00-absent.json")
    except VersionNotFound:
        pass
    else:
        raise AssertionError("a missing version was found")


def test_a_folder_dated_ahead_of_a_clock_set_back_is_not_listed_on_every_look(
    tmp_path: Path,
) -> None:
    """A folder last changed while the clock ran a day ahead: once set back, its times lie
    in the future, and a lookup still costs a stat, not a listing."""
    history = tmp_path / "history"
    history.mkdir()
    name = f"{T0.strftime('%Y-%m-%dT%H-%M-%S')}-00000000.json"
    (history / name).write_bytes(b"{}")
    ahead = time.time_ns() + 86_400 * 10**9
    os.utime(history, ns=(ahead, ahead))
    wait_for(lambda: time.time() - os.stat(history).st_ctime > 0.1, 5, "the folder to settle")
    index = HistoryIndex(LocalHistory(history, settle=0.05))
    assert [e.name for e in index.snapshot().entries] == [name]
    listed = index.relists
    for _ in range(20):
        index.snapshot()
    assert index.relists == listed
    (history / "notes.txt").write_text("not a version")  # a change now is still seen
    index.snapshot()
    assert index.relists == listed + 1


def test_a_fresh_change_is_not_trusted(tmp_path: Path) -> None:
    """Two changes within the timestamp granularity must not hide the second one."""
    history = tmp_path / "history"
    history.mkdir()
    index = HistoryIndex(LocalHistory(history, settle=3600))  # nothing ever settles
    index.snapshot()
    first = index.relists
    index.snapshot()
    assert index.relists == first + 1  # listed again: the token was too fresh to trust


def test_a_version_put_back_by_a_rename_is_listed_with_its_own_size(tmp_path: Path) -> None:
    """A damaged version put back from a backup by a rename (a new file under the old
    name) is listed with the backup's size, not the size the damaged file had."""
    history = tmp_path / "history"
    history.mkdir()
    name = f"{T0.strftime('%Y-%m-%dT%H-%M-%S')}-00000000.json"
    (history / name).write_bytes(b"{damaged")
    local = LocalHistory(history)
    assert [(e.name, e.size) for e in local.list_versions()] == [(name, 8)]
    backup = tmp_path / "backup.json"
    backup.write_bytes(b'{"put": "back"}')
    os.replace(backup, history / name)
    assert [(e.name, e.size) for e in local.list_versions()] == [(name, 15)]


def test_a_version_file_put_back_in_place_is_read_again_not_taken_from_the_cache(
    tmp_path: Path,
) -> None:
    """A damaged version's repair is its file put back from a backup: renamed over it, or
    written over it in place (``cp``), even at the same size. Each read after that gets
    the new bytes, and one after the file is deleted finds no version."""
    history = tmp_path / "history"
    history.mkdir()
    name = f"{T0.strftime('%Y-%m-%dT%H-%M-%S')}-00000000.json"
    path = history / name
    path.write_bytes(b"{damaged")
    index = HistoryIndex(LocalHistory(history, settle=0.05))

    def settled() -> bool:
        st = os.stat(path)
        return time.time() - max(st.st_mtime, st.st_ctime) > 0.1

    wait_for(settled, 5, "the file to settle")
    assert index.read_version(name) == b"{damaged"
    assert index.read_version(name) == b"{damaged"  # settled: the cache may answer
    backup = tmp_path / "backup.json"
    backup.write_bytes(b'{"a": 1}')
    os.replace(backup, path)
    assert index.read_version(name) == b'{"a": 1}'
    wait_for(settled, 5, "the file to settle")
    assert index.read_version(name) == b'{"a": 1}'
    path.write_bytes(b'{"a": 2}')  # in place, the same size
    assert index.read_version(name) == b'{"a": 2}'
    path.unlink()
    try:
        index.read_version(name)
    except VersionNotFound:
        pass
    else:
        raise AssertionError("a deleted version was read from the cache")
