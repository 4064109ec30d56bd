"""Durable file operations: the one place that writes, links, renames and fsyncs.

The recipe (python-atomicwrites' algorithm):

1. write into a temp file ``.tmp-*`` in the *target* folder (same filesystem, so the
   final step is atomic, and backups can exclude it by name);
2. flush and ``fsync`` it, so the data is on disk before any name points at it;
3. ``link`` (new names: never clobbers) or ``rename`` (replacements) it into place;
4. ``fsync`` the folder, so the name itself survives a power cut.

A failed fsync is a failed write: Linux may drop the dirty pages after reporting the
error, so a later fsync could "succeed" with the data gone. Every failure is raised as
:class:`StorageError` naming the path and the cause, and leaves no partial file under a
final name (the temp file is removed when possible; a leftover is swept on start).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, TypeAlias

from ...errors import StorageError

__all__ = [
    "LINK_TEMP_PREFIX",
    "SNAPSHOT_TEMP_PREFIX",
    "SUBMIT_TEMP_PREFIX",
    "TEMP_PREFIX",
    "WRITE_TEMP_PREFIX",
    "SpareFile",
    "StagedFile",
    "StorageError",
    "current_umask",
    "fsync_dir",
    "fsync_dirs",
    "fsync_each",
    "fsync_fd",
    "link_entry",
    "link_file",
    "move_file",
    "open_dir",
    "publish_new",
    "remove_file",
    "remove_stale_temps",
    "rename_entry",
    "replace_symlink",
    "set_fd_mode",
    "set_mode",
    "streamed_file",
    "unlink_entry",
    "write_file",
]

TEMP_PREFIX = ".tmp-"
"""Every temp name we create starts with this, so backups and sweeps can recognise it."""
WRITE_TEMP_PREFIX = TEMP_PREFIX + "w-"
"""A file's bytes before its final name (also the empty spare a watcher keeps ready)."""
LINK_TEMP_PREFIX = TEMP_PREFIX + "link-"
"""A symbolic link before it replaces the latest link."""
SNAPSHOT_TEMP_PREFIX = TEMP_PREFIX + "snapshot-"
"""A snapshot (or its tar stream's staging folder) before it gets its final name."""
SUBMIT_TEMP_PREFIX = ".submit-"
"""A drop written by ``ingester submit`` in the spool's ``tmp/`` before it is published."""


StrPath: TypeAlias = "str | os.PathLike[str]"
"""A path as a ``str`` or a ``Path``: the drop path passes plain strings (cheaper)."""


def _temp_path(directory: Path, prefix: str) -> Path:
    return directory / f"{prefix}{secrets.token_hex(6)}"


def open_dir(directory: StrPath) -> int:
    """A descriptor on ``directory``, for fsyncing its names; :class:`StorageError` if not."""
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError("open folder", directory, exc) from exc


def fsync_dir(directory: StrPath) -> None:
    """Make the names in ``directory`` durable."""
    fd = open_dir(directory)
    try:
        os.fsync(fd)
    except OSError as exc:
        raise StorageError("fsync folder", directory, exc) from exc
    finally:
        os.close(fd)


# -- several fsyncs at once -------------------------------------------------------------

FSYNC_THREAD_PREFIX = "ingester-fsync"
"""The name of the threads that run :func:`fsync_each`'s fsyncs (tests count their steps)."""
# Measured on ext4 on a virtio disk: 8 fresh files and their folder fsynced at once took
# 3.1 ms against 8.4 ms one after the other (32 files: 9 ms against 41 ms); 16 or 32
# workers gained nothing clear over 8.
_FSYNC_WORKERS = 8
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _fsync_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_FSYNC_WORKERS, thread_name_prefix=FSYNC_THREAD_PREFIX)
        return _pool


def _fsync_or_error(fd: int) -> OSError | None:
    try:
        os.fsync(fd)
    except OSError as exc:
        return exc
    return None


