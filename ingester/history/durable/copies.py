"""Moves across filesystems, and files written in pieces: the recipe where size or place vary.

:func:`move_file` moves an entry durably (one rename within a filesystem; across
filesystems a durable copy that keeps holes as holes, then the source removed);
:func:`streamed_file` writes a file of any size in pieces into a temp file that appears
under its name only complete.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeAlias

from ...errors import IngesterError, MovedNotDurable, StorageError
from .steps import (
    OUTPUT_TEMP_PREFIX,
    READ_NOFOLLOW,
    WRITE_TEMP_PREFIX,
    _link_no_clobber,
    _temp_path,
    fsync_dir,
    publish_new,
    take_back,
    write_all,
)

__all__ = ["CopyAbandoned", "CopyProgress", "move_file", "same_contents", "streamed_file"]


CopyProgress: TypeAlias = Callable[[int, int], None]
"""What a copy across filesystems tells its caller as it goes: ``(done, total)``, bytes
of data (holes not counted). Called once with ``done == 0`` when the copy begins (the
room for it checked), then each time another :data:`_STEP` bytes are on disk, never
while a piece is still under way: a copy that makes no progress calls nothing. ``done``
may pass ``total`` when the file grows meanwhile. Whatever it raises ends the copy
(its temp file removed, the source untouched), and is raised by :func:`move_file` as it
is: a caller that must give up on a long copy (a stop asked) raises
:class:`CopyAbandoned`. It is called only before the copy is named (linked into
place): a copy that was named is never given up."""


class CopyAbandoned(IngesterError):
    """What a :data:`CopyProgress` raises to give up the copy under way: ``done`` of
    ``total`` bytes of data were copied (and are now thrown away).

    Not an ``OSError``: nothing failed, so no caller may take it for a failed write (to
    be logged as one, and retried after a backoff). :func:`move_file` raises it unwrapped,
    the temp file removed and the source where it was, as if the move had not begun.
    """

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"copy abandoned after {done} of {total} bytes")
        self.done = done
        self.total = total


_REPLACED = "replaced by another file while being moved; left as it is now"


def _replaced(src: Path) -> StorageError:
    return StorageError("move", src, OSError(errno.ESTALE, _REPLACED))


def _is(st: os.stat_result, expect: tuple[int, int] | None) -> bool:
    return expect is None or (st.st_dev, st.st_ino) == expect


def move_file(
    src: Path,
    dst: Path,
    *,
    expect: tuple[int, int] | None = None,
    progress: CopyProgress | None = None,
) -> None:
    """Move ``src`` to ``dst`` (which must not exist) durably, across filesystems too.

    ``expect``: the ``(st_dev, st_ino)`` the entry at ``src`` must have, for a caller
    that judged it before: another file renamed onto that name meanwhile is never
    moved in its place, nor removed. Such a move fails (``ESTALE``), leaving both
    files where they were: within a filesystem the entry moved by mistake is put back
    under ``src`` (unless that name is taken again: it then stays at ``dst``, said in
    the error); across filesystems the identity is checked when the source is opened,
    which stays open until it is removed, and right before the removal the name is
    compared with that open file (another file found there then is left alone, and the
    copy of the one judged stays: the move counts as made). No look can keep a rename
    out of the instant between that comparison and the removal: a file renamed onto
    ``src`` then is removed with it. A caller whose ``src`` another process may rename
    onto (a spool's drop name) therefore first renames the entry to a name no other
    process uses and moves it from there, as the quarantine does (its claim).

    The entry itself is moved, never what a symlink points at. Within a filesystem this
    is one rename; across filesystems a regular file is copied durably (its holes kept
    as holes, see :func:`_copy_regular`), then removed; it goes in pieces of at most
    :data:`_STEP` bytes, each made durable before the next, and ``progress`` (see
    :data:`CopyProgress`) hears of each, so a caller that must show it is alive (a
    watchdog) can, however large the file. A move that fails leaves
    ``src`` where it was and nothing at ``dst``: a copy made before the source could
    not be removed is taken back (unless the source vanished meanwhile: the copy is
    then the only one, and the move counts as made).

    Raises :class:`StorageError` when the move fails (``ENOSPC`` before a byte is
    written when the data cannot fit in ``dst``'s filesystem), and
    :class:`MovedNotDurable` when it was made but the fsync of a folder then failed.
    What ``progress`` raises (:class:`CopyAbandoned`) is raised as it is, the move not
    made: ``src`` where it was, nothing at ``dst``.
    """
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise StorageError("move", src, exc) from exc
        _copy_across(src, dst, expect, progress)
    else:
        if expect is not None:
            _put_back_unless(src, dst, expect)
    try:
        fsync_dir(dst.parent)
        if src.parent != dst.parent:
            fsync_dir(src.parent)
    except StorageError as exc:
        raise MovedNotDurable(exc) from exc


def _put_back_unless(src: Path, dst: Path, expect: tuple[int, int]) -> None:
    """After a rename of ``src`` to ``dst``: raise (and put the entry back) unless it is
    the file ``expect`` names."""
    try:
        moved = os.lstat(dst)
    except OSError as exc:
        raise StorageError("stat", dst, exc) from exc
    if _is(moved, expect):
        return
    try:
        os.link(dst, src, follow_symlinks=False)  # never over a newer file of that name
        os.unlink(dst)
    except OSError:
        raise StorageError(
            "move",
            src,
            OSError(
                errno.ESTALE,
                f"replaced by another file while being moved, which is now {dst}: "
                f"move it back to {src} by hand",
            ),
        ) from None
    raise _replaced(src)


_STEP = 16 << 20
"""Bytes of data copied between two fdatasyncs of the copy, and two reports of progress.

Each piece is on disk before the next begins, so the copy's last fsync has one piece
left to write, not all the dirty pages a fast reader piled up (gigabytes on a large
machine, minutes on a slow disk). Small enough that a disk writing 2 MiB/s finishes a
piece in 8 s, well within a watchdog's ping interval (15 s under ``WatchdogSec=30``);
large enough that the fdatasyncs cost little beside the data."""
_CHUNK = 1 << 20
"""Bytes read and written at a time where ``sendfile`` cannot copy between the two files."""


def _data_ranges(fd: int) -> Iterator[tuple[int, int]]:
    """The ``[start, end)`` ranges of the open file ``fd`` that hold data, in order.

    Holes are skipped (``SEEK_DATA``/``SEEK_HOLE``): a sparse file of gigabytes may
    hold no data at all. Where the filesystem cannot tell, the whole file is one range
    that ends at its end of file, whatever its size by then. A file that grows while
    the ranges are taken yields its new data too.
    """
    pos = 0
    while True:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return  # no data at or after pos: only a hole, up to the end of file
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP) or pos:
                raise
            yield 0, sys.maxsize
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        if end <= start:
            return
        yield start, end
        pos = end


class _Pieces:
    """A copy's progress through its data: every :data:`_STEP` bytes, the copy's data is
    made durable (fdatasync) and the caller's ``progress`` told (``(done, total)``)."""

    def __init__(self, fd_out: int, total: int, progress: CopyProgress | None) -> None:
        self.fd_out = fd_out
        self.total = total
        self.progress = progress
        self.done = 0
        self._unsynced = 0

    def left_in_piece(self) -> int:
        """Bytes the current piece may still take (one ``sendfile`` asks for no more)."""
        return _STEP - self._unsynced

    def moved(self, count: int) -> None:
        """``count`` more bytes were copied; a full piece is made durable and reported.

        Raises ``OSError`` from the fdatasync (a failed write), or what ``progress`` raises.
        """
        self.done += count
        self._unsynced += count
        if self._unsynced >= _STEP:
            os.fdatasync(self.fd_out)
            self._unsynced = 0
            if self.progress is not None:
                self.progress(self.done, self.total)


def _copy_range(fd_in: int, pieces: _Pieces, start: int, end: int, *, send: bool) -> bool:
    """Copy bytes ``start`` to ``end`` (or to the end of file) of ``fd_in`` to the same
    offsets of ``pieces.fd_out``; the data stays in the kernel (``sendfile``) unless
    ``send`` is false or ``sendfile`` cannot join these files. Memory use is at most
    :data:`_CHUNK`. Returns whether ``sendfile`` may be used for the next range."""
    fd_out = pieces.fd_out
    os.lseek(fd_out, start, os.SEEK_SET)
    offset = start
    while offset < end:
        want = min(end - offset, pieces.left_in_piece())
        if send:
            try:
                sent = os.sendfile(fd_out, fd_in, offset, want)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                send = False
                continue
        else:
            chunk = os.pread(fd_in, min(want, _CHUNK), offset)
            write_all(fd_out, chunk)
            sent = len(chunk)
        if sent == 0:
            break  # the end of the file came before the end of the range
        offset += sent
        pieces.moved(sent)
    return send


def _check_room(fd_in: int, fd_out: int) -> int:
    """The bytes of data in ``fd_in`` (holes not counted); raise ``ENOSPC`` when they
    cannot fit beside ``fd_out``.

    Counted before a byte is written, so that a copy bound to fail never fills the
    target filesystem on its way (others write there too), only to be removed. The
    blocks kept for root are left out, even when we run as root.
    """
    size = os.fstat(fd_in).st_size
    need = sum(min(end, size) - start for start, end in _data_ranges(fd_in) if start < size)
    st = os.fstatvfs(fd_out)
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise OSError(
            errno.ENOSPC,
            f"{os.strerror(errno.ENOSPC)}: {need} bytes of data to copy, {free} free",
        )
    return need


def _copy_regular(
    fd_in: int,
    dst: Path,
    mode: int,
    progress: CopyProgress | None,
) -> None:
    """Copy the regular file open as ``fd_in`` (left open) by the recipe (temp, fsync,
    link; the caller fsyncs the folder).

    Only its data is copied; its holes stay holes (the copy gets the source's size
    by a truncate), so a sparse file of gigabytes costs what it holds. Memory use does
    not depend on the size; the data goes in pieces, each on disk before the next, each
    told to ``progress``. The temp file is removed on any failure (or whatever
    ``progress`` raises); a process killed meanwhile leaves only the temp name
    (:data:`WRITE_TEMP_PREFIX`), swept on start. Raises ``OSError`` unwrapped: the
    caller names the move.
    """
    tmp = _temp_path(dst.parent, WRITE_TEMP_PREFIX)
    fd_out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        pieces = _Pieces(fd_out, _check_room(fd_in, fd_out), progress)
        if progress is not None:
            progress(0, pieces.total)
        send = True
        for start, end in _data_ranges(fd_in):
            send = _copy_range(fd_in, pieces, start, end, send=send)
        # The size after the data: a hole at the end is kept as one, not written.
        os.ftruncate(fd_out, os.fstat(fd_in).st_size)
        os.fchmod(fd_out, mode)
        os.fsync(fd_out)
    except BaseException:
        # The temp file goes whatever ends the copy, and what ended it is what the
        # caller hears: a failing close here must not take its place.
        with contextlib.suppress(OSError):
            os.close(fd_out)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd_out)
    try:
        _link_no_clobber(tmp, dst)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


_HOLD = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
"""``os.open`` flags that hold an entry that is not a regular file without opening it
for reading or writing: a FIFO's open never waits for a writer, a device's driver is
never called, a symlink is held itself."""


def _copy_across(
    src: Path, dst: Path, expect: tuple[int, int] | None, progress: CopyProgress | None
) -> None:
    """Move across filesystems: never open anything but a regular file for reading (no
    FIFO reads).

    The source stays open from before the copy until its removal is done: a file still
    open cannot be freed, so no other file can get its inode number meanwhile, and a
    name found with that number right before the removal is the file copied, not a
    new one that got the number of a freed one (ext4 gives a freed number out again at
    once). The copy's name is durable before the source is removed, so a crash between
    the two leaves both, never neither. When the source cannot be removed (made
    immutable, say), or that fsync fails, the copy is taken back: the source alone holds
    the entry.
    """
    try:
        st = os.lstat(src)
        if not _is(st, expect):
            raise _replaced(src)
        expect = (st.st_dev, st.st_ino)  # what is copied is what may be removed
        fd = os.open(src, READ_NOFOLLOW if stat.S_ISREG(st.st_mode) else _HOLD)
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"copy {src} into", dst.parent, exc) from exc
    try:
        _copy_held(fd, src, dst, expect, progress)
        _remove_held(fd, src, dst)
    finally:
        os.close(fd)


