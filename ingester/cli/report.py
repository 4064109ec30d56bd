"""The operator commands: ``status``, ``list``, ``show`` and ``verify``.

A thin click layer over :mod:`ingester.ops.queries`: each command asks a query and renders
its dataclasses as aligned text or as JSON. The read commands (all of these but
``verify --repair``) never take the history lock and never write, so they work while a
watcher runs and on a read-only copy of the history; ``list`` and ``show`` also read the
copy in an object store (``--from s3://BUCKET/PREFIX``).

Exit codes as for the rest of the CLI: 0 fine; 1 the command ran and the answer is
"no" (no history, no such version, problems found); 2 a usage error.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import click

from ..clock import parse_iso_time, utc_now
from ..errors import (
    PERMISSION_ADVICE,
    StorageError,
    VersionNotFound,
    VersionTooLarge,
    describe_os_error,
    is_permission_problem,
)
from ..history.base import HistoryReader, at_or_before, latest_name
from ..history.names import format_timestamp, parse_timestamp_from_filename
from ..history.store import HistoryStore
from ..ops.adopt import ADOPT_ADVICE
from ..ops.queries import (
    STALE_AFTER,
    ReportError,
    Status,
    VersionInfo,
    list_report,
    open_store,
    payload_problem,
    resolve_version_name,
)
from ..ops.queries import status as status_query
from ..ops.verify import Finding, VerifyReport, repair_modes, repaired_between, verify_history
from ..settings.resolved import Settings
from .common import (
    App,
    align,
    echo_json,
    fail,
    history_source,
    human_size,
    human_time,
    open_history,
    relative_age,
    say,
    time_option,
    writing_store,
)

__all__ = ["list_versions", "show", "status", "status_json", "summed", "verify", "verify_json"]


def _open(settings: Settings) -> HistoryStore:
    try:
        return open_store(settings)
    except ReportError as exc:
        raise fail(str(exc), exc.code) from None


def _metadata_age(iso_text: str | None, now: datetime) -> str:
    if iso_text is None:
        return "-"
    try:
        return relative_age(now - parse_iso_time(iso_text))
    except ValueError:
        return "unreadable time"  # e.g. a hand-edited _metadata.json; verify reports it


# -- status ------------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one object).")
@click.pass_obj
def status(app: App, as_json: bool) -> None:
    """Show the metadata, the latest version, the spool backlog and whether a watcher runs.

    Never takes the lock and never writes. Exits 1 when there is no history yet
    (run 'ingester init').
    """
    now = utc_now()
    store = _open(app.settings)
    try:
        report = status_query(app.settings, store, now)
    except OSError as exc:
        raise fail(describe_os_error(exc)) from None
    if as_json:
        echo_json(status_json(report))
        return
    for line in _status_lines(report, now):
        say(line)


def _age_words(stamp: datetime | None, now: datetime) -> str:
    return "-" if stamp is None else relative_age(now - stamp)


def _advice(problem: str, adopt: bool = False) -> str:
    """What to do about a cache problem: a repair (``adopt`` for a history the original
    server wrote), unless this user just may not read it."""
    if is_permission_problem(problem):
        return PERMISSION_ADVICE
    return "run 'ingester adopt'" if adopt else "run 'ingester verify --repair'"


def _status_lines(r: Status, now: datetime) -> list[str]:
    meta = r.metadata
    rows: list[list[str]] = [["history", os.fspath(r.history)]]
    count = f"{meta.version_count}"
    if meta.version_count:
        count += f" (oldest {meta.oldest_timestamp}, newest {meta.newest_timestamp})"
    rows.append(["versions", count])
    if meta.future_versions:
        rows.append(["future", f"{meta.future_versions} dated ahead of the clock (see verify)"])
    rows.append(
        [
            "totals",
            f"{meta.total_versions_created} created, {meta.total_versions_deleted} deleted; "
            "last cleanup "
            + (_metadata_age(meta.last_cleanup, now) if meta.last_cleanup else "never"),
        ]
    )
    meta_problem = r.metadata_problem
    if meta_problem is None:
        meta_words = "ok"
    elif meta_problem.startswith("unreadable") and not is_permission_problem(meta_problem):
        # A file that exists but cannot be read holds totals no repair can rebuild.
        meta_words = f"{meta_problem} (its totals cannot be rebuilt; fix the cause)"
    else:
        meta_words = f"{meta_problem} ({_advice(meta_problem, r.adopt_advised)})"
    rows.append(["metadata", meta_words])
    latest = r.latest
    if latest is None:
        rows.append(["latest", "none yet"])
    else:
        info = latest.info
        rows.append(["latest", f"{info.name} (ingested {_age_words(info.ingested_at, now)})"])
        if is_permission_problem(info.error):
            rows.append(["", f"{info.error}: {PERMISSION_ADVICE}"])
        elif info.error:
            rows.append(["", f"DAMAGED: {info.error}"])
        else:
            updated = (
                f"lastUpdated {format_timestamp(info.last_updated)} "
                f"({_age_words(info.last_updated, now)})"
            )
            if latest.stale:
                updated += f", STALE (older than {int(STALE_AFTER.total_seconds() // 60)} min)"
            if info.is_partial:
                updated += ", partial"
            rows.append(["", updated])
    problem = r.latest_link_problem
    link = os.fspath(r.latest_link)
    if r.adopt_advised:
        link += f": {problem or 'a file, not a link'} ({_advice(problem or '', adopt=True)})"
    elif problem is not None:
        link += f": {problem}"
    rows.append(["latest link", link])
    spool = r.spool
    if not spool.exists:
        why = f": {spool.problem}" if spool.problem else ""
        rows.append(["spool", f"{spool.path} (missing{why})"])
    elif spool.problem:
        rows.append(["spool", f"{spool.path} ({spool.problem}); backlog unknown"])
    else:
        backlog = f"{spool.backlog} waiting"
        if spool.claimed_problem:
            backlog += f" (in flight not counted: {spool.claimed_problem})"
        elif spool.claimed:
            backlog += f" ({spool.claimed} in flight)"
        if spool.oldest_drop_at:
            backlog += f", oldest {_age_words(spool.oldest_drop_at, now)}"
        rows.append(["spool", backlog])
    rejected = r.rejected
    if rejected.problem:
        rows.append(["rejected", f"{rejected.path} ({rejected.problem})"])
    else:
        rows.append(
            [
                "rejected",
                f"{rejected.count} in {rejected.path} "
                f"(removed after {rejected.retention_days:g} days)",
            ]
        )
    lock = r.lock
    if lock.unknown is not None and lock.held:
        how = f", {lock.command}" if lock.command else ""
        rows.append(
            [
                "watcher",
                f"pid {lock.pid}{how} holds the history; whether it reads this spool cannot "
                f"be told ({lock.unknown})",
            ]
        )
    elif lock.unknown is not None:
        rows.append(["watcher", f"cannot be told ({lock.unknown})"])
    elif lock.watcher_running:
        how = f", {lock.command}" if lock.command else ""
        rows.append(["watcher", f"running (pid {lock.pid}{how})"])
    elif lock.other_spool and lock.command:
        rows.append(
            [
                "watcher",
                f"not running on this spool; pid {lock.pid} ({lock.command}) "
                "holds the history but reads another spool",
            ]
        )
    elif lock.other_spool:
        rows.append(
            [
                "watcher",
                f"not running on this spool; pid {lock.pid} holds the history (it left no "
                "note saying what it is) but not this spool's lock",
            ]
        )
    elif lock.held:
        rows.append(
            ["watcher", f"not running; history locked by '{lock.command}' (pid {lock.pid})"]
        )
    else:
        rows.append(["watcher", "not running"])
    if r.mirror is not None:
        rows.append(["mirror", _mirror_words(r.mirror, now)])
    if r.adopt_advised:
        rows.append(["advice", f"a history written by the original server? {ADOPT_ADVICE}"])
    lines = align(rows)
    lines.append("")
    lines.append("settings:")
    setting_rows = [
        [f"  {name}", str(item["value"]), item["source"]] for name, item in r.settings.items()
    ]
    lines += align(setting_rows)
    return lines


def _mirror_words(m: dict[str, Any], now: datetime) -> str:
    target = m["target"] or "target unknown"  # a state file that cannot be read
    words = f"{target}: {m['waiting']} version(s) waiting"
    oldest = parse_timestamp_from_filename(m["oldestWaiting"] or "")
    if oldest is not None:
        words += f" (oldest {relative_age(now - oldest)})"
    if m["state"] != "ok":
        words += f"; {_MIRROR_STATES.get(m['state'], m['state'])}"
        if m["detail"]:
            words += f" ({m['detail']})"
        if m["since"]:
            words += f" since {_metadata_age(m['since'], now)}"
    words += f"; {'running (pid ' + str(m['pid']) + ')' if m['running'] else 'not running'}"
    return words


_MIRROR_STATES = {
    "unreachable": "object store unreachable",
    "throttled": "object store throttling",
    "server-error": "object store failing",
    "denied": "object store refused the credentials",
    "no-bucket": "bucket does not exist",
    "rejected": "object store refused a request",
    "never-run": "the mirror has not run yet",
}


def _rounded(seconds: float | None) -> float | None:
    return round(seconds, 3) if seconds is not None else None


def status_json(s: Status) -> dict[str, Any]:
    """The ``status --json`` object."""
    latest: dict[str, Any] | None = None
    if s.latest is not None:
        info = s.latest.info
        latest = {
            "name": info.name,
            "ingestedAt": format_timestamp(info.ingested_at),
            "ingestedAgeSeconds": _rounded(s.latest.ingested_age),
            "size": info.size,
            "lastUpdated": format_timestamp(info.last_updated),
            "lastUpdatedAgeSeconds": _rounded(s.latest.last_updated_age),
            "stale": s.latest.stale,
            "isPartial": info.is_partial,
            "error": info.error,
        }
    spool = s.spool
    oldest_age = (s.now - spool.oldest_drop_at).total_seconds() if spool.oldest_drop_at else None
    running = s.lock.watcher_running
    return {
        "now": format_timestamp(s.now),
        "history": os.fspath(s.history),
        "metadata": s.metadata.model_dump(by_alias=True),
        "metadataProblem": s.metadata_problem,
        "futureVersions": s.metadata.future_versions,
        "latest": latest,
        "latestLink": {"path": os.fspath(s.latest_link), "problem": s.latest_link_problem},
        "adoptAdvised": s.adopt_advised,
        "staleAfterSeconds": int(STALE_AFTER.total_seconds()),
        "spool": {
            "path": os.fspath(spool.path),
            "exists": spool.exists,
            "backlog": spool.backlog,
            "waiting": spool.waiting,
            "claimed": spool.claimed,
            "oldestDropAt": format_timestamp(spool.oldest_drop_at),
            "oldestDropAgeSeconds": _rounded(oldest_age),
            "problem": spool.problem,
            "claimedProblem": spool.claimed_problem,
        },
        "rejected": {
            "path": os.fspath(s.rejected.path),
            "count": s.rejected.count,
            "problem": s.rejected.problem,
            "retentionDays": s.rejected.retention_days,
        },
        "watcher": {
            "running": running,
            "pid": s.lock.pid if running else None,
            "otherSpool": s.lock.other_spool,
            "problem": s.lock.unknown,
        },
        "lock": {"held": s.lock.held, "pid": s.lock.pid, "command": s.lock.command},
        "mirror": s.mirror,
        "settings": s.settings,
    }


# -- list --------------------------------------------------------------------------------


@click.command("list")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Show the newest N only.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (an array).")
@history_source
@click.pass_obj
def list_versions(
    app: App, limit: int | None, as_json: bool, source: str | None, endpoint_url: str | None
) -> None:
    """List versions, newest first: name, ingest time, size, lastUpdated, isPartial.

    Each listed file is read; a damaged one is shown with an error marker (and a
    warning on stderr) instead of its fields. One that retention deletes meanwhile is
    left out: it is no longer in the history. Never takes the lock. With --from, the
    versions of the mirror in an object store.
    """
    now = utc_now()
    reader = open_history(app.settings, source, endpoint_url)
    try:
        infos = list_report(reader, limit, now)
    except OSError as exc:
        raise fail(describe_os_error(exc)) from None
    denied = sum(1 for i in infos if is_permission_problem(i.error))
    damaged = sum(1 for i in infos if i.error) - denied
    if as_json:
        echo_json([version_json(i) for i in infos])
    elif not infos:
        say("no versions yet")
    else:
        rows = [["VERSION", "INGESTED (UTC)", "AGE", "SIZE", "LAST UPDATED", "PARTIAL"]]
        for i in infos:
            age = relative_age(now - i.ingested_at) if i.ingested_at else "-"
            if i.future:
                age += " (future)"
            if i.error:
                rows.append(
                    [
                        i.name,
                        human_time(i.ingested_at),
                        age,
                        human_size(i.size),
                        f"ERROR: {i.error}",
                        "",
                    ]
                )
                continue
            partial = "-" if i.is_partial is None else ("yes" if i.is_partial else "no")
            rows.append(
                [
                    i.name,
                    human_time(i.ingested_at),
                    age,
                    human_size(i.size),
                    f"{human_time(i.last_updated)} ({relative_age(now - i.last_updated)})"
                    if i.last_updated
                    else "-",
                    partial,
                ]
            )
        for line in align(rows, right=(3,)):
            say(line)
    if damaged:
        say(f"warning: {damaged} damaged version(s) listed; {_verify_advice(source)}", err=True)
    if denied:
        say(f"warning: {denied} version(s) listed unreadable: {PERMISSION_ADVICE}", err=True)


# -- show --------------------------------------------------------------------------------


def _verify_advice(source: str | None) -> str:
    """What to run about a damaged version: ``verify`` checks a local history only; a
    mirror's copy is checked by verifying the history it copies (and by ``restore``)."""
    if source is None:
        return "run 'ingester verify'"
    return "run 'ingester verify' on the history the mirror copies"


