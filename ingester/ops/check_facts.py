"""What ``ingester check`` looks at: the facts of a history, gathered once, judged elsewhere.

:func:`gather_facts` reads, and only reads: the newest version and its ``lastUpdated``,
the spool's backlog (``.claimed/`` included, but for the names there no watcher takes,
which are kept apart), the room left on the spool's and the history's filesystems,
the rejections of the last hour, the mirror's state
(:func:`mirror_facts`) and, when asked, the forecast of each limit. It takes no lock.
Judging the facts against the thresholds is :func:`ingester.ops.check.judge`.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from ..clock import utc_now
from ..errors import StorageError, describe_os_error, is_permission_problem
from ..history.base import HistoryReader, latest_name
from ..history.local import LocalHistory
from ..history.lock import history_holder, lock_table_readable
from ..history.names import parse_timestamp_from_filename
from ..history.retention import RetentionPolicy, expired_prefix
from ..intake.housekeeping import count_rejected_since
from ..intake.spool import Spool
from ..intake.unstored import unstored_for, watcher_started
from ..mirror.state import held_back, mirror_status
from ..settings.resolved import Settings
from ..usage.forecast import Forecast
from ..usage.usage_history import forecast_of
from .queries import (
    claimed_strays,
    history_problem,
    in_flight,
    read_latest,
)
from .verify import link_in_flight

__all__ = ["Facts", "MirrorFacts", "Room", "gather_facts", "mirror_facts"]


@dataclass(frozen=True)
class MirrorFacts:
    """How far behind the mirror is.

    ``backlog``: local versions above its watermark (not known to be uploaded);
    ``oldest``: the oldest of them (a version name) and ``lag`` its age in seconds by
    the ingest time in its name (``None`` when nothing waits); ``state``: what the
    mirror last recorded (``ok``, ``denied``, ``unreachable``, ..., ``never-run`` when
    it has no state file yet); ``pid``: the running mirror's, or ``None``;
    ``held``: of the backlog, the versions retention has expired and keeps only
    because they are not uploaded yet; ``hold_max``: how many it keeps at most (the
    state file's ``holdMax``, ``None`` without a state file, when nothing is held).
    """

    target: str | None
    state: str
    backlog: int
    oldest: str | None = None
    lag: float | None = None
    detail: str | None = None
    pid: int | None = None
    held: int = 0
    hold_max: int | None = None


@dataclass(frozen=True)
class Room:
    """What is left on the filesystem of the spool, the history, or both (one filesystem).

    ``holds``: ``("spool",)``, ``("history",)`` or both; ``path``: the first folder's;
    ``free``: bytes a writer that is not root may still use (the blocks kept for root
    left out: the service is no root); ``files``: inodes such a writer may still make,
    ``None`` where the filesystem does not count them; ``read_only``: mounted so.
    """

    holds: tuple[str, ...]
    path: Path
    free: int
    files: int | None
    read_only: bool


def _rooms(settings: Settings) -> tuple[Room, ...]:
    """The room on the spool's and the history's filesystems (one entry when they share
    one). A folder that cannot be reached is left out: the other items say why."""
    found: dict[int, Room] = {}
    for what, folder in (("spool", settings.spool_dir), ("history", settings.history_dir)):
        try:
            device = os.stat(folder).st_dev
            st = os.statvfs(folder)
        except OSError:
            continue
        if device in found:
            found[device] = replace(found[device], holds=(*found[device].holds, what))
            continue
        found[device] = Room(
            (what,),
            folder,
            st.f_bavail * st.f_frsize,
            st.f_favail if st.f_files else None,
            bool(st.f_flag & os.ST_RDONLY),
        )
    return tuple(found.values())


@dataclass(frozen=True)
class Facts:
    """What :func:`gather_facts` read. ``history_problem`` set: nothing else could be read."""

    now: datetime
    history_problem: str | None = None
    latest: str | None = None
    last_updated: datetime | None = None
    latest_error: str | None = None
    backlog: int | None = 0
    """``None``: the spool could not be listed (``backlog_problem`` says why)."""
    oldest_drop_age: float | None = None
    rejected_last_hour: int | None = 0
    """``None``: the quarantine could not be listed (``rejected_problem`` says why)."""
    backlog_problem: str | None = None
    rejected_problem: str | None = None
    watcher_pid: int | None = None
    mirror: MirrorFacts | None = None
    usage: Forecast | None = None
    usage_json: dict[str, Any] | None = None
    usage_zone: tzinfo = UTC
    usage_problem: str | None = None
    source: str | None = None
    """The history judged when it is not the local one (``--from``): its location. Then
    the spool, the rejections and the mirror are not judged."""
    held: int = 0
    """Versions in the history, those dated ahead of the clock included (``latest``
    ``None`` with some held: every one is dated more than a day ahead)."""
    strays: tuple[str, ...] = ()
    """Names in ``.claimed/`` no watcher takes (put there by hand): not in ``backlog``."""
    claimed_dir: Path | None = None
    """The spool's ``.claimed/`` (``None`` when the spool is not judged)."""
    rooms: tuple[Room, ...] = ()
    """The room left where drops and versions are written (see :class:`Room`)."""
    max_bytes: int = 0
    """The largest drop accepted (``--max-bytes``): what one more drop may need."""
    watcher_absent: str | None = None
    """Why no watcher takes this spool's drops, when that is known (no one holds the
    history, or its holder is no watcher of this spool); ``None`` when one does, or when
    that cannot be told (``watcher_unknown`` then says why)."""
    watcher_unknown: str | None = None
    """Why whether a watcher of this spool runs cannot be told."""
    unstored_s: float | None = None
    """With a watcher of this spool running and drops waiting: seconds the oldest has
    waited while it ran (:func:`~ingester.intake.unstored.unstored_for`)."""
    latest_link_problem: str | None = None
    """Why the latest link does not name the newest version, when that is not an update
    in flight (:func:`~ingester.ops.verify.link_in_flight`); ``None`` when it does."""


def _spool_backlog(
    settings: Settings, now: datetime
) -> tuple[int | None, float | None, str | None]:
    """``(waiting, oldest drop's mtime, problem)``: ``waiting`` ``None`` when the spool
    exists and cannot be listed; ``problem`` also names an in-flight folder it may not list
    (those drops are then not counted). The mtime is in seconds since the epoch."""
    spool = Spool(settings.spool_dir, settings.rejected_dir)
    waiting = []
    problem = None
    for folder in (settings.spool_dir, settings.claimed_dir):
        try:
            found = [c for c in spool.scan(folder) if stat.S_ISREG(c.mode)]
            if folder == settings.claimed_dir:
                found = in_flight(found, settings)
            waiting += found
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                continue  # no spool here (a copied history): nothing waits
            if folder == settings.spool_dir:
                return None, None, str(exc)
            problem = f"in flight not counted: {exc}"
    if not waiting:
        return 0, None, problem
    return len(waiting), min(c.mtime_ns for c in waiting) / 1e9, problem


def _rejected(settings: Settings, now: datetime) -> tuple[int | None, str | None]:
    try:
        return count_rejected_since(settings.rejected_dir, now - timedelta(hours=1)), None
    except StorageError as exc:
        return None, str(exc)


def mirror_facts(
    history_dir: Path,
    names: list[str],
    configured: str | None,
    now: datetime,
    policy: RetentionPolicy | None = None,
    hold_max: int | None = None,
) -> MirrorFacts | None:
    """The mirror's backlog and lag over ``names`` (sorted), or ``None`` without a mirror.

    A mirror is configured when ``configured`` (the settings' target) is set or its state
    file exists in ``history_dir``. The lag is ``now`` minus the ingest time in the name of
    the oldest version above the watermark, in seconds (never negative). ``held`` counts
    the versions ``policy`` (the retention settings; the defaults when ``None``) expires
    at ``now`` that are above the watermark: what retention keeps back for the mirror.
    ``hold_max``: the bound retention on these settings runs by (``--mirror-hold`` given
    to it), which the held versions are then judged against in place of the bound the
    mirror recorded; there is a hold only where the mirror has its state file.
    """
    status = mirror_status(history_dir, names, configured)
    if status is None:
        return None
    # Here, not at the top: pydantic (the model's) only where there is a mirror.
    from ..mirror.state_model import MirrorState

    recorded_max: int | None = status["holdMax"]
    if recorded_max is not None and hold_max is not None:
        # Retention run with this bound deletes past it, whatever the mirror recorded.
        recorded_max = hold_max
    hold_max = recorded_max
    expired = expired_prefix(names, now, policy or RetentionPolicy())
    recorded = MirrorState(mirrored_through=status["mirroredThrough"], hold_max=hold_max or 0)
    oldest = status["oldestWaiting"]
    lag = None
    if oldest is not None:
        stamp = parse_timestamp_from_filename(oldest)
        # A name from a clock that was ahead would give a negative age: it is just new.
        lag = 0.0 if stamp is None else round(max(0.0, (now - stamp).total_seconds()), 1)
    return MirrorFacts(
        target=status["target"],
        state=status["state"],
        backlog=status["waiting"],
        oldest=oldest,
        lag=lag,
        detail=status["detail"],
        pid=status["pid"],
        held=0 if hold_max is None else held_back(names, expired, recorded),
        hold_max=hold_max,
    )


def gather_facts(
    settings: Settings,
    now: datetime | None = None,
    *,
    usage: bool = False,
    reader: HistoryReader | None = None,
) -> Facts:
    """Read what :func:`judge` needs: the newest version, the spool, the rejections, the mirror.

    The mirror is read only when one is configured and the history can be opened; the
    usage forecast only when ``usage`` is true. ``reader``: the history to judge when it
    is not the local one (see the module docstring); only its versions are read then.
    Never raises ``OSError`` or ``MemoryError``: whatever this user may not read that the
    age item needs (the root, the history, the newest version), or cannot hold in memory,
    becomes a ``history_problem`` or a ``latest_error``, which :func:`judge` makes
    CRITICAL, so a check that cannot see still alerts, with its plugin line.
    """
    now = now or utc_now()
    source = None if reader is None else reader.location
    # The spool is read first, apart: a history it cannot read leaves its counts as read.
    intake = {} if reader is not None else _intake(settings, now)
    try:
        return _gather(settings, now, usage, reader, intake)
    except OSError as exc:
        return Facts(now=now, history_problem=describe_os_error(exc), source=source, **intake)
    except MemoryError:
        # Versions are read only up to the largest a drop can be, but one near that size
        # parsed under a tight limit on memory may still not fit: the check cannot judge,
        # which is CRITICAL with its plugin line like any other blind spot.
        return Facts(
            now=now, history_problem="out of memory reading the history", source=source, **intake
        )


def _intake(settings: Settings, now: datetime) -> dict[str, Any]:
    """The spool's facts for :class:`Facts`; never raises (what it cannot list is unknown)."""
    backlog, oldest, backlog_problem = _spool_backlog(settings, now)
    rejected, rejected_problem = _rejected(settings, now)
    watcher = _watcher(settings)
    started = watcher.pop("started", None)
    if oldest is not None and "watcher_pid" in watcher:
        watcher["unstored_s"] = unstored_for(oldest, started, now.timestamp())
    return {
        **watcher,
        "backlog": backlog,
        "oldest_drop_age": None if oldest is None else max(0.0, now.timestamp() - oldest),
        "rejected_last_hour": rejected,
        "backlog_problem": backlog_problem,
        "rejected_problem": rejected_problem,
        "strays": tuple(claimed_strays(settings)),
        "claimed_dir": settings.claimed_dir,
        "rooms": _rooms(settings),
        "max_bytes": settings.max_bytes,
    }


def _watcher(settings: Settings) -> dict[str, Any]:
    """Whether a watcher takes this spool's drops, for :class:`Facts`: its pid
    (``watcher_pid``, ``None`` when it is this process), why none does
    (``watcher_absent``) or why that cannot be told (``watcher_unknown``), and when it
    took the lock (``started``, seconds since the epoch). Never raises."""
    lock_path = settings.store().lock_path
    try:
        # A watcher of this history counts only if it also reads this spool.
        holder = history_holder(lock_path, Spool(settings.spool_dir).lock_path)
    except OSError as exc:
        return {"watcher_unknown": describe_os_error(exc)}
    if holder is None:
        if not lock_table_readable():
            return {"watcher_unknown": "the kernel's lock table is not readable here"}
        return {"watcher_absent": "no watcher runs"}
    if holder.watches_spool is None:
        return {"watcher_unknown": f"pid {holder.pid} holds the history ({holder.unknown})"}
    if not holder.watches_spool:
        if holder.watcher and holder.purpose is not None:
            why = f"the watcher holding the history (pid {holder.pid}) reads another spool"
        elif holder.watcher:
            why = f"pid {holder.pid} holds the history but not this spool's lock"
        else:
            why = f"no watcher runs ('{holder.purpose}', pid {holder.pid}, holds the history)"
        return {"watcher_absent": why}
    return {
        "watcher_pid": holder.pid if holder.pid != os.getpid() else None,
        "started": watcher_started(lock_path),
    }


def _gather(
    settings: Settings,
    now: datetime,
    usage: bool,
    reader: HistoryReader | None,
    intake: dict[str, Any],
) -> Facts:
    common: dict[str, Any] = {"now": now}
    if reader is not None:
        common["source"] = reader.location
    else:
        common.update(intake)
        problem = history_problem(settings)
        if problem is not None:
            return Facts(history_problem=problem, **common)
    history = reader or LocalHistory(settings.history_dir)
    # The latest first: the mirror's backlog and the count are then those of the listing
    # it was chosen from, the last one if it was chosen again.
    names, info = read_latest(history, now)
    if reader is None:
        given = settings.mirror_hold if "mirror_hold" in settings.sources else None
        common["mirror"] = mirror_facts(
            settings.history_dir, names, settings.mirror, now, settings.policy(), given
        )
        common["latest_link_problem"] = _latest_link_problem(settings, names, now)
    common["held"] = len(names)
    if info is None:
        return Facts(latest=None, **common)
    if usage:
        common.update(_usage_facts(settings, history, now))
    return Facts(
        latest=info.name,
        last_updated=info.last_updated,
        latest_error=info.error,
        **common,
    )


def _latest_link_problem(settings: Settings, names: list[str], now: datetime) -> str | None:
    """Why the latest link does not name the newest of ``names``, unless that may be an
    update in flight (verify's rule, :func:`~ingester.ops.verify.link_in_flight`) or is
    only this user's lack of access (not the link's fault). Only a link that leads to a
    file is judged: one that is not there, or leads nowhere, is left to ``verify`` (a
    history copied or restored by hand has none until its watcher starts; a version
    deleted by hand leaves it dangling), and the data is judged all the same. Never
    raises."""
    store = settings.store()
    if not os.path.exists(store.latest_path):
        return None
    try:
        problem = store.latest_problem(names)
    except OSError:
        return None  # the history moved under the read: the next check looks again
    if problem is None or is_permission_problem(problem):
        return None
    if link_in_flight(store, latest_name(names, now), now):
        return None
    return problem


def _usage_facts(settings: Settings, reader: HistoryReader, now: datetime) -> dict[str, Any]:
    from ..usage.usage_history import forecast_json

    zone, zone_name = settings.console_zone()
    try:
        answer = forecast_of(reader, zone, zone_name, now)
    except OSError as exc:
        return {"usage_problem": f"usage unreadable: {exc}"}
    if answer is None:
        return {}
    return {
        "usage": answer.forecast,
        "usage_json": forecast_json(answer, zone_name),
        "usage_zone": zone,
    }