def fsync_each(fds: Sequence[int]) -> list[OSError | None]:
    """fsync every descriptor in ``fds`` at once; return each one's error (None: durable).

    The first is fsynced on the calling thread, the others by a few worker threads
    (``os.fsync`` releases the GIL), so the device is given the group's writes
    together instead of one file's at a time, and the wait is for the slowest one
    rather than the sum. Each fsync is still the file's own, and so is its error: a
    failed one is a failed write of that file alone, which its caller handles; the
    others stand. The descriptors stay open (the caller closes them).
    """
    if len(fds) <= 1:
        return [_fsync_or_error(fd) for fd in fds]
    pool = _fsync_pool()
    futures = [pool.submit(_fsync_or_error, fd) for fd in fds[1:]]
    first = _fsync_or_error(fds[0])
    return [first, *(future.result() for future in futures)]


def fsync_dirs(directories: Sequence[StrPath]) -> list[StorageError | None]:
    """:func:`fsync_dir` for each folder, at once; each one's error (None: its names are durable).

    A folder named twice is fsynced once (both get its result).
    """
    unique: dict[str, int] = {}
    errors: dict[str, StorageError] = {}
    try:
        for directory in directories:
            key = os.fspath(directory)
            if key in unique or key in errors:
                continue
            try:
                unique[key] = open_dir(directory)
            except StorageError as exc:
                errors[key] = exc
        results = fsync_each(list(unique.values()))
    finally:
        for fd in unique.values():
            os.close(fd)
    for key, error in zip(unique, results, strict=True):
        if error is not None:
            errors[key] = StorageError("fsync folder", key, error)
    return [errors.get(os.fspath(directory)) for directory in directories]


def remove_file(path: StrPath) -> None:
    """Unlink ``path`` if it exists; other failures raise :class:`StorageError`."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError("remove", path, exc) from exc


# -- single steps ------------------------------------------------------------------------
# The claim (a drop's rename into .claimed/, its seal and its way back to the spool) and
# the housekeeping take their steps one at a time, because each step's failure means
# something different to them. The steps still live here, so every write of the package
# is in this module. They raise ``OSError`` unwrapped: the caller names the step.


def rename_entry(src: StrPath, dst: StrPath) -> None:
    """Rename ``src`` to ``dst`` within one filesystem (replaces a file ``dst``)."""
    os.rename(src, dst)


def link_entry(src: StrPath, dst: StrPath) -> None:
    """Give ``src``'s inode the new name ``dst``; never replaces (``FileExistsError``)."""
    os.link(src, dst)


def unlink_entry(path: StrPath, *, dir_fd: int | None = None) -> None:
    """Remove the name ``path`` (relative to ``dir_fd`` when given)."""
    os.unlink(path, dir_fd=dir_fd)


def set_mode(path: StrPath, mode: int) -> None:
    """chmod ``path`` to ``mode``."""
    os.chmod(path, mode)


def set_fd_mode(fd: int, mode: int) -> None:
    """fchmod the open file ``fd`` to ``mode``."""
    os.fchmod(fd, mode)


def fsync_fd(fd: int) -> None:
    """fsync the open file ``fd``: its bytes and mode are on disk when this returns."""
    os.fsync(fd)


def _create_temp(
    directory: Path, data: bytes, mode: int, prefix: str, shown: Path | None = None
) -> tuple[Path, int]:
    """Step 1: the bytes written into a new temp file; its open descriptor is returned.

    A failure names ``shown`` (the final path, when the caller knows it) rather than
    the temp name, which the caller never asked for.
    """
    tmp = _temp_path(directory, prefix)
    try:
        # The mode is given at creation so the umask applies (an operator's choice).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise StorageError("create", shown or tmp, exc) from exc
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError("write", shown or tmp, exc) from exc
    return tmp, fd


