"""What the operator commands report: ``status``, ``list``, ``show`` and ``verify``.

The logic lives here, as plain data (dicts and dataclasses) that the CLI prints either
as aligned text or as JSON; :mod:`ingester.cli_report` is the thin click layer on top.

Reading never writes: every function here works on :meth:`HistoryStore.load` (a scan
and a read of the metadata), never takes the history lock, and never creates a folder.
Only :func:`repair_modes` writes, and the caller holds the lock for it. A version file
is never deleted or rewritten here.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .durable import TEMP_PREFIX, StorageError
from .lock import lock_holder, lock_owner
from .mirror_state import mirror_status
from .model import PayloadRejected, judge_payload
from .names import format_timestamp, is_version_name, parse_timestamp_from_filename
from .retention import FUTURE_SLACK
from .settings import Settings
from .spool import Candidate, Spool
from .store import METADATA_NAME, HistoryStore, metadata_as_dict

__all__ = [
    "STALE_AFTER",
    "Finding",
    "ReportError",
    "VerifyReport",
    "VersionInfo",
    "align",
    "human_size",
    "human_time",
    "list_report",
    "open_store",
    "parse_cli_time",
    "payload_problem",
    "read_version",
    "relative_age",
    "repair_modes",
    "repaired_between",
    "resolve_version_name",
    "status_report",
    "verify_history",
    "version_at",
]

STALE_AFTER = timedelta(minutes=10)
"""A payload whose ``lastUpdated`` is older than this is stale (as the original widget judged)."""

# Temp files the latest link's folder may hold (what HistoryStore.initialize sweeps there).
LATEST_TEMP_PREFIXES = (".tmp-link-", ".tmp-w-")


class ReportError(Exception):
    """A read command cannot answer; ``str()`` is the one-line message, ``code`` the exit."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def utc_now() -> datetime:
    """The clock every report uses."""
    return datetime.now(UTC)


# -- formatting -------------------------------------------------------------------------


