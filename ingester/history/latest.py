"""The latest link: where it points, what is wrong with it, and its upkeep.

The link (``console-usage-synced.json`` by default) is a cache of the history: a
relative symlink to the newest version, or a copy of it where links fail. What sits in
its place and may hold what no version holds (a file with a snapshot of its own, one
that cannot be read, a folder) is never replaced: the error raised says what to do.
:class:`~ingester.history.store.HistoryStore` owns one :class:`LatestLink` and tells
it which version is the newest.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from ..errors import StorageError, unreadable
from ..payload.gate import MAX_DROP_BYTES
from . import durable
from .lock import latest_link_holder

__all__ = ["LATEST_IS_A_FOLDER", "LATEST_TEMP_PREFIXES", "LatestLink"]

LATEST_TEMP_PREFIXES = (durable.LINK_TEMP_PREFIX, durable.WRITE_TEMP_PREFIX)
"""Temp files the latest link's folder may hold (a link, or a copy where links fail)."""
LATEST_IS_A_FOLDER = (
    "it is a folder, which no link can replace: move it away by hand, and the link is "
    "made on the next try"
)
"""Why a folder at the latest path stays, and what to do (its error's words)."""
HISTORY_LOCK_NAME = ".lock"
"""The one-writer lock in a history folder (``HistoryStore.lock_path``'s name)."""