_LOOKS = 3
"""Listings ``show`` takes before a version it chose (not one named) that retention
deletes each time under the read is an error: retention deletes the oldest versions, so
the next choice is newer, or none is left."""


def _chosen(reader: HistoryReader, name: str | None, at: datetime | None, now: datetime) -> str:
    """The version ``show`` prints: ``name``, else the newest at ``at``, else the
    latest, from one listing. Raises the one-line error when there is none."""
    try:
        names = [entry.name for entry in reader.list_versions()]
    except OSError as exc:
        raise fail(describe_os_error(exc)) from None
    if at is not None:
        chosen = at_or_before(names, at)
        if chosen is None:
            raise fail(f"no version at or before {human_time(at)} UTC")
        return chosen
    if name is None:
        chosen = latest_name(names, now)
        if chosen is None:
            raise fail(f"no versions yet in {reader.location}")
        return chosen
    if name not in set(names):
        raise fail(f"no version {name} in {reader.location}")
    return name


def _read_chosen(
    reader: HistoryReader, name: str | None, at: datetime | None, now: datetime, source: str | None
) -> tuple[str, bytes]:
    """The name and the bytes of the version ``show`` prints (see :func:`_chosen`).

    Raises the one-line error when there is none or it cannot be read.
    """
    for look in range(1, _LOOKS + 1):
        chosen = _chosen(reader, name, at, now)
        try:
            return chosen, reader.read_version(chosen)
        except VersionNotFound:
            # Deleted since the listing (retention). One named is then gone; one chosen
            # (the latest, or the newest at TIME) is chosen again from the history as it
            # now is.
            if name is None and look < _LOOKS:
                continue
            raise fail(f"no version {chosen} in {reader.location} (deleted meanwhile)") from None
        except VersionTooLarge as exc:  # never read whole, so never printed in part
            advice = _verify_advice(source)
            raise fail(f"version {chosen} is damaged: {exc.reason}; {advice}") from None
        except OSError as exc:
            raise fail(describe_os_error(exc)) from None
    raise AssertionError("unreachable")


