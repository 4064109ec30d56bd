"""The helpers that run a process for a test (support.process, support.signals): one
that ends early, or is ended by the test, is never lost, nothing it held (its log,
a client's connections) is left to the garbage collector, which would warn in another
test, and a failure says how it ended."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import run_cli, wait_for
from support.capabilities import STRACE, needs_strace
from support.process import LoggedProcess
from support.serveproc import ServeProcess
from support.signals import STOPS, survives_a_storm
from support.watchproc import WatchProcess


def ended(pid: int) -> bool:
    """Whether process ``pid`` has ended: gone, or a zombie (state Z) left to reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def open_logs(folder: Path) -> list[str]:
    """The files under ``folder`` this process still has open."""
    targets = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            targets.append(os.readlink(fd))
    return [t for t in targets if t.startswith(f"{folder}/") and t.endswith(".log")]


def test_a_watcher_that_ends_before_it_is_ready_leaves_nothing_open(tmp_path: Path) -> None:
    """A ``with`` whose start fails never calls ``__exit__``: the helper ends what it
    started itself, and closes its log, before it fails."""
    root = tmp_path / "root"
    root.write_text("a file, not a folder: the watcher refuses it at once")
    with pytest.raises(AssertionError, match="watch exited 1"), WatchProcess(root):
        pass
    assert open_logs(tmp_path) == []


def test_a_server_that_ends_before_it_listens_leaves_nothing_open(root: Path) -> None:
    with pytest.raises(AssertionError, match="serve exited 2"):
        ServeProcess(root, listen="127.0.0.1:no-port").start()
    assert open_logs(root.parent) == []


def test_a_command_that_cannot_be_started_leaves_no_log_open(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with pytest.raises(FileNotFoundError):
        WatchProcess(root, wrapper=(str(tmp_path / "no-such-wrapper"),))
    assert open_logs(tmp_path) == []


def test_a_server_that_ended_on_its_own_lets_go_of_its_client(root: Path) -> None:
    """The client's connection to a server killed meanwhile is still open on this side:
    it is closed as the block ends, whether or not the server is still running."""
    with ServeProcess(root) as server:
        assert server.get("/api/health").status_code in (200, 503)
        os.kill(server.proc.pid, signal.SIGKILL)
        wait_for(lambda: ended(server.proc.pid), 10, "the server to end")
    assert server.client is not None and server.client.is_closed


def test_holding_a_process_that_has_ended_fails_at_once_saying_so(root: Path) -> None:
    with WatchProcess(root) as watch:
        os.kill(watch.proc.pid, signal.SIGKILL)
        wait_for(lambda: ended(watch.proc.pid), 10, "the watcher to end")
        with pytest.raises(AssertionError, match=r"exited -9 before it was held"), watch.held():
            pass


def test_a_held_process_killed_by_the_body_is_no_failure_of_the_hold(root: Path) -> None:
    with WatchProcess(root) as watch, watch.held():
        watch.kill()
    assert watch.proc.returncode == -signal.SIGKILL


_DEAF_TO_SIGTERM = (
    "import os, signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', os.getpid(), flush=True)\n"
    "while True:\n"
    "    time.sleep(1)\n"
)


@needs_strace
def test_a_traced_program_that_does_not_stop_is_ended_not_left_running(tmp_path: Path) -> None:
    """``stop`` gives up on a program that ignores SIGTERM and sends it SIGABRT for its
    stacks: sent to strace instead, strace died of it and the program ran on with
    nothing left to find it by."""
    command = [STRACE, "-f", "-qq", "-o", os.devnull, sys.executable, "-c", _DEAF_TO_SIGTERM]
    process = LoggedProcess(tmp_path / "root", "deaf", command)
    program = 0
    try:
        process.wait_log("ready ")
        program = int(process.log.split()[1])
        with pytest.raises(AssertionError, match="did not stop within 1 s"):
            process.stop(timeout=1)
        wait_for(lambda: ended(program), 10, f"the program (pid {program}) to end")
    finally:
        if program and not ended(program):
            os.kill(program, signal.SIGKILL)
        process.close()


def test_a_storm_target_that_ends_before_it_is_ready_fails_saying_how() -> None:
    with pytest.raises(
        pytest.fail.Exception, match=r"the script printed '' where 'ready' .*exit 3"
    ):
        survives_a_storm("raise SystemExit(3)", STOPS, 10, 0, "the script")


def running_on(root: Path) -> list[int]:
    """The processes whose command line names ``root`` that have not ended."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):  # one that ended as it was looked at
            if entry.name.isdigit() and str(root) in (entry / "cmdline").read_text():
                found.append(int(entry.name))
    return [pid for pid in found if not ended(pid)]


@needs_strace
def test_a_command_past_its_timeout_under_strace_is_killed_not_left_held(root: Path) -> None:
    """run_cli's timeout kills the program under a strace wrapper: strace killed alone
    let go of a program it held, which then stayed stopped for ever."""
    assert run_cli(root, "init").returncode == 0
    history = root / "console-usage-history"
    hold = ("-P", str(history), "-e", "trace=getdents64", "-e", "inject=getdents64:signal=SIGSTOP")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            run_cli(
                root, "verify", wrapper=(STRACE, "-f", "-qq", "-o", os.devnull, *hold), timeout=3
            )
        wait_for(lambda: not running_on(root), 10, f"every process on {root} to end")
    finally:
        for pid in running_on(root):
            os.kill(pid, signal.SIGKILL)
