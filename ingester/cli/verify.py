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
from ..ops.adopt import ADOPT_ADVICE
from ..ops.verify import Finding, VerifyReport, repair_modes, repaired_between, verify_history
from ..settings.resolved import Settings
from .common import App, align, echo_json, fail, reading_store, say, writing_store

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
        more = f" (and {len(failures) - 1} more version(s) like it)" if len(failures) > 1 else ""
        raise fail(f"{failures[0]}{more}")
    if not report.ok:
        raise click.exceptions.Exit(1)


def _repair(settings: Settings, before: VerifyReport) -> tuple[VerifyReport, list[StorageError]]:
    # writing_store takes the lock (or refuses, naming the holder) and runs
    # HistoryStore.initialize: temps swept, metadata and latest link rebuilt.
    with writing_store(settings, "verify --repair", creates="nothing") as store:
        failures = repair_modes(store, before.problems)
        store.load()
        after = verify_history(store, utc_now())
    after.repaired = repaired_between(before, after)
    # A version --repair just failed on (immutable, another owner's) is not offered the
    # same repair again: the error line after the report says why, and it needs a hand.
    failed = {failure.path.name for failure in failures}
    after.problems = [
        replace(f, repairable=False) if f.kind == "writable-version" and f.subject in failed else f
        for f in after.problems
    ]
    return after, failures


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
    return {
        "kind": finding.kind,
        "subject": finding.subject,
        "message": finding.message,
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
