"""The spool folder: finding drops, opening them safely, quarantine, submit.

Layout under ``<spool>/``:

* ``*.json`` (not dot-files): drops. Only the watcher removes them.
* ``tmp/``: writers' scratch space. Never read here.
* ``rejected/``: quarantined drops, each with ``<name>.reason.json`` (movable apart).
* ``.claimed/``: the watcher's in-flight folder, see :mod:`ingester.intake.watcher`.

Everything else (dot-files, ``*.tmp``, ``*.part``, other sub-folders) is never touched.

A spool entry is never opened unless it is a regular file, and never followed:
``O_NOFOLLOW | O_NONBLOCK`` then ``fstat`` on the descriptor, so a symlink to a secret,
a FIFO with no writer or a socket cannot make us read it or hang.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import pwd
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..clock import iso_utc, utc_now
from ..errors import MovedNotDurable, StorageError
from ..history import durable
from ..history.names import STAMP_FORMAT

__all__ = [
    "Candidate",
    "Opened",
    "Spool",
    "Unreadable",
    "drop_name_for_now",
    "is_drop_name",
]

REASON_SUFFIX = ".reason.json"

WRITER_TEMP_STALE_S = 3600.0
"""Seconds after its last change that a submit's temp file in ``tmp/`` counts as left by
a writer that died. A submit writes bytes it already holds in memory, in milliseconds;
an hour leaves room for a disk stalled far longer than any writer waits."""


def is_drop_name(name: str) -> bool:
    """True for a name a drop may have: ``*.json`` and not a dot-file."""
    return name.endswith(".json") and not name.startswith(".") and "/" not in name


def drop_name_for_now() -> str:
    """A fresh drop name: the current UTC time and a random part."""
    now = utc_now()
    return f"{now.strftime(STAMP_FORMAT)}-{now.microsecond:06d}-{secrets.token_hex(4)}.json"


@dataclass(frozen=True)
class Candidate:
    """A spool entry seen by a scan: its name, and its type and times from ``lstat``."""

    name: str
    mode: int
    mtime_ns: int
    size: int
    nlink: int
    ino: int = 0
    dev: int = 0


@dataclass(frozen=True)
class Opened:
    """A regular file read through a safe descriptor."""

    data: bytes
    dev: int
    ino: int
    size: int
    uid: int = -1
    nlink: int = 1
    mode: int = 0o644


@dataclass(frozen=True)
class Unreadable:
    """An entry that must not be read: ``kind`` says what it is (symlink, FIFO, ...)."""

    kind: str
    is_dir: bool = False


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "special file"


def open_entry(path: durable.StrPath, max_bytes: int) -> Opened | Unreadable | None:
    """Read ``path`` if it is a regular file, at most ``max_bytes + 1`` bytes.

    Returns ``None`` when it is gone. Raises :class:`StorageError` when it cannot be
    read for another reason (e.g. permission denied): the caller retries later.
    """
    try:
        fd = os.open(path, durable.READ_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Unreadable("symlink")
        if exc.errno == errno.ENXIO:  # a socket, or a FIFO opened for writing
            return Unreadable("socket")
        raise StorageError("open drop", path, exc) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Unreadable(_kind(st.st_mode), is_dir=stat.S_ISDIR(st.st_mode))
        if st.st_size > max_bytes:
            return Opened(b"", st.st_dev, st.st_ino, st.st_size, st.st_uid, st.st_nlink, st.st_mode)
        chunks = []
        remaining = max_bytes + 1
        # The size fstat gave (and one byte more, to see a file still growing) is what
        # a drop holds: one read of that, not a megabyte buffer allocated and shrunk.
        want = min(remaining, st.st_size + 1, 1 << 20)
        while remaining > 0:
            chunk = os.read(fd, want)
            want = min(remaining - len(chunk), 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        return Opened(
            data,
            st.st_dev,
            st.st_ino,
            max(st.st_size, len(data)),
            st.st_uid,
            st.st_nlink,
            st.st_mode,
        )
    except OSError as exc:
        raise StorageError("read drop", path, exc) from exc
    finally:
        os.close(fd)


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


_NAME_MAX = 255
# Room for the reason suffix and a collision counter such as "-12".
_REJECTED_NAME_MAX = _NAME_MAX - len(REASON_SUFFIX) - 8


def _fit_name(name: str) -> str:
    raw = os.fsencode(name)
    if len(raw) <= _REJECTED_NAME_MAX:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    keep = _REJECTED_NAME_MAX - len(digest) - len("-.json")
    cut = raw[:keep]
    while cut and cut[-1] & 0xC0 == 0x80:  # never split a UTF-8 character
        cut = cut[:-1]
    if cut and cut[-1] >= 0xC0:
        cut = cut[:-1]
    return f"{os.fsdecode(cut)}-{digest}.json"


def _held_lock(path: Path) -> int:
    """A descriptor on ``path`` holding an exclusive ``flock`` (see ``Spool._reserve``).

    On a filesystem without ``flock`` the descriptor is left unlocked: no process can
    lock a reason file there either, so none is ever taken for a leftover."""
    try:
        fd = os.open(path, durable.READ_NOFOLLOW)
    except OSError as exc:
        raise StorageError("open", path, exc) from exc
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _take_back(reason_file: Path) -> None:
    """Remove a reason file whose drop was not moved beside it (best effort: alone, it
    is counted nowhere)."""
    with contextlib.suppress(StorageError):
        durable.remove_file(reason_file)
        durable.fsync_dir(reason_file.parent)


def _left_reason(reason: Path, original: str) -> bool:
    """Whether ``reason`` is a reason file for drop ``original`` that no process holds
    locked (see ``Spool._reserve``): not one whose move is under way."""
    try:
        fd = os.open(reason, durable.READ_NOFOLLOW)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        record = json.loads(os.read(fd, 1 << 20))
    except (OSError, ValueError):
        return False
    finally:
        os.close(fd)
    return isinstance(record, dict) and record.get("file") == original


def _same_bytes(source: Path, copy: Path, ident: tuple[int, int]) -> bool:
    """Whether the file ``source`` (still the one ``ident`` names) and ``copy`` hold the
    same bytes."""
    fds: list[int] = []
    try:
        for path in (source, copy):
            fds.append(os.open(path, durable.READ_NOFOLLOW))
        st = os.fstat(fds[0])
        if (st.st_dev, st.st_ino) != ident or not stat.S_ISREG(os.fstat(fds[1]).st_mode):
            return False
        while True:
            one, two = os.read(fds[0], 1 << 20), os.read(fds[1], 1 << 20)
            if one != two:
                return False
            if not one:
                return True
    except OSError:
        return False
    finally:
        for fd in fds:
            os.close(fd)


def _put_back_unless(src: Path, dst: Path, expect: tuple[int, int]) -> None:
    """After a move of ``src`` to ``dst``: unless ``dst`` is the file ``expect`` names (a
    writer renamed a new drop onto the name meanwhile), put it back and raise."""
    try:
        moved = os.lstat(dst)
    except OSError as exc:
        raise StorageError("stat", dst, exc) from exc
    if (moved.st_dev, moved.st_ino) == expect:
        return
    try:
        durable.link_entry(dst, src)  # never over a newer file of that name
        durable.unlink_entry(dst)
    except OSError:
        words = (
            f"replaced by another file while being moved, which is now {dst}: "
            f"move it back to {src} by hand"
        )
        raise StorageError("move", src, OSError(errno.ESTALE, words)) from None
    words = "replaced by another file while being moved; left as it is now"
    raise StorageError("move", src, OSError(errno.ESTALE, words))


class Spool:
    """The drop folder and its sub-folders."""

    def __init__(self, spool_dir: Path, rejected_dir: Path | None = None) -> None:
        self.dir = Path(os.path.abspath(spool_dir))
        self.rejected_dir = Path(os.path.abspath(rejected_dir or self.dir / "rejected"))
        self.tmp_dir = self.dir / "tmp"
        self.claimed_dir = self.dir / ".claimed"
        # A watcher holds an flock on it while it reads this spool (see the watcher).
        self.lock_path = self.dir / ".lock"

    def ensure_folders(self) -> None:
        """Create the spool, ``tmp/`` and ``.claimed/`` if missing; ``rejected/`` if possible.

        Valid drops never depend on the quarantine folder: a ``rejected/`` that cannot be
        made (a file in its place, a read-only mount) is left to :meth:`quarantine`,
        which fails for the invalid drop alone.
        """
        for folder, mode in ((self.dir, 0o777), (self.tmp_dir, 0o777), (self.claimed_dir, 0o700)):
            try:
                folder.mkdir(mode=mode, parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError("create folder", folder, exc) from exc
        with contextlib.suppress(OSError):
            self.rejected_dir.mkdir(parents=True, exist_ok=True)

    def check_claimed(self, euid: int | None, history: tuple[int, int]) -> tuple[int, int]:
        """Check that ``.claimed/`` is a real folder of ours; return its ``(st_dev, st_ino)``.

        Recovery removes a claim once its version is stored, so ``.claimed/`` must be
        what it claims to be: not a symlink (to the history, say), not the history
        itself, writable by no one else (group and others), and owned by this user
        (``euid``; ``None`` for a caller that sets up folders for another user, ``init``
        run as root). Raises
        :class:`StorageError` naming the folder and what is wrong with it.
        """
        folder = self.claimed_dir
        try:
            st = os.lstat(folder)
        except OSError as exc:
            raise StorageError("use the claim folder", folder, exc) from exc
        problem = None
        if not stat.S_ISDIR(st.st_mode):
            problem = f"it is a {_kind(st.st_mode)}, not a folder"
        elif (st.st_dev, st.st_ino) == history:
            problem = "it is the history folder"
        elif euid is not None and st.st_uid != euid:
            problem = (
                f"it is owned by {_user(st.st_uid)}, not by this service ({_user(euid)}); "
                "remove it and restart"
            )
        elif st.st_mode & 0o022:
            # Others who may write in it could remove a claim in flight or plant one,
            # which recovery would then store as a version.
            problem = (
                f"others may write in it (mode {stat.S_IMODE(st.st_mode):04o}); "
                "chmod 700 it and restart"
            )
        if problem is not None:
            raise StorageError(
                "use the claim folder", folder, OSError(errno.EPERM, f"unsafe: {problem}")
            )
        return st.st_dev, st.st_ino

    def scan(self, folder: Path | None = None) -> list[Candidate]:
        """Drop candidates in ``folder`` (default: the spool), oldest mtime first, then name."""
        folder = folder or self.dir
        found = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if not is_drop_name(entry.name):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    found.append(
                        Candidate(
                            entry.name,
                            st.st_mode,
                            st.st_mtime_ns,
                            st.st_size,
                            st.st_nlink,
                            st.st_ino,
                            st.st_dev,
                        )
                    )
        except OSError as exc:
            raise StorageError("list", folder, exc) from exc
        found.sort(key=lambda c: (c.mtime_ns, c.name))
        return found

    def backlog(self) -> int:
        """Drops not stored yet: regular files named like drops in the spool and in
        ``.claimed/`` (taken but maybe not stored). Raises :class:`StorageError` when the
        spool cannot be listed; a missing ``.claimed/`` holds none."""
        waiting = sum(1 for c in self.scan() if stat.S_ISREG(c.mode))
        try:
            claimed = sum(1 for c in self.scan(self.claimed_dir) if stat.S_ISREG(c.mode))
        except StorageError as exc:
            if exc.errno != errno.ENOENT:
                raise
            claimed = 0
        return waiting + claimed

    def claimed(self) -> list[str]:
        """Names in ``.claimed/`` (drops taken but maybe not stored), oldest first."""
        try:
            return sorted(os.listdir(self.claimed_dir))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError("list", self.claimed_dir, exc) from exc

    def _rejected_names(self, name: str) -> Iterator[str]:
        """Names in ``rejected/`` for drop ``name``, in the order they are tried: the
        name kept, then ``stem-1.ext``, ``stem-2.ext`` and so on.

        Quarantine names and reason-file names never meet: a quarantined drop never
        gets a name ending in ``.reason.json``. Names too long to carry
        ``.reason.json`` are shortened (with a digest, so two long names stay apart);
        the reason file keeps the original name.
        """
        name = _fit_name(name)
        stem, dot, ext = name.rpartition(".")
        if not dot:
            stem, ext = name, ""
        yield name
        n = 0
        while True:
            n += 1
            yield f"{stem}-{n}.{ext}" if ext else f"{stem}-{n}"

    def _reserve(self, candidate: str, original: str, data: bytes) -> tuple[Path, int] | None:
        """Write ``data`` as ``candidate``'s reason file, unless the name is taken.

        Returns the reason file and a descriptor holding an exclusive ``flock`` on it,
        taken before the file got its name: another process setting a drop aside into
        the same folder (two watchers may share one ``--rejected-dir``) can then tell
        a reason file whose move is under way (locked) from one left alone by a process
        killed between the two steps of :meth:`quarantine` (unlocked). Only the latter,
        naming this same drop and with no drop beside it, is replaced: the same drop
        has come again. Returns None when the name is taken (a drop, another drop's
        reason file, or a name another process took meanwhile).
        """
        if candidate.endswith(REASON_SUFFIX) or os.path.lexists(self.rejected_dir / candidate):
            return None
        reason_name = candidate + REASON_SUFFIX
        leftover = self._lock_leftover(self.rejected_dir / reason_name, original)
        if leftover is False:
            return None
        try:
            if os.path.lexists(self.rejected_dir / candidate):
                return None  # a drop came meanwhile: that reason file was no leftover
            staged = durable.StagedFile(self.rejected_dir, data, 0o644, name=reason_name)
            with staged:
                assert staged.temp is not None  # a named temp file: one can be opened
                held = _held_lock(staged.temp)
                try:
                    path = staged.commit(reason_name, replace=leftover is not None)
                except StorageError as exc:
                    os.close(held)
                    if exc.errno == errno.EEXIST:
                        return None  # another process took the name meanwhile
                    raise
            return path, held
        finally:
            if isinstance(leftover, int):
                os.close(leftover)

    def _lock_leftover(self, reason: Path, original: str) -> int | bool | None:
        """What stands at ``reason``: None when nothing does; a descriptor holding the
        lock of a reason file for drop ``original`` that no process holds (left by a
        crash); False for anything else (the name is taken)."""
        try:
            fd = os.open(reason, durable.READ_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError:
            return False
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EEXIST, "not a reason file")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a move is under way
            record = json.loads(os.read(fd, 1 << 20))
            if not isinstance(record, dict) or record.get("file") != original:
                raise OSError(errno.EEXIST, "another drop's reason file")
        except (OSError, ValueError):
            os.close(fd)
            return False
        return fd

    def _move_new(
        self,
        source: Path,
        target: Path,
        expect: tuple[int, int] | None,
        progress: durable.CopyProgress | None,
    ) -> bool:
        """Move ``source`` to the new name ``target`` durably; False when ``target`` is
        taken (nothing moved). Never replaces anything: the quarantine is shared by
        every watcher given the same ``--rejected-dir``. See :meth:`quarantine`."""
        try:
            durable.rename_new(source, target)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise StorageError("move", source, exc) from exc
            try:
                # Across filesystems the copy is linked into place, which never replaces.
                durable.move_file(source, target, expect=expect, progress=progress)
            except StorageError as failed:
                if failed.errno == errno.EEXIST:
                    return False
                raise
            return True
        if expect is not None:
            _put_back_unless(source, target, expect)
        try:
            durable.fsync_dir(target.parent)
            if source.parent != target.parent:
                durable.fsync_dir(source.parent)
        except StorageError as exc:
            raise MovedNotDurable(exc) from exc
        return True

    def _finish_cut_move(self, source: Path, target: Path, original: str) -> bool:
        """Whether ``target`` already holds the drop ``source``, whose move was cut short
        before the spool's name was removed; the move then finished (that name removed).

        Two moves leave such a pair when their process is killed before the last step:
        where no rename can refuse to replace, :func:`durable.rename_new` links then
        unlinks (one file under both names); into another filesystem, the copy is given
        its name, then the spool's is removed (the same bytes twice). Set aside again
        under a new name, the drop would be there twice. A copy counts only beside a
        reason file no process holds (its move is not under way) naming this drop, and
        only with the same bytes."""
        try:
            src, dst = os.lstat(source), os.lstat(target)
        except OSError:
            return False
        if not (stat.S_ISREG(src.st_mode) and stat.S_ISREG(dst.st_mode)):
            return False
        same_file = (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino)
        if not same_file and not (
            src.st_dev != dst.st_dev
            and src.st_size == dst.st_size
            and _left_reason(target.parent / (target.name + REASON_SUFFIX), original)
            and _same_bytes(source, target, (src.st_dev, src.st_ino))
        ):
            return False
        durable.fsync_dir(target.parent)  # the last step may never have been made durable
        try:
            durable.unlink_entry(source)
        except FileNotFoundError:
            return False  # taken meanwhile: not ours to finish
        except OSError as exc:
            raise StorageError("move", source, exc) from exc
        try:
            durable.fsync_dir(source.parent)
        except StorageError as exc:
            moved = MovedNotDurable(exc)
            moved.moved_to = target.name
            raise moved from exc
        return True

    def _check_rejected_dir(self) -> None:
        """``rejected/`` must be a real folder: never quarantine through a symlink."""
        folder = self.rejected_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)  # removed by hand?
            st = os.lstat(folder)
        except OSError as exc:
            raise StorageError("create folder", folder, exc) from exc
        if not stat.S_ISDIR(st.st_mode):
            raise StorageError(
                "use the quarantine folder",
                folder,
                OSError(errno.ENOTDIR, f"unsafe: it is a {_kind(st.st_mode)}, not a folder"),
            )

    def quarantine(
        self,
        source: Path,
        name: str,
        reason: str,
        errors: list[dict[str, Any]],
        *,
        expect: tuple[int, int] | None = None,
        progress: durable.CopyProgress | None = None,
    ) -> str:
        """Move ``source`` (the entry itself, never a link's target) to ``rejected/``.

        The reason file is written first, so a drop in ``rejected/`` always has its
        reason, even after a crash. A move that fails takes the reason file back: the
        drop stays in the spool, and ``rejected/`` shows nothing of it. Only a process
        killed between the two steps leaves a reason file alone; the drop is then still
        in the spool, and setting it aside again rewrites that same reason file. Counts
        of rejections therefore count drops (or reason files with their drop beside
        them), never reason files alone.

        Nothing in ``rejected/`` is ever replaced, not even by another watcher sharing
        the folder: the reason file and the drop each take a name that is free by a
        step that never replaces (a link, a no-replace rename), and a name found taken
        meanwhile sends both on to the next numeric suffix.

        ``expect``: the ``(st_dev, st_ino)`` of the drop judged, so that a new drop a
        writer renamed onto its name meanwhile is never set aside in its place.
        ``progress``: told how a copy into a ``rejected/`` on another filesystem goes
        (see :data:`ingester.history.durable.CopyProgress`); never called for a rename.

        Returns the name it was given in ``rejected/``. Raises :class:`StorageError`
        when ``rejected/`` cannot be made, is not a real folder, or the move fails
        (``ENOSPC`` when the drop's data cannot fit there: see
        :func:`ingester.history.durable.move_file`), and what ``progress`` raised
        (:class:`ingester.history.durable.CopyAbandoned`) when it gave the copy up: the
        reason file is taken back in each case, as for a failed move.
        """
        self._check_rejected_dir()
        record = {
            "file": name,
            "rejectedAt": iso_utc(utc_now()),
            "reason": reason,
            "errors": errors,
        }
        data = (json.dumps(record, indent=2, default=str) + "\n").encode()
        for target in self._rejected_names(name):
            reserved = self._reserve(target, name, data)
            if reserved is None:
                if self._finish_cut_move(source, self.rejected_dir / target, name):
                    return target
                continue
            reason_file, held = reserved
            try:
                moved = self._move_new(source, self.rejected_dir / target, expect, progress)
            except MovedNotDurable as exc:
                exc.moved_to = target
                raise
            except (StorageError, durable.CopyAbandoned):
                # Left behind, it would say a drop was set aside that never was. If it
                # cannot be removed either, it is still counted nowhere (see above).
                _take_back(reason_file)
                raise
            else:
                if not moved:
                    # The name was taken meanwhile: on to the next. Taken back while
                    # still locked, so no one takes it for a leftover and writes over it.
                    _take_back(reason_file)
            finally:
                os.close(held)
            if moved:
                return target
        raise AssertionError("unreachable: the names tried never end")

    def rejected_count(self) -> int:
        """How many quarantined drops there are (not reason notes, temp files or folders):
        0 when the folder is missing. Raises :class:`StorageError` when it cannot be
        listed (a count of 0 would be a false one)."""
        try:
            with os.scandir(self.rejected_dir) as entries:
                return sum(
                    1
                    for e in entries
                    if not e.name.endswith(REASON_SUFFIX)
                    and not e.name.startswith(".")  # a temp file cut short by a crash
                    and not e.is_dir(follow_symlinks=False)
                )
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StorageError("list", self.rejected_dir, exc) from exc

    def sweep_temps(self) -> list[str]:
        """Remove our stale temp files from ``rejected/`` (reason files cut short by a crash)."""
        return durable.remove_stale_temps(self.rejected_dir)

    def sweep_writer_temps(self, now: float) -> tuple[list[str], list[StorageError]]:
        """Remove what :meth:`submit` left in ``tmp/`` when its writer was killed.

        ``now`` is the wall clock in seconds since the epoch. Only our names
        (``.submit-*``, ``.tmp-w-*``), and only files untouched for
        :data:`WRITER_TEMP_STALE_S`: writers run in other processes, beyond any lock.
        Nothing of a writer's own is touched, nor anything through a ``tmp/`` that is
        a symlink. Returns the names removed and the errors of those that could not
        be (every other one is still tried); raises :class:`StorageError` when
        ``tmp/`` cannot be listed.
        """
        errors: list[StorageError] = []
        removed = durable.remove_stale_temps(
            self.tmp_dir,
            (durable.SUBMIT_TEMP_PREFIX, durable.WRITE_TEMP_PREFIX),
            modified_before=now - WRITER_TEMP_STALE_S,
            errors=errors,
        )
        return removed, errors

    def submit(self, data: bytes, name: str) -> Path:
        """The writer's side: durably write into ``tmp/``, then publish it in the spool.

        The drop's name is published only if it is free (a no-clobber rename, or a hard
        link then removal of the staged name), so two writers of the same name never lose
        one payload silently. Raises ``FileExistsError`` when a drop of
        that name is still waiting, :class:`StorageError` for any other failure.
        """
        for folder in (self.dir, self.tmp_dir):
            try:
                # Never the parents: a mistyped root must not become a spool that no
                # watcher reads, with every submit reporting success.
                folder.mkdir(exist_ok=True)
            except FileNotFoundError as exc:
                hint = FileNotFoundError(
                    errno.ENOENT, "its parent folder does not exist (is the root right?)"
                )
                raise StorageError("create folder", folder, hint) from exc
            except OSError as exc:
                raise StorageError("create folder", folder, exc) from exc
        final = self.dir / name
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, "a drop of that name is waiting", str(final))
        # The staged name does not carry the drop's name: a name near the 255-byte
        # limit must fit as a drop, and a temp name is never a drop anyway.
        try:
            staged = durable.write_file(
                self.tmp_dir,
                f"{durable.SUBMIT_TEMP_PREFIX}{secrets.token_hex(8)}",
                data,
                mode=0o644,
            )
        except StorageError as exc:
            # The staged name is ours: the error names the drop asked for, and the folder.
            raise StorageError(f"stage {name} in", self.tmp_dir, exc.cause) from exc
        staged_stat: os.stat_result | None = None
        try:
            # Group-readable whatever the writer's umask: under systemd the watcher reads
            # drops through the spool's group.
            staged_stat = os.stat(staged)
            durable.set_mode(staged, stat.S_IMODE(staged_stat.st_mode) | 0o040)
            durable.publish_new(staged, final)
        except FileExistsError:
            durable.remove_file(staged)
            raise
        except OSError as exc:
            durable.remove_file(staged)
            if isinstance(exc, StorageError) and exc.action == "fsync folder":
                if exc.path != final.parent:
                    # The spool's fsync went through: the drop is durable. Only the
                    # scratch folder's failed, where a leftover name is never a drop.
                    return final
                if staged_stat is not None and not _taken_back(final, staged_stat):
                    return final  # the watcher has it already, and makes it durable
            if isinstance(exc, StorageError):
                raise
            raise StorageError("move into spool", final, exc) from exc
        return final


def _taken_back(final: Path, staged: os.stat_result) -> bool:
    """After a failure past publishing (a folder's fsync), withdraw the drop at ``final``
    (the file ``staged`` was), so that the error said does not leave it to be stored:
    the writer retries an error, and the drop would then be stored twice.

    ``True`` when it was withdrawn, or cannot be (the error stands); ``False`` when the
    watcher has taken it already: it is accepted, and stored durably by the watcher.
    """
    try:
        now = os.lstat(final)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    same = (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns)
    if same != (staged.st_dev, staged.st_ino, staged.st_size, staged.st_mtime_ns):
        return False  # taken, and the name reused since: ours is the watcher's
    try:
        os.unlink(final)
    except FileNotFoundError:
        return False
    except OSError:
        pass  # it stays, and may be stored: nothing better can be done now
    return True
