"""A file written whole through the recipe, and the writes built on it.

:class:`StagedFile` is the recipe as a context manager: the bytes into a temp file in the
target folder, fsynced, then linked (a new name) or renamed (a replacement) into place
and the folder fsynced. :class:`SpareFile` is the empty temp file made ahead of time for
the next one. :func:`write_file`, :func:`link_file` and :func:`replace_symlink` (the
latest link, or a file where symlinks cannot be made) are the one-call forms.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path

from ...errors import StorageError
from .fsyncs import _fsync_or_error
from .steps import (
    LINK_TEMP_PREFIX,
    WRITE_TEMP_PREFIX,
    StrPath,
    _create_temp,
    _file_error,
    _link_no_clobber,
    _link_unnamed,
    _open_unnamed,
    _start_writeback,
    _temp_path,
    current_umask,
    fsync_dir,
    remove_file,
    write_all,
)

__all__ = ["SpareFile", "StagedFile", "link_file", "replace_symlink", "write_file"]


class SpareFile:
    """An empty new file made ahead of time, for the next :class:`StagedFile`.

    Creating an inode is the slowest step of a write on some filesystems (0.7 ms on the
    journal-less ext4 measured here, more than an fsync: without a journal, ext4 checks
    and skips every inode freed in the last minutes before it reuses one); a spare made
    while idle takes it off the path between a drop's arrival and its version. It is
    unnamed (``O_TMPFILE``) where the filesystem offers that, so an unused one vanishes
    with the process; elsewhere it is a ``.tmp-`` file like any other, swept on start.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path: Path | None = None
        # Writable by us whatever the final mode: it is set once the bytes are in.
        fd = _open_unnamed(directory, 0o600)
        if fd is None:
            self.path = _temp_path(directory, WRITE_TEMP_PREFIX)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise StorageError("create", self.path, exc) from exc
        self.fd: int | None = fd

    def take(self) -> tuple[Path | None, int]:
        """Hand the file over (once): its temp name (None: unnamed) and descriptor."""
        if self.fd is None:
            raise RuntimeError("spare file already taken")
        fd, self.fd = self.fd, None
        return self.path, fd

    def discard(self) -> None:
        """Close and remove it; :class:`StorageError` if it cannot be removed."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            if self.path is not None:
                remove_file(self.path)


def _fill_spare(
    spare: SpareFile, data: bytes, mode: int, shown: Path | None
) -> tuple[Path | None, int]:
    path, fd = spare.take()
    try:
        write_all(fd, data)
        os.fchmod(fd, mode & ~current_umask())
    except OSError as exc:
        os.close(fd)
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise _file_error("write", shown or path, spare.directory, exc) from exc
    return path, fd


def _fill_unnamed(
    directory: Path, data: bytes, mode: int, shown: Path | None
) -> tuple[Path | None, int] | None:
    """Step 1 into an unnamed file; None where the folder cannot have one."""
    fd = _open_unnamed(directory, mode, shown)
    if fd is None:
        return None
    try:
        write_all(fd, data)
    except OSError as exc:
        os.close(fd)  # the unnamed inode goes with its last descriptor
        raise _file_error("write", shown, directory, exc) from exc
    return None, fd


class StagedFile:
    """A temp file holding the bytes, waiting for its final name. Commit or discard it.

    Splitting the recipe lets a caller act between "the bytes are written" and "the
    name appears": the watcher claims its drop there. With ``sync=False`` the fsync of
    step 2 waits for :meth:`sync` (so the claim rename rides in the same journal commit
    on ext4); :meth:`commit` always syncs first, so a name never points at unsynced bytes.

    With ``unnamed=True`` the temp file has no name at all where the filesystem offers
    ``O_TMPFILE`` (Linux >= 3.11; ext4, xfs, btrfs, tmpfs): it is given its final name
    directly, so there is no temp name to remove after the link, and a crash leaves
    nothing to sweep. Elsewhere it is a named ``.tmp-`` file as usual. ``temp`` is the
    temp name (None when unnamed, committed or discarded).
    """

    def __init__(
        self,
        directory: Path,
        data: bytes,
        mode: int,
        *,
        sync: bool = True,
        spare: SpareFile | None = None,
        name: str | None = None,
        unnamed: bool = False,
    ) -> None:
        self.directory = directory
        # The final path, when known now: what a failure names instead of the temp file.
        self._shown = directory / name if name is not None else None
        made = None
        if spare is not None and spare.directory == directory:
            made = _fill_spare(spare, data, mode, self._shown)
        elif unnamed:
            made = _fill_unnamed(directory, data, mode, self._shown)
        if made is None:
            made = _create_temp(directory, data, mode, WRITE_TEMP_PREFIX, self._shown)
        self.temp: Path | None = made[0]
        self._fd: int | None = made[1]
        self._live = True  # not committed or discarded yet
        self._unsynced = True
        if sync:
            self.sync()

    @property
    def _unnamed(self) -> bool:
        """Still without any name of its own (``O_TMPFILE``): named only through its descriptor."""
        return self._live and self.temp is None

    def start_writeback(self) -> None:
        """Ask the kernel to start writing the bytes out now, without waiting (a hint).

        For a file fsynced a while later (the caller has other work first), the write is
        under way meanwhile, and the fsync mostly waits for what has started. The call
        itself costs about as much as starting the write (60 microseconds on a virtio
        disk), so files fsynced together anyway (:func:`fsync_each`) are better left to
        their fsyncs. Durability still comes from :meth:`sync` alone.
        """
        fd = self.unsynced()
        if fd is not None:
            _start_writeback(fd)

    def sync(self) -> None:
        """Step 2: fsync the bytes (idempotent). A failure discards the temp file."""
        fd = self.unsynced()
        if fd is not None:
            self.synced(_fsync_or_error(fd))

    def unsynced(self) -> int | None:
        """The descriptor whose fsync is still to be done (None once synced or discarded).

        For a caller that fsyncs several files at once (:func:`fsync_each`), then
        hands each one's result to :meth:`synced`.
        """
        return self._fd if self._unsynced else None

    def synced(self, error: OSError | None) -> None:
        """Step 2 done by the caller on :meth:`unsynced`'s descriptor, with this result.

        A failure (``error``) is a failed write: the temp file is discarded and
        :class:`StorageError` raised.
        """
        if not self._unsynced or self._fd is None:
            return
        self._unsynced = False
        if error is not None:
            self.discard()
            shown = self._shown or self.temp
            raise _file_error("fsync", shown, self.directory, error) from error
        if not self._unnamed:
            os.close(self._fd)  # an unnamed file is named through its descriptor: kept
            self._fd = None

    def commit(self, name: str, *, replace: bool = False, sync_dir: bool = True) -> Path:
        """Steps 3-4: give the temp file its final ``name``; return the final path.

        With ``replace=False`` the name must be new (``FileExistsError`` wrapped in
        :class:`StorageError` otherwise): the temp file is hard-linked into place, which
        never clobbers. With ``replace=True`` it is renamed over any existing file.
        With ``sync_dir=False`` the caller fsyncs the folder itself (once for a batch)
        and must treat a failure of that fsync as a failure of this write.
        """
        self.sync()
        if not self._live:
            raise RuntimeError("staged file already committed or discarded")
        final = self.directory / name
        if self._unnamed:
            fd = self._fd
            assert fd is not None
            target = _temp_path(self.directory, WRITE_TEMP_PREFIX) if replace else final
            try:
                _link_unnamed(fd, target)
            except OSError as exc:
                self.discard()
                raise StorageError("link", final, exc) from exc
            os.close(fd)
            self._fd = None
            if not replace:
                self._live = False
                return self._named(final, replace=False, sync_dir=sync_dir)
            self.temp = target  # a replacement is a rename: it needs a name to move
        tmp = self.temp
        assert tmp is not None
        try:
            if replace:
                os.replace(tmp, final)
            else:
                _link_no_clobber(tmp, final)
        except OSError as exc:
            self.discard()
            raise StorageError("replace" if replace else "link", final, exc) from exc
        self.temp = None
        self._live = False
        # The temp name goes before the folder fsync, so one fsync makes both changes durable.
        if not replace:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            except OSError as exc:
                # A failing disk: call the whole write failed, as for a failed fsync below,
                # if the final name can be taken back. If not, the write stands (the
                # temp file is swept later): failing now would make the caller write the
                # same bytes again under another name.
                try:
                    os.unlink(final)
                except OSError:
                    pass
                else:
                    raise StorageError("remove temp file", tmp, exc) from exc
        return self._named(final, replace=replace, sync_dir=sync_dir)

    def _named(self, final: Path, *, replace: bool, sync_dir: bool) -> Path:
        """Step 4 for the name ``final`` just given: the folder fsynced, unless the caller will."""
        if not sync_dir:
            return final
        try:
            fsync_dir(self.directory)
        except StorageError:
            if not replace:
                # The new name may not survive a crash: a failed write, so take it back
                # (the caller retries; leaving it would store the same bytes twice).
                with contextlib.suppress(OSError):
                    os.unlink(final)
            raise
        return final

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()  # a no-op once committed: never leaves a temp file behind

    def discard(self) -> None:
        """Remove the temp file (best effort: a leftover is swept on start)."""
        self._live = False
        if self._fd is not None:
            os.close(self._fd)  # an unnamed file vanishes with it
            self._fd = None
        if self.temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.temp)
            self.temp = None


def write_file(
    directory: Path, name: str, data: bytes, *, mode: int = 0o444, replace: bool = False
) -> Path:
    """Durably write ``data`` as ``directory/name``; return the final path.

    The whole recipe in one call; see :meth:`StagedFile.commit` for ``replace``.
    """
    return StagedFile(directory, data, mode, name=name).commit(name, replace=replace)


def link_file(source: StrPath, final: StrPath) -> None:
    """Give the (already fsynced) file ``source`` a second name ``final``; never clobbers.

    The caller fsyncs ``final``'s folder (and treats a failure as a failed write).
    """
    try:
        os.link(source, final)
    except OSError as exc:
        raise StorageError("link", final, exc) from exc


def replace_symlink(
    link: Path,
    target: str,
    *,
    fallback: Callable[[], bytes] | None = None,
    sync_dir: bool = True,
) -> bool:
    """Atomically point ``link`` at ``target`` (a relative path); return True if a symlink.

    A temp symlink is renamed over ``link`` (``ln -sfn`` is not atomic: it unlinks first).
    Where symlinks cannot be made (EPERM/ENOTSUP on some filesystems), the bytes that
    ``fallback()`` returns are written as an atomically replaced copy and False is returned.
    With ``sync_dir=False`` the caller fsyncs the link's folder itself (the fallback's
    copy is made durable here all the same).
    """
    directory = link.parent
    tmp = _temp_path(directory, LINK_TEMP_PREFIX)
    try:
        os.symlink(target, tmp)
    except OSError as exc:
        if fallback is None or exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise StorageError("create symlink", link, exc) from exc
        write_file(directory, link.name, fallback(), mode=0o444, replace=True)
        return False
    try:
        os.replace(tmp, link)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError("replace", link, exc) from exc
    if sync_dir:
        fsync_dir(directory)
    return True
