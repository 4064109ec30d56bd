"""The real CLI in a subprocess: init, ingest, cleanup, settings precedence and bad values."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import INVALID_SAMPLES, IS_ROOT, VALID_SAMPLES, cli_env, run_cli, wait_for
from support.capabilities import (
    STRACE,
    immutable,
    loop_ext4,
    needs_strace_root,
    other_user_problem,
    others_folder,
    run_as_other,
    run_held_after,
    tmpfs,
)

from ingester.history.lock import HistoryLock
from ingester.history.names import (
    format_timestamp,
    generate_version_filename,
    is_version_name,
    parse_timestamp_from_filename,
)

SIX_KEYS = [
    "versionCount",
    "oldestTimestamp",
    "newestTimestamp",
    "lastCleanup",
    "totalVersionsCreated",
    "totalVersionsDeleted",
]


def versions(history: Path) -> list[str]:
    return sorted(n for n in os.listdir(history) if is_version_name(n))


def metadata(history: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((history / "_metadata.json").read_bytes())
    return data


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def old_history(history: Path, days_ago: list[float], payload: bytes) -> list[str]:
    """Versions dated ``days_ago`` days before now (real clock: the CLI uses it)."""
    history.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    names = []
    for i, days in enumerate(days_ago):
        name = f"{now - timedelta(days=days):%Y-%m-%dT%H-%M-%S}-old{i}.json"
        (history / name).write_bytes(payload)
        names.append(name)
    return sorted(names)


def dry_run(root: Path, *args: str, **env: str) -> list[dict[str, Any]]:
    done = run_cli(root, *args, "cleanup", "--dry-run", "--json", **env)
    assert done.returncode == 0, done.stderr
    plan: list[dict[str, Any]] = json.loads(done.stdout)
    return plan


def kept(plan: list[dict[str, Any]]) -> int:
    return sum(d["action"] == "keep" for d in plan)


# -- init ---------------------------------------------------------------------------------


def test_init_creates_the_layout_and_is_idempotent(root: Path) -> None:
    done = run_cli(root, "init")
    assert done.returncode == 0, done.stderr
    for folder in ("spool", "spool/tmp", "spool/rejected", "console-usage-history"):
        assert (root / folder).is_dir(), folder
    meta = metadata(root / "console-usage-history")
    assert list(meta)[:6] == SIX_KEYS
    assert meta["versionCount"] == 0
    assert str(root / "console-usage-history") in done.stdout
    first = sorted(p.name for p in root.rglob("*"))
    again = run_cli(root, "init")
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in root.rglob("*")) == first


def test_init_rebuilds_corrupt_metadata(root: Path, valid_payload: bytes) -> None:
    history = root / "console-usage-history"
    names = old_history(history, [0.5, 0.25], valid_payload)
    (history / "_metadata.json").write_bytes(b"{garbage")
    done = run_cli(root, "init")
    assert done.returncode == 0, done.stderr
    meta = metadata(history)
    assert meta["versionCount"] == 2
    assert meta["totalVersionsCreated"] >= 2
    assert os.readlink(root / "console-usage-synced.json") == f"console-usage-history/{names[-1]}"


# -- ingest -------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", VALID_SAMPLES, ids=lambda p: p.name)
def test_ingest_each_valid_sample(root: Path, sample: Path) -> None:
    with umask(0o027):
        done = run_cli(root, "ingest", str(sample))
    assert done.returncode == 0, done.stderr
    history = root / "console-usage-history"
    names = versions(history)
    assert len(names) == 1
    version = history / names[0]
    assert version.read_bytes() == sample.read_bytes()
    assert stat.S_IMODE(version.stat().st_mode) == 0o444 & ~0o027
    assert names[0] in done.stdout
    meta = metadata(history)
    assert list(meta)[:6] == SIX_KEYS
    stamp = format_timestamp(parse_timestamp_from_filename(names[0]))
    assert meta["versionCount"] == 1
    assert meta["oldestTimestamp"] == meta["newestTimestamp"] == stamp
    assert meta["totalVersionsCreated"] == 1
    assert meta["totalVersionsDeleted"] == 0
    assert meta["lastCleanup"] is not None
    latest = root / "console-usage-synced.json"
    target = os.readlink(latest)
    assert not os.path.isabs(target)
    assert target == f"console-usage-history/{names[0]}"
    assert latest.read_bytes() == sample.read_bytes()
    assert sample.exists()  # copied, not moved


def test_ingest_all_samples_latest_on_the_newest(root: Path) -> None:
    done = run_cli(root, "ingest", *map(str, VALID_SAMPLES))
    assert done.returncode == 0, done.stderr
    history = root / "console-usage-history"
    names = versions(history)
    assert len(names) == len(VALID_SAMPLES)
    # Stored in the order given: names sort in ingestion order.
    assert [(history / n).read_bytes() for n in names] == [p.read_bytes() for p in VALID_SAMPLES]
    assert os.readlink(root / "console-usage-synced.json") == f"console-usage-history/{names[-1]}"
    meta = metadata(history)
    assert meta["versionCount"] == len(VALID_SAMPLES)
    assert meta["totalVersionsCreated"] == len(VALID_SAMPLES)


def test_ingest_exits_1_listing_each_rejection(root: Path) -> None:
    good = VALID_SAMPLES[0]
    done = run_cli(root, "ingest", str(good), *map(str, INVALID_SAMPLES))
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    for sample in INVALID_SAMPLES:
        line = next(line for line in done.stdout.splitlines() if str(sample) in line)
        assert line.startswith("rejected")
    assert "percentageUsed" in done.stdout
    assert "lastUpdated" in done.stdout
    # The valid one is stored all the same.
    assert len(versions(root / "console-usage-history")) == 1


def test_ingest_stores_a_file_named_twice_once(root: Path, tmp_path: Path) -> None:
    """A file given again, by the same path or through a link, is the same snapshot:
    stored once and said 'skipped' after (it was stored as a second version); a copy of
    it is a file of its own, and an invalid file named again is rejected again."""
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_bytes(VALID_SAMPLES[0].read_bytes())
    bad.write_bytes(INVALID_SAMPLES[0].read_bytes())
    link, copy = tmp_path / "link.json", tmp_path / "copy.json"
    link.symlink_to(good)
    copy.write_bytes(good.read_bytes())
    done = run_cli(root, "ingest", str(good), str(bad), str(good), str(link), str(bad), str(copy))
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines] == [
        "stored",
        "rejected",
        "skipped",
        "skipped",
        "rejected",
        "stored",
    ], lines
    first = versions(root / "console-usage-history")[0]
    assert lines[2] == f"skipped {good}: the same file as {good}, stored as {first}"
    assert lines[3] == f"skipped {link}: the same file as {good}, stored as {first}"
    assert len(versions(root / "console-usage-history")) == 2


def test_ingest_rejects_a_drop_still_waiting_in_the_spool(root: Path, tmp_path: Path) -> None:
    """A drop waiting in the spool (or claimed by a watcher that stopped) is stored by the
    watcher's next start: ingested by hand as well, by any path, it was stored twice. A
    file there that is no drop, and one in the quarantine, are ingested as any other."""
    payload = VALID_SAMPLES[0].read_bytes()
    assert run_cli(root, "init").returncode == 0
    spool = root / "spool"
    # A claim is named as the version it becomes.
    drop, claimed = spool / "a.json", spool / ".claimed" / generate_version_filename()
    claimed.parent.mkdir(exist_ok=True)
    for path in (drop, claimed, spool / "notes.txt", spool / "rejected" / "fixed.json"):
        path.write_bytes(payload)
    (tmp_path / "spool-link").symlink_to(spool)
    (tmp_path / "drop-link.json").symlink_to(drop)
    through = [tmp_path / "spool-link" / "a.json", tmp_path / "drop-link.json"]
    args = [drop, *through, claimed, spool / "notes.txt", spool / "rejected" / "fixed.json"]
    done = run_cli(root, "ingest", *map(str, args))
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    for path, line in zip(args[:4], lines, strict=False):
        assert line == f"rejected {path}: a drop waiting in {spool}; the watcher takes it"
    assert [line.split(" ")[0] for line in lines[4:]] == ["stored", "stored"], lines
    assert run_cli(root, "watch", "--once").returncode == 0
    # The two drops stored once each, by the watcher; the two other files by ingest.
    assert len(versions(root / "console-usage-history")) == 4


def test_ingest_rejects_a_hard_link_to_a_drop_still_waiting_or_claimed(
    root: Path, tmp_path: Path
) -> None:
    """A hard link to a waiting drop, or to a claim, is that drop by another name: the
    watcher stores it, and ingested as well it was stored twice."""
    payload = VALID_SAMPLES[0].read_bytes()
    assert run_cli(root, "init").returncode == 0
    spool = root / "spool"
    drop, claimed = spool / "a.json", spool / ".claimed" / generate_version_filename()
    claimed.parent.mkdir(exist_ok=True)
    for path in (drop, claimed):
        path.write_bytes(payload)
    os.link(drop, tmp_path / "out.json")
    os.link(claimed, tmp_path / "claim.json")
    args = [tmp_path / "out.json", tmp_path / "claim.json"]
    done = run_cli(root, "ingest", *map(str, args))
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        f"rejected {path}: a drop waiting in {spool}; the watcher takes it" for path in args
    ]
    assert run_cli(root, "watch", "--once").returncode == 0
    assert len(versions(root / "console-usage-history")) == 2


def files_with_other_links(folder: Path, count: int) -> list[Path]:
    """``count`` valid samples written in ``folder``, each with a second name there (a
    backup made with ``cp -al``, say)."""
    files = []
    for n, sample in enumerate(VALID_SAMPLES[:count]):
        files.append(folder / f"in-{n}.json")
        files[-1].write_bytes(sample.read_bytes())
        os.link(files[-1], folder / f"backup-{n}.json")
    return files


@needs_strace_root
def test_ingest_lists_the_spool_once_for_many_files_with_other_links(
    root: Path, tmp_path: Path
) -> None:
    """Files with other hard links (a backup made with ``cp -al``, say) are each looked
    for among the spool's drops; a spool of thousands is listed once for the run, not
    once per file, and a drop among them is still found."""
    assert run_cli(root, "init").returncode == 0
    spool = root / "spool"
    files = files_with_other_links(tmp_path, 3)
    os.link(files[1], spool / "waiting.json")
    # Settled: a spool changed within the last seconds is listed again for each file.
    hour_ago = time.time_ns() - 3600 * 10**9
    for folder in (spool, spool / ".claimed"):
        if folder.exists():
            os.utime(folder, ns=(hour_ago, hour_ago))
    trace = tmp_path / "opens.log"
    done = run_cli(
        root,
        "ingest",
        *map(str, files),
        wrapper=(STRACE, "-f", "-qq", "-o", str(trace), "-e", "trace=openat", "-P", str(spool)),
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[1] == (
        f"rejected {files[1]}: a drop waiting in {spool}; the watcher takes it"
    )
    assert [line.split(" ")[0] for line in done.stdout.splitlines()] == [
        "stored",
        "rejected",
        "stored",
    ]
    assert trace.read_text().count("openat(") == 1, trace.read_text()


@needs_strace_root
def test_ingest_finds_a_drop_linked_into_the_spool_after_its_listing(
    root: Path, tmp_path: Path
) -> None:
    """The spool is listed at the first file with another link; a later file hard-linked
    into the spool after that listing (a scraper's drop) is found all the same: stored
    by ingest too, the watcher's next start would store it a second time."""
    assert run_cli(root, "init").returncode == 0
    spool = root / "spool"
    files = files_with_other_links(tmp_path, 2)

    def drop_the_second() -> None:
        os.link(files[1], spool / "late.json")

    # Held as the listing's last read of the spool returns (nothing more to list).
    args = ("ingest", *map(str, files))
    done = run_held_after(root, args, spool, "getdents64", drop_the_second, when=2)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[1] == (
        f"rejected {files[1]}: a drop waiting in {spool}; the watcher takes it"
    ), done.stdout
    assert len(versions(root / "console-usage-history")) == 1


@needs_strace_root
def test_ingest_finds_a_drop_linked_into_the_spool_in_the_second_of_its_listing(
    tmp_path: Path,
) -> None:
    """Where a folder's times count whole seconds, a drop linked into the spool in the
    same second as ingest's listing leaves the spool's times as they were; it is found
    all the same, not stored by ingest and again by the watcher."""
    with loop_ext4(tmp_path, "-I", "128") as point:
        for attempt in range(20):
            root = point / f"root-{attempt}"
            root.mkdir()
            assert run_cli(root, "init").returncode == 0
            spool = root / "spool"
            files = files_with_other_links(root, 2)
            unmoved: list[bool] = []

            def drop_the_second(
                spool: Path = spool, late: Path = files[1], unmoved: list[bool] = unmoved
            ) -> None:
                before = os.stat(spool)
                os.link(late, spool / "late.json")
                after = os.stat(spool)
                unmoved.append(
                    (before.st_mtime_ns, before.st_ctime_ns)
                    == (after.st_mtime_ns, after.st_ctime_ns)
                )

            # A drop just taken by the watcher: the spool changed this second.
            (spool / "taken.json").touch()
            (spool / "taken.json").unlink()
            args = ("ingest", *map(str, files))
            done = run_held_after(root, args, spool, "getdents64", drop_the_second, when=2)
            if not unmoved[0]:
                continue  # a new second began meanwhile: the link moved its times; again
            assert done.returncode == 1, done.stderr
            assert done.stdout.splitlines()[1] == (
                f"rejected {files[1]}: a drop waiting in {spool}; the watcher takes it"
            ), done.stdout
            assert len(versions(root / "console-usage-history")) == 1
            return
        pytest.fail("every link fell in a new second: the case was never made")


def test_ingest_missing_file_and_over_max_bytes(root: Path, valid_payload: bytes) -> None:
    big = root / "big.json"
    big.write_bytes(valid_payload)
    done = run_cli(root, "--max-bytes", "10", "ingest", str(big), str(root / "absent.json"))
    assert done.returncode == 1
    assert "over the limit of 10" in done.stdout
    assert "absent.json" in done.stdout
    assert "Traceback" not in done.stderr
    assert versions(root / "console-usage-history") == []


def test_ingest_applies_retention(root: Path, valid_payload: bytes) -> None:
    history = root / "console-usage-history"
    old_history(history, [30, 20, 10], valid_payload)
    done = run_cli(root, "--max-versions", "2", "ingest", str(VALID_SAMPLES[0]))
    assert done.returncode == 0, done.stderr
    names = versions(history)
    assert len(names) == 2
    assert names[0].endswith("-old2.json")
    meta = metadata(history)
    assert meta["totalVersionsDeleted"] == 2
    assert meta["versionCount"] == 2


@pytest.mark.skipif(not IS_ROOT, reason="mounting a small tmpfs needs root")
def test_ingest_that_cannot_store_a_file_names_it_and_every_file_after_it(
    tmp_path: Path,
) -> None:
    """``ingest A BIG C`` on a history with no room for BIG: A is stored and said, and
    one error line names BIG, the cause, and C as not stored (C is not tried): every file
    is accounted for, and the run can be resumed from BIG."""
    big = json.loads(VALID_SAMPLES[0].read_bytes())
    big["padding"] = "x" * 150_000
    big_file = tmp_path / "big.json"
    big_file.write_text(json.dumps(big))
    first, last = VALID_SAMPLES[0], VALID_SAMPLES[1]
    with tmpfs(tmp_path / "small", "100k") as small:
        root = small / "root"
        root.mkdir()
        assert run_cli(root, "init").returncode == 0
        done = run_cli(root, "ingest", str(first), str(big_file), str(last))
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        assert done.stdout.startswith(f"stored {first} -> ")
        assert len(done.stdout.splitlines()) == 1
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"error: {big_file} not stored: cannot write "), lines[0]
        assert lines[0].endswith(f"[ENOSPC]; 1 more file(s) not stored, from {last} on")
        assert len(versions(root / "console-usage-history")) == 1


