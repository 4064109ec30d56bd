"""``ingester status``: the history, its latest version, the spool, the watcher, the mirror.

A thin click layer over :func:`ingester.ops.queries.status`: it renders the query's
:class:`~ingester.ops.queries.Status` as aligned text or as the ``--json`` object. Never
takes the history lock and never writes, so it works while a watcher runs and on a
read-only copy of the history.

Exit codes: 0 shown; 1 no history (run 'ingester init') or it cannot be listed.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ..clock import parse_iso_time, utc_now
from ..errors import PERMISSION_ADVICE, describe_os_error, is_permission_problem
from ..history.names import format_timestamp, parse_timestamp_from_filename
from ..intake.unstored import UNSTORED_AFTER_S, unstored_words
from ..ops.adopt import ADOPT_ADVICE
from ..ops.queries import (
    GONE_UNDER_READS,
    STALE_AFTER,
    Status,
    strays_words,
)
from ..ops.queries import status as status_query
from .common import App, align, echo_json, fail, refuse_closed_stdout, relative_age, say
from .stores import reading_store

__all__ = ["status", "status_json"]


def _metadata_age(iso_text: str | None, now: datetime) -> str:
    if iso_text is None:
        return "-"
    try:
        return relative_age(now - parse_iso_time(iso_text))
    except ValueError:
        return "unreadable time"  # e.g. a hand-edited _metadata.json; verify reports it


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one object).")
@click.pass_obj
def status(app: App, as_json: bool) -> None:
    """Show the metadata, the latest version, the spool backlog and whether a watcher runs.

    Never takes the lock and never writes. Exits 1 when there is no history yet
    (run 'ingester init').
    """
    refuse_closed_stdout("the status", "redirect it")
    now = utc_now()
    store = reading_store(app.settings)
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


def _advice(problem: str, adopt: bool = False, read_only: Path | None = None) -> str:
    """What to do about a cache problem: a repair (``adopt`` for a history the original
    server wrote), unless this user just may not read it, or the folder the repair
    would write (``read_only``) is on a filesystem mounted read-only, where any repair
    can only fail."""
    if is_permission_problem(problem):
        return PERMISSION_ADVICE
    if read_only is not None:
        return _read_only_words(read_only)
    return "run 'ingester adopt'" if adopt else "run 'ingester verify --repair'"


def _read_only_words(folder: Path) -> str:
    # verify's words for the same finding, so the two commands say it alike.
    return f"{folder} is on a read-only filesystem, so no repair can be made there"


def _read_only_of(r: Status, *folders: Path) -> Path | None:
    """The first of ``folders`` on a read-only filesystem, or ``None``."""
    return next((folder for folder in folders if folder in r.read_only), None)


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
        where = (r.history, r.latest_link.parent) if r.adopt_advised else (r.history,)
        meta_words = (
            f"{meta_problem} ({_advice(meta_problem, r.adopt_advised, _read_only_of(r, *where))})"
        )
    rows.append(["metadata", meta_words])
    latest = r.latest
    if latest is None:
        rows.append(["latest", "none yet"])
    else:
        info = latest.info
        rows.append(["latest", f"{info.name} (ingested {_age_words(info.ingested_at, now)})"])
        if is_permission_problem(info.error):
            rows.append(["", f"{info.error}: {PERMISSION_ADVICE}"])
        elif info.error == GONE_UNDER_READS:
            rows.append(["", f"GONE: {info.error}; run status again"])
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
        advice = _advice(
            problem or "", adopt=True, read_only=_read_only_of(r, r.latest_link.parent, r.history)
        )
        link += f": {problem or 'a file, not a link'} ({advice})"
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
    if spool.strays:
        rows.append(["claimed", strays_words(spool.claimed_dir, spool.strays)])
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
        words = f"running (pid {lock.pid}{how})"
        unstored = r.unstored_s
        if unstored is not None and unstored > UNSTORED_AFTER_S:
            words += f", but {unstored_words(unstored)}"
        rows.append(["watcher", words])
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
        blocked = _read_only_of(r, r.history, r.latest_link.parent)
        # Adopting writes the history and the link: on a read-only mount it can only fail.
        then = (
            ADOPT_ADVICE
            if blocked is None
            else f"{blocked} is on a read-only filesystem, so it cannot be adopted there"
        )
        rows.append(["advice", f"a history written by the original server? {then}"])
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
        words += f"; {_state_words(m['state'], m['detail'])}"
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


def _state_words(state: str, detail: str | None) -> str:
    """The mirror's recorded ``state`` in words; a refusal is said as the mirror said it
    (a request refused for its time is the clock's fault, not the credentials')."""
    if state == "denied":
        # Here, not at the top: the mirror's words bring its state model (pydantic),
        # which status loads only where there is a mirror to speak of.
        from ..mirror.objectstore import Failure
        from ..mirror.progress import failure_words

        return failure_words(Failure(state, detail or ""))
    return _MIRROR_STATES.get(state, state)


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
            "strays": list(spool.strays),
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
