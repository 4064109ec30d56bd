"""The test helpers that find the program strace runs: a signal or a look meant for the
program must never reach one of strace's own short-lived children instead."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from support import run_cli, wait_for
from support.capabilities import STRACE, needs_strace, run_held_after, traced_program


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


@needs_strace
def test_a_held_command_killed_while_held_is_returned_killed(tmp_path: Path) -> None:
    """What a test does while the command is held may end it (``kill -9``): strace then
    exits too, before the helper would let the program go on. The helper returns the
    command as killed instead of failing to find a program that is gone."""
    root = tmp_path / "root"
    assert run_cli(root, "init").returncode == 0

    def kill_and_wait_for_strace_to_end() -> None:
        strace = os.path.realpath(STRACE)
        program = next(
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit()
            and str(root) in (entry / "cmdline").read_bytes().decode(errors="replace")
            and os.readlink(entry / "exe") != strace
        )
        tracer = next(
            int(line.split()[1])
            for line in Path(f"/proc/{program}/status").read_text().splitlines()
            if line.startswith("PPid:")
        )
        os.kill(program, signal.SIGKILL)
        # strace ends with its program; left unreaped, it stays a zombie (state Z).
        wait_for(
            lambda: Path(f"/proc/{tracer}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
            10,
            f"strace {tracer} to end",
        )

    done = run_held_after(
        root,
        ("verify",),
        root / "console-usage-history",
        "getdents64",
        kill_and_wait_for_strace_to_end,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
