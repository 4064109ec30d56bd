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
  otherwise (exit status, signal, timeout, cannot start), in one line that ends with the
  command's last non-empty line on stderr where it wrote one (``; its last line on
  stderr: ...``: what the dashboard card shows; at most ``LAST_LINE_CHARS`` characters,
  terminal escapes left out and other control characters written as ``\x1b``, so a
  traceback gives its last line, the error, never its many lines); 501 with a how-to
  when no command is configured.
* Its output (stdout and stderr, each a pipe of its own) goes to the log as it comes,
  one line per line (a line over ``LINE_CAP`` bytes in pieces), cut after ``OUTPUT_CAP``
  bytes of both together; the rest is read and counted, never kept (but for the last
  line on stderr, which is followed to the end). What it printed is logged however the
  run ends, the server stopping it included. A job it leaves running keeps the pipes:
  what it writes after the run is read and let go, never logged, until it closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import secrets
import shlex
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..runtime.logs import cut, one_line

__all__ = [
    "LAST_LINE_CHARS",
    "LINE_CAP",
    "OUTPUT_CAP",
    "TriggerCommand",
    "TriggerResult",
    "TriggerRunner",
]

log = logging.getLogger("ingester.serve")

OUTPUT_CAP = 16 * 1024  # bytes of a run's output that reach the log
LINE_CAP = 4096  # bytes of one log line of it; a longer line is logged in pieces
KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL of a run past its timeout
LAST_LINE_CHARS = 200  # of the command's last line on stderr, in a failed run's answer


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
        # Pipes of our own, not asyncio's: asyncio's wait() also waits for its pipes to
        # close, which a child the command leaves running (a scraper started in the
        # background) would delay until the timeout, and then kill. One for each stream:
        # the answer names the last line on stderr, which a program's buffered stdout
        # (written out as it exits, after its traceback) must not push aside.
        fds: list[int] = []
        try:
            fds.extend(os.pipe())
            fds.extend(os.pipe())
            proc = await asyncio.create_subprocess_exec(
                *cmd.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fds[1],
                stderr=fds[3],
                start_new_session=True,  # its own process group: a timeout ends all of it
            )
        except OSError as exc:
            for fd in fds[::2]:
                os.close(fd)
            message = f"cannot run {cmd.argv[0]}: {exc.strerror or exc}"
            log.error("%s: %s", request_id, message)
            return TriggerResult(False, message, request_id)
        finally:
            for fd in fds[1::2]:
                os.close(fd)
        budget = _Budget(request_id)
        said_out, said_err = _OutputLog(request_id, budget), _OutputLog(request_id, budget)
        last = _LastLine()
        loop = asyncio.get_running_loop()
        pipes: list[asyncio.BaseTransport] = []
        readers = []
        for fd, sinks in ((fds[0], (said_out.feed,)), (fds[2], (said_err.feed, last.feed))):
            stream = asyncio.StreamReader()
            end, _ = await loop.connect_read_pipe(
                functools.partial(asyncio.StreamReaderProtocol, stream), os.fdopen(fd, "rb", 0)
            )
            pipes.append(end)
            readers.append(_drain(stream, sinks))
        reader = asyncio.ensure_future(asyncio.gather(*readers))
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
            # What it wrote before it ended is in the pipes; a child it left running may
            # hold them open, so the logging ends soon after the command does.
            done, _ = await asyncio.wait({reader}, timeout=1.0)
            held_open = not done
        finally:
            try:
                if proc.returncode is None:  # cancelled (the server stops): leave nothing behind
                    await asyncio.shield(_end(proc))
            finally:
                # What it printed is said however the run ends: a last line without its
                # end, and what was cut, even when the server stops it mid-run.
                said_out.close()
                said_err.close()
                budget.close()
                last.close()
                if held_open and proc.returncode is not None:
                    # A job it left running still writes there: its pipes closed, its next
                    # line would kill it (SIGPIPE). Read on, logging nothing, until it
                    # closes its ends (or the server stops).
                    rest = asyncio.create_task(_read_on(reader, pipes))
                    self._reading_on.add(rest)
                    rest.add_done_callback(self._reading_on.discard)
                else:
                    reader.cancel()
                    for pipe in pipes:
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
        failed = code != 0 or timed_out
        if failed and last.line:
            message += f"; its last line on stderr: {last.line}"
        level = logging.ERROR if failed else logging.INFO
        log.log(level, "%s: %s", request_id, message)
        return TriggerResult(not failed, message, request_id)