@click.command()
@click.argument("version", required=False, metavar="[VERSION|latest]")
@click.option(
    "--at",
    "at",
    metavar="TIME",
    callback=time_option,
    help="The version that was newest at TIME (ISO-8601; without an offset, UTC).",
)
@history_source
@click.pass_obj
def show(
    app: App,
    version: str | None,
    at: datetime | None,
    source: str | None,
    endpoint_url: str | None,
) -> None:
    """Print a version's JSON exactly as stored (default: the latest version).

    VERSION is a name from 'ingester list', with or without .json. With --at, the
    newest version whose time is at or before TIME. With --from, a version of the
    mirror in an object store. Exits 1 when there is none, or when the version file is
    damaged (nothing is printed then).
    """
    if version is not None and at is not None:
        raise click.UsageError("give VERSION or --at TIME, not both")
    name: str | None = None
    if version is not None and version != "latest":
        try:
            name = resolve_version_name(version)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="VERSION") from None
    now = utc_now()
    reader = open_history(app.settings, source, endpoint_url)
    name, data = _read_chosen(reader, name, at, now, source)
    # Judge the very bytes that are printed, so a damaged file never reaches stdout.
    problem = payload_problem(data)
    if problem is not None:
        raise fail(f"version {name} is damaged: {problem}; {_verify_advice(source)}")
    click.echo(data, nl=False)


