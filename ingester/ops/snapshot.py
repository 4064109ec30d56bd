"""Point-in-time snapshots of a live history, for backups: ``ingester snapshot``.

A backup tool that copies the live history lists the folder first and reads the latest
link and ``_metadata.json`` later, so the copy can hold a link to a version created
after the listing, or metadata ahead of the files. A snapshot fixes the instant
instead:

1. the history is listed **once**;
2. each listed version is hard-linked into a temp folder beside the destination (its
   inode is immutable, so a link is a copy that costs nothing), or copied where links
   cannot be made (another filesystem, no permission to link another user's file);
   a version that retention deleted since the listing is simply left out;
3. ``_metadata.json`` and the latest link are derived from exactly the versions that
   were taken, by the same code the watcher uses (:class:`~ingester.history.store.HistoryStore`);
4. the temp folder is renamed to the destination: a half-made snapshot is never
   visible under its final name.

The result is a **root** in the default layout, restorable as it is::

    DEST/console-usage-history/<versions> + _metadata.json
    DEST/console-usage-synced.json -> console-usage-history/<newest>

so ``ingester --root DEST verify`` passes by construction. Nothing here takes the
history lock or writes to the live history: it runs beside a watcher, as any user who
can read the history.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import SnapshotError, os_cause
from ..history import durable
from ..history.durable import SNAPSHOT_TEMP_PREFIX, StorageError
from ..history.metadata_file import METADATA_NAME, write_metadata_file
from ..history.names import is_version_name
from ..history.store import HistoryStore
from ..runtime.signals import stop_signals_held
from .outputs import locked_temp_folder

__all__ = [
    "SNAPSHOT_HISTORY",
    "SNAPSHOT_LATEST",
    "SnapshotError",
    "SnapshotResult",
    "build_snapshot_tree",
    "is_snapshot_temp_name",
    "list_versions_once",
    "refuse_live_destination",
    "remove_made_folders",
    "take_snapshot",
    "write_snapshot_tar",
]

log = logging.getLogger("ingester.snapshot")

SNAPSHOT_HISTORY = "console-usage-history"
"""The history folder's name inside a snapshot (the default layout)."""
SNAPSHOT_LATEST = "console-usage-synced.json"
"""The latest link's name inside a snapshot (the default layout)."""

# No hard link can be made here at all; a copy can: another filesystem, a filesystem
# without links. Every version after the first such failure is copied.
_COPY_ALL = frozenset({errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP})
# This file cannot be linked, while the next may be: an immutable version, one of
# another user under fs.protected_hardlinks, too many links. It alone is copied; a link
# that fails costs next to nothing beside a copy (an fsync each), so the next is tried.
_COPY_THIS = frozenset({errno.EPERM, errno.EMLINK})


@dataclass(frozen=True)
class SnapshotResult:
    """What a snapshot holds.

    ``versions``: the version names taken, oldest first; ``linked`` / ``copied``: how
    each was taken; ``vanished``: listed but deleted by retention before it was taken
    (left out); ``latest``: the version the latest link names (``None`` when empty).
    """

    path: Path
    versions: list[str]
    linked: int
    copied: int
    vanished: int
    latest: str | None


def list_versions_once(history_dir: Path) -> list[str]:
    """The version names in ``history_dir`` at one instant, oldest first.

    Raises :class:`SnapshotError` when the folder cannot be listed.
    """
    try:
        with os.scandir(history_dir) as entries:
            names = [
                e.name
                for e in entries
                if is_version_name(e.name) and e.is_file(follow_symlinks=False)
            ]
    except FileNotFoundError:
        raise SnapshotError(
            f"no history at {history_dir}; run 'ingester init' to create it"
        ) from None
    except OSError as exc:
        raise SnapshotError(str(StorageError("list", history_dir, exc))) from None
    return sorted(names)


_CHUNK = 1 << 20
"""Bytes read and written at a time when a version is copied."""
_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def _writable_link(path: Path) -> bool:
    """Whether the version just linked at ``path`` shares a writable inode (a live version
    copied in without its mode): the snapshot then takes a read-only copy instead."""
    try:
        return bool(os.lstat(path).st_mode & _WRITE_BITS)
    except OSError:
        return False


