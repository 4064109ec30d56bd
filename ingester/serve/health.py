"""``GET /api/health``: healthy, degraded or unhealthy (503), with the numbers behind it.

The verdict is the worse of two judgements (an age is unhealthy beyond 30 minutes to
the second, as ``check``'s CRITICAL judges it; degraded beyond 10 minutes in whole minutes,
rounded to the nearest as the original server rounded, as ``isStale`` is):

* the data: the newest version's ``lastUpdated``; degraded beyond 10 minutes, unhealthy
  beyond 30, and unhealthy with no data or an unreadable history; degraded when dated
  more than an hour ahead of the clock (its age cannot be told), and when every version
  is named more than a day ahead of it (none is the latest: the oldest of them, which
  ``GET`` serves in its place, is judged);
* the spool: drops waiting while no watcher runs are degraded, and unhealthy once the
  oldest has waited beyond 10 minutes; drops a running watcher has not stored for
  ``UNSTORED_AFTER_S`` (183 s, counted from its start, as ``check`` and ``status`` count)
  are degraded; so is a spool the last POST could not be written to (until one
  is written again), and the watcher of ``serve --watch`` once a drop or the history
  cannot be written (until a drop is stored or set aside again): its POSTs are answered
  202, and the data's age would tell only ten minutes later.

It is a liveness answer for the HTTP face (data to serve, its age, whether a POST will
be stored); ``ingester check`` is the full judgement, which also weighs the rejections,
the mirror, the room left, the latest link and the usage limits (docs/monitoring.md).

The body keeps every field the original sent, with its meaning: ``storage: {accessible,
versionCount}`` and ``latestData: {ageMinutes, status, timestamp}``, where ``latestData``
judges the newest version's ingest time (what ``_metadata.json`` calls
``newestTimestamp``) by the same thresholds. It adds the numbers behind the verdict.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..errors import VersionNotFound
from ..intake.unstored import UNSTORED_AFTER_S, unstored_words
from ..usage.words import dated_ahead
from .answers import (
    STALE_AFTER_MINUTES,
    UNHEALTHY_AFTER_MINUTES,
    age_minutes,
    http_date,
    iso,
    json_answer,
    parse_instant,
)
from .backlog import SpoolState
from .context import ServeContext
from .reads import latest_snapshot, read_payload

__all__ = ["LEVELS", "get_health", "health_facts"]

LEVELS = ("healthy", "degraded", "unhealthy")
"""The verdicts, best first; an index into this tuple is a verdict's level."""


def _by_age(seconds: float) -> int:
    """The level of data ``seconds`` old. Unhealthy judges the seconds, as ``check``
    judges its CRITICAL (at twice its default ``--max-age``, the same 30 minutes), so the
    two never disagree by the half minute that rounding adds; degraded judges the rounded
    minutes, as ``isStale`` and the original server did, so a GET that says fresh data is
    not stale is never answered by a health that calls it degraded."""
    if seconds > UNHEALTHY_AFTER_MINUTES * 60:
        return 2
    return 1 if age_minutes(seconds) > STALE_AFTER_MINUTES else 0


def _spool_judgement(state: SpoolState) -> tuple[int, str] | None:
    """The spool's level and reason, or ``None`` when nothing there matters."""
    if not state.waiting:
        return None
    late = state.oldest_s is not None and state.oldest_s > STALE_AFTER_MINUTES * 60
    if state.watcher is False:
        return (2 if late else 1), f"{state.drops_words()} and {state.why_unwatched()}"
    if state.watcher is None:
        if not late:
            return None
        return 1, (
            f"{state.drops_words()}: over {STALE_AFTER_MINUTES} minutes "
            "(cannot tell whether a watcher runs)"
        )
    # A running watcher takes them within moments; its wait is counted from its start,
    # so one that starts on an old backlog is given its own time, as check gives it.
    unstored = state.unstored_s if state.unstored_s is not None else state.oldest_s
    if unstored is None or unstored <= UNSTORED_AFTER_S:
        return None
    who = "the watcher" if state.pid is None else f"the watcher (pid {state.pid})"
    return 1, f"{state.drops_words()}: {who} runs but {unstored_words(unstored)}"