def test_second_writer_is_refused_naming_the_holder(root: Path, valid_payload: bytes) -> None:
    assert run_cli(root, "init").returncode == 0
    history = root / "console-usage-history"
    drop = root / "drop.json"
    drop.write_bytes(valid_payload)
    with HistoryLock(history / ".lock", "test"):
        for args in (("ingest", str(drop)), ("cleanup",)):
            done = run_cli(root, *args)
            assert done.returncode == 1, done
            assert f"pid {os.getpid()}" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
        # A dry run only reads: it works while the lock is held.
        assert run_cli(root, "cleanup", "--dry-run").returncode == 0
    assert versions(history) == []
    assert run_cli(root, "ingest", str(drop)).returncode == 0


# -- cleanup ------------------------------------------------------------------------------


def test_cleanup_dry_run_json_shape_and_changes_nothing(root: Path, valid_payload: bytes) -> None:
    history = root / "console-usage-history"
    names = old_history(history, [40, 30, 3, 0.1], valid_payload)
    ahead = f"{datetime.now(UTC) + timedelta(days=3):%Y-%m-%dT%H-%M-%S}-ahead.json"
    (history / ahead).write_bytes(valid_payload)
    (history / "notes.txt").write_text("not a version")
    before = sorted(os.listdir(history))
    plan = dry_run(root, "--max-versions", "1")
    assert isinstance(plan, list)
    assert {d["name"] for d in plan} == {*names, ahead}
    for d in plan:
        assert isinstance(d["name"], str)
        assert d["action"] in ("keep", "delete")
        assert d["reason"] in ("newest-N", "within-D-days", "future", "expired")
        assert (d["action"] == "delete") == (d["reason"] == "expired")
    reasons = {d["name"]: d["reason"] for d in plan}
    assert reasons == {
        names[0]: "expired",
        names[1]: "expired",
        names[2]: "within-D-days",
        names[3]: "newest-N",
        ahead: "future",
    }
    assert sorted(os.listdir(history)) == before  # nothing changed, not even metadata

    text = run_cli(root, "--max-versions", "1", "cleanup", "--dry-run")
    assert text.returncode == 0
    assert "expired" in text.stdout and "within-D-days" in text.stdout
    assert sorted(os.listdir(history)) == before


