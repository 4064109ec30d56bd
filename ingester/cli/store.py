"""The commands that write the history: ``init``, ``adopt``, ``ingest`` and ``cleanup``.

Each takes the history lock (a second writer is refused at once, naming the holder).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from ..clock import utc_now
from ..errors import NotRegularFile, PayloadRejected, StorageError, os_cause
from ..history.cleanup import CleanupIncomplete, CleanupNotCounted
from ..history.names import format_timestamp
from ..history.store import CacheNotRefreshed
from ..intake.spool import Spool
from ..ops.queries import ReportError, open_store
from ..payload.gate import check_payload
from ..runtime.signals import StopFlag, ignore_stop_signals, on_stop_signals
from ..settings.resolved import Settings
from .common import (
    App,
    PathParam,
    fail,
    read_limited,
    refuse_closed_stdout,
    say,
    say_recorded,
    warn,
)
from .quiet import SkipEvent
from .service import SpoolLinks, waiting_drop
from .stores import make_folder, writing_store

__all__ = ["adopt", "cleanup", "ingest", "init"]


def _make_spool_folders(s: Settings) -> None:
    """The spool, its ``tmp/`` and ``rejected/``; exit 1 naming the folder that fails."""
    for folder in (s.spool_dir, s.writers_tmp_dir, s.rejected_dir):
        try:
            make_folder(folder)
        except OSError as exc:
            raise fail(str(StorageError("create folder", exc.filename or folder, exc))) from None


def _check_claim_folder(s: Settings, history_dir: Path) -> None:
    """A ``.claimed/`` already there must be one the watcher will use (exit 1 naming
    what is wrong), or init would say all is well and the service refuse to start."""
    if not os.path.lexists(s.claimed_dir):
        return  # the watcher makes it, as its own user
    try:
        st = os.stat(history_dir)
        Spool(s.spool_dir, s.rejected_dir).check_claimed(None, (st.st_dev, st.st_ino))
    except OSError as exc:
        raise fail(str(exc)) from None


@click.command()
@click.pass_obj
def init(app: App) -> None:
    """Create the spool, history and metadata (idempotent).

    Run as root, each new folder takes the owner of the folder it is made in (and the
    lock file that of the history), so the service's own user can use them. The
    systemd service needs no init: it creates what it needs on start.
    """
    refuse_closed_stdout("the lines saying what was made", "redirect it")
    s = app.settings
    _make_spool_folders(s)
    with writing_store(s, "init", creates="root", caches_required=True) as store:
        meta = store.get_storage_metadata()
        _check_claim_folder(s, store.history_dir)
    say(f"spool:   {s.spool_dir}")
    say(f"history: {store.history_dir} ({meta.version_count} versions)")
    say(f"latest:  {store.latest_path}")


@click.command()
@click.pass_obj
def adopt(app: App) -> None:
    """Make a history written by the original sync server ours, in place (idempotent).

    Point --root (or --history-dir and --latest-path) at the original's files, e.g.
    server/claude-scraper. Versions lose their write bits (their bytes are never
    touched), a regular-file console-usage-synced.json becomes a link to the newest
    version (a snapshot in it that no version holds is first kept as a version of its
    own), and _metadata.json is rewritten from the versions, keeping the original's
    totals (a version adopt keeps is counted as created). Every step is durable and
    crash-safe: after a crash, run it again. Then checks the result as 'verify' does:
    exit 0 when clean, 1 when problems are left.
    A folder with no history to adopt (no version in it: a wrong --root, a copy nested
    one level too deep) exits 1 and nothing is created. Takes the history lock (refused
    while a watcher runs). See docs/migrating.md.
    """
    from ..ops.adopt import adopt_history, nothing_to_adopt
    from ..ops.verify import verify_history
    from .verify import summed

    refuse_closed_stdout("the report of what was adopted", "redirect it")
    s = app.settings
    # Before anything is created: the wrong folder is refused, not made a new history.
    wrong = nothing_to_adopt(s.root, s.history_dir, s.latest_path)
    if wrong is not None:
        raise fail(wrong)
    with writing_store(s, "adopt", initialize=False) as store:
        try:
            report = adopt_history(store, s.max_bytes)
        except StorageError as exc:
            raise fail(f"{exc} ({_adopt_advice(exc)})") from None
        meta = store.get_storage_metadata()
        checked = verify_history(store, utc_now())
    say(f"history: {store.history_dir} ({meta.version_count} versions)")
    if report.kept_latest:
        say(f"kept:    the snapshot in {store.latest_path.name} as version {report.kept_latest}")
    if report.read_only:
        say(f"modes:   {len(report.read_only)} version(s) made read-only")
    if report.latest_was:
        say(f"latest:  was {report.latest_was}; now a link to {meta.latest_version}")
    if report.metadata_was:
        say(
            f"metadata: rewritten (it was {report.metadata_was}); totals kept: "
            f"{meta.total_versions_created} created, {meta.total_versions_deleted} deleted"
        )
    if report.removed_temps:
        say(f"temps:   {len(report.removed_temps)} stale temp file(s) removed")
    if not report.changed:
        say("nothing to change: this history is already in this tool's form")
    if checked.ok:
        say("verify:  ok")
        return
    for subject, message in summed(checked.problems):
        say(f"PROBLEM  {subject}  {message}")
    say(f"verify:  {len(checked.problems)} problem(s) left; see 'ingester verify'")
    raise click.exceptions.Exit(1)


def _adopt_advice(exc: StorageError) -> str:
    """What to do after a failed step of adopt (what was done before it is kept)."""
    if exc.errno in (errno.EPERM, errno.EACCES):
        from ..ops.adopt import refused_advice

        return f"what was done is kept; {refused_advice(exc.path)}"
    if exc.errno == errno.EINVAL:
        return "what was done is kept"  # the message itself says what to do
    return "what was done is kept; run adopt again"


@click.command()
@click.argument("files", nargs=-1, required=True, type=PathParam(as_path=True))
@click.pass_obj
def ingest(app: App, files: tuple[Path, ...]) -> None:
    """Validate FILES and store each as a new version (the files are copied, not moved).

    Prints one line per file. Exits 1 if any file was rejected or unreadable; the
    valid ones are stored all the same. A file named again (by any path) is stored
    once, and said 'skipped' the second time. A drop waiting in the spool is rejected:
    the watcher takes it. Once a file is stored, a failure of the caches
    or of retention after it is a warning (exit 0): a retry would store it twice. A stop
    (Ctrl-C, SIGTERM, SIGHUP) ends the run after the file in hand, saying which were
    not stored (exit 1); once the last file is stored, it changes nothing. A file the
    history cannot store (a full disk) ends the run too: one error line names it and
    the files after it, none of which is tried (exit 1).
    Refuses while a watcher holds the history.
    Creates the history in a root that exists; a root that does not exist is refused
    (exit 1, nothing created).
    """
    # The lines are the record of what was stored: with nowhere to say them, nothing is
    # stored (a retry could not tell what is stored already, and would store it twice).
    refuse_closed_stdout("the lines saying what is stored", "redirect it")
    s = app.settings
    # A file is stored and said, or neither: a stop in between would leave one stored
    # that the output does not name, and storing the files again would store it twice.
    stop = StopFlag()
    on_stop_signals(stop.set)
    try:
        _ingest_files(s, files, stop)
    finally:
        ignore_stop_signals()


def _ingest_files(s: Settings, files: tuple[Path, ...], stop: StopFlag) -> None:
    rejected = stored = 0
    # The files stored, by identity: one named twice (by the same path or another, a
    # link) is one snapshot, and a second version of it would be an ingest twice.
    seen: dict[tuple[int, int, int, int], tuple[Path, str]] = {}
    spool = Spool(s.spool_dir, s.rejected_dir)
    links = SpoolLinks(spool.dir)  # listed once, at the first file with another link
    with writing_store(s, "ingest") as store:
        for n, path in enumerate(files):
            if stop.is_set():
                left = len(files) - n
                say(f"stopped: {left} file(s) not stored, from {path} on", err=True)
                raise click.exceptions.Exit(1)
            if waiting_drop(path, spool.dir, links):
                # The watcher stores it at its next start: ingested as well, it would be
                # stored twice.
                rejected += 1
                say(f"rejected {path}: a drop waiting in {spool.dir}; the watcher takes it")
                continue
            try:
                data = read_limited(path, s.max_bytes, regular_only=True)
                # The gate, not the model: the same verdict, without loading pydantic's model
                # machinery at start-up (about 50 ms; tests/test_gate.py holds the two together).
                check_payload(data, max_bytes=s.max_bytes)
            except NotRegularFile as exc:
                rejected += 1
                say(f"rejected {path}: {exc.strerror}")
                continue
            except OSError as exc:
                rejected += 1
                say(f"rejected {path}: cannot read: {os_cause(exc)}")
                continue
            except PayloadRejected as exc:
                rejected += 1
                say(f"rejected {path}: {exc.reason}")
                continue
            same = _identity(path)
            if same in seen:
                first, name = seen[same]
                line = f"skipped {path}: the same file as {first}, stored as {name}"
                if not say_recorded(line, f"skipped {path}, but the output failed"):
                    stop.set()
                continue
            try:
                version = store.save_version(data)
            except CacheNotRefreshed as exc:
                # Past the commit point: stored. Saying "not stored" would invite a retry,
                # and a retry would store the same payload twice.
                _remember(seen, same, path, exc.version.name)
                _say_stored(path, exc.version.name, len(data), stop)
                warn(f"stored, cache not refreshed: {exc}")
                stored += 1
                continue
            except StorageError as exc:
                # The history failed (a full disk, an I/O error): the files after this one
                # are not tried, and are named, so that the output accounts for every file
                # and the run can be resumed from the one that failed.
                rest = files[n + 1 :]
                more = f"; {len(rest)} more file(s) not stored, from {rest[0]} on" if rest else ""
                raise _NotStored(exc, f"{path} not stored: {exc}{more}") from None
            _remember(seen, same, path, version.name)
            _say_stored(path, version.name, len(data), stop)
            stored += 1
        try:
            store.cleanup_old_versions()
        except StorageError as exc:
            if not stored:
                raise fail(f"cleanup failed: {exc}") from None
            # What was stored is stored: exit 1 would invite a retry that stores it twice.
            # Retention runs again with the next write (or 'ingester cleanup').
            warn(f"stored, {_retention_outcome(exc)}: {exc}")
    if rejected:
        raise click.exceptions.Exit(1)


def _retention_outcome(exc: StorageError) -> str:
    """How far retention got before ``exc``: said before the error's own words, so that
    a retention that deleted versions is never reported as one that did nothing."""
    if isinstance(exc, CleanupNotCounted):
        return "retention applied"  # its words say the count could not be written
    if isinstance(exc, CleanupIncomplete) and exc.result.deleted:
        return "retention applied in part"
    return "retention not applied"


class _NotStored(StorageError):
    """The history's failure to store a file, said as ``line`` (by ``writing_store``)."""

    def __init__(self, exc: StorageError, line: str) -> None:
        super().__init__(exc.action, exc.path, exc.cause)
        self.line = line

    def __str__(self) -> str:
        return self.line


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    """``path``'s file as (device, inode, size, mtime in ns); ``None`` if it cannot be
    told (then it is never taken for another)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _remember(
    seen: dict[tuple[int, int, int, int], tuple[Path, str]],
    same: tuple[int, int, int, int] | None,
    path: Path,
    version: str,
) -> None:
    if same is not None:
        seen[same] = (path, version)


def _say_stored(path: Path, version: str, size: int, stop: StopFlag) -> None:
    """The line of a file stored. Output that fails stops the run before the next file:
    the lines are the record of what was stored, so the one that could not be printed
    is said on stderr instead."""
    line = f"stored {path} -> {version} ({size} bytes)"
    if not say_recorded(line, f"stored {path} -> {version}, but the output failed"):
        stop.set()


@click.command()
@click.option("--dry-run", is_flag=True, help="Show keep or delete, and why, for every version.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def cleanup(app: App, dry_run: bool, as_json: bool) -> None:
    """Apply retention now: keep the newest N versions or anything within D days.

    With --dry-run nothing changes (and no lock is taken): every version is listed
    with keep/delete and the reason: newest-N, within-D-days, future, expired, or
    not-mirrored (kept back for a mirror that has not uploaded it yet).

    Also removes rejected drops (with their reason files) older than
    --rejected-retention-days; --dry-run counts them. A missing root or history is
    refused (exit 1) and nothing is created. An expired version that cannot be
    deleted is kept and named (exit 1); the others are still deleted.
    """
    from ..intake.housekeeping import PruneIncomplete, PruneResult, prune_rejected

    # Before anything is deleted: the result is the one record of what was.
    refuse_closed_stdout(
        "the plan" if dry_run else "the lines saying what was deleted", "redirect it"
    )
    s = app.settings

    if dry_run:
        try:
            store = open_store(s)
            plan = store.plan_cleanup()
        except ReportError as exc:
            raise fail(str(exc), exc.code) from None
        except StorageError as exc:
            raise fail(str(exc)) from None
        try:
            pruned = prune_rejected(
                s.rejected_dir, s.rejected_retention_days, utc_now(), dry_run=True
            )
        except StorageError as exc:
            # The plan for the versions stands; a reader outside the service's group (the
            # read-only group) may not open the quarantine: those are just not counted.
            warn(f"rejected drops not counted: {exc}")
            pruned = PruneResult()
        if as_json:
            click.echo(
                json.dumps(
                    [
                        {
                            "name": d.name,
                            "timestamp": format_timestamp(d.timestamp),
                            "action": d.action,
                            "reason": d.reason,
                        }
                        for d in reversed(plan.decisions)
                    ],
                    indent=2,
                )
            )
            return
        width = max((len(d.name) for d in plan.decisions), default=4)
        say(f"{'VERSION':<{width}}  ACTION  REASON")
        for d in reversed(plan.decisions):
            say(f"{d.name:<{width}}  {d.action:<6}  {d.reason}")
        say(f"would delete {len(plan.delete)}, retain {len(plan.keep)}")
        if pruned.expired_pairs or pruned.kept:
            say(
                f"rejected: would remove {pruned.expired_pairs} drop(s) older than "
                f"{s.rejected_retention_days:g} days, keep {pruned.kept}"
            )
        return
    # The text result is the log line's words: printed on stdout, not logged a second time.
    quiet = contextlib.nullcontext() if as_json else _result_printed_here("cleanup")
    incomplete: CleanupIncomplete | None = None
    not_pruned: str | None = None
    with writing_store(s, "cleanup", creates="nothing") as store, quiet:
        try:
            result = store.cleanup_old_versions()
        except CleanupIncomplete as exc:
            # The rest of retention was applied: say what was done, then what was not.
            result, incomplete = exc.result, exc
        # Any other StorageError is said by writing_store, in one line with its warnings.
        # Removal runs with the lock held: only the lock holder quarantines drops, so a
        # pair cannot be half-replaced under us. Versions may be deleted already: a
        # failure here is said after the result, never in its place.
        try:
            pruned = prune_rejected(s.rejected_dir, s.rejected_retention_days, utc_now())
        except PruneIncomplete as exc:
            pruned, not_pruned = exc.result, f"rejected drops: {exc}"
        except StorageError as exc:
            pruned, not_pruned = PruneResult(), f"rejected drops: {exc}"
    if as_json:
        click.echo(
            json.dumps(
                {
                    "deleted": result.deleted,
                    "notDeleted": []
                    if incomplete is None
                    else [f.path.name for f in incomplete.failures],
                    "retained": result.retained,
                    "future": result.future,
                    "rejectedRemoved": pruned.removed,
                    "rejectedKept": pruned.kept,
                },
                indent=2,
            )
        )
    else:
        say(f"cleanup deleted {len(result.deleted)}, retained {result.retained}")
        if pruned.expired_pairs or pruned.kept:
            say(f"rejected: removed {pruned.expired_pairs}, kept {pruned.kept}")
    if incomplete is not None and not_pruned is not None:
        raise fail(f"{incomplete}; and {not_pruned}")
    if incomplete is not None or not_pruned is not None:
        raise fail(str(incomplete or not_pruned))


@contextmanager
def _result_printed_here(event: str) -> Iterator[None]:
    """Leave out the log line of ``event`` while the command prints the same result itself.

    The store logs each result for the service's journal; on a terminal a one-shot
    command would otherwise show it twice (stdout and stderr).
    """
    logger = logging.getLogger("ingester")
    skip = SkipEvent(event)
    for handler in logger.handlers:
        handler.addFilter(skip)
    try:
        yield
    finally:
        for handler in logger.handlers:
            handler.removeFilter(skip)