async def _drain(stream: asyncio.StreamReader, sinks: tuple[Callable[[bytes], None], ...]) -> None:
    """Hand what ``stream`` brings to each of ``sinks`` until its end."""
    while chunk := await stream.read(65536):
        for sink in sinks:
            sink(chunk)


async def _read_on(reader: asyncio.Future[list[None]], pipes: list[asyncio.BaseTransport]) -> None:
    """Wait for ``reader`` to reach the end of ``pipes`` (or be cancelled), then close them."""
    try:
        await reader
    finally:
        reader.cancel()
        for pipe in pipes:
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


class _Budget:
    """The :data:`OUTPUT_CAP` bytes a run's output may put in the log, both streams
    together; what comes over it is counted, and said once when the run ends."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.taken = 0  # bytes under the cap: logged, or pending
        self.dropped = 0

    def take(self, chunk: bytes) -> bytes:
        """The part of ``chunk`` that may be logged (the rest is counted)."""
        room = OUTPUT_CAP - self.taken
        self.taken += min(room, len(chunk))
        self.dropped += max(0, len(chunk) - room)
        return chunk[:room]

    def close(self) -> None:
        """Say how much was cut, if anything was."""
        if self.dropped:
            log.info(
                "%s: output cut after %d bytes (%d more not logged)",
                self.request_id,
                OUTPUT_CAP,
                self.dropped,
            )
            self.dropped = 0


class _OutputLog:
    """One stream of a run's output, logged a line at a time as it comes: one line at
    most :data:`LINE_CAP` bytes (a longer one is logged in pieces of that size), within
    the run's :class:`_Budget`."""

    def __init__(self, request_id: str, budget: _Budget) -> None:
        self.request_id = request_id
        self.budget = budget
        self.pending = bytearray()  # the start of a line whose end has not come yet
        self.closed = False

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes the command wrote; log each line they complete (none once
        :meth:`close` was called: what a job left running writes after its run)."""
        if self.closed:
            return
        self.pending += self.budget.take(chunk)
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
        """Log what is left (a last line without its end); what comes after is not
        logged."""
        self.closed = True
        if self.pending:
            self._say(bytes(self.pending))
            self.pending.clear()

    def _say(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                log.info("%s: | %s", self.request_id, line)


# A terminal's escape sequences (colours, cursor moves, titles): they say nothing in a
# sentence, and are left out rather than shown as "\x1b[31m".
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]|\x9b[0-?]*[ -/]*[@-~]"
)
_KEPT = 4 * LAST_LINE_CHARS  # bytes kept of a line: enough for the characters shown


class _LastLine:
    """The last non-empty line a stream carried, followed to its end (not only within
    the log's cap), as one line fit for an answer: terminal escapes left out, any other
    control character written as Python writes it, at most :data:`LAST_LINE_CHARS`
    characters (the rest cut, said by ``...``)."""

    def __init__(self) -> None:
        self._current = bytearray()  # the start of the line under way, bounded
        self._last = b""
        self.line = ""

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the stream."""
        lines = re.split(rb"[\r\n]", chunk)
        for done in lines[:-1]:
            if len(self._current) < _KEPT:
                self._current += done[: _KEPT - len(self._current)]
            if self._current.strip():
                self._last = bytes(self._current)
            self._current.clear()
        if len(self._current) < _KEPT:
            self._current += lines[-1][: _KEPT - len(self._current)]

    def close(self) -> None:
        """The stream ended: its last line (one without its end counts) is :attr:`line`."""
        if self._current.strip():
            self._last = bytes(self._current)
        self._current.clear()
        text = _ESCAPE_SEQUENCE.sub("", self._last.decode("utf-8", "replace"))
        self.line = cut(one_line(text.replace("\t", " ").strip()), LAST_LINE_CHARS)
