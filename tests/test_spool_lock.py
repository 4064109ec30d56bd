"""One watcher per spool, as well as one per history.

A watcher names its claims after its own history's versions, and recovery stores every
claim its history lacks. A second watcher on the same spool with another history would
therefore store what the first stores too (and, after a ``kill -9``, a claim twice in
one history). So a watcher also holds an flock on ``<spool>/.lock``; a second one on
that spool is refused at start, whatever its history. And ``serve`` counts a watcher as
running only when the same process holds both its history and its spool.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
from pathlib import Path

import httpx
import pytest
from support import run_cli, wait_for
from support.capabilities import (
    AS_OTHER,
    OTHER_UID,
    STRACE,
    needs_strace_root,
    other_user_problem,
    others_folder,
    traced_program,
)
from support.serveproc import KEY, ServeProcess, fresh_payload
from support.watchproc import WatchProcess, drop, payload, versions

from ingester.history.store import HistoryStore
from ingester.intake.locks import WatcherLocks
from ingester.intake.spool import Spool

API = "/api/claude/console-usage"
HEADERS = {"Content-Type": "application/json", "X-API-Key": KEY}


def elsewhere(tmp_path: Path) -> tuple[str, ...]:
    """Global options for another history (and latest link) beside ``root``'s."""
    return (
        "--history-dir",
        str(tmp_path / "other" / "history"),
        "--latest-path",
        str(tmp_path / "other" / "latest.json"),
    )


def test_a_second_watcher_on_the_spool_is_refused_whatever_its_history(
    root: Path, tmp_path: Path
) -> None:
    with WatchProcess(root) as first:
        pid = first.proc.pid
        # Refused at once; a watcher let in would run until the timeout.
        second = run_cli(root, *elsewhere(tmp_path), "watch", timeout=30)
        assert second.returncode == 1, second.stderr
        errors = [line for line in second.stderr.splitlines() if " ERROR " in line]
        assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr
        assert errors[0].endswith(
            f"another watcher reads the spool: the spool is locked by pid {pid} watch "
            f"({root / 'spool' / '.lock'})"
        )
        once = run_cli(root, *elsewhere(tmp_path), "watch", "--once", timeout=30)
        assert once.returncode == 1 and "the spool is locked by" in once.stderr
        assert not (tmp_path / "other").exists()  # refused before it made anything
        drop(root / "spool", "a.json", payload(1))
        first.wait_log("ingested a.json")
        assert first.stop() == 0
    assert not list((tmp_path / "other" / "history").glob("*.json"))
    assert len(versions(root)) == 1


def test_serve_watch_is_refused_beside_a_watcher_of_the_spool(root: Path, tmp_path: Path) -> None:
    with WatchProcess(root) as first:
        pid = first.proc.pid
        done = run_cli(
            root, *elsewhere(tmp_path), "serve", "--watch", "--listen", "127.0.0.1:0", timeout=30
        )
        assert first.stop() == 0
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        f"error: the spool is locked by pid {pid} watch ({root / 'spool' / '.lock'}): "
        "one watcher per spool"
    )


def test_a_watcher_of_another_spool_does_not_count_for_serve(root: Path, tmp_path: Path) -> None:
    other_spool = tmp_path / "other-spool"
    with (
        WatchProcess(root, global_args=("--spool-dir", str(other_spool))) as watcher,
        ServeProcess(root, "--require-watcher") as server,
    ):
        server.wait_log(f"reads another spool, not {root / 'spool'}")
        refused = server.post(API, content=fresh_payload(seq=1), headers=HEADERS)
        assert refused.status_code == 503, refused.text
        pid = watcher.proc.pid
        assert (
            f"the watcher holding the history (pid {pid}) reads another spool, so the "
            "snapshot would not be stored: nothing was dropped; retry once a watcher reads "
            "this spool"
        ) in refused.text
        assert list((root / "spool").glob("*.json")) == []
        health = server.get("/api/health").json()
        assert health["watcher"]["running"] is False
        status = json.loads(run_cli(root, "status", "--json").stdout)
        assert status["watcher"] == {
            "running": False,
            "pid": None,
            "otherSpool": True,
            "problem": None,
        }
        assert json.loads(run_cli(root, "check", "--json").stdout)["watcherPid"] is None
        assert watcher.stop() == 0
    # With a watcher of this spool, the same serve takes the POST and it is stored.
    with WatchProcess(root) as watcher, ServeProcess(root, "--require-watcher") as server:
        data = fresh_payload(seq=2)

        def accepted() -> bool:
            answer: httpx.Response = server.post(API, content=data, headers=HEADERS)
            return answer.status_code == 202

        wait_for(accepted, 15, "the POST accepted")
        watcher.wait_log("ingested ")
        checked = json.loads(run_cli(root, "check", "--json").stdout)
        assert checked["watcherPid"] == watcher.proc.pid
    assert [p.read_bytes() for p in versions(root)] == [data]


