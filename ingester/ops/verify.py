"""``verify``: what is wrong with a history's folder, its versions, its latest link and
its metadata, and which of it ``verify --repair`` may fix.

:func:`verify_history` reads only. A repair is the history's own start
(:meth:`~ingester.history.store.HistoryStore.initialize` rebuilds the caches) plus
:func:`repair_modes`; the CLI then verifies again and :func:`repaired_between` says what
the repair fixed. Only :func:`repair_modes` writes (the caller holds the history lock),
and it never deletes or rewrites a version's bytes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..errors import (
    PERMISSION_ADVICE,
    PayloadRejected,
    VersionNotFound,
    VersionTooLarge,
    attribute_refusal,
    file_on_the_way,
    is_permission_problem,
    on_read_only_filesystem,
    refusal_words,
    unreadable,
)
from ..history import durable
from ..history.base import HistoryReader, derive_metadata, is_future, stored_metadata
from ..history.durable import TEMP_PREFIX, StorageError
from ..history.latest import LATEST_TEMP_PREFIXES
from ..history.local import LocalHistory
from ..history.lock import lock_holder
from ..history.metadata_file import METADATA_NAME
from ..history.names import (
    is_version_name,
    looks_like_version_name,
    parse_timestamp_from_filename,
)
from ..history.store import HistoryStore
from ..payload.gate import check_payload
from .adopt import UNKEPT_LATEST, latest_is_a_file, unknown_latest

__all__ = [
    "LINK_IN_FLIGHT_S",
    "Finding",
    "VerifyReport",
    "link_in_flight",
    "repair_modes",
    "repaired_between",
    "verify_history",
]


@dataclass(frozen=True)
class Finding:
    """One thing ``verify`` found: a problem (or a warning) about ``subject``."""

    kind: str
    subject: str
    message: str
    repairable: bool = False

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
    adopt_advised: bool = False  # laid out as the original server left it: adopt fixes it

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


def _is_spare(path: Path) -> bool:
    """An empty ``.tmp-w-`` file: what a running watcher keeps ready for its next copy."""
    try:
        return path.name.startswith(durable.WRITE_TEMP_PREFIX) and path.lstat().st_size == 0
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


_LOOKS = 3
"""Listings verify takes again when the metadata disagrees with the one before it and
the history has changed since (see :func:`verify_history`)."""


def _metadata_findings(reader: HistoryReader, names: list[str], now: datetime) -> list[Finding]:
    stored, problem = stored_metadata(reader)
    if is_permission_problem(problem):
        # The file may be fine: a repair run by this user would not help.
        message = f"{METADATA_NAME} is {problem}: {PERMISSION_ADVICE}"
        return [Finding("metadata", METADATA_NAME, message)]
    if problem is not None and problem.startswith("unreadable"):
        # Its totals cannot be rebuilt from the versions: no repair replaces it.
        message = f"{METADATA_NAME} is {problem}: its totals cannot be rebuilt; fix the cause"
        return [Finding("metadata", METADATA_NAME, message)]
    if problem is not None:
        return [Finding("metadata", METADATA_NAME, f"{METADATA_NAME} is {problem}", True)]
    scanned = derive_metadata(names, now, stored)
    stored_json = stored.model_dump(by_alias=True)
    scanned_json = scanned.model_dump(by_alias=True)
    wrong = [
        f"{key} is {'missing' if key in stored.absent else _said(stored_json[key])}, "
        f"the files say {_said(scanned_json[key])}"
        for key in stored.facts_differing(scanned)
    ]
    if wrong:
        return [Finding("metadata", METADATA_NAME, "; ".join(wrong), True)]
    return []


def _version_findings(reader: LocalHistory, names: list[str]) -> tuple[list[Finding], set[str]]:
    """What is wrong with the versions ``names``, and which of them are gone since the
    listing (deleted by retention: no longer versions, so neither judged nor counted)."""
    problems: list[Finding] = []
    gone: set[str] = set()
    for name in names:
        path = reader.dir / name
        data: bytes | None = None
        try:
            st = path.lstat()
            data = reader.read_version(name)
        except (FileNotFoundError, VersionNotFound):
            gone.add(name)
            continue
        except VersionTooLarge as exc:  # never read whole: invalid, as the gate would say
            problems.append(Finding("invalid-version", name, exc.reason))
        except OSError as exc:
            problem = unreadable(exc)
            if is_permission_problem(problem):
                problem += f": {PERMISSION_ADVICE}"
            problems.append(Finding("unreadable-version", name, problem))
            continue
        if data is not None:
            try:
                # The gate, not the model: the same verdict, without loading pydantic's model
                # machinery at start-up (about 50 ms; tests/test_gate.py holds the two together).
                check_payload(data)
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
    return problems, gone


def _odd_entries(store: HistoryStore, names: set[str]) -> list[Finding]:
    """Entries that look like versions but do not count as one (never touched)."""
    found: list[Finding] = []
    try:
        with os.scandir(store.history_dir) as entries:
            for entry in entries:
                if entry.name in names or not looks_like_version_name(entry.name):
                    continue
                if is_version_name(entry.name):
                    if entry.is_file(follow_symlinks=False):
                        continue  # a version stored since the listing, by the watcher
                    why = "named like a version but not a regular file"
                else:
                    why = "not a valid version name (bad date or suffix)"
                found.append(Finding("not-a-version", entry.name, f"{why}; not counted"))
    except OSError:
        pass
    return sorted(found, key=lambda f: f.subject)


def _writer(store: HistoryStore) -> int | None:
    """The pid of another process holding the history lock; ``None`` when none does."""
    pid = lock_holder(store.lock_path)
    return None if pid == os.getpid() else pid


LINK_IN_FLIGHT_S = 60.0
"""Seconds after the newest version was stored during which a latest link that does not
name it yet may be an update in flight. A watcher re-points the link right after it
stores a batch, which takes milliseconds; a minute leaves room for a slow disk, and a
link still behind after it is stuck (its writer's log says why)."""


def link_in_flight(store: HistoryStore, newest: str | None, now: datetime) -> bool:
    """Whether a latest link that does not name ``newest`` (the newest version's name,
    ``None`` when there is none) may be mid-update, by ``verify``'s rule, which ``check``
    shares: another process holds the history lock, and ``newest`` was stored less than
    :data:`LINK_IN_FLIGHT_S` before ``now`` (by the later of the time in its name and
    its file's mtime; one that cannot be looked at is moving, so in flight too)."""
    if _writer(store) is None:
        return False
    if newest is None:
        return True  # nothing to time it by: the writer may be removing the last one
    try:
        stored = os.lstat(store.version_path(newest)).st_mtime
    except OSError:
        return True
    named = parse_timestamp_from_filename(newest)
    if named is not None:
        stored = max(stored, named.timestamp())
    return now.timestamp() - stored < LINK_IN_FLIGHT_S


def verify_history(store: HistoryStore, now: datetime) -> VerifyReport:
    """Check the local history: its versions (read through its reader), its metadata,
    its latest link, modes and temp files; never writes. Raises ``OSError`` when the
    history cannot be listed.

    While another process holds the lock, the caches (metadata, latest link) and temp
    files may be mid-update, so what is found about them is a warning, not a problem
    (but for a latest link still behind a newest version stored more than
    :data:`LINK_IN_FLIGHT_S` ago, which is stuck: see :func:`link_in_flight`);
    an empty ``.tmp-w-`` file is then the watcher's spare for its next copy, not even
    that. When this process holds the lock (``verify --repair``) nothing is in flight.
    A version deleted since the listing (retention) is no longer in the history: it is
    neither checked nor counted; the metadata is judged against a listing taken after
    the versions are read, and where they disagree and the history has changed since
    that listing, against a new one (up to three).
    """
    reader = LocalHistory(store.history_dir)
    names = [entry.name for entry in reader.list_versions()]
    pid = _writer(store)
    findings, gone = _version_findings(reader, names)
    names = [name for name in names if name not in gone]
    # Reading the versions takes a while: retention may have deleted some of them
    # meanwhile, read or not, and its writer may be updating the metadata and the link
    # still. So the lock is looked at again: held, what the caches say is a warning; let
    # go, the writer has finished them, and they are judged against the history as it
    # now is.
    pid = pid or _writer(store)
    now_listed = [entry.name for entry in reader.list_versions()]
    report = VerifyReport(store.history_dir, store.latest_path, len(names), writer_pid=pid)
    report.problems += findings

    caches: list[Finding] = []
    for temp in _temps(store.history_dir, (TEMP_PREFIX,)):
        if pid is not None and _is_spare(store.history_dir / temp):
            continue
        caches.append(
            _stale_temp(
                store.history_dir / temp, temp, f"leftover temp file in {store.history_dir}"
            )
        )
    link_dir = store.latest_path.parent
    if link_dir != store.history_dir:
        for temp in _temps(link_dir, LATEST_TEMP_PREFIXES):
            path = link_dir / temp
            caches.append(_stale_temp(path, os.fspath(path), "leftover temp file"))
    metadata = _metadata_findings(reader, now_listed, now)
    for _ in range(_LOOKS):
        # The metadata is read after that listing: a writer that changed the history in
        # between (a one-shot cleanup) left a metadata file that tells of the history
        # after it. Judged again by a new listing, as long as the history keeps moving.
        listed = [entry.name for entry in reader.list_versions()] if metadata else now_listed
        if listed == now_listed:
            break
        now_listed = listed
        pid = pid or _writer(store)
        metadata = _metadata_findings(reader, now_listed, now)
    caches += metadata
    report.adopt_advised = latest_is_a_file(store)
    link = _latest_finding(store, report.adopt_advised)
    if (
        link is not None
        and pid is not None
        and not link_in_flight(store, store.latest_version_name(now), now)
    ):
        # A writer holds the lock, yet the newest version is older than any update in
        # flight: the link is stuck behind it, whatever the lock says.
        report.problems.append(
            Finding(
                link.kind,
                link.subject,
                f"{link.message} (still, {LINK_IN_FLIGHT_S:.0f} s after the newest version "
                f"was stored, though pid {pid} holds the lock: its log says why)",
                link.repairable,
            )
        )
    elif link is not None:
        caches.append(link)
    if pid is None:
        report.problems += caches
    else:
        report.warnings += [
            Finding(f.kind, f.subject, f"{f.message} (pid {pid} holds the lock: may be in flight)")
            for f in caches
        ]

    report.problems = _unrepairable_where_read_only(store, report.problems)
    report.warnings = _unrepairable_where_read_only(store, report.warnings)
    report.warnings += _odd_entries(store, set(names))
    for name in names:
        if is_future(name, now):
            report.warnings.append(
                Finding("future-version", name, "dated more than a day ahead of the clock")
            )
    return report


def _unrepairable_where_read_only(store: HistoryStore, findings: list[Finding]) -> list[Finding]:
    """``findings`` with those a repair would write on a read-only filesystem (the
    history's, or the latest link's folder's) no longer offered to ``--repair``, and
    why said: each run would promise a repair that fails with EROFS."""
    places = {store.history_dir, store.latest_path.parent}
    read_only = {folder for folder in places if on_read_only_filesystem(folder)}
    if not read_only:
        return findings
    out = []
    for f in findings:
        # The latest link and the temp files beside it (named by full path) are written
        # in the link's folder; everything else in the history.
        beside_link = f.kind == "latest-link" or os.path.isabs(f.subject)
        folder = store.latest_path.parent if beside_link else store.history_dir
        if f.repairable and folder in read_only:
            why = f"{folder} is on a read-only filesystem, so no repair can be made there"
            f = Finding(f.kind, f.subject, f"{f.message}; {why}")
        out.append(f)
    return out


def _stale_temp(path: Path, subject: str, message: str) -> Finding:
    """The leftover temp file ``path``: repairable (a repair removes it), unless an
    attribute (of it, or of its folder) refuses its removal, which is then said."""
    refusal = attribute_refusal(path)
    if refusal is None:
        return Finding("stale-temp", subject, message, True)
    words = refusal_words(path, refusal)
    return Finding("stale-temp", subject, f"{message}; {words}, so no repair can remove it")


def _latest_finding(store: HistoryStore, is_a_file: bool) -> Finding | None:
    """What is wrong with the latest link, if anything; repairable only where a repair
    loses nothing (``is_a_file``: the latest path is a regular file, see
    :func:`~ingester.ops.adopt.latest_is_a_file`)."""
    subject = os.fspath(store.latest_path)
    try:
        unkept = is_a_file and store.unkept_latest()
    except StorageError as exc:
        # The file may hold what no version holds: never for verify --repair.
        return Finding("latest-link", subject, unknown_latest(store, exc))
    if unkept:
        # Not for verify --repair, which would replace the file and lose the snapshot.
        return Finding("latest-link", subject, UNKEPT_LATEST)
    problem = store.latest_problem()
    if is_permission_problem(problem):
        return Finding("latest-link", subject, f"latest link {problem}: {PERMISSION_ADVICE}")
    if problem is None:
        return None
    blocked = _unreplaceable(store.latest_path)
    if blocked is not None:
        # A rename cannot put a link where this is: promising a repair would be a lie
        # that each run repeats.
        return Finding("latest-link", subject, f"latest link {problem}: {blocked}")
    return Finding("latest-link", subject, f"latest link {problem}", True)


def _unreplaceable(path: Path) -> str | None:
    """What a repair must leave to the operator before it can make the link at ``path``,
    or ``None`` when a repair can: a folder in its place (nothing renames a file over
    one), or a parent that is not a folder."""
    if path.is_dir() and not path.is_symlink():
        return f"a repair cannot replace a folder; {_BY_HAND}"
    blocker = file_on_the_way(path)
    if blocker is not None:
        return f"{blocker} is not a folder, so no link can be made in it; {_BY_HAND}"
    return None


_BY_HAND = "move it away by hand, then run 'ingester verify --repair'"


def repair_modes(store: HistoryStore, findings: Iterable[Finding]) -> list[StorageError]:
    """Remove the write bits of writable versions (the bytes are never touched).

    Call with the history lock held. Each new mode is fsynced, as adopt does: a repair
    a crash may undo is no repair, so a failed fsync is a failure (action ``fsync``).
    A version that cannot be changed (immutable, another owner) does not stop the
    others: its failure is returned, one per version, and the finding stays for the
    next ``verify`` to report.
    """
    failures: list[StorageError] = []
    for finding in findings:
        if finding.kind != "writable-version":
            continue
        path = store.version_path(finding.subject)
        action = "chmod"
        try:
            # Only regular files count as versions (the scan does not follow links).
            try:
                fd = os.open(path, durable.READ_NOFOLLOW)
            except PermissionError:
                # One this user may not read (mode 0200) can still lose its write bits,
                # as before: without an fsync, which needs it open.
                durable.set_mode(path, stat.S_IMODE(path.lstat().st_mode) & ~0o222)
                continue
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode):
                    durable.set_fd_mode(fd, stat.S_IMODE(st.st_mode) & ~0o222)
                    action = "fsync"
                    durable.fsync_fd(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            failures.append(StorageError(action, path, exc))
    return failures


def repaired_between(before: VerifyReport, after: VerifyReport) -> list[Finding]:
    """The problems of ``before`` that ``after`` no longer has."""
    left = {f.key for f in after.problems}
    return [f for f in before.problems if f.key not in left]


def _said(value: object) -> str:
    """A metadata value as a finding quotes it: ``'text'``, ``3``, or ``null``."""
    return "null" if value is None else repr(value)
