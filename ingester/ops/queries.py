"""Read-only answers about a history: ``status``, ``list`` and ``show`` (``verify`` is
:mod:`ingester.ops.verify`'s).

Each query returns dataclasses; rendering them (aligned text, JSON) is the CLI's job, in
:mod:`ingester.cli.status` and :mod:`ingester.cli.versions`.

Versions and the metadata are read through a
:class:`~ingester.history.base.HistoryReader` (``list`` and ``show`` read any backing;
``status``, which also judges the local folder itself and its lock, reads the local
one). Nothing here writes, takes the history lock, or creates a folder.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..errors import (
    PayloadRejected,
    ReportError,
    VersionNotFound,
    VersionTooLarge,
    describe_os_error,
    file_on_the_way,
    folder_not_entered,
    missing_root,
    on_read_only_filesystem,
    os_cause,
    unreadable,
)
from ..history.base import HistoryReader, derive_metadata, is_future, latest_name, stored_metadata
from ..history.durable import StorageError
from ..history.local import LocalHistory
from ..history.lock import history_holder, is_watcher
from ..history.metadata import StorageMetadata
from ..history.metadata_file import metadata_problem
from ..history.names import is_version_name, parse_timestamp_from_filename
from ..history.store import HistoryStore
from ..intake.done_claims import finished_already, is_claim_name, stray_claims
from ..intake.spool import Candidate, Spool
from ..intake.unstored import unstored_for, watcher_started
from ..mirror.state import mirror_status
from ..payload.gate import check_payload, read_payload
from ..settings.resolved import Settings
from .adopt import latest_is_a_file

__all__ = [
    "GONE_UNDER_READS",
    "STALE_AFTER",
    "LatestVersion",
    "LockState",
    "RejectedState",
    "ReportError",
    "SpoolState",
    "Status",
    "VersionInfo",
    "claimed_strays",
    "history_problem",
    "in_flight",
    "list_report",
    "open_store",
    "payload_problem",
    "read_latest",
    "read_listed",
    "resolve_version_name",
    "root_problem",
    "status",
    "strays_words",
]

STALE_AFTER = timedelta(minutes=10)
"""A payload whose ``lastUpdated`` is older than this is stale (as the original widget judged)."""


# -- opening the history, read-only ------------------------------------------------------


def _not_entered(path: Path, exc: OSError) -> str:
    """The nearest folder above ``path`` this user may not enter, in one line."""
    folder = folder_not_entered(path)
    if folder is not None:
        return str(StorageError("enter", folder, exc))
    return str(StorageError("reach", path, exc))


def history_problem(settings: Settings) -> str | None:
    """Why the history cannot be opened, in the words every command uses; ``None`` if it can.

    A missing root is named as such (:func:`~ingester.errors.missing_root`), whatever the
    command; a folder this user may not enter is named by its path. Never raises.
    """
    history = settings.history_dir
    try:
        if stat.S_ISDIR(os.stat(history).st_mode):
            return None
        return f"history path {history} is not a folder"
    except (FileNotFoundError, NotADirectoryError):
        pass
    except PermissionError as exc:
        return _not_entered(history, exc)
    except OSError as exc:
        return str(StorageError("reach", history, exc))
    return root_problem(settings, history) or (
        f"no history at {history}; run 'ingester init' to create it"
    )


def root_problem(settings: Settings, path: Path) -> str | None:
    """Why the root cannot hold ``path``, when ``path`` lies under it; else ``None``.

    For the commands that never create the root: a missing one is named with
    :func:`~ingester.errors.missing_root`. Never raises.
    """
    root = settings.root
    if not path.is_relative_to(root):
        return None
    try:
        if not stat.S_ISDIR(os.stat(root).st_mode):
            return f"root {root} is not a folder"
    except FileNotFoundError:
        return missing_root(root)
    except NotADirectoryError:
        return f"root {root} is not a folder"
    except PermissionError as exc:
        return _not_entered(root, exc)
    except OSError as exc:
        return str(StorageError("reach", root, exc))
    return None


def open_store(settings: Settings) -> HistoryStore:
    """The history, scanned and loaded without writing anything.

    Raises :class:`ReportError` (its words from :func:`history_problem`) when the history
    cannot be reached, and when it cannot be listed.
    """
    problem = history_problem(settings)
    if problem is not None:
        raise ReportError(problem)
    store = settings.store()
    try:
        store.load()
    except StorageError as exc:
        raise ReportError(str(exc)) from None
    return store


# -- one version -------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionInfo:
    """What ``list`` shows for one version; ``error`` is set when the file is damaged."""

    name: str
    ingested_at: datetime | None
    size: int | None
    last_updated: datetime | None
    is_partial: bool | None
    future: bool
    error: str | None = None


_LOOKS = 3
"""Listings :func:`read_latest` takes before a latest it chose that is deleted each
time under the read is reported gone: each look finds one version fewer, so the next
choice is another one, or none is left."""

GONE_UNDER_READS = (
    f"deleted while being read, {_LOOKS} times in a row (something is deleting versions)"
)
"""The ``error`` of a latest that :func:`read_latest` saw deleted under each of its
reads: no fault of the file, which is gone, so never called damaged."""


def read_latest(reader: HistoryReader, now: datetime) -> tuple[list[str], VersionInfo | None]:
    """The names of one listing and its latest version read and judged (``None`` when it
    has none); a damaged or unreadable latest gives ``error``, not a raise.

    The latest is chosen, not named: one deleted between the listing and its read (by
    hand, as retention never deletes it) is no longer the history's latest, so the
    history is listed again and the latest chosen from what is left, up to three
    listings. Only one deleted under every read gives ``error``
    (:data:`GONE_UNDER_READS`). Raises ``OSError`` when the history cannot be listed.
    """
    for look in range(1, _LOOKS + 1):
        names = [entry.name for entry in reader.list_versions()]
        newest = latest_name(names, now)
        if newest is None:
            return names, None
        info = read_listed(reader, newest, now)
        if info is not None:
            return names, info
        if look == _LOOKS:
            stamp = parse_timestamp_from_filename(newest)
            future = is_future(newest, now)
            return names, VersionInfo(newest, stamp, None, None, None, future, GONE_UNDER_READS)
    raise AssertionError("unreachable")


def read_listed(reader: HistoryReader, name: str, now: datetime) -> VersionInfo | None:
    """Read and judge one version taken from a listing; a damaged or unreadable file
    gives ``error``, not a raise. ``None`` when it is gone since (retention deleted it,
    or an operator), as it is then no longer part of the history."""
    ingested = parse_timestamp_from_filename(name)
    future = is_future(name, now)
    try:
        data = reader.read_version(name)
    except VersionNotFound:
        return None
    except VersionTooLarge as exc:  # damaged, as a file the gate refuses
        return VersionInfo(name, ingested, exc.size, None, None, future, exc.reason)
    except OSError as exc:
        return VersionInfo(name, ingested, None, None, None, future, unreadable(exc))
    try:
        # The gate, not the model: the same verdict and values, without loading pydantic's model
        # machinery at start-up (about 50 ms; tests/test_gate.py holds the two together).
        payload = read_payload(data)
        last_updated = payload.lastUpdated.astimezone(UTC)
    except PayloadRejected as exc:
        return VersionInfo(name, ingested, len(data), None, None, future, exc.reason)
    except (OverflowError, ValueError) as exc:
        # A file placed by hand, or by an older gate, that no longer passes: reported.
        return VersionInfo(name, ingested, len(data), None, None, future, f"lastUpdated: {exc}")
    return VersionInfo(name, ingested, len(data), last_updated, payload.isPartial, future)


def payload_problem(data: bytes) -> str | None:
    """Why ``data`` is not a valid payload, or ``None`` when it is one."""
    try:
        # The gate, not the model: the same verdict, without loading pydantic's model
        # machinery at start-up (about 50 ms; tests/test_gate.py holds the two together).
        check_payload(data)
    except PayloadRejected as exc:
        return exc.reason
    return None


def list_report(reader: HistoryReader, limit: int | None, now: datetime) -> list[VersionInfo]:
    """The newest ``limit`` versions (all when ``None``), newest first, each read and judged.

    A listed version deleted before it is read (retention) is left out, and the next
    older one taken in its place: the report is the history as it stands, ``limit``
    versions long while that many remain. Raises ``OSError`` when the history cannot be
    listed.
    """
    infos: list[VersionInfo] = []
    for entry in reversed(reader.list_versions()):
        if limit is not None and len(infos) >= limit:
            break
        info = read_listed(reader, entry.name, now)
        if info is not None:
            infos.append(info)
    return infos


def resolve_version_name(text: str) -> str:
    """The version file name for a VERSION argument (``.json`` optional).

    Raises ``ValueError`` for a path or a name that is not a version name.
    """
    if "/" in text or "\\" in text or text in (".", ".."):
        raise ValueError(f"{text!r} looks like a path; give a version name from 'ingester list'")
    name = text if text.endswith(".json") else f"{text}.json"
    if not is_version_name(name):
        raise ValueError(
            f"{text!r} is not a version name (YYYY-MM-DDTHH-mm-ss-XXXXXXXX[.json] or 'latest')"
        )
    return name


# -- status ------------------------------------------------------------------------------


def _drops_in(spool: Spool, folder: Path) -> list[Candidate]:
    """Regular files in ``folder`` whose names a drop may have (none if it is missing)."""
    try:
        return [c for c in spool.scan(folder) if stat.S_ISREG(c.mode)]
    except StorageError:
        return []  # no spool (e.g. a copied history): nothing waits


def in_flight(claims: list[Candidate], settings: Settings) -> list[Candidate]:
    """The ``claims`` (regular files listed in ``settings.claimed_dir``) that are drops
    still in flight: without those the history or the quarantine holds already, which
    count once, as stored or as set aside. The rule is the watcher's own, by which its
    next start finishes such a claim by removing it (see
    :func:`ingester.intake.done_claims.finished_already`). Reads only."""
    return [
        c
        for c in claims
        if is_claim_name(c.name)
        and not finished_already(
            settings.claimed_dir / c.name, settings.history_dir, settings.rejected_dir
        )
    ]


def strays_words(claimed_dir: Path, strays: Sequence[str]) -> str:
    """The words ``status`` and ``check`` name :func:`claimed_strays` by (the first three,
    then how many more), with what to do about them."""
    shown = ", ".join(strays[:3]) + (f" and {len(strays) - 3} more" if len(strays) > 3 else "")
    return (
        f"{len(strays)} file(s) in {claimed_dir} the watcher will not take: {shown} "
        "(not drops it gave a claim; remove or move them)"
    )


def claimed_strays(settings: Settings) -> list[str]:
    """The names in ``settings.claimed_dir`` that no watcher takes (put there by hand):
    it leaves them there for good, with a warning, so they are no backlog; only an
    operator can remove or move them. Sorted; none when the folder cannot be listed
    (that is said as the claims' problem). Reads only."""
    try:
        return stray_claims(Spool(settings.spool_dir).claimed())
    except StorageError:
        return []


def _rejected_state(settings: Settings, spool: Spool) -> RejectedState:
    """The quarantine's count; ``None`` when it cannot be listed (its problem says why)."""
    blocker = file_on_the_way(settings.rejected_dir)
    if blocker is not None:
        # Nothing can be there, so nothing is quarantined: 0 is a count, not a guess.
        why = _cannot_be_there(blocker)
        return RejectedState(settings.rejected_dir, 0, why, settings.rejected_retention_days)
    problem = _folder_problem(settings.rejected_dir)
    count: int | None = None
    if problem is None:
        try:
            count = spool.rejected_count()
        except StorageError as exc:
            # Listed a moment ago: it changed since, so say what failed now.
            problem = str(exc)
    return RejectedState(settings.rejected_dir, count, problem, settings.rejected_retention_days)


def _named_problem(folder: Path) -> str | None:
    """:func:`_folder_problem`, with the folder named first."""
    problem = _folder_problem(folder)
    return None if problem is None else f"{folder} {problem}"


def _folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be listed (``None`` when it can, or when it is missing)."""
    try:
        with os.scandir(folder):
            return None
    except FileNotFoundError:
        return None
    except NotADirectoryError as exc:
        # Something is there, so "missing" would send the operator looking in vain.
        return f"not a folder ({os_cause(exc)})"
    except OSError as exc:
        return unreadable(exc)


def _cannot_be_there(blocker: Path) -> str:
    """Why a folder below ``blocker`` is missing and cannot be made, in one phrase."""
    return f"{blocker} is not a folder [ENOTDIR]"


def _spool_state(
    settings: Settings, waiting: int, claimed: int, oldest_at: datetime | None
) -> SpoolState:
    blocker = file_on_the_way(settings.spool_dir)
    if blocker is not None:
        # A file further up: the spool is missing, and no drop can be in it.
        why = _cannot_be_there(blocker)
        return SpoolState(settings.spool_dir, False, 0, 0, None, why)
    problem = _folder_problem(settings.spool_dir)
    if problem is not None:
        # Nothing could be listed: zero drops would be a guess, not a count.
        return SpoolState(settings.spool_dir, True, None, None, None, problem)
    return SpoolState(
        path=settings.spool_dir,
        exists=settings.spool_dir.exists(),
        waiting=waiting,
        claimed=claimed,
        oldest_drop_at=oldest_at,
        problem=None,
        claimed_problem=_named_problem(settings.claimed_dir),
        strays=tuple(claimed_strays(settings)),
    )


@dataclass(frozen=True)
class LatestVersion:
    """The newest version, read and judged; ages in seconds at the time of the query."""

    info: VersionInfo
    ingested_age: float | None
    last_updated_age: float | None

    @property
    def stale(self) -> bool | None:
        """Whether its payload is older than :data:`STALE_AFTER` (None if unknown)."""
        if self.last_updated_age is None:
            return None
        return self.last_updated_age > STALE_AFTER.total_seconds()


@dataclass(frozen=True)
class SpoolState:
    """The drop folder: drops waiting, drops claimed (in flight), the oldest one's time.

    ``exists``: something is at its path (a file too: ``problem`` then says it is not a
    folder). ``problem``: why the spool cannot be listed (the counts are then ``None``:
    unknown, not none), or, when it is missing, why it cannot be made (a file further up
    its path; the counts are then 0); ``claimed_problem``: why its claims cannot be (``claimed`` is
    then 0, and not a count).
    """

    path: Path
    exists: bool
    waiting: int | None
    claimed: int | None
    oldest_drop_at: datetime | None
    problem: str | None
    claimed_problem: str | None = None
    strays: tuple[str, ...] = ()
    """Names in ``.claimed/`` no watcher takes (see :func:`claimed_strays`): not counted."""

    @property
    def claimed_dir(self) -> Path:
        """The spool's ``.claimed/``, where the watcher keeps the drops it has taken."""
        return Spool(self.path).claimed_dir

    @property
    def backlog(self) -> int | None:
        """Drops not stored yet: waiting plus claimed (``None`` when unknown)."""
        if self.waiting is None or self.claimed is None:
            return None
        return self.waiting + self.claimed


@dataclass(frozen=True)
class RejectedState:
    """The quarantine folder: how many drops it holds (``None`` when it cannot be
    listed: ``problem`` says why; 0 when a file further up its path keeps it from
    being made: ``problem`` names that file), and their retention in days."""

    path: Path
    count: int | None
    problem: str | None
    retention_days: float


@dataclass(frozen=True)
class LockState:
    """Who holds the history lock: its pid and the command it noted (None: no one).

    ``other_spool``: the holder is a watcher that does not hold this spool's lock: it
    reads another spool, so drops here wait. ``unknown``: why who holds the history's
    lock, or whether its watcher holds this spool's, cannot be told (a lock file that
    cannot be looked at: ``"PATH: Permission denied [EACCES]"``).
    """

    pid: int | None
    command: str | None
    held: bool
    other_spool: bool = False
    unknown: str | None = None
    started: datetime | None = None
    """When the holder took the lock (see :func:`watcher_started`); ``None``: not held,
    or not known."""

    @property
    def watcher_running(self) -> bool | None:
        """Only a watcher (or a holder that left no note) of this spool counts; ``None``
        when that cannot be told."""
        if self.unknown is not None:
            return None
        return self.held and is_watcher(self.command) and not self.other_spool


@dataclass(frozen=True)
class Status:
    """Everything ``status`` shows, at ``now``."""

    now: datetime
    history: Path
    metadata: StorageMetadata
    metadata_problem: str | None
    latest: LatestVersion | None
    latest_link: Path
    latest_link_problem: str | None
    adopt_advised: bool  # the latest is a file, as the original server left it
    read_only: frozenset[Path]  # of the history and the link's folder, those mounted read-only
    spool: SpoolState
    rejected: RejectedState
    lock: LockState
    mirror: dict[str, Any] | None  # its JSON object (mirror.state.mirror_status); None: none
    settings: dict[str, dict[str, Any]]

    @property
    def unstored_s(self) -> float | None:
        """Seconds the oldest waiting drop has waited while the running watcher ran
        (:func:`unstored_for`); ``None`` when no watcher of this spool runs or none waits."""
        oldest = self.spool.oldest_drop_at
        if oldest is None or not self.lock.watcher_running:
            return None
        started = None if self.lock.started is None else self.lock.started.timestamp()
        return unstored_for(oldest.timestamp(), started, self.now.timestamp())


def status(settings: Settings, store: HistoryStore, now: datetime) -> Status:
    """The history's metadata, its latest version, the spool's backlog and the lock.

    Raises ``OSError`` when the history cannot be listed.
    """
    reader = LocalHistory(store.history_dir)
    # The latest first: the count, the metadata's judgement and the link's are then those
    # of the listing it was chosen from, the last one if it was chosen again.
    names, info = read_latest(reader, now)
    stored, meta_problem = stored_metadata(reader)
    meta = derive_metadata(names, now, stored)
    meta_problem = metadata_problem(stored, meta_problem, meta)

    latest: LatestVersion | None = None
    if info is not None:
        latest = LatestVersion(
            info,
            (now - info.ingested_at).total_seconds() if info.ingested_at else None,
            (now - info.last_updated).total_seconds() if info.last_updated else None,
        )

    spool = Spool(settings.spool_dir, settings.rejected_dir)
    waiting = _drops_in(spool, settings.spool_dir)
    claimed = in_flight(_drops_in(spool, settings.claimed_dir), settings)
    oldest = min((c.mtime_ns for c in waiting + claimed), default=None)
    oldest_at = datetime.fromtimestamp(oldest / 1e9, UTC) if oldest is not None else None
    try:
        holder = history_holder(store.lock_path, spool.lock_path)
    except OSError as exc:
        lock = LockState(None, None, False, unknown=describe_os_error(exc))
    else:
        if holder is None:
            lock = LockState(None, None, False)
        else:
            other = holder.watches_spool is False and holder.watcher
            started = watcher_started(store.lock_path)
            lock = LockState(
                holder.pid,
                holder.purpose,
                True,
                other,
                holder.unknown,
                None if started is None else datetime.fromtimestamp(started, UTC),
            )
    return Status(
        now=now,
        history=store.history_dir,
        metadata=meta,
        metadata_problem=meta_problem,
        latest=latest,
        latest_link=store.latest_path,
        latest_link_problem=store.latest_problem(names),
        adopt_advised=latest_is_a_file(store),
        read_only=frozenset(
            folder
            for folder in (store.history_dir, store.latest_path.parent)
            if on_read_only_filesystem(folder)
        ),
        spool=_spool_state(settings, len(waiting), len(claimed), oldest_at),
        rejected=_rejected_state(settings, spool),
        lock=lock,
        mirror=mirror_status(store.history_dir, names, settings.mirror),
        settings=settings.describe(),
    )