def test_cleanup_deletes_what_the_dry_run_said(root: Path, valid_payload: bytes) -> None:
    history = root / "console-usage-history"
    old_history(history, [40, 30, 20, 3], valid_payload)
    plan = dry_run(root, "--max-versions", "2")
    done = run_cli(root, "--max-versions", "2", "cleanup", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert sorted(result["deleted"]) == sorted(d["name"] for d in plan if d["action"] == "delete")
    assert result["retained"] == 2
    assert versions(history) == sorted(d["name"] for d in plan if d["action"] == "keep")
    assert metadata(history)["totalVersionsDeleted"] == 2
    assert "cleanup deleted 2, retained 2" in done.stderr  # the log line
    plain = run_cli(root, "--max-versions", "2", "cleanup")
    assert plain.returncode == 0
    assert "cleanup deleted 0, retained 2" in plain.stdout
    assert "cleanup deleted" not in plain.stderr  # printed once, not logged as well


# -- settings -----------------------------------------------------------------------------


def write_config(path: Path, **values: Any) -> Path:
    lines = ["[ingester]"]
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.skipif(not IS_ROOT, reason="chattr +i needs root")
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_cleanup_that_cannot_prune_rejected_drops_still_says_what_it_deleted(
    root: Path, as_json: bool, can_chattr: None
) -> None:
    """Retention deletes two versions, then the quarantine cannot be pruned (immutable):
    the result is printed all the same (the line, or the object with ``deleted``), then
    one error line about the rejected drops (exit 1)."""
    assert run_cli(root, "ingest", *map(str, VALID_SAMPLES[:3])).returncode == 0
    history = root / "console-usage-history"
    before = versions(history)
    rejected = root / "spool" / "rejected"
    rejected.mkdir(parents=True, exist_ok=True)
    drop = rejected / "bad.json"
    drop.write_text("{}")
    reason = rejected / "bad.json.reason.json"
    reason.write_text(json.dumps({"rejectedAt": "2020-01-01T00:00:00Z", "errors": []}))
    with immutable(rejected):
        done = run_cli(
            root,
            "--max-versions",
            "1",
            "--retention-days",
            "0.000001",
            "--rejected-retention-days",
            "1",
            "cleanup",
            *(["--json"] if as_json else []),
        )
    assert "Traceback" not in done.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    gone = sorted(set(before) - set(versions(history)))
    assert len(gone) == 2
    assert done.stderr.splitlines()[-1].startswith(
        f"error: rejected drops: cannot remove {drop}: Operation not permitted: its folder "
        f"{rejected} is immutable (chattr -i {rejected} clears that) [EPERM]"
    ), done.stderr
    if as_json:
        answer = json.loads(done.stdout)
        assert sorted(answer["deleted"]) == gone
        assert answer["rejectedRemoved"] == []
    else:
        assert done.stdout.splitlines()[0] == "cleanup deleted 2, retained 1", done.stdout
    assert drop.exists() and reason.exists()


def test_max_versions_precedence(root: Path, tmp_path: Path, valid_payload: bytes) -> None:
    old_history(root / "console-usage-history", [30, 29, 28, 27, 26, 25], valid_payload)
    config = write_config(tmp_path / "conf.toml", max_versions=4)
    cfg = ("--config", str(config))
    assert kept(dry_run(root)) == 6  # default 100
    assert kept(dry_run(root, *cfg)) == 4  # config
    assert kept(dry_run(root, *cfg, INGESTER_MAX_VERSIONS="3")) == 3  # env over config
    assert kept(dry_run(root, "--max-versions", "2", *cfg, INGESTER_MAX_VERSIONS="3")) == 2
    assert kept(dry_run(root, INGESTER_CONFIG=str(config))) == 4  # config by env var


def test_retention_days_precedence(root: Path, tmp_path: Path, valid_payload: bytes) -> None:
    old_history(root / "console-usage-history", [9.5, 7.5, 5.5, 3.5, 1.5, 0.5], valid_payload)
    config = write_config(tmp_path / "conf.toml", retention_days=5, max_versions=1)
    cfg = ("--config", str(config))
    assert kept(dry_run(root, "--max-versions", "1")) == 4  # default 7 days
    assert kept(dry_run(root, *cfg)) == 3  # 5 days from config
    assert kept(dry_run(root, *cfg, INGESTER_RETENTION_DAYS="2")) == 2
    assert kept(dry_run(root, "--retention-days", "8", *cfg, INGESTER_RETENTION_DAYS="2")) == 5
    assert kept(dry_run(root, "--retention-days", "0.25", *cfg)) == 1  # the newest is kept


def test_path_precedence(root: Path, tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    config = write_config(conf_dir / "conf.toml", history_dir="from-config")
    cfg = ("--config", str(config))

    def history_line(*args: str, **env: str) -> str:
        done = run_cli(root, *args, "init", **env)
        assert done.returncode == 0, done.stderr
        return next(line for line in done.stdout.splitlines() if line.startswith("history:"))

    assert str(root / "console-usage-history") in history_line()
    # Relative paths in a config file are taken from the file's folder.
    assert str(conf_dir / "from-config") in history_line(*cfg)
    env_dir = tmp_path / "from-env"
    assert str(env_dir) in history_line(*cfg, INGESTER_HISTORY_DIR=str(env_dir))
    opt_dir = tmp_path / "from-option"
    line = history_line("--history-dir", str(opt_dir), *cfg, INGESTER_HISTORY_DIR=str(env_dir))
    assert str(opt_dir) in line
    for folder in (conf_dir / "from-config", env_dir, opt_dir):
        assert (folder / "_metadata.json").is_file()


def test_latest_path_and_spool_settings(root: Path, tmp_path: Path) -> None:
    latest = tmp_path / "www" / "usage.json"
    spool = tmp_path / "drops"
    done = run_cli(
        root,
        "--latest-path",
        str(latest),
        "--spool-dir",
        str(spool),
        "ingest",
        str(VALID_SAMPLES[0]),
    )
    assert done.returncode == 0, done.stderr
    target = os.readlink(latest)
    assert not os.path.isabs(target)
    assert (latest.parent / target).resolve().parent == (root / "console-usage-history").resolve()
    init = run_cli(root, "--spool-dir", str(spool), "init")
    assert init.returncode == 0
    assert (spool / "tmp").is_dir()
    assert (spool / "rejected").is_dir()


BAD_VALUES = [
    (("--max-versions", "0"), {}, "--max-versions"),
    (("--max-versions", "-3"), {}, "--max-versions"),
    (("--max-versions", "many"), {}, "--max-versions"),
    (("--retention-days", "0"), {}, "--retention-days"),
    (("--retention-days", "abc"), {}, "--retention-days"),
    (("--retention-days", "nan"), {}, "--retention-days"),
    (("--retention-days", "inf"), {}, "--retention-days"),
    (("--max-bytes", "0"), {}, "--max-bytes"),
    ((), {"INGESTER_MAX_VERSIONS": "0"}, "INGESTER_MAX_VERSIONS"),
    ((), {"INGESTER_RETENTION_DAYS": "-1"}, "INGESTER_RETENTION_DAYS"),
    ((), {"INGESTER_MAX_BYTES": "1.5"}, "INGESTER_MAX_BYTES"),
]


@pytest.mark.parametrize(("args", "env", "setting"), BAD_VALUES)
def test_bad_value_is_a_usage_error_before_anything_is_touched(
    root: Path, args: tuple[str, ...], env: dict[str, str], setting: str
) -> None:
    for command in ("init", "cleanup"):
        done = run_cli(root, *args, command, **env)
        assert done.returncode == 2, done
        assert setting in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert list(root.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "setting"),
    [
        ("[ingester]\nmax_version = 5\n", "max_version"),  # unknown key
        ("[ingester]\nmax-versions = 5\n", "max-versions"),  # dashes are not the keys
        ("[ingester]\nmax_versions = 0\n", "max_versions"),
        ("[ingester]\nmax_versions = true\n", "max_versions"),
        ('[ingester]\nretention_days = "soon"\n', "retention_days"),
        ("[ingester]\nhistory_dir = 5\n", "history_dir"),
        ("[ingester\nmax_versions = 5\n", "--config"),  # not TOML
        ("ingester = 5\n", "--config"),
    ],
)
def test_bad_config_is_a_usage_error(
    root: Path, tmp_path: Path, content: str, setting: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    done = run_cli(root, "--config", str(config), "init")
    assert done.returncode == 2, done
    assert setting in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert list(root.iterdir()) == []


def test_missing_config_file_is_a_usage_error(root: Path, tmp_path: Path) -> None:
    done = run_cli(root, "--config", str(tmp_path / "absent.toml"), "init")
    assert done.returncode == 2
    assert "absent.toml" in done.stderr
    assert list(root.iterdir()) == []


def test_a_good_option_overrides_a_bad_env_value(root: Path) -> None:
    done = run_cli(root, "--max-versions", "5", "init", INGESTER_MAX_VERSIONS="0")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", [None, "init", "ingest", "cleanup"])
def test_help(root: Path, command: str | None) -> None:
    done = run_cli(root, *([command] if command else []), "--help")
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
    assert list(root.iterdir()) == []


WHY_NOT = other_user_problem()


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_a_metadata_file_it_cannot_read_is_never_replaced() -> None:
    # Its lifetime totals cannot be rebuilt from the versions: a writer run as the
    # service's user on a metadata file root left 0600 must stop, not start afresh.
    with others_folder("ingester-meta-") as root:
        payload = (VALID_SAMPLES[0]).read_bytes()
        (root / "in.json").write_bytes(payload)
        assert run_as_other(root, "ingest", str(root / "in.json")).returncode == 0
        meta = root / "console-usage-history" / "_metadata.json"
        body = json.loads(meta.read_bytes())
        body.update(totalVersionsCreated=501, totalVersionsDeleted=500)
        meta.write_text(json.dumps(body))
        os.chown(meta, 0, 0)
        meta.chmod(0o600)
        before = meta.read_bytes()
        snap = root / "snap"
        refused_by = (
            ("watch", "--once"),
            ("init",),
            ("cleanup",),
            ("verify", "--repair"),
            ("ingest", str(root / "in.json")),
            ("adopt",),
            ("snapshot", str(snap)),
        )
        for command in refused_by:
            done = run_as_other(root, *command)
            assert done.returncode == 1, (command, done.stdout + done.stderr)
            assert (
                f"cannot read {meta}: Permission denied [EACCES]: its totals cannot be rebuilt "
                "from the versions, so it is left as it is; a permissions problem, not damage"
            ) in done.stderr, (command, done.stderr)
            assert "Traceback" not in done.stderr
            assert meta.read_bytes() == before and meta.stat().st_uid == 0, command
        assert not snap.exists()
        report = json.loads(run_as_other(root, "verify", "--json").stdout)
        (finding,) = [f for f in report["problems"] if f["kind"] == "metadata"]
        assert finding["repairable"] is False


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_ingest_stores_what_it_may_read_and_names_what_it_may_not() -> None:
    # A file this user may not read is one rejection among the files, as --help says:
    # not a usage error that stores nothing.
    with others_folder("ingester-unreadable-") as root:
        good, secret = root / "good.json", root / "secret.json"
        for path in (good, secret):
            path.write_bytes(VALID_SAMPLES[0].read_bytes())
        os.chown(secret, 0, 0)
        secret.chmod(0o600)
        done = run_as_other(root, "ingest", str(good), str(secret))
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr == ""
        stored, rejected = done.stdout.splitlines()
        assert stored.startswith(f"stored {good} -> ")
        assert rejected == f"rejected {secret}: cannot read: Permission denied [EACCES]"
        assert len(versions(root / "console-usage-history")) == 1


def _run_into_full_stdout(root: Path, *args: str) -> tuple[int, str]:
    """``ingester --root ROOT ARGS`` with its standard output on /dev/full (every write
    fails with ENOSPC): its exit code and its stderr."""
    with open("/dev/full", "w") as full:
        done = run_cli(root, *args, stdout=full)
    return done.returncode, done.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_submit_whose_path_cannot_be_printed_still_says_it_dropped(root: Path) -> None:
    """The drop is published before its path is printed: a failure said then would have
    the writer submit it again, and it would be stored twice."""
    assert run_cli(root, "init").returncode == 0
    args = ("submit", "--name", "one.json", str(VALID_SAMPLES[0]))
    code, stderr = _run_into_full_stdout(root, *args)
    assert code == 0, stderr
    assert stderr == (
        f"warning: dropped {root / 'spool' / 'one.json'}, but its path could not be printed: "
        "No space left on device [ENOSPC]\n"
    )
    assert (root / "spool" / "one.json").read_bytes() == VALID_SAMPLES[0].read_bytes()


def test_a_submit_started_with_stdout_closed_says_its_path_could_not_be_printed(
    root: Path,
) -> None:
    """The drop is made (the scraper's aim), and the path that had nowhere to go is said
    on stderr, as for a pipe closed by its reader (it went into /dev/null unsaid)."""
    assert run_cli(root, "init").returncode == 0
    closed = ("sh", "-c", 'exec "$@" >&-', "sh")
    args = ("submit", "--name", "one.json", str(VALID_SAMPLES[0]))
    done = run_cli(root, *args, wrapper=closed)
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    assert done.stderr == (
        f"warning: dropped {root / 'spool' / 'one.json'}, but its path could not be printed: "
        "standard output is closed\n"
    )
    assert (root / "spool" / "one.json").read_bytes() == VALID_SAMPLES[0].read_bytes()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_ingest_whose_output_fails_stops_and_says_what_it_stored(root: Path) -> None:
    """The lines are the record of what was stored: once one cannot be printed, it is
    said on stderr, and the run stops before the next file (it was called a failure to
    create the history folder, with the files after it stored unsaid)."""
    first, second = VALID_SAMPLES[0], VALID_SAMPLES[1]
    code, stderr = _run_into_full_stdout(root, "ingest", str(first), str(second))
    assert code == 1, stderr
    lines = stderr.splitlines()
    assert len(lines) == 2, stderr
    assert lines[0].startswith(f"warning: stored {first} -> ")
    assert lines[0].endswith(", but the output failed: No space left on device [ENOSPC]")
    assert lines[1] == f"stopped: 1 file(s) not stored, from {second} on"
    versions = [p for p in (root / "console-usage-history").iterdir() if is_version_name(p.name)]
    assert [p.read_bytes() for p in versions] == [first.read_bytes()]


# -- submit -------------------------------------------------------------------------------


def test_submit_of_a_drop_still_waiting_in_the_spool_is_refused(
    root: Path, tmp_path: Path, valid_payload: bytes
) -> None:
    """Submitting a waiting drop again (by its path or through a link) made a second drop
    of it, and both were stored. Refused, nothing dropped; --dry-run still judges it."""
    assert run_cli(root, "init").returncode == 0
    spool = root / "spool"
    (spool / "a.json").write_bytes(valid_payload)
    (tmp_path / "link.json").symlink_to(spool / "a.json")
    for given in (spool / "a.json", tmp_path / "link.json"):
        done = run_cli(root, "submit", str(given))
        assert (done.returncode, done.stdout) == (1, ""), done.stderr
        assert done.stderr == (
            f"error: {given} is a drop waiting in {spool}; the watcher takes it "
            "(dropped again, it would be stored twice)\n"
        )
    judged = run_cli(root, "submit", "--dry-run", str(spool / "a.json"))
    assert (judged.returncode, judged.stdout) == (0, f"valid {spool / 'a.json'}\n")
    assert sorted(p.name for p in spool.glob("*.json")) == ["a.json"]


def test_submit_of_a_waiting_drop_by_a_hard_link_or_on_standard_input_is_refused(
    root: Path, tmp_path: Path, valid_payload: bytes
) -> None:
    """A hard link to a waiting drop (a scraper that links its output into the spool) or
    the drop given on standard input is the drop all the same: dropped again, it would be
    stored twice. A hard-linked file that is no drop is submitted as any other."""
    assert run_cli(root, "init").returncode == 0
    spool = root / "spool"
    (spool / "a.json").write_bytes(valid_payload)
    os.link(spool / "a.json", tmp_path / "out.json")
    (tmp_path / "kept.json").write_bytes(valid_payload)
    os.link(tmp_path / "kept.json", tmp_path / "kept-too.json")
    done = run_cli(root, "submit", str(tmp_path / "out.json"))
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr == (
        f"error: {tmp_path / 'out.json'} is a drop waiting in {spool}; the watcher takes it "
        "(dropped again, it would be stored twice)\n"
    )
    redirected = ("sh", "-c", 'exec "$@" < "$0"', str(spool / "a.json"))
    done = run_cli(root, "submit", "-", wrapper=redirected)
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr == (
        f"error: standard input is a drop waiting in {spool}; the watcher takes it "
        "(dropped again, it would be stored twice)\n"
    )
    assert sorted(p.name for p in spool.glob("*.json")) == ["a.json"]
    kept = run_cli(root, "submit", "--name", "k.json", str(tmp_path / "kept.json"))
    assert (kept.returncode, kept.stdout) == (0, f"{spool / 'k.json'}\n"), kept.stderr
    piped = run_cli(root, "submit", "--name", "p.json", "-", input=valid_payload)
    assert (piped.returncode, piped.stdout) == (0, f"{spool / 'p.json'}\n"), piped.stderr


def test_submit_under_the_name_of_a_folder_in_the_spool_says_it_is_a_folder(
    root: Path, valid_payload: bytes
) -> None:
    """The watcher leaves a folder named ``*.json`` where it is: the name never comes
    free, and the refusal says why (it said a drop of that name was still waiting, to be
    waited for in vain). A drop that waits is still said as one."""
    assert run_cli(root, "init").returncode == 0
    spool = root / "spool"
    (spool / "d.json").mkdir()
    (spool / "w.json").write_bytes(valid_payload)
    snapshot = root / "snapshot.json"
    snapshot.write_bytes(valid_payload)
    folder = run_cli(root, "submit", "--name", "d.json", str(snapshot))
    assert (folder.returncode, folder.stdout) == (1, "")
    assert folder.stderr == (
        f"error: {spool / 'd.json'}: a folder has that name (never a drop, never taken); "
        "choose another name\n"
    )
    waiting = run_cli(root, "submit", "--name", "w.json", str(snapshot))
    assert waiting.returncode == 1
    assert waiting.stderr == f"error: {spool / 'w.json'}: a drop of that name is still waiting\n"
    assert sorted(os.listdir(spool / "d.json")) == []


@pytest.mark.parametrize(
    ("encoding", "words"),
    [
        ("utf-16", "UTF-16LE text, with a byte order mark"),  # Windows PowerShell 5.1's `>`
        ("utf-16-le", "UTF-16LE text"),
        ("utf-16-be", "UTF-16BE text"),
        ("utf-32", "UTF-32LE text, with a byte order mark"),
        ("utf-32-be", "UTF-32BE text"),
    ],
)
def test_submit_names_utf16_and_utf32_text_for_what_it_is(
    root: Path, encoding: str, words: str
) -> None:
    """A payload in UTF-16 or UTF-32 is refused saying so (it was 'not valid UTF-8 (byte
    0)', or without a byte order mark a property name expected at column 2: the text's
    every other byte is a NUL, valid UTF-8 but no JSON)."""
    snapshot = root / "snapshot.json"
    snapshot.write_bytes(VALID_SAMPLES[0].read_text().encode(encoding))
    done = run_cli(root, "submit", str(snapshot))
    assert done.returncode == 1, done.stdout
    assert done.stderr == (
        f"refused {snapshot}: not valid UTF-8: it is {words}; a payload is UTF-8 without a BOM\n"
    )
    assert not (root / "spool").exists() or not list((root / "spool").glob("*.json"))


def _waiting_for_input(pid: int) -> bool:
    """Whether process ``pid`` sleeps in select or poll (the kernel's wait for input)."""
    try:
        with open(f"/proc/{pid}/wchan") as wchan:
            where = wchan.read()
    except OSError:
        return False
    return "poll" in where or "select" in where


@pytest.mark.skipif(not IS_ROOT, reason="mounting a tmpfs needs root")
def test_submit_into_a_spool_whose_tmp_is_a_mount_says_why_it_cannot(
    root: Path, valid_payload: bytes
) -> None:
    """A drop is written in SPOOL/tmp/ and renamed in: with another filesystem mounted
    there no rename can cross, and the refusal says so (it was the rename's EXDEV
    alone); nothing is left in the spool or its tmp/."""
    snapshot = root / "snapshot.json"
    snapshot.write_bytes(valid_payload)
    spool = root / "spool"
    with tmpfs(spool / "tmp"):
        done = run_cli(root, "submit", "--name", "one.json", str(snapshot))
        assert done.returncode == 1, done.stdout
        assert done.stderr == (
            f"error: cannot link {spool / 'one.json'}: Invalid cross-device link [EXDEV] "
            f"({spool / 'tmp'}, where a drop is written before it is renamed in, is another "
            "filesystem than the spool: make it a plain folder)\n"
        )
        assert os.listdir(spool / "tmp") == []
    assert os.listdir(spool) == ["tmp"]


def test_submit_from_a_non_blocking_stdin_waits_for_the_payload(root: Path) -> None:
    """Standard input left non-blocking by whoever shares it answers 'nothing yet' while
    the writer is still to write: the payload is waited for, not judged empty (it was
    refused as 'not JSON: empty (no bytes)', and a half-written one as cut short)."""
    payload = VALID_SAMPLES[0].read_bytes()
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.write(write_end, payload[:10])
    with subprocess.Popen(
        [sys.executable, "-m", "ingester", "--root", str(root), "submit", "--name", "a.json", "-"],
        stdin=read_end,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    ) as proc:
        os.close(read_end)
        try:
            # Until the command waits for more, or ends having judged what it read.
            wait_for(lambda: proc.poll() is not None or _waiting_for_input(proc.pid), 60)
            with contextlib.suppress(BrokenPipeError):
                os.write(write_end, payload[10:])
        finally:
            os.close(write_end)
        out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (0, ""), err
    assert out == f"{root / 'spool' / 'a.json'}\n"
    assert (root / "spool" / "a.json").read_bytes() == payload


def test_ingest_and_watch_once_store_a_file_whose_mtime_is_ahead_of_the_clock_at_the_clock_s_time(
    root: Path, tmp_path: Path
) -> None:
    """A file's mtime is its writer's clock (a scraper's host set a year ahead, a copy
    that kept it): ``ingest`` and ``watch --once`` store it as any other, at once, said in
    the usual one line, its version named by this machine's clock (never "future", so
    the latest link names it), not waited on and not set aside."""
    ahead = time.time() + 365 * 86400
    given = tmp_path / "ahead.json"
    given.write_bytes(VALID_SAMPLES[0].read_bytes())
    os.utime(given, (ahead, ahead))
    stored = run_cli(root, "ingest", str(given))
    assert stored.returncode == 0, stored.stderr
    assert stored.stdout.startswith(f"stored {given} -> "), stored.stdout
    drop = root / "spool" / "ahead.json"
    drop.parent.mkdir(exist_ok=True)
    drop.write_bytes(VALID_SAMPLES[1].read_bytes())
    os.utime(drop, (ahead, ahead))
    drained = run_cli(root, "watch", "--once", timeout=60)
    assert drained.returncode == 0, drained.stderr
    assert "ingested ahead.json -> " in drained.stderr, drained.stderr
    assert not drop.exists()
    now = datetime.now(UTC)
    for name in versions(root / "console-usage-history"):
        assert abs(parse_timestamp_from_filename(name) - now) < timedelta(minutes=5), name
    latest = root / "console-usage-synced.json"
    assert latest.read_bytes() == VALID_SAMPLES[1].read_bytes()