# -- verify ------------------------------------------------------------------------------


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
    store = _open(app.settings)
    try:
        report = verify_history(store, utc_now())
    except OSError as exc:
        raise fail(describe_os_error(exc)) from None
    if repair:
        report = _repair(app.settings, report)
    if as_json:
        echo_json(verify_json(report))
    else:
        for line in _verify_lines(report):
            say(line)
    if not report.ok:
        raise click.exceptions.Exit(1)


def _repair(settings: Settings, before: VerifyReport) -> VerifyReport:
    # writing_store takes the lock (or refuses, naming the holder) and runs
    # HistoryStore.initialize: temps swept, metadata and latest link rebuilt.
    with writing_store(settings, "verify --repair", creates="nothing") as store:
        try:
            repair_modes(store, before.problems)
        except StorageError as exc:
            raise fail(str(exc)) from None
        store.load()
        after = verify_history(store, utc_now())
    after.repaired = repaired_between(before, after)
    return after


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


# -- JSON shapes ---------------------------------------------------------------------------


def version_json(info: VersionInfo) -> dict[str, Any]:
    """The ``list --json`` object for one version."""
    return {
        "name": info.name,
        "ingestedAt": format_timestamp(info.ingested_at),
        "size": info.size,
        "lastUpdated": format_timestamp(info.last_updated),
        "isPartial": info.is_partial,
        "future": info.future,
        "error": info.error,
    }


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
