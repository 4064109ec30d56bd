"""What every command module shares: the app object, one-line failures, reading a drop
from a file or stdin, and the text helpers of the output. Opening the history (the
writers' lock, the history a read command reads) is :mod:`ingester.cli.stores`.

Command modules import from here, never from :mod:`ingester.cli.group` (which imports them).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import click

from ..clock import AHEAD_TOLERATED, JUST_NOW, parse_iso_time
from ..errors import NotRegularFile, describe_os_error, os_cause
from ..runtime.logs import (
    escape_controls,
    escape_text,
    escape_values,
    logs_as_json,
    logs_to_the_journal,
    one_line,
)
from ..settings.bounds import Bounds
from ..settings.resolved import Settings

__all__ = [
    "App",
    "BoundedFloat",
    "PathParam",
    "align",
    "announce_exit",
    "describe_os_error",
    "echo_json",
    "exit_announced",
    "fail",
    "forget_announced",
    "human_size",
    "human_time",
    "last_words",
    "plugin_usage_line",
    "read_limited",
    "read_stream",
    "relative_age",
    "say_recorded",
    "silence_stdout",
    "time_option",
    "warn",
]

_CHUNK = 1 << 16


@dataclass(frozen=True)
class App:
    """What every command gets: the resolved settings and the logging choice."""

    settings: Settings
    log_format: str


def say(line: str, *, err: bool = False) -> None:
    """Print ``line`` as one line (to stderr with ``err``): a control character in a
    name (a newline, an escape) is written escaped, as the log writes it. A byte of a
    name that is not UTF-8 is written as ``\\xNN`` on stderr, and as itself on stdout,
    where a script may want the name (as ``ls`` into a pipe)."""
    text = one_line(line)
    click.echo(escape_text(text) if err else text, err=err)


def silence_stdout() -> None:
    """Send what is still to be printed to /dev/null: nothing more can be shown (the
    reader went away, or a write failed), and the flush at exit must not print
    ``Exception ignored ... BrokenPipeError``."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno() if sys.stdout is not None else 1)
        os.close(null)
    except (OSError, ValueError):
        pass


def say_recorded(line: str, warning: str) -> bool:
    """Print ``line``, the record of something done; whether it could be printed.

    When stdout fails (a closed pipe, a full disk), what was done still stands: stdout
    is silenced and ``warning: WARNING: CAUSE`` said on stderr instead, so that the
    command can end without calling it a failure (which would invite a retry).
    """
    try:
        say(line)
    except OSError as exc:
        silence_stdout()
        warn(f"{warning}: {os_cause(exc)}")
        return False
    return True


_ANNOUNCED: list[int] = []
"""The exit code a line already on stdout gave (``check``'s plugin line), if any."""


def plugin_usage_line(exc: click.UsageError, *, as_json: bool) -> None:
    """``check``'s answer to a usage error, on stdout: its plugin line, or with ``as_json``
    its JSON object (CRITICAL, code 2), so that a monitoring agent shows the cause."""
    summary = escape_text(one_line(f"usage error: {exc.format_message()}"))
    # Recorded first: the monitoring agent reads the exit code beside the line, and must
    # read CRITICAL even when the usage text on stderr cannot be written after it.
    announce_exit(2)
    if as_json:
        say(json.dumps({"status": "CRITICAL", "code": 2, "summary": summary}))
    else:
        say(f"INGESTER CRITICAL - {summary}")


def announce_exit(code: int) -> None:
    """Record ``code`` as the exit the line about to be written on stdout gives (a
    monitoring verdict), so that the run exits with it even when that write fails."""
    _ANNOUNCED.append(code)


def exit_announced(default: int) -> int:
    """The exit code a line on stdout already gave in this run, else ``default``."""
    return _ANNOUNCED[-1] if _ANNOUNCED else default


def forget_announced() -> None:
    """Start a run: an exit code announced by an earlier one (in the same process,
    as in tests) is no longer this run's."""
    _ANNOUNCED.clear()


CLOSED_AT_START: set[int] = set()
"""The standard descriptors (0, 1, 2) that were closed when the command started (now on
/dev/null): a command whose output is its result must not report success into nothing."""


def refuse_closed_stdout(what: str, remedy: str = "redirect it or give a file") -> None:
    """Exit 1 when standard output was closed at start: ``what`` would be lost unseen.

    Call it before anything is done: a closed stdout is given /dev/null at start, which
    takes every line without an error, so nothing later would notice the loss.
    """
    if 1 in CLOSED_AT_START:
        raise fail(f"standard output is closed: {what} would go nowhere; {remedy}")


def warn(message: str) -> None:
    """Print ``warning: message`` to stderr: something done, but not all of it.

    Where :func:`fail` logs its line (``--log-format json``, or stderr is the journal),
    this logs it at level WARNING, so that ``journalctl -p warning`` and a log shipper see
    it as what it is, not as information.
    """
    if _logs_lines():
        logging.getLogger("ingester").warning("%s", message, extra={"event": "warning"})
    else:
        say(f"warning: {message}", err=True)


def _logs_lines() -> bool:
    """Whether a command's closing lines go through the log (see :func:`fail`)."""
    ctx = click.get_current_context(silent=True)
    app = ctx.find_object(App) if ctx is not None else None
    return (app is not None and app.log_format == "json") or logs_to_the_journal()


def fail(message: str, code: int = 1) -> click.exceptions.Exit:
    """Print ``error: message`` to stderr and return the exit to raise.

    Under ``--log-format json`` it is logged instead, as one JSON object at level ERROR:
    a log shipper reading a service's stderr then gets every line in the one format. So
    it is where stderr is the journal (``<3>error: message``), which then files it as
    an error.
    """
    if _logs_lines():
        logging.getLogger("ingester").error("%s", message, extra={"event": "error"})
    else:
        say(f"error: {message}", err=True)
    return click.exceptions.Exit(code)


