"""``ingester verify``: the findings about a history, and ``--repair`` for those it fixes.

A thin click layer over :mod:`ingester.ops.verify`: the findings as aligned lines
(identical ones summed up, :func:`summed`) or as the ``--json`` object. Without
``--repair`` it never takes the history lock and never writes, so it works on a
read-only copy or a restored backup alone; ``--repair`` takes the lock.

Exit codes: 0 clean; 1 no history, the lock refused (``--repair``), or problems are
left; 2 a usage error.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import click

from ..clock import utc_now
from ..errors import StorageError, describe_os_error
from ..history.metadata_file import METADATA_NAME
from ..history.names import is_version_name
from ..ops.adopt import ADOPT_ADVICE, unsafe_latest
from ..ops.verify import Finding, VerifyReport, repair_modes, repaired_between, verify_history
from ..runtime.logs import escape_text
from ..settings.resolved import Settings
from .common import App, align, echo_json, fail, refuse_closed_stdout, say
from .stores import reading_store, writing_store

__all__ = ["SUMMED_FROM", "summed", "verify", "verify_json"]


@click.command()
@click.option(
    "--repair",
    is_flag=True,
    help="Rebuild the metadata and latest link, remove stale temp files, make writable "
    "versions read-only. Never deletes or rewrites a version. Takes the history lock.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one object).")
@click.pass_obj
def verify(app: App, repair: bool, as_json: bool) -> None:
    """Check the history: every version parses and validates, names, modes, metadata,
    the latest link, stale temp files.

    Works on a copy of the history alone (no spool, no watcher), e.g. a restored
    backup: 'ingester --root RESTORED verify'. Exits 0 when clean, 1 when problems
    are left. Future-dated versions are reported as warnings.
    """
    refuse_closed_stdout("the report", "redirect it")
    store = reading_store(app.settings)
    try:
        report = verify_history(store, utc_now())
    except OSError as exc:
        raise fail(describe_os_error(exc)) from None
    failures: list[StorageError] = []
    if repair:
        report, failures = _repair(app.settings, report)
    if as_json:
        echo_json(verify_json(report))
    else:
        for line in _verify_lines(report):
            say(line)
    if failures:
        # After the report: what was repaired is said, then why the rest was not.
        raise fail(f"{failures[0]}{_more(failures)}")
    if not report.ok:
        raise click.exceptions.Exit(1)


def _repair(settings: Settings, before: VerifyReport) -> tuple[VerifyReport, list[StorageError]]:
    # writing_store takes the lock (or refuses, naming the holder); the store is then
    # initialized here: temps swept, metadata and latest link rebuilt. A command that
    # only uses the caches may go on when they cannot be written; for this one writing
    # them is the job, and a write whose fsync failed is a failed write (exit 1), even
    # where the file already reads back as repaired.
    with writing_store(settings, "verify --repair", creates="nothing", initialize=False) as store:
        problem = unsafe_latest(store)
        if problem is not None:
            raise fail(problem)
        init = store.initialize()
        modes = repair_modes(store, before.problems)
        failures = init.cache_errors + modes
        store.load()
        after = verify_history(store, utc_now())
    # A cache that reads back right after a write whose fsync failed is not repaired:
    # a crash may undo it. It stays a problem, so the report never says "ok" for it.
    undurable = []
    if init.metadata_error is not None:
        undurable.append(Finding("metadata", METADATA_NAME, _NOT_DURABLE, True))
    if init.latest_error is not None:
        undurable.append(Finding("latest-link", os.fspath(store.latest_path), _NOT_DURABLE, True))
    undurable += [
        Finding("writable-version", f.path.name, _NOT_DURABLE_MODE)
        for f in modes
        if f.action == "fsync"
    ]
    # A version --repair just failed on (immutable, another owner's), or a cache it
    # could not write (a history folder that refuses writes), is not offered the same
    # repair again: the error line after the report says why, and it needs a hand.
    failed = {failure.path.name for failure in failures}
    caches_failed = {
        "metadata": init.metadata_error is not None,
        "latest-link": init.latest_error is not None,
    }
    after.problems = [
        replace(f, repairable=False)
        if (f.kind == "writable-version" and f.subject in failed) or caches_failed.get(f.kind)
        else f
        for f in after.problems
    ]
    # Rewritten but not durably (a failed fsync) is offered again: that write may succeed.
    left = {f.key for f in after.problems}
    after.problems += [f for f in undurable if f.key not in left]
    after.repaired = repaired_between(before, after)
    return after, failures


_NOT_DURABLE = "rewritten, but not durably (see the error line): a crash may undo it"
_NOT_DURABLE_MODE = "made read-only, but not durably (see the error line): a crash may undo it"


def _more(failures: list[StorageError]) -> str:
    """The end of the one error line that names ``failures[0]``: how many more failed."""
    if len(failures) < 2:
        return ""
    if all(is_version_name(f.path.name) for f in failures):
        return f" (and {len(failures) - 1} more version(s) like it)"
    return f" (and {len(failures) - 1} more failed repair(s))"


SUMMED_FROM = 4
"""Identical findings (same kind and words) this many times or more are shown as one
line: the first subject, "and N more", the words. ``--json`` lists each."""


def summed(findings: list[Finding]) -> list[tuple[str, str]]:
    """``(subject, message)`` rows, identical findings of :data:`SUMMED_FROM` or more
    summed up in the place of the first of them."""
    groups: dict[tuple[str, str], list[Finding]] = {}
    for f in findings:
        groups.setdefault((f.kind, f.message), []).append(f)
    rows = []
    for same in groups.values():
        if len(same) >= SUMMED_FROM:
            rows.append((f"{same[0].subject} and {len(same) - 1} more", same[0].message))
        else:
            rows += [(f.subject, f.message) for f in same]
    return rows


def _verify_lines(r: VerifyReport) -> list[str]:
    lines = [f"checked {r.checked} version(s) in {r.history}"]
    rows = [["repaired", subject, f"was: {message}"] for subject, message in summed(r.repaired)]
    rows += [["PROBLEM", subject, message] for subject, message in summed(r.problems)]
    rows += [["warning", subject, message] for subject, message in summed(r.warnings)]
    lines += align(rows)
    if r.ok:
        lines.append("ok")
    elif r.adopt_advised:
        lines.append(
            f"{len(r.problems)} problem(s); {r.latest_path.name} is a file, not a link: a "
            f"history written by the original server? {ADOPT_ADVICE}"
        )
    else:
        fixable = sum(1 for f in r.problems if f.repairable)
        tail = f"; {fixable} can be fixed with 'ingester verify --repair'" if fixable else ""
        lines.append(f"{len(r.problems)} problem(s){tail}")
    return lines


def _finding_json(finding: Finding) -> dict[str, Any]:
    # A name's byte that is not UTF-8 as \xNN, as the text form on stderr and the log
    # say it: JSON's "\udcff" names no byte, and strict parsers refuse it.
    return {
        "kind": finding.kind,
        "subject": escape_text(finding.subject),
        "message": escape_text(finding.message),
        "repairable": finding.repairable,
    }


def verify_json(report: VerifyReport) -> dict[str, Any]:
    """The ``verify --json`` object."""
    return {
        "ok": report.ok,
        "history": os.fspath(report.history),
        "latestPath": os.fspath(report.latest_path),
        "checkedVersions": report.checked,
        "problems": [_finding_json(f) for f in report.problems],
        "warnings": [_finding_json(f) for f in report.warnings],
        "repaired": [_finding_json(f) for f in report.repaired],
        "writerPid": report.writer_pid,
        "adoptAdvised": report.adopt_advised,
    }