def health_facts(ctx: ServeContext) -> tuple[str, int, dict[str, Any]]:
    """``(status, http status, body)`` for ``/api/health``."""
    now = ctx.config.clock()
    body: dict[str, Any] = {"timestamp": iso(now)}
    found: list[tuple[int, str]] = []
    latest_data: dict[str, Any] = {"ageMinutes": None, "status": "unhealthy", "timestamp": None}
    storage: dict[str, Any] = {"accessible": False, "versionCount": 0}
    try:
        snap, pos = latest_snapshot(ctx, now)
    except OSError as exc:
        found.append((2, f"history unreadable: {exc.strerror}"))
        snap = None
    if snap is not None:
        body["versionCount"] = len(snap)
        storage["versionCount"] = len(snap)
        # An absent history folder (no watcher ever ran) is not accessible storage.
        storage["accessible"] = ctx.config.reader is not None or os.path.isdir(
            ctx.settings.history_dir
        )
        all_ahead = pos is None and len(snap) > 0
        if all_ahead:
            # Every version is future-dated: GET serves the oldest of them, so that
            # one is judged, and the reason says why it is not the latest.
            pos = 0
            found.append((1, _all_ahead(len(snap), snap.entries[0].name)))
        if pos is None:
            found.append((2, "no data stored yet"))
        else:
            entry = snap.entries[pos]
            body["latestVersion"] = entry.name
            body["latestIngestedAt"] = iso(entry.ingested_at)
            stored_age = (now - entry.ingested_at).total_seconds()
            stored_minutes = age_minutes(stored_age)
            stored_level = _by_age(stored_age)
            if all_ahead:
                stored_level = max(stored_level, 1)  # its age, negative, says nothing
            latest_data = {
                "ageMinutes": stored_minutes,
                "status": LEVELS[stored_level],
                "timestamp": iso(entry.ingested_at),
            }
            found.extend(_data_judgement(ctx, entry.name, now, body))
    state = ctx.probe.state()
    body["spool"] = {
        "waiting": state.waiting,
        "oldestWaitingSeconds": None if state.oldest_s is None else round(state.oldest_s, 3),
    }
    body["watcher"] = {"running": state.watcher, "pid": state.pid, "inProcess": state.in_process}
    spool = _spool_judgement(state)
    if spool is not None:
        found.append(spool)
    faults = ctx.config.store_faults
    failing = faults.since if faults is not None else None
    if faults is not None and failing is not None:
        cause = faults.cause
        body["watcher"]["storeFault"] = {
            "since": iso(failing),
            "failures": faults.failures,
            "cause": cause,
        }
        found.append(
            (
                1,
                f"the watcher in this process cannot store drops since {iso(failing)} "
                f"({faults.failures} tries; the last: {cause})",
            )
        )
    if ctx.spool_fault is not None:
        cause, since = ctx.spool_fault
        body["spool"]["writeFault"] = {"cause": cause, "since": since}
        found.append((1, f"POSTed snapshots cannot be written to the spool since {since}: {cause}"))
    body["storage"] = storage
    body["latestData"] = latest_data
    body["staleAfterMinutes"] = STALE_AFTER_MINUTES
    body["unhealthyAfterMinutes"] = UNHEALTHY_AFTER_MINUTES
    level = max((lvl for lvl, _ in found), default=0)
    # Worst first; the lesser reasons follow, so waiting drops are named in any case.
    reasons = [why for _lvl, why in sorted(found, key=lambda item: -item[0])]
    if not reasons:
        reasons = [f"newest data is at most {STALE_AFTER_MINUTES} minutes old"]
    status = LEVELS[level]
    body["status"] = status
    body["reason"] = "; ".join(reasons)
    return status, 503 if level == 2 else 200, body


def _all_ahead(count: int, oldest: str) -> str:
    """Why no version is the latest: all ``count`` are named ahead of this clock."""
    held = "the one version held is" if count == 1 else f"all {count} versions held are"
    return (
        f"{held} dated more than a day ahead of this clock (set back since?), so none is "
        f"the latest; the oldest, {oldest}, is served in its place"
    )


def _data_judgement(
    ctx: ServeContext, name: str, now: Any, body: dict[str, Any]
) -> list[tuple[int, str]]:
    """The newest version's ``lastUpdated`` judged; its numbers go into ``body``."""
    try:
        _payload_obj, updated = read_payload(ctx, name)
    except (OSError, VersionNotFound) as exc:
        return [(2, f"latest version unreadable: {exc}")]
    if updated is None:
        return [(2, "latest version has no valid lastUpdated")]
    age = (now - updated).total_seconds()
    minutes = age_minutes(age)
    body["lastUpdated"] = iso(updated)
    body["ageSeconds"] = round(age, 3)
    body["ageMinutes"] = minutes
    ahead = dated_ahead(updated, now)
    if ahead is not None:
        return [(1, ahead)]  # as check judges it
    level = _by_age(age)
    if level == 2:
        return [(2, f"newest data is older than {UNHEALTHY_AFTER_MINUTES} minutes")]
    if level == 1:
        return [(1, f"newest data is older than {STALE_AFTER_MINUTES} minutes")]
    return []


async def get_health(request: Request) -> Response:
    """Health verdict with the numbers behind it."""
    ctx: ServeContext = request.app.state.ctx
    _status, code, body = health_facts(ctx)
    # Dated as the verdict's own timestamp: the same clock reading, to the second.
    at = parse_instant(body["timestamp"])
    headers = {"Cache-Control": "no-store"}
    if at is not None:
        headers["Date"] = http_date(at)
    return json_answer(body, code, headers=headers)