def _copy_held(
    fd: int,
    src: Path,
    dst: Path,
    expect: tuple[int, int],
    progress: CopyProgress | None,
) -> None:
    """Copy the entry open as ``fd`` (opened at ``src``) to ``dst``, if it is ``expect``."""
    try:
        st = os.fstat(fd)
        if not _is(st, expect):
            raise _replaced(src)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink("", dir_fd=fd), dst)  # the link held, by its fd
        elif stat.S_ISREG(st.st_mode):
            _copy_regular(fd, dst, stat.S_IMODE(st.st_mode), progress)
        else:
            # A FIFO or socket is recreated as such (no privilege needed); a device
            # needs CAP_MKNOD and otherwise fails here, naming the path.
            os.mknod(dst, st.st_mode, st.st_rdev)
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"copy {src} into", dst.parent, exc) from exc


def _remove_held(fd: int, src: Path, dst: Path) -> None:
    """Once ``dst`` holds the copy of the entry open as ``fd``, remove that entry from
    ``src``: only if it is still the one there."""
    try:
        fsync_dir(dst.parent)
        # Checked right before the removal: a file renamed onto the name during the
        # copy (seconds, for a large one) is not the one copied, and must stay. The
        # one copied then lives on as the copy alone, as when it vanished. Compared
        # with the file held open, whose inode number no other file can have; a file
        # renamed onto the name between this look and the unlink (microseconds) would
        # still be removed: a window no check followed by an unlink can close.
        now, held = os.lstat(src), os.fstat(fd)
        if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            return
        os.unlink(src)
    except FileNotFoundError:
        return  # removed by someone else meanwhile: the copy is all there is, and stays
    except OSError as exc:
        # Kept, the copy would stand beside its source, and each retry would add one
        # more under a new name: the move is undone, and the source stays the one.
        with contextlib.suppress(OSError):
            os.unlink(dst)
            fsync_dir(dst.parent)
        if isinstance(exc, StorageError):
            raise
        raise StorageError("move", src, exc) from exc


@contextlib.contextmanager
def streamed_file(final: Path, *, mode: int = 0o644, replace: bool = True) -> Iterator[BinaryIO]:
    """Write ``final`` in pieces through the recipe; it appears only once complete.

    Yields a buffered binary file open on a temp file beside ``final``. When the block
    ends normally the file is flushed, fsynced, renamed over ``final`` (replacing an
    older one; with ``replace=False`` never: ``FileExistsError`` then, unwrapped) and the
    folder fsynced. When the block raises, the temp file is removed and ``final`` is
    left as it was; with ``replace=False`` also when the folder's fsync fails after the
    new name was given, or an exception (a stop) comes meanwhile: the name is taken
    back (:func:`take_back`) while it still holds this file. A process killed meanwhile
    leaves only the temp name (:data:`OUTPUT_TEMP_PREFIX`, which no sweep takes: it is
    a command's output, which may sit beside the latest link while a writer starts),
    never a part under ``final``. Memory use does not depend on the size written. Raises
    :class:`StorageError` (naming the path and cause) for any failed step, including a
    write inside the block (e.g. ENOSPC).
    """
    directory = final.parent
    tmp = _temp_path(directory, OUTPUT_TEMP_PREFIX)
    try:
        # The mode is given at creation so the umask applies, as for any new file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise StorageError("create", final, exc) from exc
    except BaseException:
        # A stop signal's exception as the file was made: it may exist already, under
        # the temp name alone (the open refuses any file that was there before).
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    pin = -1
    try:
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        # A second descriptor, kept until the end: while it is open the file's inode
        # number cannot be given to another file, so a file found under ``final`` with
        # that number is this one and no other (the temp name alone does not hold it:
        # it is removed on failure before the name is taken back).
        pin = os.dup(fd)
        handle = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        if pin >= 0:
            os.close(pin)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    publishing = False
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
            publishing = True
            publish_new(tmp, final)  # fsyncs the folder itself
            return
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise StorageError("replace", final, exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if publishing:
            # Published, then its folder's fsync failed or a stop came: a new name
            # replaced nothing, so taking it back leaves the folder as it was, and the
            # caller's failure is true of what is there. Before the publish began,
            # ``final`` was never this run's, whatever is there now.
            aside = take_back(final, ident, OUTPUT_TEMP_PREFIX)
            if aside is not None:
                with contextlib.suppress(OSError):
                    os.unlink(aside)
        raise
    finally:
        os.close(pin)
    fsync_dir(directory)


def same_contents(one: int, two: int) -> bool:
    """Whether the open files ``one`` and ``two`` hold the same bytes from their current
    offsets to their ends, read a MiB at a time. Raises ``OSError`` from a read."""
    while True:
        a, b = os.read(one, 1 << 20), os.read(two, 1 << 20)
        if a != b:
            return False
        if not a:
            return True
