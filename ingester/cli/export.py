"""``ingester export``: the history as CSV or JSON Lines, one row per version.

A thin click layer over :mod:`ingester.usage.export`. Reads only: never takes the history
lock. ``--from s3://BUCKET/PREFIX`` exports the mirror in an object store. Exit codes
as for the rest of the CLI: 0 written (damaged versions are skipped with a warning
each); 1 no history, or the output could not be written; 2 a usage error.
"""

from __future__ import annotations

import os
import stat
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import StorageError, describe_os_error, os_cause
from ..history.lock import latest_link_lock
from ..ops.outputs import locked_output, swept_lines
from ..ops.snapshot import SnapshotError, refuse_live_destination
from ..usage.export import (
    FORMATS,
    Row,
    Skipped,
    export_rows,
    inverted_bounds,
    select_versions,
    write_rows,
)
from .common import App, PathParam, fail, refuse_closed_stdout, say, say_recorded, time_option, warn
from .stores import history_source, open_history

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["export"]


def _warn(skipped: Skipped) -> None:
    try:
        warn(f"skipped damaged version {skipped.name}: {skipped.reason}")
    except OSError:
        # Standard error cannot take it (a full disk): the warning is lost, but the
        # export goes on; failing here would fail it as a write of its output.
        pass


@click.command()
@click.option(
    "--since",
    metavar="TIME",
    callback=time_option,
    help="Versions ingested at or after TIME (ISO-8601; without an offset, UTC).",
)
@click.option(
    "--until",
    metavar="TIME",
    callback=time_option,
    help="Versions ingested at or before TIME (ISO-8601; without an offset, UTC).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="csv",
    show_default=True,
    help="csv: RFC 4180 with a header row; jsonl: one JSON object per line.",
)
@click.option(
    "-o",
    "--output",
    metavar="FILE|-",
    type=PathParam(),
    default="-",
    show_default=True,
    help="Where to write; '-' is standard output. A FILE appears only once complete "
    "(written beside it under a temp name, fsynced, renamed over it); it must be a "
    "regular file or new, outside the history, the spool and the rejected folder, and "
    "neither the latest link nor its lock. "
    "A temp file that a killed export left beside it is removed.",
)
@history_source
@click.pass_obj
def export(
    app: App,
    since: datetime | None,
    until: datetime | None,
    fmt: str,
    output: str,
    source: str | None,
    endpoint_url: str | None,
) -> None:
    """Write one row per version, oldest first, with the payload's fields flattened.

    Columns: ingestedAt, lastUpdated, currentSession.percentageUsed,
    currentSession.resetsIn, currentSession.resetsAt, and the same three for
    weeklyLimits.allModels and weeklyLimits.sonnetOnly, isPartial, version. Times are UTC
    (ISO-8601, Z); resetsAt is resetsIn read as an instant (absolute wordings in
    --console-timezone), empty when unreadable; a section the payload lacks gives empty
    cells (null in JSON Lines).

    A damaged version is skipped with one warning line on stderr. Streams: memory
    does not grow with the history. Never takes the lock; works while a watcher runs.
    With --from, exports the mirror in an object store. Exits 0 when written, 1 when
    there is no history or the output cannot be written.
    See docs/page.md.
    """
    inverted = inverted_bounds(since, until, names=("--since", "--until"))
    if inverted is not None:
        raise click.UsageError(inverted)
    if output == "-":
        refuse_closed_stdout("the export")
    else:
        # Before the file is written: the line naming it is the record of what was.
        refuse_closed_stdout("the line saying what was exported", "redirect it")
    reader = open_history(app.settings, source, endpoint_url)
    try:
        every = [entry.name for entry in reader.list_versions()]
    except OSError as exc:
        raise fail(describe_os_error(exc)) from None
    names = select_versions(every, since, until)
    rows = export_rows(reader, names, on_skip=_warn, zone=app.settings.console_zone()[0])
    if output == "-":
        _to_stdout(rows, fmt)
        return
    target = Path(os.path.abspath(output))
    settings = app.settings
    try:
        # Renamed over the path: a version there would be lost, a file in the spool
        # would be taken for a drop. The same rule as for a snapshot's destination.
        refuse_live_destination(
            target, settings.history_dir, spool=settings.spool_dir, rejected=settings.rejected_dir
        )
    except SnapshotError as exc:
        raise fail(str(exc)) from None
    latest = settings.latest_path
    for live, what in (
        (latest, "the latest link"),
        (latest_link_lock(latest, "export").path, "the latest link's lock"),
    ):
        if _same_entry(target, live):
            # Renamed over it: the served snapshot (or the lock that keeps a second
            # writer of the link away) would be replaced by the export.
            raise fail(f"{output} is {what} {live}; give another file name")
    try:
        mode = os.lstat(target).st_mode
    except OSError:
        mode = None  # a new file; the write names any problem with the path
    if mode is not None and stat.S_ISDIR(mode):
        raise fail(f"{output} is a folder; give a file name")
    if mode is not None and not stat.S_ISREG(mode):
        # The file is renamed over the path: a device, FIFO or symlink there would be
        # replaced, not written to.
        raise fail(f"{output} is {_kind(mode)}; give a file name, or '-' for standard output")
    swept: list[str] = []
    try:
        with locked_output(target, swept=swept) as handle:
            count = write_rows(rows, handle, fmt)
    except StorageError as exc:
        for line in swept_lines(target.parent, swept):
            say_recorded(line, "leftovers removed, not said")
        raise fail(str(exc)) from None
    for line in swept_lines(target.parent, swept):
        say(line)
    say(f"exported {count} version(s) to {target}")


def _same_entry(one: Path, two: Path) -> bool:
    """Whether the paths ``one`` and ``two`` name one entry: the same name in the same
    folder, by any path to the folder (a symlink, a bind mount)."""
    if one.name != two.name:
        return False
    if os.path.abspath(one.parent) == os.path.abspath(two.parent):
        return True
    try:
        return os.path.samefile(one.parent, two.parent)
    except OSError:
        return False


def _kind(mode: int) -> str:
    """What a path that is neither a folder nor a regular file is, for the refusal."""
    if stat.S_ISLNK(mode):
        return "a symlink (the export would replace it, not write through it)"
    if stat.S_ISFIFO(mode):
        return "a FIFO, not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file"
    return "not a regular file"


def _to_stdout(rows: Iterator[Row], fmt: str) -> None:
    try:
        write_rows(rows, sys.stdout.buffer, fmt)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (e.g. '| head'): stop quietly, as other filters do, and
        # keep Python from complaining about the flush at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise click.exceptions.Exit(1) from None
    except OSError as exc:
        raise fail(f"cannot write to standard output: {os_cause(exc)}") from None