def iso(stamp: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds and ``Z`` (as the metadata spells times), or None."""
    return format_timestamp(stamp)


def relative_age(delta: timedelta) -> str:
    """``delta`` (now minus a time) in words: ``"42 s ago"``, ``"3 min ago"``, ``"in 2 days"``."""
    seconds = delta.total_seconds()
    ahead = seconds < 0
    seconds = abs(seconds)
    if seconds < 1:
        return "just now"
    if seconds < 60:
        words = f"{int(seconds)} s"
    elif seconds < 3600:
        words = f"{int(seconds // 60)} min"
    elif seconds < 48 * 3600:
        hours, rest = divmod(int(seconds), 3600)
        minutes = rest // 60
        words = f"{hours} h {minutes} min" if minutes else f"{hours} h"
    else:
        days = int(seconds // 86400)
        words = f"{days} days"
    return f"in {words}" if ahead else f"{words} ago"


def human_time(stamp: datetime | None) -> str:
    """``2026-11-28 10:30:00`` (UTC), or ``-``."""
    if stamp is None:
        return "-"
    # isoformat, not strftime: strftime writes year 1 as "1", not "0001".
    return stamp.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="seconds")


def human_size(size: int | None) -> str:
    """``312 B``, ``1.2 KiB``, ``3.4 MiB``, or ``-``."""
    if size is None:
        return "-"
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def align(rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> list[str]:
    """Rows of cells as lines with aligned columns (two spaces apart, no trailing blanks).

    Columns whose index is in ``right`` are right-aligned (sizes, counts).
    """
    if not rows:
        return []
    right_cols = set(right)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right_cols else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def parse_cli_time(text: str) -> datetime:
    """An ISO-8601 time from the command line; without an offset it is UTC.

    Raises ``ValueError`` with a message fit for the user.
    """
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 time (e.g. 2026-11-28T10:30:00Z)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    try:
        return stamp.astimezone(UTC)
    except OverflowError:
        # Valid with its offset but outside the range of dates once in UTC.
        raise ValueError(f"{text!r} is not a time that exists in UTC") from None


# -- opening the history, read-only ------------------------------------------------------


def open_store(settings: Settings) -> HistoryStore:
    """The history, scanned and loaded without writing anything.

    Raises :class:`ReportError` when the root or the history folder does not exist.
    """
    store = settings.store()
    history = store.history_dir
    if not history.is_dir():
        if history.exists():
            raise ReportError(f"history path {history} is not a folder")
        if not settings.root.is_dir() and history.is_relative_to(settings.root):
            if settings.root.exists():
                raise ReportError(f"root {settings.root} is not a folder")
            raise ReportError(f"root folder {settings.root} does not exist")
        raise ReportError(f"no history at {history}; run 'ingester init' to create it")
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

    def to_json(self) -> dict[str, Any]:
        """The ``list --json`` object for this version."""
        return {
            "name": self.name,
            "ingestedAt": iso(self.ingested_at),
            "size": self.size,
            "lastUpdated": iso(self.last_updated),
            "isPartial": self.is_partial,
            "future": self.future,
            "error": self.error,
        }


def is_future(name: str, now: datetime) -> bool:
    """Whether version ``name`` is dated more than a day ahead of ``now``."""
    stamp = parse_timestamp_from_filename(name)
    return stamp is not None and stamp > now + FUTURE_SLACK


def read_version(store: HistoryStore, name: str, now: datetime) -> VersionInfo:
    """Read and judge one version; a damaged or unreadable file gives ``error``, not a raise."""
    path = store.version_path(name)
    ingested = parse_timestamp_from_filename(name)
    future = is_future(name, now)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return VersionInfo(name, ingested, None, None, None, future, "gone (deleted meanwhile)")
    except OSError as exc:
        return VersionInfo(name, ingested, None, None, None, future, f"unreadable: {exc.strerror}")
    try:
        payload = judge_payload(data)
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
        judge_payload(data)
    except PayloadRejected as exc:
        return exc.reason
    return None


def list_report(store: HistoryStore, limit: int | None, now: datetime) -> list[VersionInfo]:
    """The newest ``limit`` versions (all when ``None``), newest first, each read and judged."""
    return [read_version(store, path.name, now) for path in store.list_versions(limit)]


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


def version_at(names: Sequence[str], when: datetime) -> str | None:
    """The newest version whose name's timestamp is at or before ``when`` (names sorted)."""
    for name in reversed(names):
        stamp = parse_timestamp_from_filename(name)
        if stamp is not None and stamp <= when:
            return name
    return None


# -- status ------------------------------------------------------------------------------


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except OSError:
        return None


def _drops_in(spool: Spool, folder: Path) -> list[Candidate]:
    """Regular files in ``folder`` whose names a drop may have (none if it is missing)."""
    try:
        return [c for c in spool.scan(folder) if stat.S_ISREG(c.mode)]
    except StorageError:
        return []  # no spool (e.g. a copied history): nothing waits


def _folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be listed (``None`` when it can, or when it is missing)."""
    try:
        with os.scandir(folder):
            return None
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def status_report(settings: Settings, store: HistoryStore, now: datetime) -> dict[str, Any]:
    """Everything ``status`` shows, as the ``status --json`` object."""
    meta = store.get_storage_metadata()
    stored, meta_problem = store.read_metadata_file()
    if meta_problem is None and stored.scan_facts() != meta.scan_facts():
        meta_problem = "out of date"

    latest: dict[str, Any] | None = None
    latest_name = store.latest_version_name(now)
    if latest_name is not None:
        info = read_version(store, latest_name, now)
        age = (now - info.last_updated).total_seconds() if info.last_updated else None
        latest = {
            "name": info.name,
            "ingestedAt": iso(info.ingested_at),
            "ingestedAgeSeconds": round((now - info.ingested_at).total_seconds(), 3)
            if info.ingested_at
            else None,
            "size": info.size,
            "lastUpdated": iso(info.last_updated),
            "lastUpdatedAgeSeconds": round(age, 3) if age is not None else None,
            "stale": age > STALE_AFTER.total_seconds() if age is not None else None,
            "isPartial": info.is_partial,
            "error": info.error,
        }

    spool = Spool(settings.spool_dir, settings.rejected_dir)
    waiting = _drops_in(spool, settings.spool_dir)
    claimed = _drops_in(spool, settings.claimed_dir)
    oldest = min((c.mtime_ns for c in waiting + claimed), default=None)
    oldest_at = datetime.fromtimestamp(oldest / 1e9, UTC) if oldest is not None else None

    owner = lock_owner(store.lock_path)
    pid, command = owner if owner is not None else (None, None)
    # Only a watcher (or a holder that left no note) counts as a running watcher.
    watching = owner is not None and command in ("watch", None)
    return {
        "now": iso(now),
        "history": os.fspath(store.history_dir),
        "metadata": metadata_as_dict(meta),
        "metadataProblem": meta_problem,
        "futureVersions": meta.future_versions,
        "latest": latest,
        "latestLink": {"path": os.fspath(store.latest_path), "problem": store.latest_problem()},
        "staleAfterSeconds": int(STALE_AFTER.total_seconds()),
        "spool": {
            "path": os.fspath(settings.spool_dir),
            "exists": settings.spool_dir.is_dir(),
            "backlog": len(waiting) + len(claimed),
            "waiting": len(waiting),
            "claimed": len(claimed),
            "oldestDropAt": iso(oldest_at),
            "oldestDropAgeSeconds": round((now - oldest_at).total_seconds(), 3)
            if oldest_at
            else None,
            "problem": _folder_problem(settings.spool_dir),
        },
        "rejected": {
            "path": os.fspath(settings.rejected_dir),
            "count": spool.rejected_count(),
            "problem": _folder_problem(settings.rejected_dir),
            "retentionDays": settings.rejected_retention_days,
        },
        "watcher": {"running": watching, "pid": pid if watching else None},
        "lock": {"held": owner is not None, "pid": pid, "command": command},
        "mirror": mirror_status(store.history_dir, store.version_names(), settings.mirror),
        "settings": settings.describe(),
    }


# -- verify ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One thing ``verify`` found: a problem (or a warning) about ``subject``."""

    kind: str
    subject: str
    message: str
    repairable: bool = False

    def to_json(self) -> dict[str, Any]:
        """The ``verify --json`` object for this finding."""
        return {
            "kind": self.kind,
            "subject": self.subject,
            "message": self.message,
            "repairable": self.repairable,
        }

    @property
    def key(self) -> tuple[str, str]:
        """What identifies it across two runs (before and after a repair)."""
        return (self.kind, self.subject)


@dataclass
class VerifyReport:
    """What ``verify`` found; ``ok`` when no problem is left (warnings do not count)."""

    history: Path
    latest_path: Path
    checked: int
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    repaired: list[Finding] = field(default_factory=list)
    writer_pid: int | None = None

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The ``verify --json`` object."""
        return {
            "ok": self.ok,
            "history": os.fspath(self.history),
            "latestPath": os.fspath(self.latest_path),
            "checkedVersions": self.checked,
            "problems": [f.to_json() for f in self.problems],
            "warnings": [f.to_json() for f in self.warnings],
            "repaired": [f.to_json() for f in self.repaired],
            "writerPid": self.writer_pid,
        }


def _is_spare(path: Path) -> bool:
    """An empty ``.tmp-w-`` file: what a running watcher keeps ready for its next copy."""
    try:
        return path.name.startswith(".tmp-w-") and path.lstat().st_size == 0
    except OSError:
        return False


def _temps(folder: Path, prefixes: tuple[str, ...]) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return sorted(
                e.name
                for e in entries
                if e.name.startswith(prefixes) and not e.is_dir(follow_symlinks=False)
            )
    except OSError:
        return []


def _metadata_findings(store: HistoryStore) -> list[Finding]:
    stored, problem = store.read_metadata_file()
    if problem is not None:
        return [Finding("metadata", METADATA_NAME, f"{METADATA_NAME} is {problem}", True)]
    scanned = store.get_storage_metadata()
    stored_json = metadata_as_dict(stored)
    scanned_json = metadata_as_dict(scanned)
    keys = ("versionCount", "oldestTimestamp", "newestTimestamp", "latestVersion", "futureVersions")
    wrong = [
        f"{key} is {stored_json[key]!r}, the files say {scanned_json[key]!r}"
        for key in keys
        if stored_json[key] != scanned_json[key]
    ]
    if wrong:
        return [Finding("metadata", METADATA_NAME, "; ".join(wrong), True)]
    return []


def _version_findings(store: HistoryStore, names: list[str]) -> list[Finding]:
    problems: list[Finding] = []
    for name in names:
        path = store.version_path(name)
        try:
            st = path.lstat()
            data = path.read_bytes()
        except FileNotFoundError:
            continue  # deleted by retention since the scan
        except OSError as exc:
            problems.append(Finding("unreadable-version", name, f"cannot read: {exc.strerror}"))
            continue
        try:
            judge_payload(data)
        except PayloadRejected as exc:
            problems.append(Finding("invalid-version", name, exc.reason))
        if st.st_mode & 0o222:
            problems.append(
                Finding(
                    "writable-version",
                    name,
                    f"mode {stat.S_IMODE(st.st_mode):04o} has write bits (versions are read-only)",
                    True,
                )
            )
    return problems


# Looks like a version name, so an operator probably meant it as one.
_VERSION_LIKE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-.*\.json$", re.ASCII)


def _odd_entries(store: HistoryStore, names: set[str]) -> list[Finding]:
    """Entries that look like versions but do not count as one (never touched)."""
    found: list[Finding] = []
    try:
        with os.scandir(store.history_dir) as entries:
            for entry in entries:
                if entry.name in names or not _VERSION_LIKE_RE.match(entry.name):
                    continue
                if is_version_name(entry.name):
                    why = "named like a version but not a regular file"
                else:
                    why = "not a valid version name (bad date or suffix)"
                found.append(Finding("not-a-version", entry.name, f"{why}; not counted"))
    except OSError:
        pass
    return sorted(found, key=lambda f: f.subject)


def verify_history(store: HistoryStore, now: datetime) -> VerifyReport:
    """Check the history (already loaded); never writes.

    While another process holds the lock, the caches (metadata, latest link) and temp
    files may be mid-update, so what is found about them is a warning, not a problem;
    an empty ``.tmp-w-`` file is then the watcher's spare for its next copy, not even
    that. When this process holds the lock (``verify --repair``) nothing is in flight.
    """
    names = store.version_names()
    pid = lock_holder(store.lock_path)
    if pid == os.getpid():
        pid = None
    report = VerifyReport(store.history_dir, store.latest_path, len(names), writer_pid=pid)
    report.problems += _version_findings(store, names)

    caches: list[Finding] = []
    for temp in _temps(store.history_dir, (TEMP_PREFIX,)):
        if pid is not None and _is_spare(store.history_dir / temp):
            continue
        caches.append(
            Finding("stale-temp", temp, f"leftover temp file in {store.history_dir}", True)
        )
    link_dir = store.latest_path.parent
    if link_dir != store.history_dir:
        for temp in _temps(link_dir, LATEST_TEMP_PREFIXES):
            caches.append(
                Finding("stale-temp", os.fspath(link_dir / temp), "leftover temp file", True)
            )
    caches += _metadata_findings(store)
    link_problem = store.latest_problem()
    if link_problem is not None:
        caches.append(
            Finding(
                "latest-link", os.fspath(store.latest_path), f"latest link {link_problem}", True
            )
        )
    if pid is None:
        report.problems += caches
    else:
        report.warnings += [
            Finding(f.kind, f.subject, f"{f.message} (pid {pid} holds the lock: may be in flight)")
            for f in caches
        ]

    report.warnings += _odd_entries(store, set(names))
    for name in names:
        if is_future(name, now):
            report.warnings.append(
                Finding("future-version", name, "dated more than a day ahead of the clock")
            )
    return report


def repair_modes(store: HistoryStore, findings: Iterable[Finding]) -> None:
    """Remove the write bits of writable versions (the bytes are never touched).

    Call with the history lock held.
    """
    for finding in findings:
        if finding.kind != "writable-version":
            continue
        path = store.version_path(finding.subject)
        try:
            mode = stat.S_IMODE(path.lstat().st_mode)
            # Only regular files count as versions (the scan does not follow links).
            os.chmod(path, mode & ~0o222)
        except OSError as exc:
            raise StorageError("chmod", path, exc) from exc


def repaired_between(before: VerifyReport, after: VerifyReport) -> list[Finding]:
    """The problems of ``before`` that ``after`` no longer has."""
    left = {f.key for f in after.problems}
    return [f for f in before.problems if f.key not in left]
