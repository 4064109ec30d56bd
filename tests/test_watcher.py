"""``ingester watch`` end to end: the real CLI in a subprocess, the real observer, real files."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from support import (
    INOTIFY_QUEUE_KNOB,
    IS_ROOT,
    VALID_SAMPLES,
    cli_env,
    inotify_queue_limit,
    run_cli,
    wait_for,
)
from support.capabilities import STRACE, needs_strace_root, traced_program
from support.hostile import many_problems
from support.process import kill_group
from support.watchproc import WatchProcess, drop, latest_bytes, payload, stored_contents, versions

from ingester.history.lock import HistoryLock
from ingester.payload.model import judge_payload


def spool_of(root: Path) -> Path:
    return root / "spool"


def test_renamed_drop_becomes_latest_version(root: Path) -> None:
    with WatchProcess(root) as w:
        data = payload(1)
        drop(spool_of(root), "a.json", data)
        wait_for(lambda: latest_bytes(root) == data, what="latest link on the drop")
        assert not (spool_of(root) / "a.json").exists()
        [version] = versions(root)
        assert version.read_bytes() == data
        assert stat.S_IMODE(version.stat().st_mode) & 0o222 == 0
        link = root / "console-usage-synced.json"
        assert link.is_symlink() and not os.readlink(link).startswith("/")
        w.wait_log("ingested a.json -> " + version.name)
        assert w.stop() == 0
    meta = json.loads((root / "console-usage-history" / "_metadata.json").read_bytes())
    assert meta["versionCount"] == 1 and meta["totalVersionsCreated"] == 1


def test_in_place_write_is_taken_once_closed(root: Path) -> None:
    with WatchProcess(root):
        data = payload(2)
        target = spool_of(root) / "inplace.json"
        with target.open("wb") as handle:
            handle.write(data[:10])
            handle.flush()
            handle.write(data[10:])
        wait_for(lambda: latest_bytes(root) == data, what="in-place drop stored")
        assert list(stored_contents(root).elements()) == [data]
        assert not list((spool_of(root) / "rejected").iterdir())


def test_backlog_is_taken_oldest_first_and_names_sort_in_arrival_order(root: Path) -> None:
    spool = spool_of(root)
    spool.mkdir()
    order = list(range(30))
    random.Random(7).shuffle(order)
    for rank, seq in enumerate(order):
        path = spool / f"drop-{seq:03d}.json"
        path.write_bytes(payload(seq))
        os.utime(path, ns=(1_700_000_000_000_000_000 + rank * 1_000_000,) * 2)
    result = run_cli(root, "watch", "--once")
    assert result.returncode == 0, result.stderr
    stored = [json.loads(p.read_bytes())["seq"] for p in versions(root)]
    assert stored == order  # names sort in ingestion order, which is mtime order
    assert not [p for p in spool.iterdir() if p.is_file() and p.name != ".lock"]


def test_events_keep_arrival_order(root: Path) -> None:
    # An overflowing inotify queue (a limit lowered by another test) would turn the
    # events into a rescan, which has no arrival order: hold the limit while starting.
    with inotify_queue_limit():
        w = WatchProcess(root).wait_started()
    with w:
        for seq in range(50):
            drop(spool_of(root), f"z-{49 - seq:02d}.json", payload(seq))
        wait_for(lambda: len(versions(root)) == 50, what="50 versions")
    assert [json.loads(p.read_bytes())["seq"] for p in versions(root)] == list(range(50))


def test_ignored_entries_are_never_touched(root: Path) -> None:
    spool = spool_of(root)
    (spool / "tmp").mkdir(parents=True)
    (spool / "sub").mkdir()
    untouched = {
        ".hidden.json": b"{",
        "notes.tmp": b"x",
        "upload.part": b"x",
        "readme.txt": b"x",
        "tmp/inflight.json": payload(9),
        "sub/nested.json": payload(8),
    }
    for rel, data in untouched.items():
        (spool / rel).write_bytes(data)
    (spool / "folder.json").mkdir()
    (spool / "real.json").write_bytes(payload(1))
    result = run_cli(root, "watch", "--once")
    assert result.returncode == 0, result.stderr
    for rel, data in untouched.items():
        assert (spool / rel).read_bytes() == data, rel
    assert (spool / "folder.json").is_dir()
    assert "folder.json: a folder, not a drop" in result.stderr
    assert list(stored_contents(root)) == [payload(1)]


def test_hostile_drops_are_rejected_without_reading_or_hanging(root: Path, tmp_path: Path) -> None:
    spool = spool_of(root)
    spool.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("top secret")
    hostile: dict[str, bytes] = {
        "big.json": b'{"x": "' + b"a" * (2 * 1024 * 1024) + b'"}',
        "brackets.json": b"[" * 200_000,
        "latin1.json": b'{"lastUpdated": "\xff\xfe"}',
        "utf16.json": json.dumps({"lastUpdated": "2026-11-27T14:05:00Z"}).encode("utf-16"),
        "binary.json": random.Random(1).randbytes(4096),
        "empty.json": b"",
        "array.json": b"[]",
    }
    for name, data in hostile.items():
        (spool / name).write_bytes(data)
    os.mkfifo(spool / "fifo.json")
    os.symlink(secret, spool / "secret.json")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.fspath(spool / "sock.json"))
    try:
        good = payload(5)
        (spool / "zz-good.json").write_bytes(good)
        result = run_cli(root, "watch", "--once", timeout=60)
    finally:
        sock.close()
    assert result.returncode == 0, result.stderr
    assert list(stored_contents(root)) == [good]
    rejected = spool / "rejected"
    for name, data in hostile.items():
        assert (rejected / name).read_bytes() == data, f"{name} bytes changed"
        reason = json.loads((rejected / f"{name}.reason.json").read_bytes())
        assert reason["file"] == name and reason["reason"] and reason["errors"]
        assert set(reason) >= {"file", "rejectedAt", "reason", "errors"}
    assert (rejected / "secret.json").is_symlink()  # the link itself, not its target
    assert os.readlink(rejected / "secret.json") == os.fspath(secret)
    assert stat.S_ISFIFO((rejected / "fifo.json").lstat().st_mode)
    assert stat.S_ISSOCK((rejected / "sock.json").lstat().st_mode)
    assert "top secret" not in result.stderr
    assert secret.read_text() == "top secret"


def test_odd_names_work(root: Path) -> None:
    names = ["with space.json", "ünïcødé-😀.json", "new\nline.json", ("x" * 195) + ".json"]
    with WatchProcess(root):
        for seq, name in enumerate(names):
            drop(spool_of(root), name, payload(seq))
        wait_for(lambda: len(versions(root)) == len(names), what="all odd names stored")
    assert sorted(stored_contents(root).elements()) == sorted(payload(i) for i in range(4))


def test_a_name_can_be_reused_after_its_drop_was_taken(root: Path) -> None:
    with WatchProcess(root):
        drop(spool_of(root), "same.json", payload(1))
        wait_for(lambda: len(versions(root)) == 1)
        drop(spool_of(root), "same.json", payload(2))
        wait_for(lambda: len(versions(root)) == 2)
    assert [p.read_bytes() for p in versions(root)] == [payload(1), payload(2)]


def test_second_watcher_is_refused_and_names_the_holder(root: Path) -> None:
    with WatchProcess(root) as first:
        result = run_cli(root, "watch", timeout=20)
        assert result.returncode != 0
        assert f"pid {first.proc.pid}" in result.stderr
        assert first.proc.poll() is None


def test_sigterm_finishes_and_exits_zero_without_temp_files(root: Path) -> None:
    spool = spool_of(root)
    dropped = [payload(i) for i in range(300)]
    with WatchProcess(root) as w:
        for i, data in enumerate(dropped):
            drop(spool, f"d{i:04d}.json", data)
        wait_for(lambda: len(versions(root)) >= 5, what="some versions")
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(timeout=5) == 0
    history = root / "console-usage-history"
    assert not [p for p in history.iterdir() if p.name.startswith(".tmp-")]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    left = [p.read_bytes() for p in spool.glob("*.json")]
    assert not list((spool / ".claimed").iterdir())
    assert Counter(left) + stored_contents(root) == Counter(dropped)
    assert "stopped:" in w.log


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_sigint_and_sighup_also_stop_cleanly(root: Path, stop: signal.Signals) -> None:
    # SIGHUP: the terminal the watcher ran in was closed. By its default action the
    # process would end at once, with no stop line and its claims left to the next start.
    with WatchProcess(root) as w:
        w.proc.send_signal(stop)
        assert w.proc.wait(timeout=5) == 0
        wait_for(lambda: "stopped:" in w.log, what="the stop line")
        assert "Traceback" not in w.log


@needs_strace_root
def test_a_second_stop_signal_on_the_way_out_is_ignored(root: Path) -> None:
    """A closed terminal may send SIGHUP twice. The watcher stops at the first; a second
    arriving while the interpreter finalizes (here held there by strace, at its exit)
    must not end the stopped process with 129 (Python puts the default action back)."""
    log = root.parent / "watch.log"
    with log.open("wb") as sink:
        tracer = subprocess.Popen(
            [
                *(STRACE, "-f", "-qq", "-o", "/dev/null"),
                *("-e", "inject=exit_group:delay_enter=2000000"),
                *(sys.executable, "-m", "ingester", "--root", str(root), "watch"),
            ],
            stderr=sink,
            env=cli_env(),
            start_new_session=True,  # strace and the watcher, ended together (kill_group)
        )
    try:
        wait_for(lambda: "watching " in log.read_text(), 20, "the watcher to start")
        pid = traced_program(tracer.pid)
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: "stopped:" in log.read_text(), 10, "the stop line")

        def hup_ignored() -> bool:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:  # reaped by strace: it ended without the second HUP
                raise AssertionError(
                    f"the watcher (pid {pid}) ended before it ignored SIGHUP:\n{log.read_text()}"
                ) from None
            found = re.search(r"SigIgn:\s*([0-9a-f]+)", status)
            assert found is not None, status
            return bool(int(found.group(1), 16) & (1 << (signal.SIGHUP - 1)))

        wait_for(hup_ignored, 10, "SIGHUP ignored on the way out")
        os.kill(pid, signal.SIGHUP)
        assert tracer.wait(timeout=20) == 0, log.read_text()
    finally:
        kill_group(tracer)


def test_burst_does_not_clean_up_per_drop(root: Path) -> None:
    count = 2000
    # -v: a cleanup that deletes nothing is logged at debug only.
    with WatchProcess(root, global_args=("-v",)) as w:
        # The whole burst arrives while the watcher is stopped, so it finds all of it
        # waiting at once however slowly the drops were written (a loaded machine).
        os.kill(w.proc.pid, signal.SIGSTOP)
        try:
            for i in range(count):
                drop(spool_of(root), f"b{i:05d}.json", payload(i))
        finally:
            os.kill(w.proc.pid, signal.SIGCONT)
        wait_for(lambda: len(versions(root)) == count, timeout=120, what="burst stored")
        wait_for(lambda: latest_bytes(root) == payload(count - 1), what="latest on the last")
        w.wait_log("retained 2000", timeout=60)
        cleanups = w.log.count("cleanup deleted")
    assert cleanups < count / 10, f"{cleanups} cleanups for {count} drops"
    meta = json.loads((root / "console-usage-history" / "_metadata.json").read_bytes())
    assert meta["versionCount"] == count


def test_submit_drops_atomically_and_refuses_invalid(root: Path) -> None:
    sample = VALID_SAMPLES[0]
    result = run_cli(root, "submit", str(sample))
    assert result.returncode == 0, result.stderr
    dropped = Path(result.stdout.strip())
    assert dropped.parent == spool_of(root) and dropped.read_bytes() == sample.read_bytes()
    assert not list((spool_of(root) / "tmp").iterdir())

    piped = run_cli(root, "submit", "-", "--name", "piped.json", input=payload(3))
    assert piped.returncode == 0, piped.stderr
    assert (spool_of(root) / "piped.json").read_bytes() == payload(3)

    bad = run_cli(root, "submit", "-", input=b'{"lastUpdated": "2026-11-27T14:05:00Z"}')
    assert bad.returncode == 1 and "currentSession" in bad.stderr
    assert len(list(spool_of(root).glob("*.json"))) == 2

    clash = run_cli(root, "submit", "-", "--name", "piped.json", input=payload(4))
    assert clash.returncode == 1 and "still waiting" in clash.stderr
    assert (spool_of(root) / "piped.json").read_bytes() == payload(3)

    badname = run_cli(root, "submit", "-", "--name", "../x.json", input=payload(4))
    assert badname.returncode == 2

    with WatchProcess(root):
        wait_for(lambda: len(versions(root)) == 2, what="submitted drops stored")


def test_a_drop_with_very_many_problems_is_rejected_in_one_short_line(root: Path) -> None:
    """A 1 MiB drop with some 130,000 problems: the watcher's ``rejected`` line, the
    reason file and ``submit``'s refusal each name the first problems and count the
    rest, a few KiB in all (one journal entry), and the next drop is stored."""
    spool = spool_of(root)
    refused = run_cli(root, "submit", "-", input=many_problems())
    assert refused.returncode == 1
    [line] = refused.stderr.splitlines()
    assert len(line) < 16 * 1024 and line.endswith("more problems"), line[-200:]
    with WatchProcess(root) as watcher:
        drop(spool, "many.json", many_problems())
        watcher.wait_log("rejected many.json", timeout=60)
        drop(spool, "after.json", payload(1))
        watcher.wait_log("ingested after.json", timeout=30)
        assert max(len(line) for line in watcher.log.splitlines()) < 16 * 1024
    reason = spool / "rejected" / "many.json.reason.json"
    assert reason.stat().st_size < 16 * 1024
    record = json.loads(reason.read_bytes())
    assert record["errors"][-1]["type"] == "more_problems"
    assert record["errors"][-1]["count"] + len(record["errors"]) - 1 > 100_000
    assert (spool / "rejected" / "many.json").read_bytes() == many_problems()


def test_polling_observer_takes_renamed_and_in_place_drops(root: Path) -> None:
    with WatchProcess(root, "--polling", "--settle", "0.3") as w:
        drop(spool_of(root), "renamed.json", payload(1))
        (spool_of(root) / "inplace.json").write_bytes(payload(2))
        wait_for(lambda: len(versions(root)) == 2, what="both drops stored")
        assert "polling" in w.log
    assert Counter(stored_contents(root)) == Counter([payload(1), payload(2)])


def test_rescan_finds_a_drop_no_event_announced(root: Path) -> None:
    spool = spool_of(root)
    with WatchProcess(root, "--rescan-interval", "0.5", "--settle", "0.1") as w:
        # A hard link makes no close-write and no moved-to event; only IN_CREATE.
        # Link then unlink the source: by the time the watcher looks, nlink may be 1.
        src = spool / "tmp" / "linked"
        src.write_bytes(payload(7))
        os.link(src, spool / "linked.json")
        src.unlink()
        wait_for(lambda: len(versions(root)) == 1, what="linked drop stored")
        assert w.proc.poll() is None


@pytest.mark.skipif(not IS_ROOT, reason="lowering fs.inotify.max_queued_events needs root")
def test_inotify_overflow_triggers_a_rescan(root: Path) -> None:
    if not os.access(INOTIFY_QUEUE_KNOB, os.W_OK):
        pytest.skip(f"cannot change {INOTIFY_QUEUE_KNOB}")
    # The limit is taken when the watcher's inotify is made; restored right after.
    with inotify_queue_limit(16):
        w = WatchProcess(root, "--rescan-interval", "3600").wait_started()
    try:
        os.kill(w.proc.pid, signal.SIGSTOP)
        for i in range(100):
            drop(spool_of(root), f"o{i:03d}.json", payload(i))
        os.kill(w.proc.pid, signal.SIGCONT)
        w.wait_log("inotify queue overflow")
        wait_for(lambda: len(versions(root)) == 100, what="all drops despite the overflow")
        assert w.stop() == 0
    finally:
        w.kill()
    # The documented line, one per overflow, and nothing else at WARNING or above.
    lines = w.log.splitlines()
    rescans = [
        line for line in lines if "WARNING rescanning the spool: inotify queue overflow" in line
    ]
    assert rescans, w.log
    others = [line for line in lines if re.search(r" (WARNING|ERROR|CRITICAL) ", line)]
    assert others == rescans, w.log
    assert "Traceback" not in w.log


def _removed(folder: Path) -> bool:
    """One try at removing ``folder`` from under a running watcher: False when rmtree
    found it not empty (the watcher made something in it meanwhile: a file in the
    history, the spool's lock file locked again), for ``wait_for`` to try again."""
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            raise
        return False
    return True


def test_observer_restarted_when_the_spool_is_removed(root: Path) -> None:
    with WatchProcess(root) as w:
        wait_for(lambda: _removed(spool_of(root)), what="the spool removed")
        w.wait_log("restarting")
        wait_for(lambda: (spool_of(root) / ".claimed").is_dir(), what="spool recreated")
        drop(spool_of(root), "after.json", payload(1))
        wait_for(lambda: latest_bytes(root) == payload(1), what="drop after restart")


def test_a_spool_replaced_by_a_link_to_the_history_ends_the_watcher_in_one_line(
    root: Path,
) -> None:
    """What stands at the spool's path after it was replaced is checked as at start: a
    link to the history is refused, and none of the spool's folders is made in there."""
    spool = spool_of(root)
    history = root / "console-usage-history"
    with WatchProcess(root) as w:
        w.wait_log("watching")
        # Replaced in one step, as the watcher sees it: woken by the move, a watcher
        # looking before the link is made rightly makes the spool anew there, and the
        # link then cannot be made (EEXIST).
        with w.held():
            spool.rename(root / "spool.old")
            spool.symlink_to(history)
        wait_for(lambda: w.proc.poll() is not None, what="the watcher to exit")
        code = w.stop()
    assert code == 1, w.log
    assert w.log.rstrip().endswith(
        f"ERROR cannot watch {spool} any more: the spool {spool} (which leads to "
        f"{history}) and the history {history} overlap"
    ), w.log
    assert sorted(os.listdir(history)) == [".lock", "_metadata.json"]
    assert "Traceback" not in w.log


def test_a_latest_link_kept_by_the_watcher_of_another_history_is_refused(
    root: Path, tmp_path: Path
) -> None:
    """Two histories given one --latest-path: the second watcher would point the link at
    its own versions, and the link would flip between the two. It is refused at start,
    naming the other history and its watcher, and the link is left as it was."""
    other = tmp_path / "other"
    other.mkdir()
    latest = tmp_path / "shared-latest.json"
    shared = ("--latest-path", str(latest))
    with WatchProcess(root, global_args=shared) as w:
        drop(spool_of(root), "first.json", payload(1))
        wait_for(lambda: latest.exists() and latest.read_bytes() == payload(1), what="the link")
        target = os.readlink(latest)
        done = run_cli(other, *shared, "watch", "--once")
        assert done.returncode == 1, done.stderr
        assert done.stderr.rstrip().endswith(
            f"ERROR cannot start: the latest link {latest} points into the history "
            f"{root / 'console-usage-history'}, whose watcher (pid {w.proc.pid}) would point "
            "it back at its own versions; give each history its own --latest-path (if that "
            "watcher keeps another link now, remove this one)"
        ), done.stderr
        assert os.readlink(latest) == target
        assert not (other / "console-usage-history").exists()
    # No watcher holds that history now; a command holding its lock for a moment (here
    # an ingest's note) keeps no link: the link is taken over.
    with HistoryLock(root / "console-usage-history" / ".lock", "ingest"):
        assert run_cli(other, *shared, "watch", "--once").returncode == 0
    assert not latest.exists()  # taken over: its history has no version to point at


def test_a_second_history_given_the_latest_link_of_a_running_watcher_is_refused_before_it_exists(
    root: Path, tmp_path: Path
) -> None:
    """Two histories given one --latest-path, the first watcher started on an empty
    history (so the link does not exist yet, and points nowhere): the second watcher is
    refused at start all the same, naming the first's watcher, because the lock is tied
    to the latest link's path. The first keeps the link; a rescan of its own never
    finds it gone."""
    other = tmp_path / "other"
    other.mkdir()
    latest = tmp_path / "shared-latest.json"
    shared = ("--latest-path", str(latest))
    with WatchProcess(root, "--rescan-interval", "0.5", global_args=shared) as w:
        assert not latest.exists()
        done = run_cli(other, *shared, "watch")
        assert done.returncode == 1, done.stderr
        assert done.stderr.rstrip().endswith(link_kept_by(latest, w.proc.pid)), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        drop(spool_of(root), "first.json", payload(1))
        wait_for(lambda: latest.exists() and latest.read_bytes() == payload(1), what="the link")
        assert w.stop() == 0, w.log
    assert latest.read_bytes() == payload(1)
    assert "latest link repaired" not in w.log, w.log


def link_kept_by(latest: Path, pid: int) -> str:
    """The line that refuses a second history's watcher the latest link ``latest`` that
    the watcher ``pid`` keeps (its lock file beside the link)."""
    lock = latest.parent / f".{latest.name}.lock"
    return (
        f"ERROR cannot start: the latest link {latest} is kept by pid {pid} watch, "
        f"for another history ({lock}); give each history its own --latest-path"
    )


def test_a_latest_link_whose_folder_is_made_by_the_first_watcher_is_locked_by_it(
    root: Path, tmp_path: Path
) -> None:
    """The shared latest link's folder does not exist yet when the first watcher starts
    (on an empty history): that watcher makes the folder, and holds the link's lock in
    it for its whole run, so a second history's watcher given the same --latest-path is
    refused at start as before, not let in because the lock file could not be made a
    moment earlier."""
    other = tmp_path / "other"
    other.mkdir()
    latest = tmp_path / "links" / "shared-latest.json"
    shared = ("--latest-path", str(latest))
    with WatchProcess(root, global_args=shared) as w:
        wait_for(latest.parent.is_dir, what="the latest link's folder")
        done = run_cli(other, *shared, "watch", timeout=30)
        assert done.returncode == 1, done.stderr
        assert done.stderr.rstrip().endswith(link_kept_by(latest, w.proc.pid)), done.stderr
        assert w.stop() == 0, w.log


def test_a_spool_moved_away_gives_back_the_drops_the_watcher_had_taken(root: Path) -> None:
    """A drop the watcher took (its claim in .claimed) and had not stored when the spool
    folder was moved away is the watcher's to finish: stored once, from where it went,
    and nothing left claimed there; the drops not taken yet are named, not taken."""
    spool = spool_of(root)
    moved = root / "spool.old"
    with WatchProcess(root) as w:
        drop(spool, "first.json", payload(1))
        wait_for(lambda: latest_bytes(root) == payload(1), what="the first drop stored")
        # Its claim is released just after it is visible: a claim still there when the
        # watcher is stopped would be brought back too.
        claimed = spool / ".claimed"
        wait_for(lambda: not any(claimed.iterdir()), what="the first drop's claim released")
        # Stopped, so the move and the claim land between two of its steps, as a move in
        # the middle of a group does: the claim is then in the folder moved away.
        w.proc.send_signal(signal.SIGSTOP)
        try:
            (spool / ".claimed" / "2026-12-05T10-00-00-0123abcd.json").write_bytes(payload(2))
            spool.rename(moved)
            (moved / "late.json").write_bytes(payload(3))  # not taken: the operator's
        finally:
            w.proc.send_signal(signal.SIGCONT)
        w.wait_log("brought 1 taken drop(s) back")
        wait_for(lambda: payload(2) in stored_contents(root), what="the taken drop stored")
        assert list((moved / ".claimed").iterdir()) == []
        assert f"from {moved}/.claimed into {spool}/.claimed" in w.log
        assert f"1 drop(s) wait in {moved}, which is no longer the spool" in w.log
        drop(spool, "after.json", payload(4))
        wait_for(lambda: payload(4) in stored_contents(root), what="a drop after the move")
    assert stored_contents(root) == Counter([payload(1), payload(2), payload(4)])
    assert (moved / "late.json").read_bytes() == payload(3)


def _burst(spool: Path, items: list[tuple[str, bytes]], done: threading.Event) -> None:
    try:
        for name, data in items:
            drop(spool, name, data)
    finally:
        done.set()


@pytest.mark.parametrize("seed", range(5))
def test_kill_9_mid_burst_loses_nothing_and_stores_nothing_twice(root: Path, seed: int) -> None:
    """SIGKILL the real watcher mid-burst, several times, then restart and compare."""
    rng = random.Random(seed)
    spool = spool_of(root)
    dropped: list[bytes] = []
    for round_ in range(3):
        items = [
            (f"r{round_}-{i:04d}.json", payload(seed * 100_000 + round_ * 1000 + i))
            for i in range(rng.randint(100, 300))
        ]
        dropped += [data for _, data in items]
        with WatchProcess(root) as w:
            done = threading.Event()
            writer = threading.Thread(target=_burst, args=(spool, items, done))
            writer.start()
            target = len(versions(root)) + rng.randint(1, len(items) // 2)
            wait_for(lambda t=target, d=done: len(versions(root)) >= t or d.is_set(), timeout=30)
            w.kill()
            writer.join()
    final = run_cli(root, "watch", "--once", timeout=60)
    assert final.returncode == 0, final.stderr
    assert stored_contents(root) == Counter(dropped)
    assert not list(spool.glob("*.json")) and not list((spool / ".claimed").iterdir())
    history = root / "console-usage-history"
    assert not [p for p in history.iterdir() if p.name.startswith(".tmp-")]
    for version in versions(root):
        judge_payload(version.read_bytes())
    meta = json.loads((history / "_metadata.json").read_bytes())
    assert meta["versionCount"] == len(dropped)
    newest = versions(root)[-1]
    assert os.readlink(root / "console-usage-synced.json").endswith(newest.name)
    check = run_cli(root, "verify")
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.skipif(not IS_ROOT, reason="a drop of another user needs chown (root)")
def test_a_drop_of_another_user_is_copied_and_the_version_is_ours(root: Path) -> None:
    spool = spool_of(root)
    (spool / "tmp").mkdir(parents=True)
    theirs = spool / "tmp" / ".theirs.part"
    theirs.write_bytes(payload(1))
    os.chown(theirs, 65534, 65534)
    os.rename(theirs, spool / "theirs.json")
    mine = spool / "mine.json"
    mine.write_bytes(payload(2))
    os.utime(mine, (1_600_000_000, 1_600_000_000))
    result = run_cli(root, "watch", "--once")
    assert result.returncode == 0, result.stderr
    by_content = {p.read_bytes(): p.stat() for p in versions(root)}
    copied, linked = by_content[payload(1)], by_content[payload(2)]
    assert copied.st_uid == os.geteuid()  # a copy: the scraper cannot write to it
    assert stat.S_IMODE(copied.st_mode) & 0o222 == 0
    assert stat.S_IMODE(linked.st_mode) & 0o222 == 0  # its own inode, sealed read-only


def test_removing_the_history_under_a_watcher_stops_it(root: Path) -> None:
    with WatchProcess(root) as w:
        history = root / "console-usage-history"
        wait_for(lambda: _removed(history), what="the history removed")
        try:
            code = w.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the watcher ran on without its history; its log:\n{w.log}")
        assert code != 0
        assert "was removed or replaced" in w.log
