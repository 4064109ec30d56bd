"""The operator commands: ``status``, ``list``, ``show`` and ``verify`` (SPEC section 8).

A thin click layer over :mod:`ingester.report`. The read commands (all of these but
``verify --repair``) never take the history lock and never write, so they work while a
watcher runs and on a read-only copy of the history.

Exit codes as for the rest of the CLI: 0 fine; 1 the command ran and the answer is
"no" (no history, no such version, problems found); 2 a usage error.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from .durable import StorageError
from .report import (
    STALE_AFTER,
    ReportError,
    VerifyReport,
    align,
    human_size,
    human_time,
    list_report,
    open_store,
    parse_cli_time,
    payload_problem,
    relative_age,
    repair_modes,
    repaired_between,
    resolve_version_name,
    status_report,
    utc_now,
    verify_history,
    version_at,
)
from .store import HistoryStore

if TYPE_CHECKING:
    from .cli import App
    from .settings import Settings

__all__ = ["list_versions", "show", "status", "verify"]


def _fail(message: str, code: int = 1) -> click.exceptions.Exit:
    # Imported here: cli.py imports this module at its end, so a top-level import of
    # cli would be circular whenever this module is imported first.
    from .cli import fail

    return fail(message, code)


def _open(settings: Settings) -> HistoryStore:
    try:
        return open_store(settings)
    except ReportError as exc:
        raise _fail(str(exc), exc.code) from None


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _age_words(iso_text: str | None, now: datetime) -> str:
    if iso_text is None:
        return "-"
    try:
        return relative_age(now - parse_cli_time(iso_text))
    except ValueError:
        return "unreadable time"  # e.g. a hand-edited _metadata.json; verify reports it


def _parse_time_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> datetime | None:
    """Click callback: an ISO-8601 time; without an offset it is UTC."""
    if value is None:
        return None
    try:
        return parse_cli_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


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
        report = status_report(app.settings, store, now)
    except StorageError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        _echo_json(report)
        return
    for line in _status_lines(report, now):
        click.echo(line)


def _status_lines(r: dict[str, Any], now: datetime) -> list[str]:
    meta = r["metadata"]
    rows: list[list[str]] = [["history", r["history"]]]
    count = f"{meta['versionCount']}"
    if meta["versionCount"]:
        count += f" (oldest {meta['oldestTimestamp']}, newest {meta['newestTimestamp']})"
    rows.append(["versions", count])
    if r["futureVersions"]:
        rows.append(["future", f"{r['futureVersions']} dated ahead of the clock (see verify)"])
    cleanup = meta["lastCleanup"]
    rows.append(
        [
            "totals",
            f"{meta['totalVersionsCreated']} created, {meta['totalVersionsDeleted']} deleted; "
            f"last cleanup {_age_words(cleanup, now) if cleanup else 'never'}",
        ]
    )
    rows.append(
        [
            "metadata",
            "ok"
            if r["metadataProblem"] is None
            else f"{r['metadataProblem']} (run 'ingester verify --repair')",
        ]
    )
    latest = r["latest"]
    if latest is None:
        rows.append(["latest", "none yet"])
    else:
        rows.append(
            ["latest", f"{latest['name']} (ingested {_age_words(latest['ingestedAt'], now)})"]
        )
        if latest["error"]:
            rows.append(["", f"DAMAGED: {latest['error']}"])
        else:
            updated = (
                f"lastUpdated {latest['lastUpdated']} ({_age_words(latest['lastUpdated'], now)})"
            )
            if latest["stale"]:
                updated += f", STALE (older than {int(STALE_AFTER.total_seconds() // 60)} min)"
            if latest["isPartial"]:
                updated += ", partial"
            rows.append(["", updated])
    link = r["latestLink"]
    rows.append(
        ["latest link", link["path"] + ("" if link["problem"] is None else f": {link['problem']}")]
    )
    spool = r["spool"]
    if not spool["exists"]:
        rows.append(["spool", f"{spool['path']} (missing)"])
    elif spool["problem"]:
        rows.append(["spool", f"{spool['path']} ({spool['problem']})"])
    else:
        backlog = f"{spool['backlog']} waiting"
        if spool["claimed"]:
            backlog += f" ({spool['claimed']} in flight)"
        if spool["oldestDropAt"]:
            backlog += f", oldest {_age_words(spool['oldestDropAt'], now)}"
        rows.append(["spool", backlog])
    rejected = r["rejected"]
    if rejected["problem"]:
        rows.append(["rejected", f"{rejected['path']} ({rejected['problem']})"])
    else:
        rows.append(
            [
                "rejected",
                f"{rejected['count']} in {rejected['path']} "
                f"(removed after {rejected['retentionDays']:g} days)",
            ]
        )
    watcher, lock = r["watcher"], r["lock"]
    if watcher["running"]:
        rows.append(["watcher", f"running (pid {watcher['pid']})"])
    elif lock["held"]:
        rows.append(
            ["watcher", f"not running; history locked by '{lock['command']}' (pid {lock['pid']})"]
        )
    else:
        rows.append(["watcher", "not running"])
    if r.get("mirror") is not None:
        rows.append(["mirror", _mirror_words(r["mirror"], now)])
    lines = align(rows)
    lines.append("")
    lines.append("settings:")
    setting_rows = [
        [f"  {name}", str(item["value"]), item["source"]] for name, item in r["settings"].items()
    ]
    lines += align(setting_rows)
    return lines


def _mirror_words(m: dict[str, Any], now: datetime) -> str:
    from .names import parse_timestamp_from_filename

    words = f"{m['target']}: {m['waiting']} version(s) waiting"
    oldest = parse_timestamp_from_filename(m["oldestWaiting"] or "")
    if oldest is not None:
        words += f" (oldest {relative_age(now - oldest)})"
    if m["state"] != "ok":
        words += f"; {_MIRROR_STATES.get(m['state'], m['state'])}"
        if m["detail"]:
            words += f" ({m['detail']})"
        if m["since"]:
            words += f" since {_age_words(m['since'], now)}"
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


# -- list --------------------------------------------------------------------------------


@click.command("list")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="Show the newest N only.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (an array).")
@click.pass_obj
def list_versions(app: App, limit: int | None, as_json: bool) -> None:
    """List versions, newest first: name, ingest time, size, lastUpdated, isPartial.

    Each listed file is read; a damaged one is shown with an error marker (and a
    warning on stderr) instead of its fields. Never takes the lock.
    """
    now = utc_now()
    store = _open(app.settings)
    infos = list_report(store, limit, now)
    damaged = sum(1 for i in infos if i.error)
    if as_json:
        _echo_json([i.to_json() for i in infos])
    elif not infos:
        click.echo("no versions yet")
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
            click.echo(line)
    if damaged:
        click.echo(f"warning: {damaged} damaged version(s) listed; run 'ingester verify'", err=True)


# -- show --------------------------------------------------------------------------------


@click.command()
@click.argument("version", required=False, metavar="[VERSION|latest]")
@click.option(
    "--at",
    "at",
    metavar="TIME",
    callback=_parse_time_option,
    help="The version that was newest at TIME (ISO-8601; without an offset, UTC).",
)
@click.pass_obj
def show(app: App, version: str | None, at: datetime | None) -> None:
    """Print a version's JSON exactly as stored (default: the latest version).

    VERSION is a name from 'ingester list', with or without .json. With --at, the
    newest version whose time is at or before TIME. Exits 1 when there is none, or
    when the version file is damaged (nothing is printed then).
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
    store = _open(app.settings)
    if at is not None:
        name = version_at(store.version_names(), at)
        if name is None:
            raise _fail(f"no version at or before {human_time(at)} UTC")
    elif name is None:
        name = store.latest_version_name(now)
        if name is None:
            raise _fail(f"no versions yet in {store.history_dir}")
    elif name not in set(store.version_names()):
        raise _fail(f"no version {name} in {store.history_dir}")
    path = store.version_path(name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _fail(str(StorageError("read", path, exc))) from None
    # Judge the very bytes that are printed, so a damaged file never reaches stdout.
    problem = payload_problem(data)
    if problem is not None:
        raise _fail(f"version {name} is damaged: {problem}; run 'ingester verify'")
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
    report = verify_history(store, utc_now())
    if repair:
        report = _repair(app.settings, report)
    if as_json:
        _echo_json(report.to_json())
    else:
        for line in _verify_lines(report):
            click.echo(line)
    if not report.ok:
        raise click.exceptions.Exit(1)


def _repair(settings: Settings, before: VerifyReport) -> VerifyReport:
    from .cli import writing_store

    # writing_store takes the lock (or refuses, naming the holder) and runs
    # HistoryStore.initialize: temps swept, metadata and latest link rebuilt.
    with writing_store(settings, "verify --repair") as store:
        try:
            repair_modes(store, before.problems)
        except StorageError as exc:
            raise _fail(str(exc)) from None
        store.load()
        after = verify_history(store, utc_now())
    after.repaired = repaired_between(before, after)
    return after


def _verify_lines(r: VerifyReport) -> list[str]:
    lines = [f"checked {r.checked} version(s) in {r.history}"]
    rows = [["repaired", f.subject, f"was: {f.message}"] for f in r.repaired]
    rows += [["PROBLEM", f.subject, f.message] for f in r.problems]
    rows += [["warning", f.subject, f.message] for f in r.warnings]
    lines += align(rows)
    if r.ok:
        lines.append("ok")
    else:
        fixable = sum(1 for f in r.problems if f.repairable)
        tail = f"; {fixable} can be fixed with 'ingester verify --repair'" if fixable else ""
        lines.append(f"{len(r.problems)} problem(s){tail}")
    return lines
