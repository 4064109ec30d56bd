"""Retention of quarantined drops: pairs only, never anything else, by cleanup and the watcher."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import INVALID_SAMPLES, run_cli

from ingester.history.durable import StorageError
from ingester.intake.housekeeping import RejectedRetention, prune_rejected

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def reason_bytes(name: str, when: datetime) -> bytes:
    stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    record = {"file": name, "rejectedAt": stamp, "reason": "not JSON", "errors": []}
    return json.dumps(record).encode()


def pair(folder: Path, name: str, age_days: float, data: bytes = b"{bad") -> None:
    (folder / name).write_bytes(data)
    (folder / f"{name}.reason.json").write_bytes(reason_bytes(name, NOW - timedelta(days=age_days)))


@pytest.fixture
def rejected(tmp_path: Path) -> Path:
    folder = tmp_path / "rejected"
    folder.mkdir()
    return folder


def test_only_expired_pairs_are_removed_drop_and_reason(rejected: Path, tmp_path: Path) -> None:
    pair(rejected, "old.json", 31)
    pair(rejected, "new.json", 29)
    result = prune_rejected(rejected, 30, NOW)
    assert sorted(result.removed) == ["old.json", "old.json.reason.json"]
    assert (result.expired_pairs, result.kept) == (1, 1)
    assert sorted(p.name for p in rejected.iterdir()) == ["new.json", "new.json.reason.json"]


def test_nothing_but_pairs_is_ever_touched(rejected: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("keep")
    old = (NOW - timedelta(days=400)).timestamp()
    keep = {
        "notes.txt": b"an operator's notes",
        "lonely.json": b"{a drop whose reason file is gone}",
        "fake.json.reason.json": b"not a reason file",
        "nodate.json.reason.json": json.dumps({"file": "nodate.json"}).encode(),
        "naive.json.reason.json": json.dumps({"rejectedAt": "2000-01-01T00:00:00"}).encode(),
        ".tmp-w-123": b"a temp file",
    }
    for name, data in keep.items():
        (rejected / name).write_bytes(data)
        os.utime(rejected / name, (old, old))
    (rejected / "fake.json").write_bytes(b"the drop of a reason file that is not ours")
    (rejected / "folder.json").mkdir()
    (rejected / "folder.json.reason.json").write_bytes(reason_bytes("folder.json", NOW))
    # A quarantined symlink: removed as the link itself, its target untouched.
    os.symlink(secret, rejected / "link.json")
    (rejected / "link.json.reason.json").write_bytes(
        reason_bytes("link.json", NOW - timedelta(days=90))
    )
    result = prune_rejected(rejected, 30, NOW)
    assert sorted(result.removed) == ["link.json", "link.json.reason.json"]
    assert secret.read_text() == "keep"
    left = sorted(p.name for p in rejected.iterdir())
    assert left == sorted([*keep, "fake.json", "folder.json", "folder.json.reason.json"])


def test_a_reason_file_too_large_to_read_is_dated_by_its_head(rejected: Path) -> None:
    """A reason file over 4 MiB (an older version listed every one of a drop's problems,
    some 20 bytes of it per byte of drop) is dated by its first bytes when they begin as
    the watcher writes them: its pair is removed once expired, and kept and counted
    until then. A large file that does not begin so is not ours, and stays."""
    problems = [
        {"field": f"extractionErrors.k{i}", "type": "string_type", "msg": "must be a string"}
        for i in range(80_000)
    ]
    for name, age in (("old.json", 31), ("new.json", 29)):
        record = {
            "file": name,
            "rejectedAt": (NOW - timedelta(days=age)).isoformat().replace("+00:00", "Z"),
            "reason": "many problems",
            "errors": problems,
        }
        (rejected / name).write_bytes(b"{bad")
        (rejected / f"{name}.reason.json").write_text(json.dumps(record, indent=2) + "\n")
        assert (rejected / f"{name}.reason.json").stat().st_size > 4 << 20
    theirs = {"errors": problems, "rejectedAt": "2000-01-01T00:00:00Z", "file": "notes.json"}
    (rejected / "notes.json").write_bytes(b"an operator's")
    (rejected / "notes.json.reason.json").write_text(json.dumps(theirs))
    result = prune_rejected(rejected, 30, NOW)
    assert sorted(result.removed) == ["old.json", "old.json.reason.json"]
    assert (result.expired_pairs, result.kept) == (1, 1)
    left = sorted(p.name for p in rejected.iterdir())
    assert left == ["new.json", "new.json.reason.json", "notes.json", "notes.json.reason.json"]


def test_a_reason_file_left_alone_by_a_crash_is_removed_later(rejected: Path) -> None:
    (rejected / "x.json.reason.json").write_bytes(reason_bytes("x.json", NOW - timedelta(days=40)))
    assert prune_rejected(rejected, 30, NOW).removed == ["x.json.reason.json"]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "removal"])
def test_a_lone_reason_file_is_removed_but_not_counted_as_a_drop(
    rejected: Path, dry_run: bool
) -> None:
    pair(rejected, "old.json", 31)
    (rejected / "gone.json.reason.json").write_bytes(
        reason_bytes("gone.json", NOW - timedelta(days=40))
    )
    result = prune_rejected(rejected, 30, NOW, dry_run=dry_run)
    assert sorted(result.removed) == ["gone.json.reason.json", "old.json", "old.json.reason.json"]
    assert (result.expired_pairs, result.kept) == (1, 0)


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "cleanup"])
def test_cleanup_counts_the_drops_it_removes_not_lone_reason_files(
    root: Path, dry_run: bool
) -> None:
    """One expired drop with its reason file, and one expired reason file whose drop was
    taken out by hand: ``cleanup`` (and its dry run) counts one drop, as ``status`` and
    ``rejectedKept`` count drops, not reason files."""
    assert run_cli(root, "init").returncode == 0
    rejected = root / "spool" / "rejected"
    note = json.dumps({"rejectedAt": "2020-01-01T00:00:00Z", "errors": []})
    (rejected / "bad.json").write_text("{}")
    (rejected / "bad.json.reason.json").write_text(note)
    (rejected / "gone.json.reason.json").write_text(note)
    done = run_cli(
        root, "--rejected-retention-days", "1", "cleanup", *(["--dry-run"] if dry_run else [])
    )
    assert done.returncode == 0, done.stdout + done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert line == (
        "rejected: would remove 1 drop(s) older than 1 days, keep 0"
        if dry_run
        else "rejected: removed 1, kept 0"
    )
    assert (list(rejected.iterdir()) == []) != dry_run


def test_dry_run_removes_nothing(rejected: Path) -> None:
    pair(rejected, "old.json", 31)
    result = prune_rejected(rejected, 30, NOW, dry_run=True)
    assert sorted(result.removed) == ["old.json", "old.json.reason.json"]
    assert len(list(rejected.iterdir())) == 2


def test_a_symlink_in_place_of_the_folder_is_refused(tmp_path: Path, rejected: Path) -> None:
    pair(rejected, "old.json", 31)
    link = tmp_path / "link"
    os.symlink(rejected, link)
    with pytest.raises(StorageError, match="symlink"):
        prune_rejected(link, 30, NOW)
    assert len(list(rejected.iterdir())) == 2
    assert prune_rejected(tmp_path / "missing", 30, NOW).removed == []


def test_the_watcher_side_runs_when_due_and_holds_back_on_a_clock_jump(rejected: Path) -> None:
    clock = {"wall": NOW, "mono": 1000.0}
    keeper = RejectedRetention(
        rejected, 30, wall=lambda: clock["wall"], monotonic=lambda: clock["mono"], every=600
    )
    pair(rejected, "a.json", 31)
    assert keeper.run_if_due() is not None
    assert not (rejected / "a.json").exists()
    pair(rejected, "b.json", 29)
    assert keeper.run_if_due() is None  # not due yet
    # Ten minutes of monotonic time, but the wall clock leapt two days: held back.
    clock["mono"] += 600
    clock["wall"] += timedelta(days=2)
    assert keeper.run_if_due() is None
    assert (rejected / "b.json").exists()
    # The jump stands while the clocks run on together: still held back.
    clock["mono"] += 600
    clock["wall"] += timedelta(seconds=600)
    assert keeper.run_if_due() is None
    assert (rejected / "b.json").exists()
    # The wall clock is set right, then two days pass: the rule applies (b is 31 days old).
    clock["wall"] -= timedelta(days=2)
    clock["mono"] += 2 * 86400
    clock["wall"] += timedelta(days=2)
    result = keeper.run_if_due()
    assert result is not None and "b.json" in result.removed


def quarantine(root: Path, count: int) -> Path:
    spool = root / "spool"
    spool.mkdir(exist_ok=True)
    for i in range(count):
        (spool / f"bad-{i}.json").write_bytes(INVALID_SAMPLES[i].read_bytes())
    result = run_cli(root, "watch", "--once")
    assert result.returncode == 0, result.stderr
    return spool / "rejected"


def age_reason(folder: Path, name: str, days: float) -> None:
    reason = folder / f"{name}.reason.json"
    record = json.loads(reason.read_bytes())
    stamp = datetime.now(UTC) - timedelta(days=days)
    record["rejectedAt"] = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    reason.write_text(json.dumps(record))


def test_cleanup_applies_it_and_status_reports_it(root: Path) -> None:
    folder = quarantine(root, 3)
    age_reason(folder, "bad-0.json", 31)
    age_reason(folder, "bad-1.json", 8)
    dry = run_cli(root, "cleanup", "--dry-run")
    assert "rejected: would remove 1 drop(s) older than 30 days, keep 2" in dry.stdout
    assert len(list(folder.glob("bad-*"))) == 6
    done = run_cli(root, "--rejected-retention-days", "7", "cleanup", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert sorted(doc["rejectedRemoved"]) == [
        "bad-0.json",
        "bad-0.json.reason.json",
        "bad-1.json",
        "bad-1.json.reason.json",
    ]
    assert doc["rejectedKept"] == 1
    status = json.loads(
        run_cli(root, "status", "--json", INGESTER_REJECTED_RETENTION_DAYS="7").stdout
    )
    assert status["rejected"] == {
        "path": str(folder),
        "count": 1,
        "problem": None,
        "retentionDays": 7.0,
    }
    text = run_cli(root, "status").stdout
    assert "(removed after 30 days)" in text


def test_the_watcher_applies_it_in_its_maintenance(root: Path) -> None:
    folder = quarantine(root, 2)
    age_reason(folder, "bad-0.json", 31)
    result = run_cli(root, "watch", "--once")
    assert result.returncode == 0
    assert "removed 1 rejected drop(s) older than 30 days, kept 1" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["bad-1.json", "bad-1.json.reason.json"]


def test_a_bad_retention_is_a_usage_error(root: Path) -> None:
    result = run_cli(root, "--rejected-retention-days", "0", "status")
    assert result.returncode == 2
    assert "--rejected-retention-days" in result.stderr
