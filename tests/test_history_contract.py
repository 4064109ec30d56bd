"""One contract, held by every backing of a history: a local folder, an object store (a
real SeaweedFS on loopback) and memory.

Each test runs once per backing and speaks only the interfaces of
:mod:`ingester.history.base` (a reader and a writer), so a rule of the interface is
told apart from a quirk of one store. What only one backing can show (a symlink in a
version's place on disk) follows the shared tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_mirror import bucket, client_for, s3  # noqa: F401

from ingester.errors import MetadataMissing, VersionExists, VersionNotFound, VersionTooLarge
from ingester.history.base import (
    FUTURE_SLACK,
    HistoryReader,
    HistoryWriter,
    at_or_before,
    at_or_before_position,
    latest_name,
    latest_position,
)
from ingester.history.local import LocalHistory, LocalWriter
from ingester.history.memory import MemoryHistory
from ingester.history.metadata import StorageMetadata
from ingester.history.names import generate_version_filename
from ingester.history.store import HistoryStore
from ingester.mirror.objectstore import LATEST_KEY, parse_target
from ingester.mirror.s3_history import S3History

START = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


@dataclass
class Backing:
    """A history under test: its reader, its writer, the clock both use, and how to read
    the latest copy the writer keeps (a link on disk, an object, a field in memory)."""

    reader: HistoryReader
    writer: HistoryWriter
    now: list[datetime]
    latest_bytes: Callable[[], bytes | None]


def _local(tmp_path: Path, now: list[datetime]) -> Backing:
    store = HistoryStore(
        tmp_path / "console-usage-history",
        tmp_path / "console-usage-synced.json",
        clock=lambda: now[0],
    )
    store.history_dir.mkdir()  # a new history: no metadata yet

    def latest() -> bytes | None:
        path = store.latest_path
        return path.read_bytes() if path.exists() else None

    return Backing(LocalHistory(store.history_dir), LocalWriter(store), now, latest)


def _memory(now: list[datetime]) -> Backing:
    history = MemoryHistory(clock=lambda: now[0])

    def latest() -> bytes | None:
        return None if history.latest is None else history.read_version(history.latest)

    return Backing(history, history, now, latest)


def _object_store(endpoint: str, bucket_name: str, now: list[datetime]) -> Backing:
    client = client_for(endpoint)
    target = parse_target(f"s3://{bucket_name}/usage")
    history = S3History(client, target, token_ttl=0.0, wall_clock=lambda: now[0])

    def latest() -> bytes | None:
        try:
            response: dict[str, Any] = client.get_object(
                Bucket=target.bucket, Key=target.key(LATEST_KEY)
            )
        except client.exceptions.NoSuchKey:
            return None
        data: bytes = response["Body"].read()
        return data

    return Backing(history, history, now, latest)


@pytest.fixture(params=["local", "object-store", "memory"])
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backing]:
    now = [START]
    if request.param == "local":
        yield _local(tmp_path, now)
    elif request.param == "memory":
        yield _memory(now)
    else:
        server = request.getfixturevalue("s3")
        yield _object_store(server.endpoint, request.getfixturevalue("bucket"), now)


def name_at(when: datetime) -> str:
    return generate_version_filename(when)


def put(backing: Backing, name: str, data: bytes) -> None:
    backing.writer.commit(backing.writer.stage(data), name)


def payload(i: int) -> bytes:
    return b'{"version": %d, "pad": "%s"}' % (i, b"x" * i)


def three(backing: Backing) -> list[str]:
    """Three versions an hour apart ending at the clock, committed newest first."""
    names = [name_at(START - timedelta(hours=h)) for h in (2, 1, 0)]
    for i in (2, 0, 1):
        put(backing, names[i], payload(i))
    return names


# -- reading what was written --------------------------------------------------------------


def test_an_empty_history_has_no_versions_and_no_metadata(backing: Backing) -> None:
    assert backing.reader.list_versions() == []
    with pytest.raises(MetadataMissing):
        backing.reader.read_metadata()
    with pytest.raises(VersionNotFound):
        backing.reader.read_version(name_at(START))


def test_a_version_over_the_reader_s_limit_is_refused_never_read_whole(backing: Backing) -> None:
    # Every reader refuses what no drop could be before reading it (a small limit here,
    # the largest --max-bytes in use); the versions within it read back as ever.
    names = three(backing)
    largest = len(payload(2))
    backing.reader.max_version_bytes = largest - 1
    with pytest.raises(VersionTooLarge) as caught:
        backing.reader.read_version(names[2])
    assert isinstance(caught.value, OSError)  # a caller knowing only OSError reports it
    assert (caught.value.name, caught.value.size, caught.value.limit) == (
        names[2],
        largest,
        largest - 1,
    )
    assert (
        caught.value.reason == f"larger than any drop: {largest} bytes, the limit is {largest - 1}"
    )
    assert str(caught.value) == f"{backing.reader.location}/{names[2]} is {caught.value.reason}"
    assert [backing.reader.read_version(n) for n in names[:2]] == [payload(0), payload(1)]
    backing.reader.max_version_bytes = largest
    assert backing.reader.read_version(names[2]) == payload(2)


def test_versions_are_listed_in_order_and_read_back_byte_for_byte(backing: Backing) -> None:
    names = three(backing)
    entries = backing.reader.list_versions()
    assert [e.name for e in entries] == names
    assert [e.size for e in entries] == [len(payload(i)) for i in range(3)]
    assert [e.ingested_at for e in entries] == [START - timedelta(hours=h) for h in (2, 1, 0)]
    for i, name in enumerate(names):
        assert backing.reader.read_version(name) == payload(i)


def test_a_version_is_never_overwritten(backing: Backing) -> None:
    (name, *_rest) = three(backing)
    put(backing, name, payload(0))  # the same bytes again: an interrupted commit redone
    with pytest.raises(VersionExists):
        put(backing, name, b'{"other": true}')
    assert backing.reader.read_version(name) == payload(0)
    assert len(backing.reader.list_versions()) == 3


@pytest.mark.parametrize(
    "name",
    ["_metadata.json", "console-usage-synced.json", "../escape.json", "nope", ""],
)
def test_a_name_that_is_no_version_is_never_read_or_written(backing: Backing, name: str) -> None:
    three(backing)
    backing.writer.publish()
    with pytest.raises(VersionNotFound):
        backing.reader.read_version(name)
    with pytest.raises(ValueError):
        put(backing, name, b"{}")


def test_staged_bytes_discarded_leave_nothing(backing: Backing) -> None:
    staged = backing.writer.stage(b"{}")
    staged.discard()
    assert backing.reader.list_versions() == []


# -- the latest, "at or before T" and the metadata -----------------------------------------


def test_latest_and_at_or_before_are_one_rule_everywhere(backing: Backing) -> None:
    names = three(backing)
    future = name_at(START + FUTURE_SLACK + timedelta(hours=1))
    put(backing, future, payload(9))
    entries = backing.reader.list_versions()
    all_names = [*names, future]
    assert [e.name for e in entries] == all_names
    assert latest_name(all_names, START) == names[-1]  # a clock that ran ahead hides nothing
    assert latest_position(entries, START) == 2
    assert at_or_before(all_names, START - timedelta(minutes=90)) == names[0]
    assert at_or_before_position(entries, START - timedelta(minutes=90)) == 0
    assert at_or_before(all_names, START - timedelta(hours=3)) is None
    backing.writer.publish()
    meta = backing.reader.read_metadata()
    assert meta.latest_version == names[-1]
    assert meta.future_versions == 1
    assert backing.latest_bytes() == payload(2)
    # Once the clock passes it, the future version is the latest.
    backing.now[0] = START + FUTURE_SLACK + timedelta(hours=2)
    backing.writer.publish()
    assert backing.reader.read_metadata().latest_version == future
    assert backing.latest_bytes() == payload(9)


def test_the_metadata_follows_the_versions_and_keeps_its_totals(backing: Backing) -> None:
    names = three(backing)
    backing.writer.publish()
    meta = backing.reader.read_metadata()
    assert meta.version_count == 3
    assert meta.total_versions_created == 3
    assert meta.oldest_timestamp is not None and meta.newest_timestamp is not None
    assert meta.oldest_timestamp < meta.newest_timestamp
    # What versions cannot tell comes from the base where it says more.
    base = StorageMetadata(total_versions_created=40, total_versions_deleted=37)
    backing.writer.publish(base)
    carried = backing.reader.read_metadata()
    assert (carried.total_versions_created, carried.total_versions_deleted) == (40, 37)
    assert carried.version_count == 3
    # Removing a version: the count follows, the totals never decrease.
    backing.writer.remove(names[0])
    backing.writer.remove(names[0])  # already gone: no error
    backing.writer.publish()
    after = backing.reader.read_metadata()
    assert after.version_count == 2
    assert after.total_versions_created == 40
    assert [e.name for e in backing.reader.list_versions()] == names[1:]
    with pytest.raises(VersionNotFound):
        backing.reader.read_version(names[0])


def test_removing_every_version_leaves_no_latest(backing: Backing) -> None:
    names = three(backing)
    backing.writer.publish()
    for name in names:
        backing.writer.remove(name)
    backing.writer.publish()
    meta = backing.reader.read_metadata()
    assert (meta.version_count, meta.latest_version) == (0, None)


def test_the_change_token_moves_when_the_versions_change(backing: Backing) -> None:
    three(backing)
    backing.writer.publish()
    before = backing.reader.change_token()
    put(backing, name_at(START + timedelta(minutes=1)), payload(3))
    backing.writer.publish()
    assert backing.reader.change_token() != before


# -- what only a folder on disk can hold -----------------------------------------------------


def test_a_symlink_in_a_versions_place_is_never_followed(tmp_path: Path) -> None:
    backing = _local(tmp_path, [START])
    outside = tmp_path / "secret.json"
    outside.write_bytes(b'{"secret": 1}')
    history = tmp_path / "console-usage-history"
    name = name_at(START)
    os.symlink(outside, history / name)
    (history / name_at(START - timedelta(hours=1))).mkdir()  # a folder named like one
    assert backing.reader.list_versions() == []
    with pytest.raises(VersionNotFound):
        backing.reader.read_version(name)
    with pytest.raises(VersionExists):
        put(backing, name, b"{}")
    assert outside.read_bytes() == b'{"secret": 1}'


def test_a_folder_in_a_versions_place_is_no_version_and_never_replaced(tmp_path: Path) -> None:
    # A folder is no version: reading it says so (it is not a read failure to retry),
    # and storing under its name is a conflict, as for any entry that is not the bytes.
    backing = _local(tmp_path, [START])
    name = name_at(START + timedelta(hours=1))
    folder = tmp_path / "console-usage-history" / name
    folder.mkdir()
    with pytest.raises(VersionNotFound):
        backing.reader.read_version(name)
    with pytest.raises(VersionExists):
        put(backing, name, payload(1))
    assert folder.is_dir()
