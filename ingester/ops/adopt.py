"""``ingester adopt``: make a history written by the original sync server ours, in place.

The original server (TypeScript, one process) kept the same layout: version files named
``YYYY-MM-DDTHH-mm-ss-<suffix>.json``, ``_metadata.json`` with the same six keys, and
``console-usage-synced.json`` beside the history. Three things differ from what this
project writes, and :func:`adopt_history` changes exactly those:

1. **Versions are writable** (mode 0644): each loses its write bits (``fchmod`` on the
   file opened without following links, then ``fsync``). The bytes are never touched.
2. **The latest is a regular file** (a copy, where the original could not make a link):
   it becomes a relative symbolic link to the newest version. If the copy holds a
   snapshot that no version holds, that snapshot is first stored as a version of its
   own (named after the file's modification time and a hash of its bytes), so nothing
   the original served is lost.
3. **The metadata lacks this project's two extra keys** (its times have the milliseconds
   of each save, which are no disagreement: a version's name says its time to the
   second): it is rewritten from a scan of the versions, keeping the original's totals
   (created, deleted) and its ``lastCleanup``.

Every write goes through :mod:`ingester.history.durable`; each step is atomic on its own and the
whole is idempotent, so a crash (``kill -9``) at any point leaves a history that the
next ``adopt`` finishes: the snapshot in a copy is stored (and found again by its bytes)
before the copy is replaced, modes are changed one file at a time, and the link and
metadata are replaced by rename. It runs with the history lock held, so never beside a
watcher.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..clock import utc_now
from ..errors import PayloadRejected, StorageError, attribute_refusal, describe_os_error
from ..history import durable
from ..history.names import STAMP_FORMAT, is_version_name, parse_timestamp_from_filename
from ..history.store import VERSION_MODE, HistoryStore
from ..intake.spool import user_words
from ..payload.gate import check_payload

__all__ = [
    "ADOPT_ADVICE",
    "UNKEPT_LATEST",
    "AdoptReport",
    "adopt_history",
    "latest_is_a_file",
    "not_adopted",
    "nothing_to_adopt",
    "refused_advice",
    "unsafe_latest",
]


@dataclass
class AdoptReport:
    """What :func:`adopt_history` changed (all empty: the history was ours already)."""

    read_only: list[str] = field(default_factory=list)  # versions whose write bits went
    kept_latest: str | None = None  # the version made from the latest file's snapshot
    latest_was: str | None = None  # what the latest was before it became a link
    metadata_was: str | None = None  # why the metadata was rewritten
    removed_temps: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether anything was changed."""
        return bool(
            self.read_only
            or self.kept_latest
            or self.latest_was
            or self.metadata_was
            or self.removed_temps
        )


ADOPT_ADVICE = "run 'ingester adopt', which makes it this tool's (see docs/migrating.md)"
"""What ``verify`` and ``status`` advise for a history laid out as the original left it."""


def latest_is_a_file(store: HistoryStore) -> bool:
    """Whether the latest path is a regular file: the original server's layout (this
    project only ever makes it a link, so only :func:`adopt_history` turns it into
    one). Never raises."""
    try:
        return stat.S_ISREG(os.lstat(store.latest_path).st_mode)
    except OSError:
        return False


def unknown_latest(store: HistoryStore, exc: StorageError) -> str:
    """Why a start must not replace a latest file
    :meth:`~ingester.history.store.HistoryStore.unkept_latest` could not judge."""
    # Run as the service's user already, "run as the service's user" would be no advice:
    # the file is another's (copied or restored as root), and only its owner can change.
    advice = (
        "a permissions problem, not damage; give it to the service's user (chown), then "
        "run 'ingester adopt' as that user"
        if exc.errno in (errno.EACCES, errno.EPERM)
        else "fix that, then run 'ingester adopt' if it holds a snapshot no version holds"
    )
    return (
        f"cannot tell whether {store.latest_path} holds a snapshot that no version holds "
        f"({exc}), so nothing replaces it: {advice}"
    )


UNKEPT_LATEST = (
    "a file holding a snapshot that no version holds (a history written by the original "
    "server?): run 'ingester adopt' first, which keeps it as a version (see docs/migrating.md)"
)
"""Why a latest file whose snapshot no version holds must be adopted, not replaced."""


def unsafe_latest(store: HistoryStore) -> str | None:
    """Why starting on this history could lose a snapshot, or ``None`` when it cannot.

    The latest link is a cache that a start rebuilds; a regular file in its place that
    holds a snapshot no version holds would be replaced, and that snapshot lost. Only
    :func:`adopt_history` keeps it. A file that cannot be judged is a reason too
    (:func:`unknown_latest`). Reads only; never raises.
    """
    try:
        unkept = store.unkept_latest()
    except StorageError as exc:
        return unknown_latest(store, exc)
    return f"{store.latest_path} is {UNKEPT_LATEST}" if unkept else None