class LatestLink:
    """The latest link at ``path`` into the history folder ``history_dir``.

    ``versions`` gives the version paths, newest first (what a file in the link's place
    is compared with). The link's target folder is worked out once and kept until
    :meth:`forget_folder` (after a rescan of the history).
    """

    def __init__(self, path: Path, history_dir: Path, versions: Callable[[], list[Path]]) -> None:
        self.path = path
        self.history_dir = history_dir
        self._versions = versions
        self._folder: str | None = None  # see target

    def forget_folder(self) -> None:
        """Work the target's folder out again on the next move (the folders may have moved)."""
        self._folder = None

    def target(self, name: str) -> str:
        """The relative target of the latest link for version ``name``.

        The kernel follows a relative target from the link's real folder, so ``..`` in
        it climbs out of the real folder, not the one named. The history is named as
        logically as still resolves from there: through its own path when that works
        (``console-usage-history/<v>.json`` even when that folder is a symlink to
        another disk, so a copy of the root holds a link into its own history), else
        through its real parent folder, else through its real path.
        """
        if self._folder is None:
            self._folder = self._find_folder()
        return os.path.join(self._folder, name)

    def _find_folder(self) -> str:
        # Resolving the folders costs a dozen stats: done once, and again after each
        # scan of the history (a rescan), not on every move of the link.
        link_dir = os.path.realpath(self.path.parent)
        history = os.fspath(self.history_dir)
        real_history = os.path.realpath(history)
        candidates = (
            os.path.relpath(history, self.path.parent),
            os.path.relpath(
                os.path.join(os.path.realpath(os.path.dirname(history)), self.history_dir.name),
                link_dir,
            ),
        )
        for folder in candidates:
            if os.path.realpath(os.path.join(link_dir, folder)) == real_history:
                return folder
        return os.path.relpath(real_history, link_dir)

    def problem(self, newest: str | None) -> str | None:
        """Why the link does not name ``newest`` (the newest version, ``None`` when there
        is none), or ``None`` if it does."""
        link = self.path
        if link.is_dir() and not link.is_symlink():
            # Said first: with no version left, a folder points at nothing either.
            return "a folder, not a link"
        if newest is None:
            try:
                mode = os.lstat(link).st_mode
            except FileNotFoundError:
                return None
            if not (stat.S_ISLNK(mode) or stat.S_ISREG(mode)):
                return "a special file (not a link, not a regular file)"
            if stat.S_ISLNK(mode) and self._kept_by_another_watcher():
                # Not one of ours that is gone: another history's watcher keeps it,
                # and a removal would only have it put back (the link missing meanwhile).
                return None
            if self._versions():
                # None is gone: every version is dated ahead of a clock set back, so
                # none may be named. "Gone" would read as versions lost.
                what = "is a file"
                if stat.S_ISLNK(mode):
                    try:
                        what = f"points at {os.readlink(link)}"
                    except OSError:
                        what = "is a link"
                return (
                    f"{what}, but every version is dated more than a day ahead of the "
                    "clock, so none is the latest"
                )
            return "points at a version that is gone"
        if link.is_symlink():
            target = os.readlink(link)
            if target != self.target(newest):
                if not os.path.exists(link):
                    return f"points at {target}, which is missing (the newest is {newest})"
                return f"points at {target}, not {newest}"
            try:
                if os.path.samefile(link, self.history_dir / newest):
                    return None
            except OSError:
                pass
            return f"does not resolve to {newest}"
        try:
            # A FIFO, a socket or a device is never opened (a FIFO would wait for a
            # writer); it holds no snapshot a repair could lose.
            # Read no further than one byte past any drop: a longer file is no copy.
            regular = stat.S_ISREG(os.lstat(link).st_mode)
            data = durable.read_regular(link, MAX_DROP_BYTES) if regular else None
        except OSError as exc:
            return "missing" if exc.errno == errno.ENOENT else unreadable(exc)
        if data is None:
            return "a special file (not a link, not a regular file)"
        if len(data) > MAX_DROP_BYTES:
            return f"a file larger than any drop, not a copy of {newest}"
        try:
            same = data == durable.read_regular(self.history_dir / newest, len(data))
        except OSError as exc:
            return unreadable(exc)
        return None if same else f"a copy that is not {newest}"

    def _kept_by_another_watcher(self) -> bool:
        """Whether the link points into another history whose watcher runs."""
        return latest_link_holder(self.path, self.history_dir, HISTORY_LOCK_NAME) is not None

    def update(self, newest: str | None, *, sync: bool = True) -> None:
        """Point the link at ``newest`` (remove it when ``None``), atomically: a symlink,
        or a copy where links fail. ``sync=False`` leaves the folder's fsync to the
        caller. Raises :class:`StorageError`, also when what is there must stay
        (:meth:`keep_unkept`)."""
        self.keep_unkept()
        if newest is None:
            durable.remove_file(self.path)
            return
        source = self.history_dir / newest

        def copy_of_newest() -> bytes:
            data = durable.read_regular(source, MAX_DROP_BYTES)
            if data is None:  # a FIFO there would have held this up for ever
                raise StorageError("read", source, OSError(errno.EINVAL, "not a regular file"))
            if len(data) > MAX_DROP_BYTES:  # put there by hand: no drop is that large
                raise StorageError(
                    "read", source, OSError(errno.EFBIG, "larger than any drop, not copied")
                )
            return data

        try:
            durable.replace_symlink(
                self.path, self.target(newest), fallback=copy_of_newest, sync_dir=sync
            )
        except StorageError as exc:
            folder = self.path.parent
            if exc.errno not in (errno.EACCES, errno.EPERM) or exc.path.parent != folder:
                raise
            if exc.refused_by is not None:
                raise  # it names the attribute that refused, and what clears it
            # Refused in the link's folder (its owner or mode, an immutable folder): the
            # kernel's words name no fix, and the file named may not even exist yet.
            words = (
                f"{exc.strerror}; this user may not make the link in {folder}: check its "
                "owner, mode and attributes (ls -ld, lsattr -d)"
            )
            raise StorageError(exc.action, exc.path, OSError(exc.errno, words)) from exc

    def regular(self) -> bytes | None:
        """The bytes of the latest path when it is a regular file (not a link), else
        ``None``: at most one byte more than :data:`MAX_DROP_BYTES` (a longer result is
        a file larger than any drop). Raises :class:`StorageError` when it is one that
        cannot be read."""
        try:
            # One byte over any drop's size says enough: no version holds such a file.
            return durable.read_regular(self.path, MAX_DROP_BYTES)
        except StorageError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                # Absent (a folder on its path is missing or is not a folder, so no file
                # can be there), or a symbolic link: no snapshot of its own.
                return None
            raise

    def version_holding(self, data: bytes) -> str | None:
        """The newest version whose bytes are ``data``, or ``None`` (newest first: the
        usual hit). Raises :class:`StorageError` when a version cannot be read."""
        for path in self._versions():
            try:
                same_size = os.stat(path).st_size == len(data)
                if same_size and durable.read_regular(path, len(data)) == data:
                    return path.name
            except FileNotFoundError:
                continue  # deleted since the scan
            except StorageError:
                raise
            except OSError as exc:
                raise StorageError("read", path, exc) from exc
        return None

    def unkept(self) -> bool:
        """Whether the latest path is a regular file holding a snapshot that no version
        holds: replacing it (a start, a repair, a new link) would lose that snapshot.

        Such a file is the original server's latest, or one put there by hand; only
        ``adopt`` keeps it (as a version). A copy made where links fail holds
        a version's bytes. Raises :class:`StorageError` when that cannot be told: a file
        one cannot read may hold such a snapshot, so it is never taken for one that
        does not.
        """
        data = self.regular()
        if data is None:
            return False
        # No version holds more than any drop: a larger file is nobody's copy.
        return len(data) > MAX_DROP_BYTES or self.version_holding(data) is None

    def keep_unkept(self) -> None:
        """Raise :class:`StorageError` when what is at the latest path must stay: a
        folder (EISDIR: no rename puts a link in its place, and removing it would lose
        what it holds) or a file that :meth:`unkept` (EEXIST: it is kept).

        Either is said as a ``replace`` that cannot be made, with what to do, the same
        whether the link was to move or to go (no version left)."""
        try:
            mode: int | None = os.lstat(self.path).st_mode
        except OSError:
            mode = None  # absent, or its folder cannot be searched: unkept_latest says
        if mode is not None and stat.S_ISDIR(mode):
            raise StorageError(
                "replace", self.path, IsADirectoryError(errno.EISDIR, LATEST_IS_A_FOLDER)
            )
        if mode is not None and not stat.S_ISREG(mode):
            return  # a link, a FIFO, a socket: no snapshot of its own to keep
        try:
            unkept = self.unkept()
        except StorageError as exc:
            # A file that cannot be read may hold a snapshot no version holds: kept, and
            # said with what to do, as a start says it.
            advice = (
                "give what it names to the service's user (chown), then stop the watcher "
                "and run 'ingester adopt' (or remove the file)"
                if exc.errno in (errno.EACCES, errno.EPERM)
                else "fix that, then run 'ingester adopt' if it holds a snapshot no version holds"
            )
            words = (
                f"cannot tell whether it holds a snapshot that no version holds ({exc}), so "
                f"it is kept; {advice}"
            )
            raise StorageError("replace", self.path, OSError(exc.errno, words)) from exc
        if unkept:
            raise StorageError(
                "replace",
                self.path,
                FileExistsError(
                    errno.EEXIST,
                    "it is a file holding a snapshot that no version holds, so it is kept; "
                    "stop the watcher and run 'ingester adopt' to keep it as a version, or "
                    "remove it",
                ),
            )