def current_umask() -> int:
    """The process umask, read without changing it (Linux >= 4.7), else by setting it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class SpareFile:
    """An empty temp file made ahead of time, for the next :class:`StagedFile`.

    Creating an inode is the slowest step of a write on some filesystems (0.7 ms on the
    ext4 measured here, more than an fsync); a spare made while idle takes it off the
    path between a drop's arrival and its version. Unused spares are ``.tmp-`` files
    like any other, swept on start.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = _temp_path(directory, WRITE_TEMP_PREFIX)
        try:
            # Writable by us whatever the final mode: it is set once the bytes are in.
            self.fd: int | None = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise StorageError("create", self.path, exc) from exc

    def take(self) -> tuple[Path, int]:
        """Hand the file over (once)."""
        if self.fd is None:
            raise RuntimeError("spare file already taken")
        fd, self.fd = self.fd, None
        return self.path, fd

    def discard(self) -> None:
        """Close and remove it; :class:`StorageError` if it cannot be removed."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            remove_file(self.path)


def _fill_spare(spare: SpareFile, data: bytes, mode: int) -> tuple[Path, int]:
    path, fd = spare.take()
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fchmod(fd, mode & ~current_umask())
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise StorageError("write", path, exc) from exc
    return path, fd


class StagedFile:
    """A temp file holding the bytes, waiting for its final name. Commit or discard it.

    Splitting the recipe lets a caller act between "the bytes are written" and "the
    name appears": the watcher claims its drop there. With ``sync=False`` the fsync of
    step 2 waits for :meth:`sync` (so the claim rename rides in the same journal commit
    on ext4); :meth:`commit` always syncs first, so a name never points at unsynced bytes.
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
    ) -> None:
        self.directory = directory
        # The final path, when known now: what a failure names instead of the temp file.
        self._shown = directory / name if name is not None else None
        if spare is not None and spare.directory == directory:
            temp, fd = _fill_spare(spare, data, mode)
        else:
            temp, fd = _create_temp(directory, data, mode, WRITE_TEMP_PREFIX, self._shown)
        self.temp: Path | None = temp
        self._fd: int | None = fd
        if sync:
            self.sync()

    def start_writeback(self) -> None:
        """Ask the kernel to start writing the bytes out now, without waiting (a hint).

        A group of copies fsynced one after the other otherwise pays one device write
        per fsync; started together, the writes are queued at once and the fsyncs
        mostly wait for what is already under way. Durability still comes from
        :meth:`sync` alone.
        """
        if self._fd is not None:
            _start_writeback(self._fd)

    def sync(self) -> None:
        """Step 2: fsync the bytes (idempotent). A failure discards the temp file."""
        fd = self._fd
        if fd is not None:
            self.synced(_fsync_or_error(fd))

    def unsynced(self) -> int | None:
        """The descriptor whose fsync is still to be done (None once synced or discarded).

        For a caller that fsyncs several files at once (:func:`fsync_each`), then
        hands each one's result to :meth:`synced`.
        """
        return self._fd

    def synced(self, error: OSError | None) -> None:
        """Step 2 done by the caller on :meth:`unsynced`'s descriptor, with this result.

        A failure (``error``) is a failed write: the temp file is discarded and
        :class:`StorageError` raised.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return
        os.close(fd)
        if error is not None:
            self.discard()
            shown = self._shown or self.temp or self.directory
            raise StorageError("fsync", shown, error) from error

    def commit(self, name: str, *, replace: bool = False, sync_dir: bool = True) -> Path:
        """Steps 3-4: give the temp file its final ``name``; return the final path.

        With ``replace=False`` the name must be new (``FileExistsError`` wrapped in
        :class:`StorageError` otherwise): the temp file is hard-linked into place, which
        never clobbers. With ``replace=True`` it is renamed over any existing file.
        With ``sync_dir=False`` the caller fsyncs the folder itself (once for a batch)
        and must treat a failure of that fsync as a failure of this write.
        """
        self.sync()
        tmp = self.temp
        if tmp is None:
            raise RuntimeError("staged file already committed or discarded")
        final = self.directory / name
        try:
            if replace:
                os.replace(tmp, final)
            else:
                _link_no_clobber(tmp, final)
        except OSError as exc:
            self.discard()
            raise StorageError("replace" if replace else "link", final, exc) from exc
        self.temp = None
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
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.temp)
            self.temp = None


def _link_no_clobber(tmp: Path, final: Path) -> None:
    try:
        os.link(tmp, final)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # No hard links here (e.g. some FUSE or SMB mounts): check, then rename.
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, "File exists", os.fspath(final)) from exc
        os.replace(tmp, final)


_RENAME_NOREPLACE = 1  # from <linux/fs.h>
_AT_FDCWD = -100
_SYNC_FILE_RANGE_WRITE = 2  # from <fcntl.h>
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def _start_writeback(fd: int) -> None:
    """``sync_file_range(SYNC_FILE_RANGE_WRITE)`` on the whole file: a hint, never an error."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def _rename_no_clobber(source: Path, final: Path) -> bool:
    """``renameat2(RENAME_NOREPLACE)``: False where the kernel, libc or filesystem lacks it.

    A rename is what a watcher sees as a finished file arriving (IN_MOVED_TO); a hard
    link shows only as a creation, which a watcher must wait out. Raises
    ``FileExistsError`` when ``final`` exists, ``OSError`` for other failures.
    """
    if _renameat2 is None:
        return False
    src, dst = os.fsencode(source), os.fsencode(final)
    if _renameat2(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(final))


