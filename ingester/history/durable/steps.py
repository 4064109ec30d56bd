"""The single steps of the durable recipe, each a syscall or two with its error named.

Temp names (:data:`TEMP_PREFIX` and its kinds) and temp files made in the target
folder; fsync of a file and of a folder; rename, link and unlink; modes; the writeback
hint (``sync_file_range``); a new name given without ever replacing one
(``renameat2(RENAME_NOREPLACE)``, else a link: :func:`publish_new`); and the sweep of
stale temp files. Every failure is a :class:`StorageError` naming the action, the path
and the cause. The recipe they make is described in :mod:`ingester.history.durable`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from ...errors import StorageError

__all__ = [
    "LINK_TEMP_PREFIX",
    "OUTPUT_TEMP_PREFIX",
    "SNAPSHOT_TEMP_PREFIX",
    "SUBMIT_TEMP_PREFIX",
    "TEMP_PREFIX",
    "WRITE_TEMP_PREFIX",
    "StorageError",
    "current_umask",
    "fsync_dir",
    "fsync_fd",
    "link_entry",
    "make_folders",
    "open_dir",
    "publish_new",
    "remove_file",
    "remove_stale_temps",
    "rename_entry",
    "rename_new",
    "set_fd_mode",
    "set_mode",
    "take_back",
    "unlink_entry",
    "write_all",
]

TEMP_PREFIX = ".tmp-"
"""Every temp name we create starts with this, so backups and sweeps can recognise it."""
WRITE_TEMP_PREFIX = TEMP_PREFIX + "w-"
"""A file's bytes before its final name (also the empty spare a watcher keeps ready)."""
LINK_TEMP_PREFIX = TEMP_PREFIX + "link-"
"""A symbolic link before it replaces the latest link."""
OUTPUT_TEMP_PREFIX = TEMP_PREFIX + "out-"
"""A command's output file (an export, a tar snapshot) before its final name. Not a
writer's temp name: it may sit beside the latest link (an export into the root) while a
writer starts, and a writer's sweep takes only its own kinds, or it would delete an
output still being written. No sweep takes it; one left by a ``kill -9`` can be removed."""
SNAPSHOT_TEMP_PREFIX = TEMP_PREFIX + "snapshot-"
"""A snapshot (or its tar stream's staging folder) before it gets its final name."""
SUBMIT_TEMP_PREFIX = ".submit-"
"""A drop written by ``ingester submit`` in the spool's ``tmp/`` before it is published."""


StrPath: TypeAlias = "str | os.PathLike[str]"
"""A path as a ``str`` or a ``Path``: the drop path passes plain strings (cheaper)."""


READ_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""``os.open`` flags to read a file that someone else may have placed: a symlink in its
place is refused (ELOOP) rather than followed, and a FIFO cannot block the open."""


def _temp_path(directory: Path, prefix: str) -> Path:
    return directory / f"{prefix}{secrets.token_hex(6)}"


def read_regular(path: StrPath, limit: int | None = None) -> bytes | None:
    """The bytes of the regular file at ``path``; ``None`` when something else is there
    (a FIFO, a socket, a device, a folder).

    Opened without following a symlink (ELOOP) and without waiting on a FIFO, for a
    file someone else may have placed. With ``limit``, at most ``limit + 1`` bytes are
    read: a longer result says the file is over the limit, never read whole (a file
    that never ends, a huge one, cannot fill the memory). Raises :class:`StorageError`
    (``open`` or ``read``, naming ``path``), whose errno is the cause's: ENOENT when
    nothing is there.
    """
    try:
        fd = os.open(path, READ_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None  # a socket (or a device with no driver): nothing to read there
        raise StorageError("open", path, exc) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read() if limit is None else handle.read(limit + 1)
    except OSError as exc:
        raise StorageError("read", path, exc) from exc
    finally:
        os.close(fd)


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
        _fsync_opened_dir(fd, directory)
    finally:
        os.close(fd)


def _fsync_opened_dir(fd: int, directory: StrPath) -> None:
    """:func:`fsync_dir` for ``directory`` already opened as ``fd`` (by :func:`open_dir`)."""
    try:
        os.fsync(fd)
    except OSError as exc:
        raise StorageError("fsync folder", directory, exc) from exc


def make_folders(folder: Path, mode: int = 0o777) -> list[Path]:
    """Create ``folder`` and its missing parents (as ``mkdir -p``), each name durable.

    Each folder made is recorded in its parent with an fsync of that parent, so what
    is put in ``folder`` next does not hang from a folder a power cut could take back.
    The one parent that was there before may be one this user can write but not read
    (``-wx``): it cannot be opened to be fsynced, and is left as ``mkdir -p`` leaves it.
    Returns the folders made, outermost first; raises :class:`StorageError`.
    """
    missing: list[Path] = []
    probe = folder
    while not os.path.isdir(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    made: list[Path] = []
    for path in reversed(missing):
        try:
            os.mkdir(path, mode)
        except FileExistsError as exc:
            if os.path.isdir(path):
                continue  # made meanwhile by someone else
            raise StorageError("create folder", path, exc) from exc
        except OSError as exc:
            raise StorageError("create folder", path, exc) from exc
        try:
            fsync_dir(path.parent)
        except StorageError as exc:
            if made or exc.action != "open folder" or exc.errno != errno.EACCES:
                raise
        made.append(path)
    return made


def remove_file(path: StrPath) -> None:
    """Unlink ``path`` if it exists; other failures raise :class:`StorageError`."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError("remove", path, exc) from exc


