"""HistoryStore on a real temp folder: versions, latest link, metadata, retention, repairs."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ingester import (
    HistoryStore,
    RetentionPolicy,
    StorageError,
    judge_payload,
    parse_timestamp_from_filename,
)
from ingester.errors import CacheNotRefreshed
from ingester.history.names import format_timestamp, is_version_name

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SIX_KEYS = [
    "versionCount",
    "oldestTimestamp",
    "newestTimestamp",
    "lastCleanup",
    "totalVersionsCreated",
    "totalVersionsDeleted",
]
SEED_CONTENT = b'{"lastUpdated":"2026-01-01T00:00:00Z"}\n'


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_store(tmp_path: Path, clock: Clock) -> Callable[..., HistoryStore]:
    def make(policy: RetentionPolicy | None = None) -> HistoryStore:
        return HistoryStore(
            tmp_path / "console-usage-history",
            tmp_path / "console-usage-synced.json",
            policy,
            clock=clock,
        )

    return make


@pytest.fixture
def store(make_store: Callable[..., HistoryStore]) -> HistoryStore:
    s = make_store()
    s.initialize()
    return s


def versions_on_disk(store: HistoryStore) -> list[str]:
    """Regular files with version names (a folder or symlink so named is not a version)."""
    with os.scandir(store.history_dir) as entries:
        return sorted(
            e.name for e in entries if is_version_name(e.name) and e.is_file(follow_symlinks=False)
        )


def read_metadata(store: HistoryStore) -> dict[str, object]:
    data: dict[str, object] = json.loads(store.metadata_path.read_bytes())
    return data


def assert_consistent(store: HistoryStore) -> None:
    """Metadata and latest link agree with a fresh scan of the folder."""
    names = versions_on_disk(store)
    meta = read_metadata(store)
    assert list(meta)[:6] == SIX_KEYS
    assert meta["versionCount"] == len(names)
    stamps = [parse_timestamp_from_filename(n) for n in names]
    assert meta["oldestTimestamp"] == (format_timestamp(stamps[0]) if names else None)
    assert meta["newestTimestamp"] == (format_timestamp(stamps[-1]) if names else None)
    assert not [n for n in os.listdir(store.history_dir) if n.startswith(".tmp-")]
    fresh = HistoryStore(store.history_dir, store.latest_path, store.policy, clock=store.clock)
    assert fresh.latest_problem() is None


def seed_history(store: HistoryStore) -> list[str]:
    """110 versions named as an older tool named them (``...-testN.json``), dated in January."""
    store.history_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(1, 111):
        name = f"2026-01-{i % 28 + 1:02d}T00-00-00-test{i}.json"
        (store.history_dir / name).write_bytes(SEED_CONTENT)
        names.append(name)
    return sorted(names)


# -- retention over a history an older tool left ----------------------------------------


def test_retention_over_a_history_an_older_tool_left(
    make_store: Callable[..., HistoryStore],
) -> None:
    store = make_store()
    old = seed_history(store)
    store.initialize()
    assert read_metadata(store)["versionCount"] == 110

    new = store.save_version(
        judge_payload(
            SEED_CONTENT.replace(b"}", b',"currentSession":{"resetsIn":"1 hr","percentageUsed":1}}')
        )
    )
    result = store.cleanup_old_versions()

    remaining = versions_on_disk(store)
    assert len(remaining) == 100
    assert remaining[-1] == new.name
    assert remaining == [*old[11:], new.name]
    assert sorted(result.deleted) == old[:11]
    assert result.retained == 100
    meta = read_metadata(store)
    assert meta["versionCount"] == 100
    assert meta["totalVersionsDeleted"] == 11
    assert meta["totalVersionsCreated"] == 111
    assert meta["oldestTimestamp"] == format_timestamp(parse_timestamp_from_filename(old[11]))
    assert meta["newestTimestamp"] == format_timestamp(parse_timestamp_from_filename(new.name))
    assert meta["lastCleanup"] == format_timestamp(NOW)
    assert os.readlink(store.latest_path) == f"console-usage-history/{new.name}"
    assert_consistent(store)


# -- saving -------------------------------------------------------------------------------


def test_save_stores_bytes_unchanged_read_only(store: HistoryStore, valid_payload: bytes) -> None:
    path = store.save_version(valid_payload)
    assert path.parent == store.history_dir
    assert path.read_bytes() == valid_payload
    assert stat.S_IMODE(path.stat().st_mode) == 0o444 & ~current_umask()
    assert versions_on_disk(store) == [path.name]
    assert parse_timestamp_from_filename(path.name) == NOW
    meta = read_metadata(store)
    assert meta["versionCount"] == 1
    assert meta["totalVersionsCreated"] == 1
    assert meta["oldestTimestamp"] == meta["newestTimestamp"] == "2026-03-01T12:00:00.000Z"
    assert_consistent(store)


def test_save_a_model_stores_its_json(store: HistoryStore, valid_payload: bytes) -> None:
    model = judge_payload(valid_payload)
    path = store.save_version(model)
    assert judge_payload(path.read_bytes()) == model


def test_latest_link_is_relative_and_follows_the_newest(
    store: HistoryStore, clock: Clock, valid_payload: bytes
) -> None:
    paths = []
    for i in range(5):
        clock.now = NOW + timedelta(seconds=i // 2)  # two saves in some seconds
        paths.append(store.save_version(valid_payload + b" " * i))
    assert [p.name for p in paths] == sorted(p.name for p in paths)
    target = os.readlink(store.latest_path)
    assert not os.path.isabs(target)
    assert target == os.path.join("console-usage-history", paths[-1].name)
    assert store.latest_path.read_bytes() == paths[-1].read_bytes()
    # A copied tree stays valid: the link is relative.
    assert store.list_versions()[0] == paths[-1]
    assert store.list_versions(limit=2) == [paths[-1], paths[-2]]


def test_many_saves_in_one_instant_keep_ingestion_order(
    store: HistoryStore, valid_payload: bytes
) -> None:
    names = [store.save_version(valid_payload + b" " * (i % 3)).name for i in range(200)]
    assert names == sorted(names)
    assert len(set(names)) == 200
    assert read_metadata(store)["versionCount"] == 200


def test_clock_stepped_back_still_sorts_above(
    store: HistoryStore, clock: Clock, valid_payload: bytes
) -> None:
    first = store.save_version(valid_payload).name
    clock.now = NOW - timedelta(hours=3)
    second = store.save_version(valid_payload).name
    assert second > first
    assert os.readlink(store.latest_path).endswith(second)


def test_a_clock_set_back_days_during_a_run_names_new_versions_by_the_clock_again(
    store: HistoryStore, clock: Clock, valid_payload: bytes
) -> None:
    """Versions stored while the clock ran days ahead are future once it is set right; the
    next ones follow the clock, as after a restart, and the latest link follows them."""
    before = store.save_version(valid_payload).name
    clock.now = NOW + timedelta(days=3)
    ahead = store.save_version(valid_payload).name
    clock.now = NOW + timedelta(minutes=1)
    after = store.save_version(valid_payload).name
    assert before < after < ahead
    assert parse_timestamp_from_filename(after) == NOW + timedelta(minutes=1)
    assert os.readlink(store.latest_path).endswith(after)
    meta = read_metadata(store)
    assert meta["latestVersion"] == after
    assert meta["futureVersions"] == 1
    assert_consistent(store)


def test_a_name_handed_out_before_a_clock_jump_stays_below_every_later_name(
    store: HistoryStore, clock: Clock
) -> None:
    """A group hands out its names before linking any. One handed out days ahead and
    passed over once the clock is set right must not lower the bar set by one handed out
    before it (still to be linked): later names sort above that one, below the future one."""
    first = store.next_version_name()
    clock.now = NOW + timedelta(days=3)
    ahead = store.next_version_name()
    clock.now = NOW + timedelta(minutes=1) - timedelta(hours=12)  # back, and then some
    later = store.next_version_name()
    assert first < later < ahead
    clock.now = NOW + timedelta(minutes=1)
    assert later < store.next_version_name() < ahead


def assert_later_names_stay_above(
    waiting: str, store: HistoryStore, clock: Clock, payload: bytes
) -> None:
    """A version linked above the claim name ``waiting``, then left more than a day ahead
    by a clock set back: a name drawn after sorts above ``waiting``, below that version."""
    clock.now = NOW + timedelta(days=3)
    ahead = store.save_version(payload).name
    store.next_version_name()  # a name drawn while the version is the latest
    clock.now = NOW
    later = store.next_version_name()
    assert waiting < later < ahead


def test_a_waiting_claims_name_stays_below_every_later_name_after_a_version_above_it_goes_future(
    store: HistoryStore, clock: Clock, valid_payload: bytes
) -> None:
    """A claim found waiting keeps its name, reserved, until it is stored. A version
    linked above it since, then left more than a day ahead by a clock set back, must not
    free that name: later names sort above the waiting claim, below the future version."""
    clock.now = NOW + timedelta(hours=2)
    waiting = store.next_version_name()  # its drop claimed under it, then left waiting
    store.give_back(waiting)
    store.reserve_names([waiting])  # as recovery does with the claims it finds
    assert_later_names_stay_above(waiting, store, clock, valid_payload)


def test_a_claim_left_waiting_under_a_name_this_store_handed_out_keeps_it_reserved(
    store: HistoryStore, clock: Clock, valid_payload: bytes
) -> None:
    """A drop claimed by this process and left waiting by a failure still holds the name
    handed out for it: recovery reserves it all the same, so a version linked above it,
    then left more than a day ahead by a clock set back, does not free it."""
    clock.now = NOW + timedelta(hours=2)
    waiting = store.next_version_name()  # claimed under it; its store failed
    store.reserve_names([waiting], replace=True)  # as recovery does with the claims it finds
    assert_later_names_stay_above(waiting, store, clock, valid_payload)


# -- metadata -----------------------------------------------------------------------------


def test_metadata_has_the_six_keys_after_initialize(store: HistoryStore) -> None:
    meta = read_metadata(store)
    assert list(meta)[:6] == SIX_KEYS
    assert meta["versionCount"] == 0
    assert meta["oldestTimestamp"] is None
    assert meta["newestTimestamp"] is None
    assert not os.path.lexists(store.latest_path)


@pytest.mark.parametrize(
    "damage", [b"", b"{not json", b"[]", b'{"versionCount": -4}', b"\xff\xfe", None]
)
def test_missing_or_corrupt_metadata_is_rebuilt(
    make_store: Callable[..., HistoryStore], valid_payload: bytes, damage: bytes | None
) -> None:
    store = make_store()
    store.initialize()
    for _ in range(3):
        store.save_version(valid_payload)
    if damage is None:
        store.metadata_path.unlink()
    else:
        os.chmod(store.metadata_path, 0o644)
        store.metadata_path.write_bytes(damage)
    again = make_store()
    report = again.initialize()
    assert report.metadata_rebuilt in {"missing", "corrupt"}
    meta = read_metadata(again)
    assert meta["versionCount"] == 3
    assert isinstance(meta["totalVersionsCreated"], int) and meta["totalVersionsCreated"] >= 3
    assert again.get_storage_metadata().version_count == 3
    assert_consistent(again)


def test_stale_metadata_is_corrected_and_totals_never_decrease(
    make_store: Callable[..., HistoryStore], valid_payload: bytes
) -> None:
    store = make_store()
    store.initialize()
    for _ in range(2):
        store.save_version(valid_payload)
    meta = read_metadata(store)
    meta.update(versionCount=57, totalVersionsCreated=500, totalVersionsDeleted=450)
    meta["oldestTimestamp"] = "1999-01-01T00:00:00.000Z"
    store.metadata_path.write_text(json.dumps(meta))
    again = make_store()
    assert again.initialize().metadata_rebuilt == "out of date"
    fixed = read_metadata(again)
    assert fixed["versionCount"] == 2
    assert fixed["totalVersionsCreated"] == 500
    assert fixed["totalVersionsDeleted"] == 450
    again.save_version(valid_payload)
    assert read_metadata(again)["totalVersionsCreated"] == 501
    assert_consistent(again)


def test_get_storage_metadata_without_initialize(
    make_store: Callable[..., HistoryStore], valid_payload: bytes
) -> None:
    store = make_store()
    store.initialize()
    store.save_version(valid_payload)
    reader = make_store()
    meta = reader.get_storage_metadata()
    assert meta.version_count == 1
    assert meta.total_versions_created == 1


def test_initialize_is_idempotent(store: HistoryStore, valid_payload: bytes) -> None:
    store.save_version(valid_payload)
    before = sorted(os.listdir(store.history_dir))
    report = store.initialize()
    assert report.metadata_rebuilt is None
    assert report.latest_repaired is None
    assert report.removed_temps == []
    assert sorted(os.listdir(store.history_dir)) == before


# -- cleanup ------------------------------------------------------------------------------


def test_cleanup_never_touches_other_files(make_store: Callable[..., HistoryStore]) -> None:
    store = make_store(RetentionPolicy(max_versions=1, retention_days=1))
    store.initialize()
    others = {
        "notes.txt": b"hello",
        "foo.json": b"{}",
        "2026-13-01T00-00-00-bad.json": b"{}",
        "2026-01-01T00-00-00-te_st.json": b"{}",
        "README": b"",
        ".hidden.json": b"{}",
    }
    for name, data in others.items():
        (store.history_dir / name).write_bytes(data)
    (store.history_dir / "2026-01-01T00-00-00-folder.json").mkdir()  # a folder, not a version
    (store.history_dir / "2026-01-02T00-00-00-link.json").symlink_to("notes.txt")
    seed_history(store)
    before = {n: os.lstat(store.history_dir / n) for n in others}
    store.initialize()
    result = store.cleanup_old_versions()
    assert len(result.deleted) == 109
    assert len(versions_on_disk(store)) == 1
    for name, data in others.items():
        assert (store.history_dir / name).read_bytes() == data
        assert os.lstat(store.history_dir / name).st_mtime_ns == before[name].st_mtime_ns
    assert (store.history_dir / "2026-01-01T00-00-00-folder.json").is_dir()
    assert (store.history_dir / "2026-01-02T00-00-00-link.json").is_symlink()
    assert read_metadata(store)["versionCount"] == 1


def test_cleanup_with_nothing_expired(store: HistoryStore, valid_payload: bytes) -> None:
    for _ in range(3):
        store.save_version(valid_payload)
    result = store.cleanup_old_versions()
    assert result.deleted == []
    assert result.retained == 3
    meta = read_metadata(store)
    assert meta["lastCleanup"] == format_timestamp(NOW)
    assert meta["totalVersionsDeleted"] == 0


def test_cleanup_union_of_newest_and_recent(
    make_store: Callable[..., HistoryStore], clock: Clock, valid_payload: bytes
) -> None:
    store = make_store(RetentionPolicy(max_versions=3, retention_days=2))
    store.initialize()
    for hours in range(0, 24 * 5, 6):  # every 6 h for 5 days
        clock.now = NOW + timedelta(hours=hours)
        store.save_version(valid_payload)
    clock.now = NOW + timedelta(days=5)
    plan = store.plan_cleanup()
    result = store.cleanup_old_versions()
    remaining = versions_on_disk(store)
    assert remaining == plan.keep
    assert sorted(result.deleted) == plan.delete
    cutoff = clock.now - timedelta(days=2)
    assert all(parse_timestamp_from_filename(n) >= cutoff for n in remaining)  # type: ignore[operator]
    assert len(remaining) == 8  # 2 days of 6-hourly versions, both ends counted
    assert_consistent(store)


def test_names_handed_out_in_a_row_sort_above_every_version_placed_meanwhile(
    store: HistoryStore, valid_payload: bytes
) -> None:
    """A group hands out names before linking any; each must sort above the last one given
    and above every non-future version, including one that sorts above them all and was
    stored in between (the clock is frozen, so every name is derived from another)."""
    first = store.next_version_name()
    second = store.next_version_name()
    assert first < second
    above = f"{NOW + timedelta(hours=1):%Y-%m-%dT%H-%M-%S}-00000000.json"  # not future
    store.write_version(above, valid_payload)
    third = store.next_version_name()
    assert third > above > second
    future = f"{NOW + timedelta(days=2):%Y-%m-%dT%H-%M-%S}-00000000.json"
    store.write_version(future, valid_payload)
    fourth, fifth = store.next_version_name(), store.next_version_name()
    assert third < fourth < fifth < future  # above all given, below the future one


def test_future_versions_are_kept_but_never_latest(
    store: HistoryStore, clock: Clock, valid_payload: bytes
) -> None:
    store.save_version(valid_payload)
    future = f"{NOW + timedelta(days=2, hours=1):%Y-%m-%dT%H-%M-%S}-placed.json"
    (store.history_dir / future).write_bytes(valid_payload)
    again = HistoryStore(
        store.history_dir,
        store.latest_path,
        RetentionPolicy(max_versions=1, retention_days=1),
        clock=clock,
    )
    again.initialize()
    meta = read_metadata(again)
    assert meta["futureVersions"] == 1
    assert meta["versionCount"] == 2
    assert not os.readlink(again.latest_path).endswith(future)
    clock.now = NOW + timedelta(minutes=1)
    newest = again.save_version(valid_payload)
    assert newest.name < future  # sorts below the future one, above everything else
    assert os.readlink(again.latest_path).endswith(newest.name)
    clock.now = NOW + timedelta(days=1, minutes=2)
    result = again.cleanup_old_versions()
    assert result.future == 1
    assert (again.history_dir / future).exists()
    assert versions_on_disk(again) == [newest.name, future]
    plan = {d.name: d.reason for d in again.plan_cleanup().decisions}
    assert plan[future] == "future"
    assert read_metadata(again)["futureVersions"] == 1
    assert_consistent(again)


def test_only_future_versions_means_no_latest(
    make_store: Callable[..., HistoryStore], valid_payload: bytes
) -> None:
    store = make_store()
    store.history_dir.mkdir(parents=True)
    future = f"{NOW + timedelta(days=3):%Y-%m-%dT%H-%M-%S}-ahead.json"
    (store.history_dir / future).write_bytes(valid_payload)
    store.initialize()
    assert not os.path.lexists(store.latest_path)
    meta = read_metadata(store)
    assert meta["futureVersions"] == 1
    assert meta["latestVersion"] is None
    store.cleanup_old_versions()
    assert versions_on_disk(store) == [future]


# -- repairs ------------------------------------------------------------------------------


def test_stale_temp_files_are_swept_by_initialize(
    store: HistoryStore, make_store: Callable[..., HistoryStore], valid_payload: bytes
) -> None:
    store.save_version(valid_payload)
    stale = [".tmp-w-0123456789ab", ".tmp-link-abcdef012345", ".tmp-anything"]
    for name in stale:
        (store.history_dir / name).write_bytes(b"partial")
    (store.history_dir / ".tmp-folder").mkdir()  # folders are not ours to remove
    beside = store.latest_path.parent
    (beside / ".tmp-link-0123456789ab").symlink_to("nowhere")
    (beside / ".tmp-w-0123456789ab").write_bytes(b"partial")
    (beside / ".tmp-someone-elses").write_bytes(b"keep me")
    report = make_store().initialize()
    assert sorted(report.removed_temps) == sorted(
        [*stale, ".tmp-link-0123456789ab", ".tmp-w-0123456789ab"]
    )
    assert not [
        n for n in os.listdir(store.history_dir) if n.startswith(".tmp-") and n != ".tmp-folder"
    ]
    assert (store.history_dir / ".tmp-folder").is_dir()
    assert not os.path.lexists(beside / ".tmp-link-0123456789ab")
    assert (beside / ".tmp-someone-elses").read_bytes() == b"keep me"
    assert len(versions_on_disk(store)) == 1


def test_a_latest_file_no_version_holds_is_never_replaced(
    store: HistoryStore, make_store: Callable[..., HistoryStore], valid_payload: bytes
) -> None:
    """A file in the latest link's place holding bytes no version holds (the original
    server's latest, one put there by hand) is kept: replacing it would lose them. The
    store says so as a cache error; ``adopt`` is what keeps it as a version."""
    store.save_version(valid_payload)
    link = store.latest_path
    link.unlink()
    link.write_bytes(b'{"not": "a version"}')
    again = make_store()
    report = again.initialize()
    assert report.latest_repaired is None
    assert [e.errno for e in report.cache_errors] == [errno.EEXIST]
    assert "holding a snapshot that no version holds, so it is kept" in str(report.cache_errors[0])
    assert link.read_bytes() == b'{"not": "a version"}'
    # A write after it: the version is stored for good, the link left as it is.
    with pytest.raises(CacheNotRefreshed, match="no version holds") as raised:
        again.save_version(valid_payload + b" ")
    assert raised.value.version.read_bytes() == valid_payload + b" "
    assert link.read_bytes() == b'{"not": "a version"}'


@pytest.mark.parametrize("how", ["older", "dangling", "absolute", "missing", "regular file"])
def test_wrong_latest_link_is_repaired(
    store: HistoryStore,
    make_store: Callable[..., HistoryStore],
    clock: Clock,
    valid_payload: bytes,
    how: str,
) -> None:
    first = store.save_version(valid_payload)
    clock.now = NOW + timedelta(seconds=5)
    second = store.save_version(valid_payload + b"\n")
    link = store.latest_path
    link.unlink()
    if how == "older":
        link.symlink_to(os.path.relpath(first, link.parent))
    elif how == "dangling":
        link.symlink_to("console-usage-history/gone.json")
    elif how == "absolute":
        link.symlink_to(second)  # right file, but not relative
    elif how == "regular file":
        link.write_bytes(first.read_bytes())  # a stale copy, as where links fail
    again = make_store()
    report = again.initialize()
    assert report.latest_repaired is not None
    assert os.readlink(link) == f"console-usage-history/{second.name}"
    assert link.read_bytes() == second.read_bytes()
    assert_consistent(again)


def test_without_symlinks_latest_is_an_atomically_replaced_copy(
    store: HistoryStore,
    make_store: Callable[..., HistoryStore],
    clock: Clock,
    valid_payload: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_symlinks(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    first = store.save_version(valid_payload)
    link = store.latest_path
    assert not link.is_symlink()
    assert link.is_file()
    assert link.read_bytes() == first.read_bytes()
    inode = link.stat().st_ino
    clock.now = NOW + timedelta(seconds=1)
    second = store.save_version(valid_payload.replace(b"23", b"24"))
    assert not link.is_symlink()
    assert link.read_bytes() == second.read_bytes() != first.read_bytes()
    assert link.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert not [n for n in os.listdir(link.parent) if n.startswith(".tmp-")]
    assert store.latest_problem() is None
    # A stale copy is noticed and repaired too.
    os.chmod(link, 0o644)
    link.write_bytes(first.read_bytes())
    again = make_store()
    assert again.initialize().latest_repaired is not None
    assert link.read_bytes() == second.read_bytes()


def test_store_paths_can_be_moved_apart(tmp_path: Path, valid_payload: bytes) -> None:
    history = tmp_path / "data" / "history"
    latest = tmp_path / "www" / "sub" / "latest.json"
    store = HistoryStore(history, latest, clock=Clock())
    store.initialize()
    path = store.save_version(valid_payload)
    assert os.readlink(latest) == os.path.join("..", "..", "data", "history", path.name)
    assert latest.read_bytes() == valid_payload


def test_a_group_whose_fsync_fails_is_taken_back_and_its_names_never_given_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)
    store = HistoryStore(tmp_path / "h", tmp_path / "latest.json", clock=lambda: frozen)
    store.initialize()
    first = store.save_version(b'{"seq": 1}')
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    with pytest.raises(StorageError, match="EIO"), store.batch() as batch:
        name = store.next_version_name()
        with batch.stage(b'{"seq": 2}') as staged:
            batch.commit(staged, name)
        monkeypatch.setattr(os, "fsync", failing_fsync)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not store.has_version(name)
    assert store.version_names() == [first.name]
    # Its claim may still wait under that name: a new version never takes it.
    assert store.next_version_name() > name


@pytest.mark.parametrize("limit", [0, -1, -5, True, 1.5])
def test_list_versions_refuses_a_limit_that_is_not_a_positive_whole_number(
    store: HistoryStore, valid_payload: bytes, limit: object
) -> None:
    for i in range(3):
        store.save_version(valid_payload + b" " * i)
    with pytest.raises(ValueError, match="positive whole number"):
        store.list_versions(limit=limit)  # type: ignore[arg-type]
    assert len(store.list_versions(limit=5)) == 3
