"""The spool's folders and entries: made again when removed, odd entries never opened."""

from __future__ import annotations

import grp
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import IS_ROOT, cli_env, run_cli, wait_for
from support.capabilities import (
    AS_OTHER,
    OTHER_UID,
    STRACE,
    needs_strace_root,
    other_user_problem,
    others_folder,
    quarantine_fsyncs,
    run_as_other,
)
from support.serveproc import ServeProcess
from support.watchproc import (
    WatchProcess,
    drop,
    latest_bytes,
    payload,
    stored_contents,
    versions,
)


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


def test_a_newline_in_a_drop_name_cannot_forge_a_log_line(root: Path) -> None:
    spool = root / "spool"
    spool.mkdir()
    (spool / "evil\n2026-11-29 05:00:00,000 ERROR fake.json").write_bytes(b"{")
    result = run_cli(root, "watch", "--once")
    assert result.returncode == 0, result.stderr
    forged = "2026-11-29 05:00:00,000 ERROR"
    assert not [line for line in result.stderr.splitlines() if line.startswith(forged)]
    assert "evil\\n2026" in result.stderr


def test_init_refuses_a_claim_folder_the_watcher_would_refuse(root: Path, tmp_path: Path) -> None:
    # Saying all is well would leave the service to refuse to start.
    (root / "spool").mkdir()
    (root / "spool" / ".claimed").symlink_to(tmp_path)
    done = run_cli(root, "init")
    assert done.returncode == 1, done.stdout
    assert done.stderr == (
        f"error: cannot use the claim folder {root / 'spool' / '.claimed'}: unsafe: it is a "
        "symlink, not a folder [EPERM]\n"
    )
    (root / "spool" / ".claimed").unlink()
    assert run_cli(root, "init").returncode == 0


def test_a_claim_folder_others_may_write_in_is_refused(root: Path) -> None:
    # Anyone who may write in .claimed/ could remove a claim in flight, or plant one
    # that recovery would store as a version.
    assert run_cli(root, "watch", "--once").returncode == 0  # makes .claimed/
    claimed = root / "spool" / ".claimed"
    for mode in (0o777, 0o770, 0o702):
        claimed.chmod(mode)
        for command in (("watch", "--once"), ("init",)):
            done = run_cli(root, *command)
            assert done.returncode == 1, (command, done.stderr)
            assert (
                done.stderr.strip()
                .splitlines()[-1]
                .endswith(
                    f"cannot use the claim folder {claimed}: unsafe: others may write in it "
                    f"(mode {mode:04o}); chmod 700 it and restart [EPERM]"
                )
            ), done.stderr
            assert "Traceback" not in done.stderr
    claimed.chmod(0o700)
    assert run_cli(root, "watch", "--once").returncode == 0


def test_a_tab_in_a_drop_name_is_written_as_one(root: Path) -> None:
    # Written as it is, a tab would read as spaces: the name in the log would not be
    # the file's.
    spool = root / "spool"
    spool.mkdir()
    (spool / "tab\tx.json").write_bytes(b"{")
    result = run_cli(root, "watch", "--once")
    assert result.returncode == 0, result.stderr
    assert "rejected tab\\tx.json: " in result.stderr, result.stderr
    assert "\t" not in result.stderr


@needs_strace_root
def test_temp_files_of_killed_writers_are_swept_once_an_hour_old(
    root: Path, tmp_path: Path
) -> None:
    """A submit killed before its drop is published leaves its temp file in spool/tmp.

    Nothing was acknowledged for it, so nothing is lost by removing it; the watcher
    removes ours (``.submit-*``, ``.tmp-w-*``) once over an hour old, never a writer's
    own, never a fresh one (its writer may be at work).
    """
    source = tmp_path / "snapshot.json"
    source.write_bytes(payload(1))
    tmp = root / "spool" / "tmp"
    killed_at = {"fsync": ".tmp-w-", "renameat2": ".submit-"}
    for call, prefix in killed_at.items():
        before = set(os.listdir(tmp)) if tmp.is_dir() else set()
        inject = ("-f", "-qq", "-o", "/dev/null", "-e", f"inject={call}:signal=SIGKILL:when=1")
        done = run_cli(root, "submit", str(source), wrapper=(STRACE, *inject))
        assert done.returncode != 0, done.stdout
        left = set(os.listdir(tmp)) - before
        assert [n[: len(prefix)] for n in left] == [prefix], left
    assert not [p for p in (root / "spool").iterdir() if p.suffix == ".json"]
    leftovers = sorted(os.listdir(tmp))
    hours_ago = time.time() - 2 * 3600
    for name in leftovers:
        os.utime(tmp / name, (hours_ago, hours_ago))
    fresh = tmp / ".submit-0123456789abcdef"  # a writer at work now
    fresh.write_bytes(payload(2))
    foreign = tmp / "scraper.json.part"  # the scraper's own: never ours to remove
    foreign.write_bytes(payload(3))
    os.utime(foreign, (hours_ago, hours_ago))
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp)) == sorted([fresh.name, foreign.name])
    assert (
        f"removed 2 temp file(s) that writers left in {tmp} "
        "(over an hour old: their writers stopped before publishing them)"
    ) in done.stderr