def cut_file(path: StrPath, keep: Callable[[bytes], int], *, head: int = 64) -> None:
    """Cut the regular file ``path``, in place, to its first ``keep(HEAD)`` bytes, HEAD
    being its first ``head`` bytes (``keep`` returns 0 to empty it), and fsync it.

    For a file whose replacement failed (a full disk) and whose old bytes must not stand:
    cutting needs no new block where writing a replacement does. Never creates ``path``
    and never follows a symlink. Raises :class:`StorageError`: action ``cut`` when the
    file was left as it was (it cannot be opened, is no regular file, or the cut fails),
    ``fsync`` when the cut is made but may not be on the disk (a failed fsync is a
    failed write).
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise StorageError("cut", path, exc) from exc
    try:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            os.ftruncate(fd, keep(os.pread(fd, head, 0)))
        except OSError as exc:
            raise StorageError("cut", path, exc) from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise StorageError("fsync", path, exc) from exc
    finally:
        os.close(fd)


# -- single steps ------------------------------------------------------------------------
# The claim (a drop's rename into .claimed/, its seal and its way back to the spool) and
# the housekeeping take their steps one at a time, because each step's failure means
# something different to them. The steps still live here, so every write the package
# makes goes through this one recipe. They raise ``OSError`` unwrapped: the caller
# names the step.


def rename_entry(src: StrPath, dst: StrPath) -> None:
    """Rename ``src`` to ``dst`` within one filesystem (replaces a file ``dst``)."""
    os.rename(src, dst)


def link_entry(
    src: StrPath, dst: StrPath, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None
) -> None:
    """Give ``src``'s inode the new name ``dst`` (each relative to its folder's descriptor
    when given); never replaces (``FileExistsError``), never follows a symlink."""
    os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)


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


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to the open file ``fd`` (a short write is resumed).

    Raises ``OSError`` as :func:`os.write` does; the caller names the file.
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
        write_all(fd, data)
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError("write", shown or tmp, exc) from exc
    return tmp, fd


# Where ``O_TMPFILE`` was refused (by the filesystem or the kernel): those folders get
# named temp files from then on, without asking again on every write.
_UNNAMED_REFUSED: set[str] = set()
# The refusals that mean "not offered here" (old kernels answer EISDIR or EINVAL).
_UNNAMED_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL)
# An unnamed file is given its name through its /proc link (linkat AT_SYMLINK_FOLLOW,
# which needs no privilege, unlike AT_EMPTY_PATH); without /proc it could never be named.
_PROC_FDS = "/proc/self/fd"
_HAVE_PROC_FDS = os.path.isdir(_PROC_FDS)

UNNAMED_TEMPS = True
"""Whether a staged file may be unnamed (``O_TMPFILE``) where the filesystem offers it.

