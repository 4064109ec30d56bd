"""A CLI subprocess whose output goes to a log file beside its root: the shared part of
the watcher and server wrappers (start, read the log, stop, kill)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from support import cli_env, wait_for


class LoggedProcess:
    """``command`` running with stdout and stderr in ``ROOT/../TAG-XXXXXX.log``."""

    # Seconds a SIGTERM is given before ``stop`` fails. A stop takes well under a second;
    # the margin is for a machine whose other jobs hold both cores, not for the stop.
    stop_timeout = 15.0
    tag = "process"  # what the process is, in its log file's name and in failures

    def __init__(
        self,
        root: Path,
        tag: str,
        command: list[str],
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.root = root
        self.tag = tag
        self.log_path = root.parent / f"{tag}-{os.urandom(3).hex()}.log"
        self._log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                command,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                # A process that does not stop is sent SIGABRT (see stop): faulthandler
                # then writes every thread's stack into the log, which the failure shows.
                env=cli_env(PYTHONFAULTHANDLER="1", **(env or {})),
                pass_fds=pass_fds,
            )
        except BaseException:
            self._log.close()  # left to the garbage collector, it warns in another test
            raise

    @property
    def log(self) -> str:
        """Everything it logged so far."""
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 15.0, count: int = 1) -> None:
        """Wait until ``text`` appears ``count`` times in the log (fails if it exits first)."""

        def seen() -> bool:
            # Whether it has ended is asked before the log is read: what it wrote on
            # its way out is then in the log read, never taken for missing.
            ended = self.proc.poll() is not None
            if self.log.count(text) >= count:
                return True
            if ended:
                raise AssertionError(f"{self.tag} exited {self.proc.returncode}:\n{self.log}")
            return False

        wait_for(seen, timeout, f"{text!r} in the {self.tag} log")

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The process stopped (SIGSTOP) for the body, continued (SIGCONT) after it.

        What the body does to the files the process keeps (several steps) then reaches
        it as one change: it cannot act between two of the steps, as it rightly may
        while it runs. Entered only once every thread of it has stopped (a signal is
        delivered asynchronously: a thread in the middle of a system call finishes
        that call first). The process must be the program itself, not a wrapper that
        forks it (strace); one that execs it (setpriv) is the program.

        Fails at once, with its exit code and log, when the process has ended. A body
        that ends it (a kill) is no failure of the hold: there is nothing to continue.
        """
        pid = self.proc.pid

        def stopped() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.tag} (pid {pid}) exited {self.proc.returncode} before it was "
                    f"held; its log:\n{self.log}"
                )
            return _all_stopped(pid)

        if self.proc.poll() is None:  # reaped, its pid could be another process's
            os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(stopped, 15, f"the {self.tag} (pid {pid}) stopped")
            yield
        finally:
            # Only this object reaps it: not reaped here, the pid is still its own.
            if self.proc.poll() is None:
                os.kill(pid, signal.SIGCONT)

    @contextlib.contextmanager
    def ended_on_failure(self) -> Iterator[None]:
        """A failure in the block (it never started) ends the process and closes its
        log before it goes on up: whoever started it holds nothing to stop then (a
        ``with`` whose ``__enter__`` fails never calls ``__exit__``)."""
        try:
            yield
        except BaseException:
            self.close()
            raise

    def _release(self) -> None:
        """What a subclass holds besides the process (a client), let go before it ends."""

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM, then wait; returns the exit code.

        Fails with the process's log when it has not exited in time (it is then killed).
        """
        self._release()
        if self.proc.poll() is None:
            _signal_program(self.proc.pid, signal.SIGTERM)
        limit = self.stop_timeout if timeout is None else timeout
        try:
            code = self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            # Where it is stuck, for the failure: each thread's stack (faulthandler). To
            # the program, not to a strace around it: strace would die of it alone,
            # leaving the program running with nothing left to find it by.
            _signal_program(self.proc.pid, signal.SIGABRT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self.kill()
            raise AssertionError(
                f"{self.tag} did not stop within {limit:g} s of SIGTERM (its threads' "
                f"stacks follow its log, sent SIGABRT then); its log:\n{self.log}"
            ) from None
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL: the crash."""
        self._release()
        kill_program(self.proc)
        self._log.close()

    def close(self) -> None:
        """Kill it if it still runs; let go of all it holds (its log, a client) either way."""
        if self.proc.poll() is None:
            self.kill()
        else:
            # Ended on its own: what it held is let go all the same (a client's open
            # connections, left to the garbage collector, warn in another test).
            self._release()
            self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _all_stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (state T in /proc)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            # The state follows the command name, which is in parentheses.
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
    if not states:
        raise AssertionError(f"process {pid} has no threads left")
    return all(state == "T" for state in states)


def _signal_program(pid: int, signum: int) -> None:
    """Send ``signum`` to the program process ``pid`` runs: ``pid`` itself, or, where
    ``pid`` is strace (a wrapper that forks), its one child. strace given a SIGTERM
    detaches and exits 0, leaving the program running on after the test; signalled
    itself, the program stops as it would unwrapped, and strace ends with its code."""
    target = pid
    with contextlib.suppress(OSError):  # gone already, or no /proc: the process itself
        if Path(f"/proc/{pid}/comm").read_text().strip() == "strace":
            target = program_of_strace(pid) or pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(target, signum)


def program_of_strace(tracer: int) -> int | None:
    """The pid of the program strace (pid ``tracer``) runs once it runs it, else None.

    strace's children are not all the program: as it starts, strace forks children of
    its own that probe what ptrace can do and exit at once, and the program's child runs
    strace's binary until its exec. The program is the child running another binary."""
    own = os.readlink(f"/proc/{tracer}/exe")
    for child in Path(f"/proc/{tracer}/task/{tracer}/children").read_text().split():
        with contextlib.suppress(OSError):  # a probe that exited as it was looked at
            if os.readlink(f"/proc/{child}/exe") != own:
                return int(child)
    return None


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL every process of the group ``proc`` leads (it was started with
    ``start_new_session=True``), then reap ``proc``; nothing once ``proc`` is reaped.

    For strace and the program it runs: strace killed alone detaches, and the program
    runs on after the test, or stays stopped for ever if it was held."""
    # Only while ``proc`` is unreaped is its pid, the group's id, sure to be its own.
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # the group has no process left
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def kill_program(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the program ``proc`` runs (``proc`` itself, or the program of a strace it
    is), then ``proc``, and reap it."""
    if proc.poll() is None:
        _signal_program(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # strace, had it not ended with its program
    proc.wait(timeout=10)
