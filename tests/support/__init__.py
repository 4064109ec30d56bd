"""Test helpers, importable from every test module: real folders, the real CLI in a
subprocess, waiting on conditions."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

# The project's own fixtures: tests never read anything outside the repository.
SAMPLES = Path(__file__).resolve().parent.parent / "samples"
VALID_SAMPLES = sorted((SAMPLES / "valid").glob("*.json"))
INVALID_SAMPLES = sorted((SAMPLES / "invalid").glob("*.json"))
IS_ROOT = os.geteuid() == 0


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.01)


def listening_ports(pid: int) -> set[int]:
    """TCP ports process ``pid`` listens on, from /proc (its sockets in LISTEN state)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess, without any INGESTER_* of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTER_")}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("JOURNAL_STREAM", None)
    env.update(extra)
    return env


def run_cli(
    root: Path,
    *args: str,
    input: bytes | None = None,
    timeout: float = 60,
    wrapper: tuple[str, ...] = (),
    pass_fds: tuple[int, ...] = (),
    stdout: int | IO[str] | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """Run ``[WRAPPER...] ingester --root ROOT ARGS...`` in a subprocess (``pass_fds`` kept
    open in it); return the completed process. Its output is captured, unless
    ``stdout`` (a descriptor or a file) is where its standard output goes. A timeout
    raises as :func:`run_command` says."""
    return run_command(
        [*wrapper, sys.executable, "-m", "ingester", "--root", str(root), *args],
        input=input.decode() if input is not None else None,
        timeout=timeout,
        pass_fds=pass_fds,
        stdout=stdout,
        env=cli_env(**env),
    )


def run_command(
    command: list[str],
    *,
    input: str | None = None,
    timeout: float = 60,
    pass_fds: tuple[int, ...] = (),
    stdout: int | IO[str] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (in ``env``, by default :func:`cli_env`'s) with ``input`` on its
    standard input; return it completed, its output captured as text unless ``stdout``
    (a descriptor or a file) is where its standard output goes.

    Raises ``subprocess.TimeoutExpired`` once ``timeout`` seconds have passed, the command
    killed: the program itself, under strace too (strace killed alone lets it go on, or
    leaves it stopped for ever where strace held it)."""
    with subprocess.Popen(
        command,
        stdin=subprocess.PIPE if input is not None else None,
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env() if env is None else env,
        pass_fds=pass_fds,
        cwd=cwd,
    ) as proc:
        try:
            out, err = proc.communicate(input, timeout)
        except BaseException:  # the timeout, or the test's own (an interrupt)
            from .process import kill_program  # it imports this module

            kill_program(proc)
            raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


PROMTOOL = shutil.which("promtool")
"""Prometheus's own checker (Debian's ``prometheus`` package; ``.ci/run`` installs it)."""


def promtool(
    *args: str, cwd: Path | None = None, given: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``promtool ARGS`` run in ``cwd`` (``given`` on its standard input), output captured."""
    return subprocess.run(
        [PROMTOOL or "promtool", *args],
        cwd=cwd,
        input=given,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


INOTIFY_QUEUE_KNOB = Path("/proc/sys/fs/inotify/max_queued_events")
DEFAULT_INOTIFY_QUEUE = 16384  # the kernel's default


@contextmanager
def inotify_queue_limit(value: int | None = None) -> Iterator[None]:
    """Hold the system-wide inotify queue limit steady while a watcher makes its inotify.

    The limit is read when an inotify instance is made, and it is shared by every process
    on the machine. With ``value``: an exclusive lock while the limit is lowered to it,
    then restored. Without: a shared lock, so no test lowers it meanwhile. A lowered
    limit left by a test killed mid-way is never taken for the original: anything under
    the kernel's default is restored to the default.
    """
    try:
        fd = os.open(INOTIFY_QUEUE_KNOB, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if value is not None else fcntl.LOCK_SH)
        if value is None:
            yield
            return
        original = max(int(INOTIFY_QUEUE_KNOB.read_text()), DEFAULT_INOTIFY_QUEUE)
        INOTIFY_QUEUE_KNOB.write_text(str(value))
        try:
            yield
        finally:
            INOTIFY_QUEUE_KNOB.write_text(str(original))
    finally:
        os.close(fd)