False makes every temp file a named one, the path taken where ``O_TMPFILE`` is refused
or /proc is missing: for tests of that path in a process that has both."""


def _file_error(
    action: str, file: StrPath | None, directory: StrPath, exc: OSError
) -> StorageError:
    """``action`` failed on a file that has no name to show yet (unnamed, or its final
    name not chosen): it is said to be a file in ``directory``, never the folder itself."""
    if file is None:
        return StorageError(f"{action} a file in", directory, exc)
    return StorageError(action, file, exc)


def _open_unnamed(directory: StrPath, mode: int, shown: StrPath | None = None) -> int | None:
    """An unnamed new file in ``directory`` (``O_TMPFILE``), open for writing.

    None where the folder's filesystem (or the kernel, or a missing /proc) cannot make
    one: the caller makes a named temp file instead. It has no name until
    :func:`_link_unnamed` gives it one, so a crash before that leaves nothing behind.
    Other failures (ENOSPC, EACCES, EROFS) raise :class:`StorageError` naming ``shown``
    (the final path, when known), else as a file that cannot be made in the folder.
    """
    key = os.fspath(directory)
    if not (UNNAMED_TEMPS and _HAVE_PROC_FDS) or key in _UNNAMED_REFUSED:
        return None
    try:
        # The mode is given at creation so the umask applies (an operator's choice).
        return os.open(key, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno in _UNNAMED_UNSUPPORTED:
            _UNNAMED_REFUSED.add(key)
            return None
        # The folder is there; what failed is a new file inside it.
        raise _file_error("create", shown, directory, exc) from exc


def _link_unnamed(fd: int, final: StrPath) -> None:
    """Give the unnamed file open as ``fd`` the new name ``final``; never replaces.

    Raises ``OSError`` (``FileExistsError`` when ``final`` exists).
    """
    # Python calls linkat only when a folder descriptor is given (else link(), which
    # would link /proc's symlink itself and fail with EXDEV); the path is absolute, so
    # the kernel ignores the descriptor, and ``fd`` serves.
    os.link(f"{_PROC_FDS}/{fd}", final, src_dir_fd=fd, follow_symlinks=True)


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


def _link_no_clobber(tmp: Path, final: Path, *, look_first: bool = True) -> bool:
    """Hard-link the entry ``tmp`` (never what a symlink points at) as ``final``: True.
    Where hard links cannot be made, a no-replace rename (``renameat2``), else a check
    then a rename: False (``tmp`` is gone); without ``look_first``, ``OSError``
    (``ENOTSUP``) instead of the check then the rename, nothing done.
    Raises ``FileExistsError`` when ``final`` exists, ``OSError`` for other failures."""
    try:
        os.link(tmp, final, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # No hard links here (vfat, some FUSE or SMB mounts), or none of another user's
        # file: a rename that never replaces where there is one, since a check then a
        # rename replaces what another process names so in between.
        if _rename_no_clobber(tmp, final):
            return False
        if not look_first:
            words = "no step here can take a name without risk of replacing a file"
            raise OSError(errno.ENOTSUP, words, os.fspath(final)) from exc
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, "File exists", os.fspath(final)) from exc
        os.replace(tmp, final)
        return False
    return True


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


def rename_new(src: StrPath, dst: StrPath, *, look_first: bool = True) -> None:
    """Rename the entry ``src`` (never what a symlink points at) to the new name ``dst``
    within one filesystem; never replaces anything.

    ``renameat2(RENAME_NOREPLACE)`` where the system has it; otherwise a hard link,
    then ``src`` unlinked (the link taken back if that fails); where hard links cannot
    be made either (no hard links there, or ``fs.protected_hardlinks`` refusing another
    user's file), a check then a rename, which replaces a file given the name between
    the two. A caller whose ``dst`` another process may be renaming onto (a spool's
    drop name) passes ``look_first=False``: ``OSError`` (``ENOTSUP``) there instead,
    nothing moved. Raises ``FileExistsError`` when ``dst`` exists, ``OSError``
    (``EXDEV`` across filesystems) for other failures, unwrapped: the caller names the
    step. No folder is fsynced.
    """
    if _rename_no_clobber(Path(src), Path(dst)):
        return
    if not _link_no_clobber(Path(src), Path(dst), look_first=look_first):
        return  # renamed: nothing left under ``src``
    try:
        os.unlink(src)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(dst)
        raise


def publish_new(source: Path, final: Path) -> None:
    """Give the fsynced file (or folder) ``source`` the new name ``final`` and drop
    ``source``'s name.

    Never replaces anything: ``FileExistsError`` (unwrapped, so callers can say what
    the name is taken by) when ``final`` exists. A no-clobber rename where the system
    has one (so a watcher takes the file at once); otherwise a hard link, then the
    source name is removed; where hard links cannot be made either, a check then a
    rename. Both folders are fsynced; other failures raise :class:`StorageError`.

    Both folders are opened before the name is published, so that once it is, only
    their fsyncs can fail (``"fsync folder"``): a caller that takes a published name
    back after a failed fsync (a writer's error must not leave a drop to be stored)
    never meets another failure past publishing, such as a folder that cannot be
    opened for want of a file descriptor.
    """
    folders = [final.parent] if source.parent == final.parent else [final.parent, source.parent]
    fds: list[int] = []
    try:
        for folder in folders:
            fds.append(open_dir(folder))
        try:
            renamed = _rename_no_clobber(source, final)
            if not renamed:
                _link_no_clobber(source, final)
        except FileExistsError:
            raise
        except OSError as exc:
            raise StorageError("link", final, exc) from exc
        if not renamed:
            # The new name is published and made durable below: a second name left
            # behind in a writers' scratch folder is never read as a drop, so its
            # removal may fail.
            with contextlib.suppress(OSError):
                os.unlink(source)
        for folder, fd in zip(folders, fds, strict=True):
            _fsync_opened_dir(fd, folder)
    finally:
        for fd in fds:
            os.close(fd)


def take_back(final: Path, ident: tuple[int, int], prefix: str) -> Path | None:
    """Take the name ``final`` back from the entry ``ident`` (its ``(st_dev, st_ino)``)
    that this process published there, for a caller that must not leave it behind
    (the step after publishing failed, or a stop came).

    The caller must still hold that entry open (a descriptor on the file or folder),
    and call this only once it began to publish: the match is by inode number, which
    an entry freed meanwhile could pass on to another process's new file at ``final``.

    The entry is renamed to a new temp name ``prefix*`` beside ``final``, which is
    returned for the caller to remove (a folder's removal is not atomic; under the temp
    name a half-removed tree is never seen as ``final``). Whatever else holds the name
    now (someone who took it after a failed or refused publish) is never moved for
    good: it is looked at before the rename and again after it, and put back under its
    name if it is not ours. Returns ``None`` when ``final`` is not ours (or gone, or
    cannot be moved). Raises nothing: the folder's fsync is tried, and a crash before
    it succeeds may bring the name back (the entry was complete when published).
    """
    aside = _temp_path(final.parent, prefix)
    try:
        st = os.lstat(final)
        if (st.st_dev, st.st_ino) != ident:
            return None
        os.rename(final, aside)
    except OSError:
        return None
    try:
        st = os.lstat(aside)
        ours = (st.st_dev, st.st_ino) == ident
    except OSError:
        return None
    if not ours:
        # Another entry took the name between the look and the rename: it goes back,
        # never over a newer one.
        with contextlib.suppress(OSError):
            if not _rename_no_clobber(aside, final) and not os.path.lexists(final):
                os.rename(aside, final)
        return None
    with contextlib.suppress(StorageError):
        fsync_dir(final.parent)
    return aside


def remove_stale_temps(
    directory: Path,
    prefix: str | tuple[str, ...] = TEMP_PREFIX,
    *,
    modified_before: float | None = None,
    errors: list[StorageError] | None = None,
) -> list[str]:
    """Remove leftover temp files (never folders) named ``prefix*`` from ``directory``.

    Returns the names removed. Only call it where no writer is active (the caller
    holds the history lock), or a temp file being written would be swept away; or
    give ``modified_before`` (seconds since the epoch): only files last modified
    before it are removed, for a folder whose writers cannot be locked out. The
    folder is opened without following a symlink in its place (a sweep never reaches
    into another folder through a link) and the names are removed relative to it.

    Raises :class:`StorageError` when the folder cannot be listed, and at the first
    entry that cannot be looked at or removed; with ``errors`` given, such an entry's
    error is appended there instead and the sweep goes on with the others.
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
            if not entry.name.startswith(prefix):
                continue
            action = "look at"
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    continue
                if modified_before is not None and st.st_mtime >= modified_before:
                    continue
                action = "remove"
                os.unlink(entry.name, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                failure = StorageError(action, directory / entry.name, exc)
                if errors is None:
                    raise failure from exc
                errors.append(failure)
                continue
            removed.append(entry.name)
    finally:
        os.close(dir_fd)
    return removed