def last_words(message: str) -> None:
    """Say ``error: message`` on stderr for an error caught once the command has ended
    (no context left to ask for the log format): as a JSON object under ``--log-format
    json``, and with the journal's priority where stderr is the journal, as :func:`fail`
    does. Never raises."""
    try:
        if logs_as_json() or logs_to_the_journal():
            logging.getLogger("ingester").error("%s", message, extra={"event": "error"})
        else:
            say(f"error: {message}", err=True)
    except (OSError, ValueError):
        pass  # stderr itself is gone: the exit code is all that is left


class BoundedFloat(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """A click option type for a number within :class:`ingester.settings.bounds.Bounds`."""

    name = "number"

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return float(self.bounds.parse(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class FiniteRange(click.FloatRange):
    """click's ``FloatRange`` that also refuses ``nan`` and ``inf`` (a usage error, exit 2).

    ``float()`` reads both, and ``nan`` compares false with every bound, so a range
    alone lets it through: a threshold of ``nan`` would then never be reached.
    """

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class PathParam(click.Path):
    """A click type for a path on the command line, refusing an empty one (exit 2).

    An empty path means the current folder to some calls and "no such file" to others,
    so acting on it would touch what the user never named, or say something
    misleading: the usage error says the path is empty instead. ``as_path`` gives a
    :class:`~pathlib.Path`, else the text as given (``-`` for a standard stream);
    the other keywords are :class:`click.Path`'s checks of a path that exists.
    """

    def __init__(
        self, *, as_path: bool = False, dir_okay: bool = True, readable: bool = False
    ) -> None:
        super().__init__(
            dir_okay=dir_okay,
            readable=readable,
            allow_dash=not as_path,
            path_type=Path if as_path else None,
        )

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "":
            self.fail("the path is empty", param, ctx)
        return super().convert(value, param, ctx)


def read_stream(handle: IO[bytes], max_bytes: int) -> bytes:
    """Read at most ``max_bytes + 1`` bytes: enough to know the input is too large.

    Read in chunks, so that a large limit never allocates memory the input does not fill.
    """
    chunks: list[bytes] = []
    left = max_bytes + 1
    while left > 0:
        chunk = handle.read(min(left, _CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
    stat.S_IFSOCK: "a socket",
}


def read_limited(path: Path, max_bytes: int, *, regular_only: bool = False) -> bytes:
    """Read at most ``max_bytes + 1`` bytes of ``path`` (see :func:`read_stream`).

    With ``regular_only``, anything but a regular file raises :class:`NotRegularFile`
    without blocking: a FIFO is opened non-blocking and never read, so a command that
    holds the history lock cannot wait on a writer that never comes.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NONBLOCK if regular_only else 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if regular_only and not stat.S_ISREG(mode):
        os.close(fd)
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise NotRegularFile(errno.EINVAL, f"{kind}, not a regular file", os.fspath(path))
    with os.fdopen(fd, "rb") as handle:
        return read_stream(handle, max_bytes)


def time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """Click callback for a time option: ISO 8601, UTC without an offset (``None`` if not
    given); a bad one is click's usage error (exit 2) naming the option."""
    if value is None:
        return None
    try:
        return parse_iso_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def echo_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (the ``--json`` output of every command); a
    path's byte that is not UTF-8 as ``\\xNN``, as the log and the text output say it."""
    click.echo(json.dumps(escape_values(value), indent=2))


def relative_age(delta: timedelta) -> str:
    """``delta`` (now minus a time) in words: ``"42 s ago"``, ``"3 min ago"``.

    The page's rule, everywhere an age is printed: under :data:`~ingester.clock.JUST_NOW`
    old, or ahead of this clock by at most :data:`~ingester.clock.AHEAD_TOLERATED` (a
    scraper whose clock runs a little fast), is ``"just now"``; further ahead is said as
    it is: ``"2 days ahead of the clock"``.
    """
    if -AHEAD_TOLERATED <= delta < JUST_NOW:
        return "just now"
    seconds = abs(delta.total_seconds())
    if seconds < 60:
        words = f"{int(seconds)} s"
    elif seconds < 3600:
        words = f"{int(seconds // 60)} min"
    elif seconds < 48 * 3600:
        hours, rest = divmod(int(seconds), 3600)
        minutes = rest // 60
        words = f"{hours} h {minutes} min" if minutes else f"{hours} h"
    else:
        days = int(seconds // 86400)
        words = f"{days} days"
    return f"{words} ahead of the clock" if delta < timedelta(0) else f"{words} ago"


def human_time(stamp: datetime | None) -> str:
    """``2026-11-28 10:30:00`` (UTC), or ``-``."""
    if stamp is None:
        return "-"
    # isoformat, not strftime: strftime writes year 1 as "1", not "0001".
    return stamp.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="seconds")


def human_size(size: int | None) -> str:
    """``312 B``, ``1.2 KiB``, ``3.4 MiB``, or ``-``."""
    if size is None:
        return "-"
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def align(rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> list[str]:
    """Rows of cells as lines with aligned columns (two spaces apart, no trailing blanks).

    Columns whose index is in ``right`` are right-aligned (sizes, counts). A control
    character in a cell (a newline in a limit's or a file's name) is shown escaped,
    ``\\n``, so that each row stays one line.
    """
    if not rows:
        return []
    rows = [[escape_controls(cell) for cell in row] for row in rows]
    right_cols = set(right)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right_cols else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines
