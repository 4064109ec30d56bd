"""Moves across filesystems, and files written in pieces: the recipe where size or place vary.

:func:`move_file` moves an entry durably (one rename within a filesystem; across
filesystems a durable copy, then the source removed); :func:`streamed_file` writes a
file of any size in pieces into a temp file that appears under its name only complete.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ...errors import MovedNotDurable, StorageError
from .steps import (
    READ_NOFOLLOW,
    WRITE_TEMP_PREFIX,
    _link_no_clobber,
    _temp_path,
    fsync_dir,
    publish_new,
    write_all,
)

__all__ = ["move_file", "streamed_file"]


def move_file(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` (which must not exist) durably, across filesystems too.

    The entry itself is moved, never what a symlink points at. Within a filesystem this
    is one rename; across filesystems a regular file is copied durably, then removed.
    Raises :class:`StorageError` when the move fails, and :class:`MovedNotDurable` when
    it was made but the fsync of a folder then failed.
    """
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise StorageError("move", src, exc) from exc
        _copy_across(src, dst)
    try:
        fsync_dir(dst.parent)
        if src.parent != dst.parent:
            fsync_dir(src.parent)
    except StorageError as exc:
        raise MovedNotDurable(exc) from exc


def _stream_copy(src: Path, dst: Path, mode: int) -> None:
    """Copy a regular file of any size in chunks, by the recipe (temp, fsync, link, fsync)."""
    tmp = _temp_path(dst.parent, WRITE_TEMP_PREFIX)
    fd_in = os.open(src, READ_NOFOLLOW)
    try:
        fd_out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while chunk := os.read(fd_in, 1 << 20):
                write_all(fd_out, chunk)
            os.fchmod(fd_out, mode)
            os.fsync(fd_out)
        except OSError:
            os.close(fd_out)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd_out)
    finally:
        os.close(fd_in)
    try:
        _link_no_clobber(tmp, dst)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(dst.parent)


def _copy_across(src: Path, dst: Path) -> None:
    """Move across filesystems: never open anything but a regular file (no FIFO reads)."""
    try:
        st = os.lstat(src)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISREG(st.st_mode):
            _stream_copy(src, dst, stat.S_IMODE(st.st_mode))
        else:
            # A FIFO or socket is recreated as such (no privilege needed); a device
            # needs CAP_MKNOD and otherwise fails here, naming the path.
            os.mknod(dst, st.st_mode, st.st_rdev)
        os.unlink(src)
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError("move", src, exc) from exc


@contextlib.contextmanager
def streamed_file(final: Path, *, mode: int = 0o644, replace: bool = True) -> Iterator[BinaryIO]:
    """Write ``final`` in pieces through the recipe; it appears only once complete.

    Yields a buffered binary file open on a temp file beside ``final``. When the block
    ends normally the file is flushed, fsynced, renamed over ``final`` (replacing an
    older one; with ``replace=False`` never: ``FileExistsError`` then, unwrapped) and the
    folder fsynced. When the block raises, the temp file is removed and ``final`` is
    left as it was; a process killed meanwhile leaves only the temp name
    (:data:`WRITE_TEMP_PREFIX`), never a part under ``final``. Memory use does not
    depend on the size written. Raises :class:`StorageError` (naming the path and
    cause) for any failed step, including a write inside the block (e.g. ENOSPC).
    """
    directory = final.parent
    tmp = _temp_path(directory, WRITE_TEMP_PREFIX)
    try:
        # The mode is given at creation so the umask applies, as for any new file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise StorageError("create", final, exc) from exc
    handle = os.fdopen(fd, "wb")
    try:
        try:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError("write", final, exc) from exc
        finally:
            with contextlib.suppress(OSError):
                handle.close()  # a close after a failed flush may fail again
        if not replace:
            publish_new(tmp, final)  # fsyncs the folder itself
            return
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise StorageError("replace", final, exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