def publish_new(source: Path, final: Path) -> None:
    """Give the fsynced file ``source`` the new name ``final`` and drop ``source``'s name.

    Never replaces anything: ``FileExistsError`` (unwrapped, so callers can say what
    the name is taken by) when ``final`` exists. A no-clobber rename where the system
    has one (so a watcher takes the file at once); otherwise a hard link, then the
    source name is removed; where hard links cannot be made either, a check then a
    rename. Both folders are fsynced; other failures raise :class:`StorageError`.
    """
    try:
        renamed = _rename_no_clobber(source, final)
        if not renamed:
            _link_no_clobber(source, final)
    except FileExistsError:
        raise
    except OSError as exc:
        raise StorageError("link", final, exc) from exc
    if not renamed:
        # The new name is published and made durable below: a second name left behind
        # in a writers' scratch folder is never read as a drop, so its removal may fail.
        with contextlib.suppress(OSError):
            os.unlink(source)
    fsync_dir(final.parent)
    if source.parent != final.parent:
        fsync_dir(source.parent)


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


def move_file(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` (which must not exist) durably, across filesystems too.

    The entry itself is moved, never what a symlink points at. Within a filesystem this
    is one rename; across filesystems a regular file is copied durably, then removed.
    """
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise StorageError("move", src, exc) from exc
        _copy_across(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def _stream_copy(src: Path, dst: Path, mode: int) -> None:
    """Copy a regular file of any size in chunks, by the recipe (temp, fsync, link, fsync)."""
    tmp = _temp_path(dst.parent, WRITE_TEMP_PREFIX)
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fd_out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while chunk := os.read(fd_in, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd_out, view) :]
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


def remove_stale_temps(directory: Path, prefix: str = TEMP_PREFIX) -> list[str]:
    """Remove leftover temp files (never folders) named ``prefix*`` from ``directory``.

    Returns the names removed. Only call it where no writer is active (the caller
    holds the history lock), or a temp file being written would be swept away. The
    folder is opened without following a symlink in its place (a sweep never reaches
    into another folder through a link) and the names are removed relative to it.
    """
    removed: list[str] = []
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return removed
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return removed  # not a real folder: nothing of ours to sweep there
        raise StorageError("list", directory, exc) from exc
    try:
        try:
            entries = list(os.scandir(dir_fd))
        except OSError as exc:
            raise StorageError("list", directory, exc) from exc
        for entry in entries:
            if entry.name.startswith(prefix) and not entry.is_dir(follow_symlinks=False):
                try:
                    os.unlink(entry.name, dir_fd=dir_fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise StorageError("remove", directory / entry.name, exc) from exc
                removed.append(entry.name)
    finally:
        os.close(dir_fd)
    return removed


@contextlib.contextmanager
def streamed_file(final: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Write ``final`` in pieces through the recipe; it appears only once complete.

    Yields a buffered binary file open on a temp file beside ``final``. When the block
    ends normally the file is flushed, fsynced, renamed over ``final`` (replacing an
    older one) and the folder fsynced. When the block raises, the temp file is removed
    and ``final`` is left as it was. Memory use does not depend on the size written.
    Raises :class:`StorageError` (naming the path and cause) for any failed step,
    including a write inside the block (e.g. ENOSPC).
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
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise StorageError("replace", final, exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
