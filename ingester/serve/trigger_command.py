"""Running the operator's refresh command for ``POST /api/claude/console-usage/trigger``.

The original server's dashboard card has a refresh button that POSTs here and then
fetches the data again. ``serve --trigger-command CMD`` names the command to run: an
argument list split from the operator's text once, at start-up (``shlex`` rules), and
run without a shell, so nothing a request sends ever reaches a command line.

* Behind the same key check as the upload (401).
* One run at a time: a request that comes while a run is under way joins it and gets
  its result (same ``requestId``). A client that leaves does not stop the run.
* Bounded: after ``--trigger-timeout`` seconds the command's process group gets SIGTERM,
  then SIGKILL 5 s later; the answer is a 500 saying so.
* 200 ``{success, message, timestamp, requestId}`` when it exits 0; 500 with the reason
  otherwise (exit status, signal, timeout, cannot start); 501 with a how-to when no
  command is configured.
* Its output (stdout and stderr together) goes to the log as it comes, one line per
  line (a line over ``LINE_CAP`` bytes in pieces), cut after ``OUTPUT_CAP`` bytes; the
  rest is read and counted, never kept. What it printed is logged however the run
  ends, the server stopping it included. A job it leaves running keeps the pipe: what
  it writes after the run is read and let go, never logged, until it closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shlex
import signal
import time
from dataclasses import dataclass

__all__ = ["LINE_CAP", "OUTPUT_CAP", "TriggerCommand", "TriggerResult", "TriggerRunner"]

log = logging.getLogger("ingester.serve")

OUTPUT_CAP = 16 * 1024  # bytes of a run's output that reach the log
LINE_CAP = 4096  # bytes of one log line of it; a longer line is logged in pieces
KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL of a run past its timeout


@dataclass(frozen=True)
class TriggerCommand:
    """The command to run: its arguments (``argv[0]`` the program) and the time bound."""

    argv: tuple[str, ...]
    timeout: float

    @classmethod
    def parse(cls, text: str, timeout: float) -> TriggerCommand:
        """Split ``text`` by shell quoting rules (no shell runs it); ``ValueError`` if empty
        or badly quoted."""
        argv = tuple(shlex.split(text))
        if not argv:
            raise ValueError("the command is empty")
        return cls(argv, timeout)

    def describe(self) -> str:
        """The command as one line (quoted where needed)."""
        return shlex.join(self.argv)


@dataclass(frozen=True)
class TriggerResult:
    """What one run came to: ``ok`` (exit 0), the words for the answer, its id."""

    ok: bool
    message: str
    request_id: str


class TriggerRunner:
    """Runs the command, one run at a time; a request during a run joins it."""

    def __init__(self, command: TriggerCommand) -> None:
        self.command = command
        self._running: asyncio.Task[TriggerResult] | None = None
        # Reading on after a run, unlogged, while a job it left running holds its pipe.
        self._reading_on: set[asyncio.Task[None]] = set()

    async def run(self) -> tuple[TriggerResult, bool]:
        """The result of a run, and whether this call joined one already under way."""
        task = self._running
        joined = task is not None and not task.done()
        if task is None or task.done():
            request_id = f"trigger-{int(time.time() * 1000)}-{secrets.token_hex(2)}"
            task = asyncio.create_task(self._run(request_id))
            self._running = task
        # shield: a client that disconnects cancels its own wait, never the run.
        return await asyncio.shield(task), joined

    async def _run(self, request_id: str) -> TriggerResult:
        cmd = self.command
        log.info(
            "%s: running %s (timeout %g s)",
            request_id,
            cmd.describe(),
            cmd.timeout,
            extra={"event": "trigger", "requestId": request_id},
        )
        started = time.monotonic()
        # A pipe of our own, not asyncio's: asyncio's wait() also waits for its pipes to
        # close, which a child the command leaves running (a scraper started in the
        # background) would delay until the timeout, and then kill.
        read_end, write_end = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_end,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: a timeout ends all of it
            )
        except OSError as exc:
            os.close(read_end)
            message = f"cannot run {cmd.argv[0]}: {exc.strerror or exc}"
            log.error("%s: %s", request_id, message)
            return TriggerResult(False, message, request_id)
        finally:
            os.close(write_end)
        output = asyncio.StreamReader()
        pipe, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(output), os.fdopen(read_end, "rb", 0)
        )
        said = _OutputLog(request_id)

        async def drain() -> None:
            while chunk := await output.read(65536):
                said.feed(chunk)

        reader = asyncio.create_task(drain())
        timed_out = False
        held_open = False
        try:
            try:
                async with asyncio.timeout(cmd.timeout):
                    code = await proc.wait()
            except TimeoutError:
                timed_out = True
                code = await _end(proc)
            # Timed here: the wait for its output below is no part of the run.
            took = time.monotonic() - started
            # What it wrote before it ended is in the pipe; a child it left running may
            # hold the pipe open, so the logging ends soon after the command does.
            done, _ = await asyncio.wait({reader}, timeout=1.0)
            held_open = not done
        finally:
            try:
                if proc.returncode is None:  # cancelled (the server stops): leave nothing behind
                    await asyncio.shield(_end(proc))
            finally:
                # What it printed is said however the run ends: a last line without its
                # end, and what was cut, even when the server stops it mid-run.
                said.close()
                if held_open and proc.returncode is not None:
                    # A job it left running still writes there: its pipe closed, its next
                    # line would kill it (SIGPIPE). Read on, logging nothing, until it
                    # closes its end (or the server stops).
                    rest = asyncio.create_task(_read_on(reader, pipe))
                    self._reading_on.add(rest)
                    rest.add_done_callback(self._reading_on.discard)
                else:
                    reader.cancel()
                    pipe.close()
        if timed_out:
            message = f"the trigger command timed out after {cmd.timeout:g} s and was stopped"
        elif code == 0:
            message = f"the trigger command finished in {took:.1f} s"
            if held_open:
                message += "; a process it started runs on (what it prints is not logged)"
        elif code < 0:
            message = f"the trigger command was killed by {_signal_name(-code)}"
        else:
            message = f"the trigger command failed with exit status {code}"
        level = logging.INFO if code == 0 and not timed_out else logging.ERROR
        log.log(level, "%s: %s", request_id, message)
        return TriggerResult(code == 0 and not timed_out, message, request_id)


async def _read_on(reader: asyncio.Task[None], pipe: asyncio.BaseTransport) -> None:
    """Wait for ``reader`` to reach the end of ``pipe`` (or be cancelled), then close it."""
    try:
        await reader
    finally:
        reader.cancel()
        pipe.close()


async def _end(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM the run's process group, SIGKILL what is left of it after a grace period.

    Returns the command's exit code. The whole group is waited for, not only the
    command: a child that ignores SIGTERM outlives its parent and gets the SIGKILL.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    code: int | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1):
                code = await proc.wait()
        if code is not None:
            if not _group_alive(proc.pid):
                return code
            await asyncio.sleep(0.05)  # the command is gone; a child of it is not yet
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return await proc.wait()


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still running (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for entry in os.scandir("/proc"):
        if not (entry.name.isascii() and entry.name.isdigit()):
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _OutputLog:
    """A run's output, logged a line at a time as it comes: one line at most
    :data:`LINE_CAP` bytes (a longer one is logged in pieces of that size), and
    :data:`OUTPUT_CAP` bytes in all per run; the rest is counted, never kept."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.pending = bytearray()  # the start of a line whose end has not come yet
        self.taken = 0  # bytes under the cap: logged, or pending
        self.dropped = 0
        self.closed = False

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes the command wrote; log each line they complete (none once
        :meth:`close` was called: what a job left running writes after its run)."""
        if self.closed:
            return
        room = OUTPUT_CAP - self.taken
        self.pending += chunk[:room]
        self.taken += min(room, len(chunk))
        self.dropped += max(0, len(chunk) - room)
        end = max(self.pending.rfind(b"\n"), self.pending.rfind(b"\r"))
        if end >= 0:
            self._say(bytes(self.pending[: end + 1]))
            del self.pending[: end + 1]
        while len(self.pending) > LINE_CAP:
            cut = LINE_CAP
            while cut > LINE_CAP - 3 and self.pending[cut] & 0xC0 == 0x80:
                cut -= 1  # not inside a character: each piece decodes whole
            self._say(bytes(self.pending[:cut]))
            del self.pending[:cut]

    def close(self) -> None:
        """Log what is left (a last line without its end) and how much was cut; what
        comes after is not logged."""
        self.closed = True
        if self.pending:
            self._say(bytes(self.pending))
            self.pending.clear()
        if self.dropped:
            log.info(
                "%s: output cut after %d bytes (%d more not logged)",
                self.request_id,
                OUTPUT_CAP,
                self.dropped,
            )
            self.dropped = 0

    def _say(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                log.info("%s: | %s", self.request_id, line)