def _pour(fd: int, source: Path, out: BinaryIO) -> None:
    """Write everything left in the open file ``fd`` (``source``) to ``out``, a chunk at a
    time; a failed read raises :class:`StorageError` naming ``source``."""
    while True:
        try:
            chunk = os.read(fd, _CHUNK)
        except OSError as exc:
            raise StorageError("read", source, exc) from exc
        if not chunk:
            return
        out.write(chunk)


def _write_scratch(path: Path, fd: int, source: Path, mode: int) -> None:
    # Scratch for the tar stream, removed once the stream is written: durability would
    # only cost an fsync per version (20,000 of them on a large history).
    try:
        out_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with os.fdopen(out_fd, "wb") as out:
            _pour(fd, source, out)
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError("write", path, exc) from exc


def _copy_version(source: Path, folder: Path, name: str, *, scratch: bool) -> bool:
    """Copy one version (durably unless ``scratch``), read-only; False when gone.

    Streamed, never held whole. A snapshot is a backup of the history as it is, so a
    file larger than any drop (damaged: ``verify`` names it) is taken as a hard link
    takes it: neither left out nor cut short, and without filling the memory.
    """
    try:
        fd = os.open(source, durable.READ_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError("open", source, exc) from exc
    try:
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise StorageError("read", source, exc) from exc
        if not stat.S_ISREG(st.st_mode):
            return False  # replaced by something else since the listing: not a version
        # Read-only whatever the live file's mode: every version must be, and a live
        # one copied in without its mode would make the snapshot fail verify.
        mode = stat.S_IMODE(st.st_mode) & ~_WRITE_BITS
        if scratch:
            _write_scratch(folder / name, fd, source, mode)
        else:
            with durable.streamed_file(folder / name, mode=mode, replace=False) as out:
                _pour(fd, source, out)
    finally:
        os.close(fd)
    return True


def build_snapshot_tree(
    history_dir: Path,
    tree: Path,
    names: list[str] | None = None,
    *,
    link: bool = True,
    scratch: bool = False,
) -> SnapshotResult:
    """Fill the empty folder ``tree`` with a snapshot of ``history_dir``; nothing else moves.

    ``names`` is the listing to take (default: :func:`list_versions_once`); a listed
    version that is gone by the time it is taken is left out. With ``link=False``
    every version is copied. ``scratch=True`` skips the fsync of each copy (for a tree
    that is read once and removed). Raises :class:`StorageError` when a write fails,
    the metadata's and the latest link's included.
    """
    history_dir = Path(os.path.abspath(history_dir))
    if names is None:
        names = list_versions_once(history_dir)
    live = HistoryStore(history_dir, history_dir.parent / SNAPSHOT_LATEST)
    # Read before the versions: this way the totals can only be behind the files taken,
    # never ahead of them. One that cannot be read stops the snapshot (MetadataUnreadable):
    # a copy of the defaults in its place would lose the totals in the backup.
    stored, _problem = live.metadata_to_carry()
    folder = tree / SNAPSHOT_HISTORY
    try:
        folder.mkdir(mode=stat.S_IMODE(os.stat(history_dir).st_mode) | 0o700)
    except OSError as exc:
        raise StorageError("create folder", folder, exc) from exc
    linked = copied = vanished = 0
    for name in names:
        source = history_dir / name
        if link:
            try:
                durable.link_file(source, folder / name)
                if not _writable_link(folder / name):
                    linked += 1
                    continue
                durable.remove_file(folder / name)
            except StorageError as exc:
                if exc.errno == errno.ENOENT:
                    vanished += 1
                    continue
                if exc.errno in _COPY_ALL:
                    link = False  # the next link would fail the same way: copy the rest
                elif exc.errno not in _COPY_THIS:
                    raise
        if _copy_version(source, folder, name, scratch=scratch):
            copied += 1
        else:
            vanished += 1
    durable.fsync_dir(folder)
    # The live totals and lastCleanup carry over; every key a scan can derive is then
    # rebuilt from the files actually taken, by the code the watcher itself uses.
    write_metadata_file(folder, stored)
    store = HistoryStore(folder, tree / SNAPSHOT_LATEST)
    # In a live history the metadata and the latest link are caches a start rebuilds;
    # in a snapshot they are part of what was promised (a root that verifies as it is),
    # so one that could not be written fails the snapshot.
    report = store.initialize()
    if report.cache_errors:
        raise report.cache_errors[0]
    return SnapshotResult(
        tree,
        store.version_names(),
        linked,
        copied,
        vanished,
        store.latest_version_name(),
    )


def _remove_tree(path: Path) -> None:
    # Only our own half-made temp folder: hard links in it are just second names. A stop
    # (SIGTERM unwinds the command) waits until it is gone.
    with stop_signals_held():
        shutil.rmtree(path, ignore_errors=True)


def _as_asked(exc: StorageError, temp: Path, dest: Path) -> str:
    """``exc`` in one line, naming the path under ``dest`` for one under the folder ``temp``.

    The snapshot is built under a temp name the user never gave: an error names the
    path they asked for.
    """
    if exc.path == temp or exc.path.is_relative_to(temp):
        return str(StorageError(exc.action, dest / exc.path.relative_to(temp), exc.cause))
    return str(exc)


def refuse_live_destination(dest: Path, history_dir: Path, **others: Path) -> None:
    """Raise :class:`SnapshotError` when ``dest`` (a snapshot's folder or tar file) is,
    or is inside, the history or one of ``others`` (``spool=``, ``rejected=``: the
    words the message uses), also through a symlink in its parent path.

    The one rule for both forms: a file written into the spool is taken for a drop
    (and rejected as not JSON), one in the history sits among the versions and would
    be in the next snapshot.
    """
    dest = Path(os.path.abspath(dest))
    real = Path(os.path.realpath(dest.parent)) / dest.name
    # The same folder can have other paths than its own (a bind mount, a second mount
    # of the filesystem): what is compared in the end is the folder itself.
    above = {_folder_id(p) for p in (dest, *dest.parents, real, *real.parents)}
    for what, folder in {"history": history_dir, **others}.items():
        folder = Path(os.path.abspath(folder))
        real_folder = Path(os.path.realpath(folder))
        if (
            dest.is_relative_to(folder)
            or real.is_relative_to(real_folder)
            or _folder_id(folder) in above - {None}
        ):
            raise SnapshotError(
                f"{dest} is inside the {what} {folder}; give a destination outside it"
            )


def _folder_id(path: Path) -> tuple[int, int] | None:
    """``path``'s (st_dev, st_ino) when it is a folder (through symlinks), else None."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def take_snapshot(history_dir: Path, dest: Path, *, link: bool = True) -> SnapshotResult:
    """Snapshot ``history_dir`` into the new root folder ``dest`` (which must not exist).

    Built in ``.tmp-snapshot-*`` beside ``dest`` and renamed into place at the end,
    never over anything (a no-replace rename). Raises :class:`SnapshotError` with a
    one-line message on any failure; what it made is removed then, ``dest`` too when
    the failure (or a stop) came after the rename, as long as ``dest`` is still the
    folder it made.
    """
    history_dir = Path(os.path.abspath(history_dir))
    dest = Path(os.path.abspath(dest))
    if os.path.lexists(dest):
        raise SnapshotError(f"{dest} already exists; a snapshot never replaces anything")
    refuse_live_destination(dest, history_dir)
    names = list_versions_once(history_dir)
    try:
        made = durable.make_folders(dest.parent)
    except StorageError as exc:
        raise SnapshotError(str(exc)) from None
    try:
        return _take_snapshot(history_dir, dest, names, link=link)
    except BaseException:
        remove_made_folders(made)
        raise


def remove_made_folders(made: list[Path]) -> None:
    """Remove the folders ``made`` (outermost first, as :func:`durable.make_folders`
    returns them) that are still empty, innermost first: a run that failed leaves no
    trace of itself, and never removes anything another made in them meanwhile."""
    with stop_signals_held():
        for folder in reversed(made):
            try:
                os.rmdir(folder)
            except OSError:
                return  # not empty (someone else's now), or gone: the rest hold it
            with contextlib.suppress(StorageError):
                durable.fsync_dir(folder.parent)


_TEMP_NAME = re.compile(
    # Ours (twelve hex digits, as durable names temp entries), or tempfile.mkdtemp's
    # (eight of its letters) for the scratch folder of the tar form.
    re.escape(SNAPSHOT_TEMP_PREFIX) + r"(?:[0-9a-f]{12}|[a-z0-9_]{8})"
)


def is_snapshot_temp_name(name: str) -> bool:
    """Whether ``name`` is one a snapshot gives its temp (or scratch) folder."""
    return _TEMP_NAME.fullmatch(name) is not None


@contextlib.contextmanager
def _temp_folder(folder: Path, make: Callable[[], Path]) -> Iterator[tuple[Path, int]]:
    """:func:`~ingester.ops.outputs.locked_temp_folder` in ``folder`` for a snapshot: what
    killed snapshots left there is removed first, and said in the log. ``make`` raises
    :class:`SnapshotError` when it cannot make the folder; one that cannot then be
    opened is one too."""
    swept: list[str] = []
    held = locked_temp_folder(make, folder, is_snapshot_temp_name, swept)
    with contextlib.ExitStack() as stack:
        try:
            # Made, locked and given its clean-up, or not made: a stop never falls
            # between. One that came meanwhile is delivered as the signals are let go,
            # and must find the clean-up in place, not leave the folder behind.
            with stop_signals_held():
                made = held.__enter__()
                stack.push(held)
                stack.push(_removed_unless_done(made[0]))
        except OSError as exc:
            raise SnapshotError(
                f"cannot open the snapshot's temp folder in {folder}: {os_cause(exc)}"
            ) from None
        finally:
            if swept:
                log.info(
                    "removed %d temp folder(s) left in %s by a snapshot stopped before its end: %s",
                    len(swept),
                    folder,
                    ", ".join(swept),
                    extra={"event": "snapshot-temps", "removed": len(swept)},
                )
        yield made


def _removed_unless_done(temp: Path) -> Callable[..., bool]:
    """An exit callback that removes the temp folder ``temp`` when its block ends by an
    exception (a failure, or a stop that unwinds the command), whatever step it was at;
    a snapshot that completed has renamed or removed it already."""

    def remove(exc_type: type[BaseException] | None, *_: object) -> bool:
        if exc_type is not None:
            _remove_tree(temp)
        return False

    return remove


def _new_temp(folder: Path, dest: Path) -> Path:
    temp = folder / f"{SNAPSHOT_TEMP_PREFIX}{secrets.token_hex(6)}"
    try:
        temp.mkdir(mode=0o750)
    except OSError as exc:
        raise SnapshotError(str(StorageError("create folder", dest, exc))) from None
    return temp


def _take_snapshot(
    history_dir: Path, dest: Path, names: list[str], *, link: bool
) -> SnapshotResult:
    # Held open (and locked) until the end: while it is, the folder's inode number
    # cannot pass to another folder made at DEST, so DEST is only ever taken back if it
    # is ours; and no other snapshot takes it for one a kill -9 left.
    with _temp_folder(dest.parent, lambda: _new_temp(dest.parent, dest)) as (temp, pin):
        try:
            st = os.fstat(pin)
        except OSError as exc:
            _take_back(temp, dest, None)
            raise SnapshotError(str(StorageError("open folder", dest, exc))) from None
        ident = (st.st_dev, st.st_ino)
        published = None  # the ident to take DEST back by, once its rename was tried
        try:
            result = build_snapshot_tree(history_dir, temp, names, link=link)
            try:
                # A plain rename would replace an empty folder made at DEST meanwhile.
                published = ident
                durable.publish_new(temp, dest)
            except FileExistsError:
                raise SnapshotError(
                    f"{dest} appeared while the snapshot was taken; left alone"
                ) from None
        except StorageError as exc:
            _take_back(temp, dest, published)
            raise SnapshotError(_as_asked(exc, temp, dest)) from None
        except BaseException:
            _take_back(temp, dest, published)
            raise
    return SnapshotResult(
        dest, result.versions, result.linked, result.copied, result.vanished, result.latest
    )


def _take_back(temp: Path, dest: Path, ident: tuple[int, int] | None) -> None:
    """Remove what a snapshot that did not complete made: its temp folder, and DEST when
    the rename into place was tried (``ident`` given: the fsync after it failed, or a
    stop came) and DEST is still that folder. A failed snapshot must not look like a
    finished one to the next run ("already exists") or to a backup job reading DEST
    anyway."""
    with stop_signals_held():
        aside = None if ident is None else durable.take_back(dest, ident, SNAPSHOT_TEMP_PREFIX)
        for tree in (temp, aside):
            if tree is not None:
                shutil.rmtree(tree, ignore_errors=True)


class _Named:
    """A file read into the archive whose failed read raises :class:`StorageError`
    naming it: an ``OSError`` from ``addfile`` could be the archive's write as well,
    and a read error said as the output's would send the user to the wrong disk."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self._handle = handle
        self._path = path

    def read(self, size: int = -1) -> bytes:
        try:
            return self._handle.read(size)
        except OSError as exc:
            raise StorageError("read", self._path, exc) from exc


def _tar_entry(archive: tarfile.TarFile, path: Path, arcname: str) -> None:
    try:
        info = archive.gettarinfo(os.fspath(path), arcname)
        handle = path.open("rb") if info.isreg() else None
    except OSError as exc:
        raise StorageError("read", path, exc) from exc
    if handle is None:
        archive.addfile(info)
        return
    with handle:
        archive.addfile(info, _Named(handle, path))


def write_snapshot_tar(
    history_dir: Path, out: BinaryIO, *, tmp_dir: Path | None = None
) -> SnapshotResult:
    """Write a snapshot of ``history_dir`` to ``out`` as an uncompressed tar stream.

    The archive holds the same root as :func:`take_snapshot` (``console-usage-history/``
    first, the versions oldest first, then ``_metadata.json``, then the latest link),
    so ``tar -xf`` into an empty folder gives a root that passes ``verify``. The
    snapshot is built first in a temp folder under ``tmp_dir`` (default: ``$TMPDIR``;
    hard links when that is on the history's filesystem, copies otherwise): nothing is
    written to ``out`` unless the whole snapshot could be taken.
    """
    with stop_signals_held():
        # The first gettempdir() probes $TMPDIR with a file it removes at once: a stop
        # between the two (SIGTERM unwinds the command) would leave that file there.
        folder = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.gettempdir())

    def make() -> Path:
        try:
            return Path(tempfile.mkdtemp(prefix=SNAPSHOT_TEMP_PREFIX, dir=folder))
        except OSError as exc:
            raise SnapshotError(f"cannot create a temp folder: {os_cause(exc)}") from None

    with _temp_folder(folder, make) as (temp, _pin):
        return _write_tar(history_dir, temp, out)


def _write_tar(history_dir: Path, temp: Path, out: BinaryIO) -> SnapshotResult:
    try:
        try:
            result = build_snapshot_tree(history_dir, temp, scratch=True)
            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                folder = temp / SNAPSHOT_HISTORY
                _tar_entry(archive, folder, SNAPSHOT_HISTORY)
                for name in [*result.versions, METADATA_NAME]:
                    _tar_entry(archive, folder / name, f"{SNAPSHOT_HISTORY}/{name}")
                if os.path.lexists(temp / SNAPSHOT_LATEST):
                    _tar_entry(archive, temp / SNAPSHOT_LATEST, SNAPSHOT_LATEST)
        except StorageError as exc:
            if exc.path == temp or exc.path.is_relative_to(temp):
                # The scratch copy is ours; where it lives ($TMPDIR) is what the user can fix.
                raise SnapshotError(
                    f"cannot {exc.action} the snapshot's scratch copy in {temp.parent} "
                    f"($TMPDIR): {exc.strerror} [{exc.cause_name}]"
                ) from None
            raise SnapshotError(str(exc)) from None
        out.flush()
    finally:
        _remove_tree(temp)
    return result