def not_adopted(store: HistoryStore) -> str | None:
    """Why ``store``'s history is still laid out as the original server left it (its
    latest path a regular file, which :func:`latest_is_a_file` tells ``status`` and
    ``verify``), with what to do; ``None`` when it is not. Reads only; never raises."""
    if not latest_is_a_file(store):
        return None
    problem = unsafe_latest(store)
    if problem is not None:
        return problem
    return f"{store.latest_path} is a file, not a link: {ADOPT_ADVICE}"


def refused_advice(path: Path) -> str:
    """What to do when adopt was refused (EPERM, EACCES) a change of ``path``, by its
    cause: an attribute of ``path`` or of its folder (immutable, append-only: root is
    refused too; the refusal's own words name it and what clears it), files of another
    user (to ``chown``), a folder of another user (named, with its owner: the root
    holding the latest link, or a history copied in as root), or else the owner, mode
    and attributes to look at. One clause, ending ``then run adopt again``. Never raises.
    """
    if attribute_refusal(path) is not None:
        return "clear that attribute, then run adopt again"
    me = os.geteuid()
    if me != 0:
        owner = _owner(path)
        if owner is not None and owner != me:
            return (
                "the files belong to another user: chown -R them to the user that runs "
                "adopt (the service's), then run adopt again"
            )
        owner = _owner(path.parent)
        if owner is not None and owner != me:
            # Running adopt as that owner (root, most often) would leave what it writes
            # that owner's, and the service refused at its next start: chown is the fix.
            return (
                f"{path.parent} belongs to {user_words(owner)}, not to this user "
                f"({user_words(me)}): chown -R it to the user that runs adopt (the "
                "service's), then run adopt again"
            )
    return (
        "this user may not change it: check the owner, mode and attributes of it and its "
        "folder (ls -ld, lsattr -d), then run adopt again"
    )


def _owner(path: Path) -> int | None:
    """The uid owning ``path`` (not followed), or ``None`` when it cannot be told."""
    try:
        return os.lstat(path).st_uid
    except OSError:
        return None


def _holds_versions(folder: Path) -> bool:
    """Whether ``folder`` holds at least one regular file named as a version (``False``
    where there is no such folder). Raises ``OSError`` when it cannot be listed."""
    try:
        with os.scandir(folder) as entries:
            return any(
                is_version_name(e.name) and e.is_file(follow_symlinks=False) for e in entries
            )
    except (FileNotFoundError, NotADirectoryError):
        return False


def _may_hold_versions(folder: Path) -> bool:
    """:func:`_holds_versions` for a candidate folder: one that cannot be listed is not
    named as a copy (nothing says it is one)."""
    try:
        return _holds_versions(folder)
    except OSError:
        return False


def _nested_copies(folder: Path, history_name: str) -> list[Path]:
    """Folders named ``history_name`` holding versions, one level inside ``folder``'s
    subfolders or inside ``folder`` itself: where ``cp -a`` puts a copy when its target
    exists (``cp -a SRC/claude-scraper ROOT/``, or into an existing history)."""
    found = []
    candidates = [folder / history_name]
    try:
        with os.scandir(folder) as entries:
            candidates += [
                Path(e.path) / history_name
                for e in entries
                if e.is_dir(follow_symlinks=False) and e.name != history_name
            ]
    except OSError:
        return []
    for candidate in sorted(candidates):
        if _may_hold_versions(candidate):
            found.append(candidate)
    return found


def nothing_to_adopt(root: Path, history_dir: Path, latest_path: Path) -> str | None:
    """Why there is no history at ``history_dir`` to adopt (one line), or ``None``.

    There is one when the folder holds a version, or when it exists and the latest path
    is a regular file (a snapshot the original served, which adopt keeps as a version).
    Anything else is the wrong folder: a root that does not exist, a copy nested one
    level too deep, an empty folder. Named, with the nested copy when there is one, so
    that adopt creates nothing where nothing was. A history folder that cannot be listed
    is named with its cause, never as one that holds nothing. Reads only; never raises.
    """
    try:
        if _holds_versions(history_dir):
            return None
    except OSError as exc:
        advice = (
            "its files belong to another user: chown -R them to the user that runs adopt "
            "(the service's), then run adopt again"
            if exc.errno in (errno.EPERM, errno.EACCES)
            else "fix that, then run adopt again"
        )
        return f"cannot list {describe_os_error(exc)}; {advice}"
    if history_dir.is_dir() and latest_path.is_file() and not latest_path.is_symlink():
        return None
    why = "nothing to adopt: "
    if not root.exists() and history_dir.is_relative_to(root):
        why += f"root folder {root} does not exist"
    elif not history_dir.exists():
        why += f"no history folder {history_dir}"
    elif not history_dir.is_dir():
        why += f"{history_dir} is not a folder"
    else:
        why += f"{history_dir} holds no version"
    nested = [] if not root.is_dir() else _nested_copies(root, history_dir.name)
    nested += _nested_copies(history_dir, history_dir.name) if history_dir.is_dir() else []
    nested = [n for n in dict.fromkeys(nested) if n != history_dir]
    if nested:
        where = nested[0]
        if where.parent == history_dir:
            return (
                f"{why}, but {where} does (a copy made inside an existing folder): move "
                f"its contents up into {history_dir}, then run adopt again"
            )
        return f"{why}, but {where} does: run 'ingester --root {where.parent} adopt'"
    return (
        f"{why}; point --root at the folder that holds the original's "
        f"{history_dir.name}/ and {latest_path.name} (see docs/migrating.md)"
    )