@pytest.mark.parametrize("how", ["removed", "moved away"])
def test_a_spool_made_anew_is_locked_anew(root: Path, tmp_path: Path, how: str) -> None:
    # The lock on a removed spool guards nothing: the watcher locks the new one.
    with WatchProcess(root) as first:
        if how == "removed":
            # Removed as one step, as the watcher sees it: a watcher running between
            # rmtree's unlink of the lock file and its rmdir rightly locks the folder
            # still there again, and the rmdir then fails (ENOTEMPTY).
            with first.held():
                shutil.rmtree(root / "spool")
        else:
            (root / "spool").rename(tmp_path / "old-spool")
        first.wait_log("was removed or replaced; restarting its watch")
        drop(root / "spool", "after.json", payload(2))
        first.wait_log("ingested after.json")  # watching the new spool, so locked again
        second = run_cli(root, *elsewhere(tmp_path), "watch", "--once", timeout=30)
        assert second.returncode == 1, second.stderr
        assert f"the spool is locked by pid {first.proc.pid} watch" in second.stderr
        assert first.stop() == 0
    # One line for one removal (the kernel's own event is logged at debug only).
    errors = [line for line in first.log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and errors[0].endswith(
        f"the spool folder {root / 'spool'} was removed or replaced; restarting its watch on "
        "the folder there now"
    ), first.log


def test_a_lock_file_removed_by_hand_is_locked_again(root: Path, tmp_path: Path) -> None:
    # A removed lock file guards nothing: a second watcher would lock a fresh one there.
    with WatchProcess(root) as first:
        pid = first.proc.pid
        for lock in (root / "spool" / ".lock", root / "console-usage-history" / ".lock"):
            lock.unlink()
            first.wait_log(f"the lock file {lock} was removed or replaced; locking it again")
            wait_for(lock.exists, 15, f"{lock} made again")
        drop(root / "spool", "after.json", payload(3))
        first.wait_log("ingested after.json")  # a tick after the locks were taken again
        second = run_cli(root, *elsewhere(tmp_path), "watch", "--once", timeout=30)
        assert second.returncode == 1, second.stderr
        assert f"the spool is locked by pid {pid} watch" in second.stderr
        writer = run_cli(root, "cleanup")
        assert writer.returncode == 1 and f"locked by pid {pid} watch" in writer.stderr
        assert first.stop() == 0
    assert not list((tmp_path / "other" / "history").glob("*.json"))


@needs_strace_root
@pytest.mark.parametrize("lock", ["spool/.lock", "console-usage-history/.lock"])
def test_a_lock_file_removed_while_the_backlog_drains_is_locked_again_at_once(
    root: Path, lock: str
) -> None:
    """A backlog after an outage can take minutes to drain: the locks are looked at
    between its groups as in the loop after it. Every fsync is held up 20 ms (strace),
    so that the drain of 600 drops (three groups) takes seconds on any machine."""
    spool = root / "spool"
    for n in range(600):
        drop(spool, f"d{n:04d}.json", payload(n))
    slow = ("-e", "trace=fsync,fdatasync", "-e", "inject=fsync,fdatasync:delay_enter=20000")
    wrapper = (STRACE, "-f", "-o", os.devnull, *slow)
    with WatchProcess(root, wrapper=wrapper) as watcher:
        (root / lock).unlink()
        watcher.wait_log(f"the lock file {root / lock} was removed or replaced", timeout=60)
        waiting = list(spool.glob("d*.json"))
        assert waiting, "the backlog had drained: the test proves nothing"
        wait_for(lambda: not any(spool.glob("d*.json")), 120, "the backlog drained")
        # SIGTERM to the watcher itself (strace, its parent, ends with it, and its code).
        os.kill(traced_program(watcher.proc.pid), signal.SIGTERM)
        assert watcher.proc.wait(60) == 0, watcher.log
    assert len(versions(root)) == 600


WHY_NOT = other_user_problem()


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
@pytest.mark.parametrize("command", ["watch", "serve --watch"])
@pytest.mark.parametrize("hidden", ["console-usage-history", "spool", "."])
def test_a_lock_that_cannot_be_looked_at_is_kept(command: str, hidden: str) -> None:
    # Run as its own user (no root override), a watcher whose history, spool or root is
    # made unreadable cannot tell whether its lock files are still the ones it locked.
    # Nothing was replaced: it must keep both locks and go on, not give them up and stop.
    with others_folder("ingester-unreadable-") as root:
        process: WatchProcess | ServeProcess
        if command == "watch":
            process = WatchProcess(root, wrapper=tuple(AS_OTHER))
        else:
            process = ServeProcess(root, "--watch", wrapper=tuple(AS_OTHER))
        with process:
            process.wait_log("watching ")
            folder = root / hidden
            folder.chmod(0)
            try:
                process.wait_log("is still the one in use: Permission denied [EACCES]; carrying")
            finally:
                folder.chmod(0o755)
            process.wait_log("can be checked again")
            drop(root / "spool", "after.json", payload(4), owner=(OTHER_UID, OTHER_UID))
            process.wait_log("ingested after.json")
            second = run_cli(root, "cleanup")  # the history's lock is still the one held
            assert second.returncode == 1
            assert f"locked by pid {process.proc.pid} {command}" in second.stderr
            assert process.stop() == 0
        assert "removed or replaced" not in process.log
        assert "Traceback" not in process.log
        assert [p.read_bytes() for p in versions(root)] == [payload(4)]


def test_serve_says_only_what_the_locks_show_of_a_holder_that_left_no_note(root: Path) -> None:
    # Nothing says such a holder is a watcher, nor of which spool: serve must not call it
    # "the watcher ... reads another spool", as status does not.
    assert run_cli(root, "init").returncode == 0
    lock = root / "console-usage-history" / ".lock"
    lock.write_text("")
    with open(lock, "rb") as bare:
        fcntl.flock(bare, fcntl.LOCK_EX)
        said = (
            f"pid {os.getpid()} holds the history (it left no note saying what it is) but "
            "not this spool's lock"
        )
        with ServeProcess(root, "--require-watcher") as server:
            server.wait_log(f"serve: {said} ({root / 'spool'}): POSTs are answered 503")
            refused = server.post(API, content=fresh_payload(seq=1), headers=HEADERS)
            assert refused.status_code == 503, refused.text
            assert f"{said}, so the snapshot would not be stored" in refused.text
            assert "watcher holding" not in server.log
        with ServeProcess(root) as server:
            accepted = server.post(API, content=fresh_payload(seq=2), headers=HEADERS)
            assert accepted.status_code == 202, accepted.text
            assert accepted.json()["waitingForWatcher"] is True
            assert said in accepted.json()["message"]
            health = server.get("/api/health").json()
            assert said in json.dumps(health)


@pytest.mark.parametrize(
    ("lock", "command"),
    [
        ("console-usage-history/.lock", ("watch", "--once")),
        ("spool/.lock", ("watch", "--once")),
        ("console-usage-history/.lock", ("cleanup",)),
    ],
)
def test_a_lock_file_that_is_a_symlink_is_named_as_one(
    root: Path, tmp_path: Path, lock: str, command: tuple[str, ...]
) -> None:
    """A lock file is never followed (a link could lead anywhere, and no process of ours
    could have locked it through one): the line says what it is and what to do."""
    assert run_cli(root, "init").returncode == 0
    path = root / lock
    path.unlink(missing_ok=True)
    path.symlink_to(tmp_path / "elsewhere")
    done = run_cli(root, *command)
    assert done.returncode == 1, done.stderr
    assert (
        f"cannot open lock file {path}: a symbolic link, not a lock file: remove it [ELOOP]"
        in done.stderr
    ), done.stderr
    assert "Too many levels" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("gone", ["moved", "removed"])
def test_a_spool_that_goes_between_the_look_and_the_lock_check_is_watched_anew(
    tmp_path: Path, gone: str
) -> None:
    """The watcher looks at the spool folder, then at its lock file. A folder moved or
    removed in between leaves its lock file gone too: that is the folder gone, to be
    watched anew (and what was taken in it brought back), never a lock lost, on which
    the watcher would exit with the taken drops stranded in the moved folder."""
    spool = Spool(tmp_path / "spool")
    store = HistoryStore(tmp_path / "history", tmp_path / "latest.json")
    locks = WatcherLocks(store, spool, "watch")
    locks.take()
    try:
        looked = locks.spool_unchanged()
        assert looked
        if gone == "moved":
            spool.dir.rename(tmp_path / "spool.old")
        else:
            shutil.rmtree(spool.dir)
        with pytest.raises(OSError):
            locks.lock_spool()  # nothing to lock there now; what was held is kept
        assert locks.check(looked) is False  # never LocksLost
        held = locks.detach_spool_folder()
        assert held is not None  # the folder moved away is still reachable
        try:
            if gone == "moved":
                assert os.fstat(held).st_ino == (tmp_path / "spool.old").stat().st_ino
        finally:
            os.close(held)
        spool.ensure_folders()
        locks.lock_spool()
        assert locks.spool_unchanged() and locks.check(True) is True
    finally:
        locks.release()


def test_serve_never_promises_a_post_to_a_watch_once_that_will_not_take_it(root: Path) -> None:
    """``serve`` alone, and ``watch --once`` (from cron, say) draining the spool: a
    ``--once`` run takes only what its start-up scan found, and notes so in its lock
    files (``watch --once``). A POST answered while it drains is told it waits for a
    watcher (``"waitingForWatcher": true``), and indeed waits in the spool after the
    run, never promised to it."""
    spool = root / "spool"
    for i in range(2500):  # a backlog of a few seconds for the --once run
        drop(spool, f"b{i:05}.json", payload(i))
    with ServeProcess(root) as server, WatchProcess(root, "--once") as once:
        once.wait_log("ingested ")  # its start-up scan is behind it: it drains now
        with once.held():  # still running (its lock held) while the POST is answered
            body = fresh_payload(marker="posted during --once")
            answer = server.post(API, content=body, headers=HEADERS)
        assert answer.status_code == 202, answer.text
        assert answer.json()["waitingForWatcher"] is True, answer.json()
        assert once.proc.wait(60) == 0, once.log
    assert not any(p.read_bytes() == body for p in versions(root))
    assert len([n for n in os.listdir(spool) if n.endswith(".json")]) == 1


@needs_strace_root
def test_serve_never_promises_a_post_to_a_watcher_that_is_stopping(root: Path) -> None:
    """``watch`` and ``serve``; the watcher is sent SIGTERM. From the moment it stops
    taking drops, it notes in its lock files that it is stopping, though it holds them
    until it has finished (its last maintenance; here strace holds up the spool lock's
    ``close`` by 3 s): a POST answered meanwhile is told it waits for a watcher
    (``"waitingForWatcher": true``), never promised to the one that is leaving."""
    (root / "spool").mkdir()
    lock = root / "spool" / ".lock"
    slow_release = (
        STRACE, "-f", "-qq", "-o", "/dev/null", "-P", str(lock),
        "-e", "trace=close", "-e", "inject=close:delay_enter=3000000", "--",
    )  # fmt: skip
    with ServeProcess(root) as server, WatchProcess(root, wrapper=slow_release) as w:
        os.kill(traced_program(w.proc.pid), signal.SIGTERM)
        w.wait_log("stopped: ")  # it takes no drop any more, its locks still held
        body = fresh_payload(marker="posted while the watcher stops")
        answer = server.post(API, content=body, headers=HEADERS)
        assert answer.status_code == 202, answer.text
        assert answer.json()["waitingForWatcher"] is True, answer.json()
        assert w.proc.wait(30) == 0, w.log


@needs_strace_root
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the syscall numbers are x86_64's")
def test_serve_never_promises_a_post_to_a_watcher_stopped_amid_its_backlog(root: Path) -> None:
    """``watch`` stopped while it takes the backlog it found at start (its claim of the
    drop held up by strace): it finishes that drop and takes no other, and says so in
    its lock files before its last upkeep (the metadata written anew, its rename held
    up 5 s here), not only once that is done: a POST answered meanwhile is told it
    waits for a watcher (``"waitingForWatcher": true``), never promised to the one
    that is leaving."""
    from test_integrity import in_syscall

    assert run_cli(root, "init").returncode == 0
    drop(root / "spool", "first.json", payload(1))
    history = root / "console-usage-history"
    slow_renames = (
        STRACE, "-f", "-qq", "-o", "/dev/null", "-e", "trace=rename",
        "-e", "inject=rename:delay_enter=5000000", "--",
    )  # fmt: skip
    rename = 82

    def renaming(pid: int) -> bool:
        # In whichever of its threads makes it: the upkeep need not be the main one's.
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            return False
        return any(in_syscall(int(thread), rename) for thread in threads)

    def in_metadata_rename(pid: int) -> bool:
        # The metadata's temp file is there only until that rename is done; the one
        # after the drop's claim (not the start's) once the drop has left the spool.
        return (
            renaming(pid)
            and any(history.glob(".tmp-w-*"))
            and not (root / "spool" / "first.json").exists()
        )

    def in_claim(pid: int) -> bool:
        return renaming(pid) and not any(history.glob(".tmp-w-*"))

    with ServeProcess(root) as server, WatchProcess(root, wrapper=slow_renames) as w:
        program = traced_program(w.proc.pid)
        wait_for(lambda: in_claim(program), 30, "the drop's claim, held up")
        os.kill(program, signal.SIGTERM)
        try:
            # Each rename takes 5 s here, and there are a few before the upkeep's.
            wait_for(lambda: in_metadata_rename(program), 60, "its last upkeep")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{w.log}") from None
        body = fresh_payload(marker="posted while the watcher stops")
        answer = server.post(API, content=body, headers=HEADERS)
        assert in_metadata_rename(program), w.log  # answered amid that upkeep
        assert answer.status_code == 202, answer.text
        assert answer.json()["waitingForWatcher"] is True, answer.json()
        assert w.proc.wait(30) == 0, w.log
    assert "stopped: 1 ingested" in w.log, w.log
