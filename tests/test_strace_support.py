"""The test helpers that find the program strace runs: a signal or a look meant for the
program must never reach one of strace's own short-lived children instead."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

from support.capabilities import STRACE, needs_strace, traced_program


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