def _version_name_for(data: bytes, mtime_ns: int, newest: str | None, now: datetime) -> str:
    """A version name for a snapshot found in the latest file: its time, its bytes' hash.

    The time is the file's, but never after ``now`` (an mtime ahead of the clock was
    set by hand, and a name dated more than a day ahead would be no latest at all) and
    never at or before the ``newest`` version's: the original served that file as its
    newest snapshot, so it stays the latest (and the newest for retention) even when its
    mtime is older (touched, or restored with an old time).
    """
    stamp = min(datetime.fromtimestamp(mtime_ns / 1e9, UTC), now)
    suffix = hashlib.sha256(data).hexdigest()[:8]
    name = f"{stamp.strftime(STAMP_FORMAT)}-{suffix}.json"
    if newest is None or name > newest:
        return name
    after = parse_timestamp_from_filename(newest)
    if after is not None:
        name = f"{(after + timedelta(seconds=1)).strftime(STAMP_FORMAT)}-{suffix}.json"
    return name


def _keep_latest_snapshot(store: HistoryStore, data: bytes, max_bytes: int) -> str | None:
    """Store the latest file's snapshot as a version unless one holds it; the name made."""
    if store.version_holding(data) is not None:
        return None
    try:
        check_payload(data, max_bytes=max_bytes)
    except PayloadRejected as exc:
        raise StorageError(
            "adopt",
            store.latest_path,
            OSError(
                errno.EINVAL,
                f"holds a snapshot no version holds, and it is not valid ({exc.reason}); "
                "move it away, then run adopt again",
            ),
        ) from None
    try:
        mtime_ns = os.lstat(store.latest_path).st_mtime_ns
    except OSError as exc:
        raise StorageError("stat", store.latest_path, exc) from exc
    name = _version_name_for(data, mtime_ns, store.latest_version_name(), utc_now())
    try:
        durable.StagedFile(store.history_dir, data, VERSION_MODE, name=name).commit(name)
    except StorageError as exc:
        # Only a name already taken can be this step done by a run that crashed after
        # it (the same bytes there); any other failure is said as itself, never as the
        # missing file a look at that name would meet.
        if exc.errno != errno.EEXIST:
            raise
        try:
            held = durable.read_regular(store.version_path(name), len(data))
        except StorageError:
            raise exc from None
        if held != data:
            raise
    store.scan()
    return name


def _make_read_only(store: HistoryStore) -> list[str]:
    """Take the write bits off every version (one file at a time, each fsynced)."""
    changed = []
    for name in store.version_names():
        path = store.version_path(name)
        try:
            fd = os.open(path, durable.READ_NOFOLLOW)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StorageError("open", path, exc) from exc
        try:
            st = os.fstat(fd)
            mode = stat.S_IMODE(st.st_mode)
            if not stat.S_ISREG(st.st_mode) or not mode & 0o222:
                continue
            durable.set_fd_mode(fd, mode & ~0o222)
            durable.fsync_fd(fd)  # the new mode survives a power cut
        except OSError as exc:
            raise StorageError("chmod", path, exc) from exc
        finally:
            os.close(fd)
        changed.append(name)
    return changed


def adopt_history(store: HistoryStore, max_bytes: int) -> AdoptReport:
    """Turn the history of ``store`` into one this project writes; see the module doc.

    Call with the history lock held. Idempotent. Raises :class:`StorageError` naming
    the path and cause when a step fails (what was done so far stays done and correct).
    """
    report = AdoptReport()
    with contextlib.suppress(FileNotFoundError):
        store.history_dir.mkdir(parents=True, exist_ok=True)
    store.scan()
    counted, _problem = store.metadata_to_carry()
    copy = store.regular_latest()
    if copy is not None:
        report.kept_latest = _keep_latest_snapshot(store, copy, max_bytes)
        report.latest_was = "a regular file (a copy)"
    report.read_only = _make_read_only(store)
    init = store.initialize()  # temps swept; metadata and the link rebuilt where wrong
    report.removed_temps = init.removed_temps
    report.metadata_was = init.metadata_rebuilt
    if init.cache_errors:
        raise init.cache_errors[0]
    if report.kept_latest is not None:
        # A version like any other: the totals count it (the original's file does not).
        store.write_metadata(created_at_least=counted.total_versions_created + 1)
    if store.regular_latest() is not None:
        # A copy equal to the newest version is no problem to initialize(): make it a link.
        store.update_latest()
    if report.latest_was is None and init.latest_repaired:
        report.latest_was = init.latest_repaired
    return report
