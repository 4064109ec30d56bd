"""What every command module shares: the app object, one-line failures, the lock for
writers, the history a read command reads (``--from``, or the local store loaded),
reading a drop from a file or stdin, and the text helpers of the output.

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from ..clock import AHEAD_TOLERATED, JUST_NOW, parse_iso_time
from ..errors import NotRegularFile, ReportError, StorageError, describe_os_error, os_cause
from ..history.lock import HistoryLock, LockHeld, latest_link_lock, latest_link_refused
from ..history.store import HistoryStore
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

if TYPE_CHECKING:
    from ..history.base import HistoryReader
    from ..mirror.s3_history import S3History

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
    "history_source",
    "human_size",
    "human_time",
    "last_words",
    "make_folder",
    "open_history",
    "plugin_usage_line",
    "read_limited",
    "read_stream",
    "reading_store",
    "relative_age",
    "s3_reader",
    "say_recorded",
    "silence_stdout",
    "time_option",
    "warn",
    "writing_store",
]

_CHUNK = 1 << 16
F = TypeVar("F", bound=Callable[..., Any])


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


def make_folder(folder: Path) -> None:
    """Create ``folder`` and any missing parents; raise ``OSError``.

    Run as root (an operator preparing the service's folders), each new folder takes
    the owner and group of the folder it is made in, so that the service, running as
    its own user, can use what was made for it.
    """
    missing: list[Path] = []
    probe = folder
    while not probe.is_dir() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise  # the callers' StorageError("create folder") words it
            continue
        if os.geteuid() == 0:
            parent = path.parent.stat()
            if (parent.st_uid, parent.st_gid) != (0, 0):
                os.chown(path, parent.st_uid, parent.st_gid)


def history_source(command: F) -> F:
    """Give a read command ``--from s3://BUCKET/PREFIX`` and ``--endpoint-url``.

    The command gets them as ``source`` and ``endpoint_url``; :func:`open_history`
    makes the reader.
    """
    command = click.option(
        "--endpoint-url",
        metavar="URL",
        help="S3 endpoint for --from. [env AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL]",
    )(command)
    return click.option(
        "--from",
        "source",
        metavar="s3://BUCKET/PREFIX",
        help="Read the copy 'ingester mirror' keeps in an object store instead of the "
        "local history (see docs/mirror.md).",
    )(command)


def s3_history(source: str, endpoint_url: str | None) -> S3History:
    """The reader of ``--from s3://BUCKET/PREFIX``.

    A malformed ``source`` is a usage error (:class:`click.BadParameter`); raises
    :class:`~ingester.errors.ObjectStoreUnavailable` when boto3 is not installed.
    """
    from ..mirror.objectstore import make_client, parse_target
    from ..mirror.s3_history import S3History

    try:
        target = parse_target(source)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--from") from None
    return S3History(make_client(endpoint_url), target)


def s3_reader(source: str, endpoint_url: str | None) -> S3History:
    """:func:`s3_history`, with a missing boto3 as the command's one-line failure."""
    from ..errors import ObjectStoreUnavailable

    try:
        return s3_history(source, endpoint_url)
    except ObjectStoreUnavailable as exc:
        raise fail(str(exc)) from None


def open_history(
    settings: Settings, source: str | None = None, endpoint_url: str | None = None
) -> HistoryReader:
    """The history a read command reads: ``--from``'s object store, else the local folder.

    A local history that cannot be reached (no root, no history, a folder this user
    may not enter) is refused here in the words every command uses; an object store is
    first reached by the command's first read (an ``OSError`` naming it).
    """
    if source is not None:
        return s3_reader(source, endpoint_url)
    if endpoint_url is not None:
        raise click.UsageError("--endpoint-url is for --from s3://BUCKET/PREFIX")
    from ..history.local import LocalHistory
    from ..ops.queries import history_problem

    problem = history_problem(settings)
    if problem is not None:
        raise fail(problem)
    return LocalHistory(settings.history_dir)


def reading_store(settings: Settings) -> HistoryStore:
    """The local history, scanned and loaded without writing anything or taking the lock.

    A history that cannot be reached or listed is the command's one-line failure (exit
    1, or the code its :class:`~ingester.errors.ReportError` carries).
    """
    from ..ops.queries import open_store

    try:
        return open_store(settings)
    except ReportError as exc:
        raise fail(str(exc), exc.code) from None


@contextmanager
def writing_store(
    settings: Settings,
    purpose: str,
    *,
    initialize: bool = True,
    creates: str = "history",
    caches_required: bool = False,
) -> Iterator[HistoryStore]:
    """The store with the history lock held; clear errors instead of tracebacks.

    ``creates`` says what the command may create when it is missing: ``"root"`` (init:
    the root, its history and all), ``"history"`` (a history inside a root that exists)
    or ``"nothing"`` (the history must exist). What it may not create is refused in
    the words every read command uses, exit 1, before anything is made: a mistyped
    --root must not become a new empty history that reports success.

    With ``initialize`` (the default) the store is initialized first (temps swept,
    metadata and latest link repaired), unless the latest path is a file holding a
    snapshot no version holds: that would be lost, so the command is refused with a
    pointer to ``ingester adopt``. A latest link or metadata that cannot be repaired is
    a warning (they are caches), unless ``caches_required`` (init, whose job they are):
    then the command fails with that error.
    """
    from ..ops.adopt import unsafe_latest
    from ..ops.queries import history_problem, root_problem

    store = settings.store()
    errors: list[StorageError] = []
    if creates == "nothing":
        problem = history_problem(settings)
    elif creates == "history":
        problem = root_problem(settings, store.history_dir)
    else:
        problem = None
    if problem is not None:
        raise fail(problem)
    in_body = False
    try:
        make_folder(store.history_dir)
        with HistoryLock(store.lock_path, purpose), _latest_link_kept(store, purpose):
            if initialize:
                problem = unsafe_latest(store)
                if problem is not None:
                    raise fail(problem)
                errors = store.initialize().cache_errors
                if errors and caches_required:
                    raise errors[0]
            in_body = True  # an OSError from now on is the command's own
            failure: StorageError | None = None
            try:
                yield store
            except StorageError as exc:
                failure = exc
                raise
            finally:
                for error in errors:
                    # The latest link and metadata are caches: say so, and go on; said
                    # once the command is done, and not at all when its failure is the
                    # same fault (one folder refusing one way): one fault, one line.
                    if failure is None or not _same_fault(error, failure):
                        warn(str(error))
    except LockHeld as exc:
        hint = "; use 'ingester submit' to hand a watcher drops" if purpose == "ingest" else ""
        raise fail(f"{exc}{hint}") from None
    except StorageError as exc:
        if purpose == "adopt" and not in_body and exc.errno in (errno.EACCES, errno.EPERM):
            # A history copied as root and not yet handed over (the chown before adopt
            # skipped): the lock is the first thing it is refused.
            from ..ops.adopt import refused_advice

            raise fail(f"{exc} (nothing was done; {refused_advice(exc.path)})") from None
        raise fail(str(exc)) from None
    except OSError as exc:
        if in_body:
            raise  # not a folder it could not make
        where = exc.filename or store.history_dir
        raise fail(str(StorageError("create folder", where, exc))) from None


def _same_fault(warning: StorageError, failure: StorageError) -> bool:
    """Whether ``warning`` and ``failure`` are one fault: the same cause in one folder."""
    return warning.errno == failure.errno and warning.path.parent == failure.path.parent


@contextmanager
def _latest_link_kept(store: HistoryStore, purpose: str) -> Iterator[None]:
    """Hold the latest link's lock (taken after the history's) while a command writes.

    Refused, in one line naming the holder, when a process of another history given
    the same latest path holds it: this command would repair, remove or re-point the
    link that process keeps. A lock file that cannot be made (the link's folder missing
    or not writable) is no refusal: the link is a cache, and its folder's problem is
    said as the command's warning.
    """
    lock = latest_link_lock(store.latest_path, purpose)
    try:
        lock.acquire()
    except LockHeld as exc:
        raise fail(latest_link_refused(store.latest_path, exc)) from None
    except StorageError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


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