@needs_strace_root
def test_a_submit_whose_spool_fsync_fails_takes_its_drop_back(root: Path, tmp_path: Path) -> None:
    """The drop was published, then the spool's fsync failed: the writer is told it failed,
    and retries. Left in the spool, the drop would then be stored twice."""
    source = tmp_path / "snapshot.json"
    source.write_bytes(payload(1))
    assert run_cli(root, "init").returncode == 0
    # The third fsync of a submit is the spool folder's, after the drop's rename into it.
    inject = ("-f", "-qq", "-o", "/dev/null", "-e", "inject=fsync:error=EIO:when=3")
    failed = run_cli(root, "submit", str(source), wrapper=(STRACE, *inject))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert failed.stderr == (
        f"error: cannot fsync folder {root / 'spool'}: Input/output error [EIO]\n"
    ), failed.stderr
    assert not [p for p in (root / "spool").iterdir() if p.suffix == ".json"]
    assert run_cli(root, "submit", str(source)).returncode == 0  # the writer's retry
    assert run_cli(root, "watch", "--once").returncode == 0
    assert len(list((root / "console-usage-history").glob("2*.json"))) == 1
    # The fourth is the scratch folder's, after the spool's went through: the drop is
    # durable, so it is accepted (taken back, a retry would never come).
    inject = ("-f", "-qq", "-o", "/dev/null", "-e", "inject=fsync:error=EIO:when=4")
    done = run_cli(root, "submit", str(source), wrapper=(STRACE, *inject))
    assert done.returncode == 0, done.stderr
    assert run_cli(root, "watch", "--once").returncode == 0
    assert len(list((root / "console-usage-history").glob("2*.json"))) == 2


@needs_strace_root
def test_a_drop_set_aside_whose_folder_fsync_fails_is_told_set_aside(
    root: Path, tmp_path: Path
) -> None:
    """The move into rejected/ is made, then that folder's fsync fails: the drop is
    there, so it is told set aside (with an ERROR that a crash may undo it), never
    "retrying" a move that nothing is left to make, and it counts as rejected."""
    assert run_cli(root, "init").returncode == 0
    spool, rejected = root / "spool", root / "spool" / "rejected"
    trace = tmp_path / "fsync.log"
    of_rejected = quarantine_fsyncs(root, trace, b'{"x": 1}')
    assert len(of_rejected) == 2, trace.read_text()  # after the reason file, after the move
    (spool / "bad.json").write_bytes(b'{"x": 1}')
    inject = ("-f", "-qq", "-o", "/dev/null", "-e", f"inject=fsync:error=EIO:when={of_rejected[1]}")
    done = run_cli(root, "watch", "--once", wrapper=(STRACE, *inject))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert (rejected / "bad.json").exists() and not (spool / "bad.json").exists()
    assert (
        "ERROR bad.json is set aside as bad.json, but a crash may put it back in the spool: "
        f"cannot fsync folder {rejected}: Input/output error [EIO]"
    ) in done.stderr, done.stderr
    assert "retrying" not in done.stderr, done.stderr
    assert "stopped: 0 ingested, 1 rejected, 0 waiting" in done.stderr, done.stderr


def _openat_index(log: Path, path: Path) -> int:
    """The 1-based place, among the traced ``openat`` calls, of the last one of ``path``
    as a folder (``O_DIRECTORY``): what ``inject=openat:when=N`` needs for it."""
    calls = [line for line in log.read_text().splitlines() if " openat(" in line]
    marks = [
        n for n, line in enumerate(calls, 1) if f'"{path}", ' in line and "O_DIRECTORY" in line
    ]
    assert marks, f"no openat of {path} traced"
    return marks[-1]


@needs_strace_root
def test_a_submit_that_cannot_open_the_spool_folder_leaves_nothing_in_it(
    root: Path, tmp_path: Path
) -> None:
    """Out of file descriptors (EMFILE) when the spool folder is opened for its fsync: the
    writer is told it failed, so nothing of it may be left to be stored (its retry would
    be stored twice). The folder is opened before the drop is published."""
    source = tmp_path / "snapshot.json"
    source.write_bytes(payload(1))
    assert run_cli(root, "init").returncode == 0
    spool = root / "spool"
    trace = tmp_path / "openat.log"
    for n in range(2):  # the second run's calls: no module compiled any more
        (spool / f"warm-{n}.json").unlink(missing_ok=True)
        traced = run_cli(
            root,
            "submit",
            "--name",
            f"warm-{n}.json",
            str(source),
            wrapper=(STRACE, "-f", "-qq", "-e", "trace=openat", "-o", str(trace)),
        )
        assert traced.returncode == 0, traced.stderr
    for leftover in spool.glob("warm-*.json"):
        leftover.unlink()
    when = _openat_index(trace, spool)
    inject = ("-f", "-qq", "-o", "/dev/null", "-e", f"inject=openat:error=EMFILE:when={when}")
    failed = run_cli(
        root, "submit", "--name", "warm-1.json", str(source), wrapper=(STRACE, *inject)
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert failed.stderr == (
        f"error: cannot open folder {spool}: Too many open files [EMFILE]\n"
    ), failed.stderr
    assert not [p for p in spool.iterdir() if p.suffix == ".json"]
    assert not list((spool / "tmp").iterdir())  # the staged copy is removed too
    assert run_cli(root, "submit", str(source)).returncode == 0  # the writer's retry
    assert run_cli(root, "watch", "--once").returncode == 0
    assert len(list((root / "console-usage-history").glob("2*.json"))) == 1


WHY_NOT = other_user_problem()


@pytest.fixture
def service_root() -> Iterator[Path]:
    """A root owned by uid OTHER_UID, its spool too (``spool/tmp`` is root's)."""
    with others_folder("ingester-sweep-") as state:
        (state / "spool" / "tmp").mkdir(parents=True)
        os.chown(state / "spool", OTHER_UID, OTHER_UID)
        yield state


def _old_temp(folder: Path, name: str, uid: int) -> Path:
    path = folder / name
    path.write_bytes(payload(0))
    os.chown(path, uid, uid)
    hours_ago = time.time() - 2 * 3600
    os.utime(path, (hours_ago, hours_ago))
    return path


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_the_sweep_goes_on_past_a_temp_file_it_may_not_remove(service_root: Path) -> None:
    # A sticky tmp/ owned by root: the service may remove only its own files there.
    tmp = service_root / "spool" / "tmp"
    tmp.chmod(0o1777)
    theirs = [_old_temp(tmp, f".submit-{n}", 0) for n in ("a", "c")]
    ours = [_old_temp(tmp, f".submit-{n}", OTHER_UID) for n in ("b", "d")]
    done = run_as_other(service_root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(os.listdir(tmp)) == [p.name for p in theirs]
    assert f"removed 2 temp file(s) that writers left in {tmp} " in done.stderr
    warned = [ln for ln in done.stderr.splitlines() if "cannot remove temp files" in ln]
    assert len(warned) == 1, done.stderr
    assert warned[0].endswith("Operation not permitted [EPERM] (and 1 more)"), warned[0]
    assert not [p for p in ours if p.exists()]


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_a_tmp_folder_it_may_not_search_is_a_warning_not_a_stop(service_root: Path) -> None:
    # Listed but not searchable: each entry's stat fails (EACCES).
    tmp = service_root / "spool" / "tmp"
    _old_temp(tmp, ".submit-q", OTHER_UID)
    tmp.chmod(0o774)
    drop(service_root / "spool", "a.json", payload(5))
    os.chown(service_root / "spool" / "a.json", OTHER_UID, OTHER_UID)
    done = run_as_other(service_root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    assert "ingested a.json" in done.stderr
    warned = [ln for ln in done.stderr.splitlines() if "cannot remove temp files" in ln]
    assert len(warned) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"cannot look at {tmp / '.submit-q'}: Permission denied [EACCES]" in warned[0]


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_a_claim_back_in_a_spool_it_cannot_list_is_left_not_stored(service_root: Path) -> None:
    # A crash while a failed drop was put back leaves its claim as a second name of the
    # drop in the spool. Whether it is one cannot be told while the spool cannot be
    # listed: storing the claim then would store the drop a second time later.
    spool = service_root / "spool"
    back = drop(spool, "x.json", payload(6), owner=(OTHER_UID, OTHER_UID))
    claimed = spool / ".claimed"
    claimed.mkdir()
    os.chown(claimed, OTHER_UID, OTHER_UID)
    os.link(back, claimed / "2026-12-05T06-00-00-00000001.json")
    spool.chmod(0o333)  # entered, not listed
    try:
        done = run_as_other(service_root, "watch", "--once")
    finally:
        spool.chmod(0o755)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "the spool could not be scanned: drops it holds are left for the next start" in (
        done.stderr
    )
    assert (
        f"1 claimed drop(s) could not be finished (in {claimed}): left for the next start"
    ) in done.stderr
    assert (
        "stopped: 0 ingested, 0 rejected, the drops waiting cannot be counted (cannot list "
        in (
            done.stderr.splitlines()[-1]  # the last line: what was left is said before it
        )
    )
    assert versions(service_root) == []
    again = run_as_other(service_root, "watch", "--once")
    assert again.returncode == 0, again.stderr
    assert (
        "x.json is the drop claimed as 2026-12-05T06-00-00-00000001.json, put back in the "
        "spool by a step that stopped: taken from the spool, stored from its claim"
    ) in again.stderr
    assert [p.read_bytes() for p in versions(service_root)] == [payload(6)]
    assert os.listdir(claimed) == []


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_status_says_it_cannot_count_claims_it_cannot_list(service_root: Path) -> None:
    # .claimed/ is the service's alone (0700): a user who may list the spool but not
    # it must be told the drops in flight are not counted, not that there are none.
    assert run_as_other(service_root, "init").returncode == 0
    spool = service_root / "spool"
    claimed = spool / ".claimed"
    claimed.mkdir(mode=0o700)
    os.chown(claimed, OTHER_UID, OTHER_UID)
    (claimed / "2026-12-05T06-00-00-00000001.json").write_bytes(payload(7))
    drop(spool, "a.json", payload(8))
    command = [sys.executable, "-m", "ingester", "--root", str(service_root), "status"]
    stranger = ["setpriv", f"--reuid={OTHER_UID + 1}", f"--regid={OTHER_UID + 1}"]
    done = subprocess.run(
        [*stranger, "--clear-groups", *command, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        cwd="/",
        check=False,
    )
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout)["spool"]
    assert state["claimedProblem"] == f"{claimed} unreadable (Permission denied)"
    text = subprocess.run(
        [*stranger, "--clear-groups", *command],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        cwd="/",
        check=False,
    ).stdout
    assert f"1 waiting (in flight not counted: {claimed} unreadable (Permission denied))" in text, (
        text
    )
    owner = json.loads(run_as_other(service_root, "status", "--json").stdout)["spool"]
    assert (owner["claimed"], owner["claimedProblem"]) == (1, None)


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_metrics_leave_out_a_quarantine_they_cannot_count(service_root: Path) -> None:
    assert run_as_other(service_root, "init").returncode == 0
    rejected = service_root / "spool" / "rejected"
    rejected.mkdir(mode=0o700, exist_ok=True)
    rejected.chmod(0o700)
    os.chown(rejected, OTHER_UID, OTHER_UID)
    (rejected / "bad.json").write_bytes(b"{")
    stranger = ("setpriv", f"--reuid={OTHER_UID + 1}", f"--regid={OTHER_UID + 1}")
    with ServeProcess(service_root, wrapper=(*stranger, "--clear-groups")) as server:
        metrics = server.get("/metrics").text
        assert "ingester_spool_backlog " in metrics  # the spool itself can be listed
        assert "ingester_rejected_drops" not in metrics  # not a false 0
        assert server.stop() == 0
    with ServeProcess(service_root, wrapper=tuple(AS_OTHER)) as owner:
        assert "ingester_rejected_drops 1.0" in owner.get("/metrics").text
        assert owner.stop() == 0


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_a_writer_not_in_the_services_group_is_told_the_folder_and_the_group() -> None:
    """A scraper's user not (yet) in the service's group: the root (0750) keeps it out of
    the spool that is there. It is told which folder it may not enter and which group to
    join, not that the spool, which exists, cannot be created; nothing is dropped."""
    group = grp.getgrgid(1)  # a group the other user is not in (Debian's "daemon")
    with others_folder("ingester-group-") as state:
        source = state.parent / "snapshot.json"  # beside, where every user may read it
        source.write_bytes(payload(1))
        source.chmod(0o644)
        os.chown(state, 0, group.gr_gid)
        state.chmod(0o750)
        for folder in (state / "spool", state / "spool" / "tmp"):
            folder.mkdir()
            os.chown(folder, 0, group.gr_gid)
            folder.chmod(0o3770)
        refused = run_as_other(state, "submit", str(source))
        assert refused.returncode == 1, refused.stderr
        assert refused.stderr == (
            f"error: cannot enter {state}: Permission denied; a writer of drops must be in "
            f"its group, {group.gr_name} (a group joined counts from the next login) [EACCES]\n"
        )
        assert os.listdir(state / "spool" / "tmp") == []
        assert os.listdir(state / "spool") == ["tmp"]
