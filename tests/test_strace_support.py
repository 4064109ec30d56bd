"""The test helpers that find the program strace runs: a signal or a look meant for the
program must never reach one of strace's own short-lived children instead."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from support import run_cli, wait_for
from support.capabilities import (
    STRACE,
    needs_strace,
    needs_strace_root,
    run_held_after,
    strace_attached,
    traced_program,
)


@needs_strace
def test_the_program_found_is_the_one_strace_runs_never_one_of_its_probes() -> None:
    """strace forks children of its own as it starts (probes of what ptrace can do, which
    exit at once) before the program's: the pid found runs the program, every time,
    however soon after strace's start it is asked for."""
    sleep = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
    for _ in range(10):
        command = [STRACE, "-f", "-qq", "-o", "/dev/null", "--", sleep, "30"]
        tracer = subprocess.Popen(command, start_new_session=True)
        try:
            program = traced_program(tracer.pid)
            assert os.readlink(f"/proc/{program}/exe") == sleep
        finally:
            os.killpg(tracer.pid, signal.SIGKILL)  # strace and the program, in its group
            tracer.wait(timeout=10)


def program_on(root: Path) -> int:
    """The pid of the one program (not strace) whose command line names ``root``."""
    strace = os.path.realpath(STRACE)
    return next(
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and str(root) in (entry / "cmdline").read_bytes().decode(errors="replace")
        and os.readlink(entry / "exe") != strace
    )


def state(pid: int) -> str:
    """Process ``pid``'s state letter in /proc (Z: a zombie); "gone" once reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


@needs_strace
def test_a_held_command_killed_while_held_is_returned_killed(tmp_path: Path) -> None:
    """What a test does while the command is held may end it (``kill -9``): strace then
    exits too, before the helper would let the program go on. The helper returns the
    command as killed instead of failing to find a program that is gone."""
    root = tmp_path / "root"
    assert run_cli(root, "init").returncode == 0

    def kill_and_wait_for_strace_to_end() -> None:
        program = program_on(root)
        tracer = next(
            int(line.split()[1])
            for line in Path(f"/proc/{program}/status").read_text().splitlines()
            if line.startswith("PPid:")
        )
        os.kill(program, signal.SIGKILL)
        # strace ends with its program; left unreaped, it stays a zombie (state Z).
        wait_for(lambda: state(tracer) == "Z", 10, f"strace {tracer} to end")

    done = run_held_after(
        root,
        ("verify",),
        root / "console-usage-history",
        "getdents64",
        kill_and_wait_for_strace_to_end,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


@needs_strace
def test_a_held_command_ends_with_its_tracer_when_the_test_fails_meanwhile(tmp_path: Path) -> None:
    """A failure while the command is held ends strace: killed alone, strace let the
    program go, stopped for ever (its lock held, its temp files open) after the test."""
    root = tmp_path / "root"
    assert run_cli(root, "init").returncode == 0
    held: list[int] = []

    def fail() -> None:
        held.append(program_on(root))
        raise RuntimeError("the test failed while the command was held")

    try:
        with pytest.raises(RuntimeError, match="the test failed"):
            run_held_after(root, ("verify",), root / "console-usage-history", "getdents64", fail)
        assert held
        wait_for(lambda: state(held[0]) in ("Z", "gone"), 10, f"the held program {held} to end")
    finally:
        for pid in held:
            if state(pid) not in ("Z", "gone"):
                os.kill(pid, signal.SIGKILL)


@needs_strace_root
def test_waiting_for_strace_to_attach_to_a_process_that_has_ended_fails_at_once() -> None:
    """The wait says the process has ended, at once: not FileNotFoundError on its /proc
    status, nor a timeout that names only what never came."""
    with subprocess.Popen(["sleep", "30"]) as gone:
        gone.kill()  # and reaped as the block ends
    with subprocess.Popen(
        [STRACE, "-qq", "-o", os.devnull, "-p", str(gone.pid)], stderr=subprocess.DEVNULL
    ) as tracer:
        try:
            with pytest.raises(AssertionError, match=rf"strace exited|process {gone.pid} ended"):
                wait_for(lambda: strace_attached(tracer, gone.pid), 10, "strace attached")
        finally:
            tracer.kill()
