"""Edge cases an independent review found, each driven through the real CLI."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support import IS_ROOT, run_cli, wait_for
from support.watchproc import WatchProcess, drop, latest_bytes, payload, stored_contents, versions

from ingester.model import PayloadRejected, judge_payload


def test_a_drop_with_a_future_mtime_does_not_hold_up_start_or_once(root: Path) -> None:
    spool = root / "spool"
    spool.mkdir()
    ahead = spool / "ahead.json"
    ahead.write_bytes(payload(1))
    future = time.time() + 3600
    os.utime(ahead, (future, future))
    result = run_cli(root, "watch", "--once", "--settle", "0.2", timeout=30)
    assert result.returncode == 0, result.stderr
    assert list(stored_contents(root)) == [payload(1)]


def test_claimed_folder_removed_while_running_is_made_again(root: Path) -> None:
    with WatchProcess(root, "--retry-max", "0.2"):
        shutil.rmtree(root / "spool" / ".claimed")
        drop(root / "spool", "after.json", payload(1))
        wait_for(lambda: latest_bytes(root) == payload(1), what="drop stored")


def test_rejected_folder_removed_while_running_is_made_again(root: Path) -> None:
    with WatchProcess(root):
        shutil.rmtree(root / "spool" / "rejected")
        drop(root / "spool", "bad.json", b"{not json")
        drop(root / "spool", "good.json", payload(2))
        wait_for(lambda: latest_bytes(root) == payload(2), what="good drop stored")
        wait_for(lambda: (root / "spool" / "rejected" / "bad.json").exists(), what="bad set aside")


@pytest.mark.skipif(
    not IS_ROOT, reason="a tmpfs mount for a rejected folder on another fs needs root"
)
def test_special_files_move_across_filesystems_without_being_opened(
    root: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(other)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        spool = root / "spool"
        spool.mkdir()
        os.mkfifo(spool / "fifo.json")
        # A writer holding the FIFO open: reading it would block or return nothing.
        holder = os.open(spool / "fifo.json", os.O_RDWR | os.O_NONBLOCK)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(os.fspath(spool / "sock.json"))
        (spool / "zz-good.json").write_bytes(payload(3))
        try:
            result = run_cli(
                root, "--rejected-dir", str(other / "rejected"), "watch", "--once", timeout=30
            )
        finally:
            os.close(holder)
            sock.close()
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert list(stored_contents(root)) == [payload(3)]
        assert (other / "rejected" / "fifo.json").exists()
        assert (other / "rejected" / "sock.json").exists()
    finally:
        subprocess.run(["umount", str(other)], check=False)


def test_rescan_never_takes_a_file_still_being_written_in_place(root: Path) -> None:
    data = payload(4)
    args = ("--rescan-interval", "0.2", "--settle", "0.1")
    with WatchProcess(root, *args, global_args=("-v",)) as w:
        target = root / "spool" / "slow.json"
        with target.open("wb") as handle:
            handle.write(data[:20])
            handle.flush()
            seen = w.log.count("rescanned the spool")
            # The writer pauses, file open, while three rescans go by.
            w.wait_log("rescanned the spool", count=seen + 3)
            assert target.exists(), "taken while still being written"
            handle.write(data[20:])
        wait_for(lambda: latest_bytes(root) == data, what="stored after close")
    assert not list((root / "spool" / "rejected").iterdir())


@pytest.mark.parametrize(
    "stamp", ["0", "1700000000", "2026-11-27T14:05:00+0100", "2026-02-30T10:00:00Z"]
)
def test_last_updated_must_be_iso_8601_with_offset(stamp: str) -> None:
    body = {"currentSession": {"resetsIn": "1 hr", "percentageUsed": 5}, "lastUpdated": stamp}
    with pytest.raises(PayloadRejected, match="lastUpdated"):
        judge_payload(json.dumps(body).encode())


def test_latest_link_resolves_through_a_symlinked_folder(root: Path, tmp_path: Path) -> None:
    real = tmp_path / "real" / "sub"
    real.mkdir(parents=True)
    (tmp_path / "lnk").symlink_to(real)
    latest = tmp_path / "lnk" / "latest.json"
    sample = payload(5)
    source = tmp_path / "p.json"
    source.write_bytes(sample)
    result = run_cli(root, "--latest-path", str(latest), "ingest", str(source))
    assert result.returncode == 0, result.stderr
    assert latest.read_bytes() == sample
    check = run_cli(root, "--latest-path", str(latest), "verify")
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_newline_in_a_drop_name_cannot_forge_a_log_line(root: Path) -> None:
    spool = root / "spool"
    spool.mkdir()
    (spool / "evil\n2026-11-29 05:00:00,000 ERROR fake.json").write_bytes(b"{")
    result = run_cli(root, "watch", "--once")
    assert result.returncode == 0, result.stderr
    forged = "2026-11-29 05:00:00,000 ERROR"
    assert not [line for line in result.stderr.splitlines() if line.startswith(forged)]
    assert "evil\\n2026" in result.stderr


def test_a_float_where_a_whole_number_belongs_is_a_usage_error(root: Path) -> None:
    config = root / "c.toml"
    config.write_text("[ingester]\nmax_versions = 7.9\n")
    result = run_cli(root, "--config", str(config), "init")
    assert result.returncode == 2 and "max_versions" in result.stderr
    assert not (root / "console-usage-history").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("--spool-dir", "console-usage-history"),
        ("--history-dir", "spool/history"),
        ("--latest-path", "spool/latest.json"),
    ],
)
def test_overlapping_folders_are_a_usage_error(root: Path, args: tuple[str, str]) -> None:
    option, value = args
    result = run_cli(root, option, str(root / value), "init")
    assert result.returncode == 2, result.stderr
    assert not (root / "spool").exists()


def test_versions_stored_during_edge_cases_are_valid(root: Path) -> None:
    """The same checks as everywhere: a burst of mixed drops, all valid ones stored once."""
    with WatchProcess(root):
        for i in range(20):
            drop(root / "spool", f"m{i:02d}.json", payload(i) if i % 3 else b"[]")
        wait_for(lambda: len(versions(root)) == 13, what="13 valid drops")
    for version in versions(root):
        judge_payload(version.read_bytes())


def test_a_name_taken_back_is_never_given_again(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from ingester.store import HistoryStore

    frozen = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)
    store = HistoryStore(tmp_path / "h", tmp_path / "latest.json", clock=lambda: frozen)
    store.initialize()
    store.save_version(payload(1))
    name = store.next_version_name()
    store.write_version(name, payload(2))
    store.withdraw_version(name)  # its history fsync failed: the claim keeps the name
    assert store.next_version_name() > name


def test_a_writer_holding_its_drop_open_cannot_change_the_version(root: Path) -> None:
    spool = root / "spool"
    with WatchProcess(root):
        staged = spool / "tmp" / ".held.part"
        with staged.open("wb") as handle:
            handle.write(payload(1))
            handle.flush()
            os.rename(staged, spool / "held.json")  # renamed in, but still open for writing
            wait_for(lambda: latest_bytes(root) == payload(1), what="stored")
            [version] = versions(root)
            handle.seek(0)
            handle.write(b"X" * 20)  # the writer misbehaves
            handle.flush()
            assert version.read_bytes() == payload(1)  # a copy, not the writer's inode


def test_a_file_open_for_writing_at_start_waits_for_its_writer(root: Path) -> None:
    spool = root / "spool"
    spool.mkdir()
    data = payload(2)
    target = spool / "slow.json"
    with target.open("wb") as handle:
        handle.write(data[:20])
        handle.flush()
        old = time.time() - 60
        os.utime(target, (old, old))  # long settled by its mtime
        args = ("--settle", "0.1", "--rescan-interval", "0.2")
        with WatchProcess(root, *args, global_args=("-v",)) as w:
            # The start scan and several rescans go by while the writer holds it open.
            w.wait_log("rescanned the spool", count=4)
            assert target.exists(), "taken while still open for writing"
            handle.write(data[20:])
            handle.close()
            wait_for(lambda: latest_bytes(root) == data, what="stored after close")
    assert not list((spool / "rejected").iterdir())


@pytest.mark.skipif(not IS_ROOT, reason="chattr +a needs root")
def test_an_append_only_history_stores_a_copied_drop_once(root: Path) -> None:
    history = root / "console-usage-history"
    assert run_cli(root, "init").returncode == 0
    if subprocess.run(["chattr", "+a", str(history)], capture_output=True).returncode:
        pytest.skip("chattr +a does not work here")
    try:
        spool = root / "spool"
        staged = spool / "tmp" / ".theirs.part"
        staged.write_bytes(payload(3))
        os.chown(staged, 65534, 65534)  # another user's drop: copied
        os.rename(staged, spool / "theirs.json")
        with WatchProcess(root, "--retry-max", "0.2") as w:
            wait_for(lambda: not (spool / "theirs.json").exists(), what="taken")
            w.wait_log("ingested theirs.json")
            assert [p.read_bytes() for p in versions(root)] == [payload(3)]
    finally:
        subprocess.run(["chattr", "-a", str(history)], check=False)


def test_verify_repair_does_not_count_itself_as_the_writer(root: Path) -> None:
    assert run_cli(root, "init").returncode == 0
    (root / "console-usage-history" / "_metadata.json").write_text("{broken")
    result = run_cli(root, "verify", "--repair", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["writerPid"] is None and report["ok"] is True


def test_verify_passes_over_a_running_watchers_spare_file(root: Path) -> None:
    from ingester.lock import HistoryLock

    assert run_cli(root, "init").returncode == 0
    history = root / "console-usage-history"
    (history / ".tmp-w-0123456789ab").write_bytes(b"")  # the spare: empty
    (history / ".tmp-w-ba9876543210").write_bytes(b"partial")  # a real leftover
    with HistoryLock(history / ".lock", "watch"):
        result = run_cli(root, "verify", "--json")
    report = json.loads(result.stdout)
    subjects = [f["subject"] for f in report["warnings"] + report["problems"]]
    assert not any("0123456789ab" in s for s in subjects)
    assert any("ba9876543210" in s for s in subjects)


def test_removing_the_history_under_a_watcher_stops_it(root: Path) -> None:
    with WatchProcess(root) as w:
        history = root / "console-usage-history"

        def removed() -> bool:
            # The watcher may write a file in it while rmtree runs ("not empty"): again.
            try:
                shutil.rmtree(history)
            except FileNotFoundError:
                return True
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise
                return False
            return True

        wait_for(removed, what="the history removed")
        code = w.proc.wait(timeout=30)
        assert code != 0
        assert "was removed or replaced" in w.log
