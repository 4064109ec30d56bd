"""The spool folder: finding drops, opening them safely, quarantine, submit.

Layout under ``<spool>/``:

* ``*.json`` (not dot-files): drops. Only the watcher removes them.
* ``tmp/``: writers' scratch space. Never read here.
* ``rejected/``: quarantined drops, each with ``<name>.reason.json`` (movable apart),
  see :mod:`ingester.intake.quarantine`.
* ``.claimed/``: the watcher's in-flight folder, see :mod:`ingester.intake.watcher`.

Everything else (dot-files, ``*.tmp``, ``*.part``, other sub-folders) is never touched.

A spool entry is never opened unless it is a regular file, and never followed:
``O_NOFOLLOW | O_NONBLOCK`` then ``fstat`` on the descriptor, so a symlink to a secret,
a FIFO with no writer or a socket cannot make us read it or hang.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from ..clock import utc_now
from ..errors import StorageError, folder_not_entered, on_read_only_filesystem
from ..history import durable
from ..history.names import STAMP_FORMAT, is_version_name
from .quarantine import REASON_SUFFIX, Quarantine, is_set_aside_claim
from .quarantine import entry_kind as _kind

__all__ = [
    "REASON_SUFFIX",
    "Candidate",
    "Opened",
    "Spool",
    "Unreadable",
    "drop_name_for_now",
    "is_claim_name",
    "is_drop_name",
    "user_words",
]

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


def is_claim_name(name: str) -> bool:
    """Whether ``name`` in ``.claimed/`` is one the watcher gives a claim: a version name
    (a drop on its way to the history) or a set-aside claim's (on its way to the
    quarantine). The watcher's recovery takes exactly these and leaves any other name,
    with a warning, for good."""
    return is_set_aside_claim(name) or is_version_name(name)


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
    """A regular file read through a safe descriptor (its ``fstat`` then: ``mtime_ns`` in
    nanoseconds since the epoch)."""

    data: bytes
    dev: int
    ino: int
    size: int
    uid: int = -1
    nlink: int = 1
    mode: int = 0o644
    gid: int = -1
    mtime_ns: int = 0


@dataclass(frozen=True)
class Unreadable:
    """An entry that must not be read: ``kind`` says what it is (symlink, FIFO, ...)."""

    kind: str
    is_dir: bool = False


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
            return Opened(
                b"",
                st.st_dev,
                st.st_ino,
                st.st_size,
                st.st_uid,
                st.st_nlink,
                st.st_mode,
                st.st_gid,
                st.st_mtime_ns,
            )
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
            st.st_gid,
            st.st_mtime_ns,
        )
    except OSError as exc:
        raise StorageError("read drop", path, exc) from exc
    finally:
        os.close(fd)


def user_words(uid: int) -> str:
    """A user as a line names it: ``uid 0 (root)``, or ``uid N`` where it has no name."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


class Spool:
    """The drop folder and its sub-folders."""

    def __init__(self, spool_dir: Path, rejected_dir: Path | None = None) -> None:
        self.dir = Path(os.path.abspath(spool_dir))
        self.rejected_dir = Path(os.path.abspath(rejected_dir or self.dir / "rejected"))
        self.tmp_dir = self.dir / "tmp"
        self.claimed_dir = self.dir / ".claimed"
        # A watcher holds an flock on it while it reads this spool (see the watcher).
        self.lock_path = self.dir / ".lock"
        # Who .claimed/ was last found to be checked for (see check_claimed), so that
        # the quarantine, which moves a drop through it, checks it the same way.
        self._checked_for: tuple[int | None, tuple[int, int] | None] = (os.geteuid(), None)
        self.rejected = Quarantine(self.rejected_dir, self.claimed_dir, self._check_claimed_again)

    def ensure_folders(self) -> None:
        """Create the spool, ``tmp/`` and ``.claimed/`` if missing; ``rejected/`` if possible.

        Valid drops never depend on the quarantine folder: a ``rejected/`` that cannot be
        made (a file in its place, a read-only mount) is left to :meth:`Quarantine.set_aside`,
        which fails for the invalid drop alone.
        """
        for folder, mode in ((self.dir, 0o777), (self.tmp_dir, 0o777), (self.claimed_dir, 0o700)):
            try:
                folder.mkdir(mode=mode, parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError("create folder", folder, exc) from exc
        with contextlib.suppress(OSError):
            self.rejected_dir.mkdir(parents=True, exist_ok=True)

    def check_claimed(self, euid: int | None, history: tuple[int, int] | None) -> tuple[int, int]:
        """Check that ``.claimed/`` is a real folder of ours; return its ``(st_dev, st_ino)``.

        Recovery removes a claim once its version is stored, so ``.claimed/`` must be
        what it claims to be: not a symlink (to the history, say), not the history
        itself (``history``, its ``(st_dev, st_ino)``; ``None`` where it is not known),
        writable by no one else (group and others), and owned by this user (``euid``;
        ``None`` for a caller that sets up folders for another user, ``init`` run as
        root). Raises :class:`StorageError` naming the folder and what is wrong with it.
        """
        folder = self.claimed_dir
        try:
            st = os.lstat(folder)
        except OSError as exc:
            raise StorageError("use the claim folder", folder, exc) from exc
        problem = None
        if not stat.S_ISDIR(st.st_mode):
            problem = f"it is a {_kind(st.st_mode)}, not a folder"
        elif history is not None and (st.st_dev, st.st_ino) == history:
            problem = "it is the history folder"
        elif euid is not None and st.st_uid != euid:
            problem = (
                f"it is owned by {user_words(st.st_uid)}, not by this service "
                f"({user_words(euid)}); remove it and restart"
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
        self._checked_for = (euid, history)
        return st.st_dev, st.st_ino

    def _check_claimed_again(self) -> None:
        """:meth:`check_claimed` for the user and history it was last asked for (this
        user, history unknown, before that)."""
        self.check_claimed(*self._checked_for)

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
        """Drops not stored yet: regular files named like drops in the spool, and claims
        in ``.claimed/`` (taken but maybe not stored; a name no watcher gives a claim is
        no drop to come, see :func:`is_claim_name`). Raises :class:`StorageError` when
        the spool cannot be listed; a missing ``.claimed/`` holds none."""
        waiting = sum(1 for c in self.scan() if stat.S_ISREG(c.mode))
        try:
            claimed = sum(
                1
                for c in self.scan(self.claimed_dir)
                if stat.S_ISREG(c.mode) and is_claim_name(c.name)
            )
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

    def rejected_count(self) -> int:
        """How many drops are quarantined: see :meth:`Quarantine.count`."""
        return self.rejected.count()

    def sweep_temps(self) -> list[str]:
        """Remove our stale temp files from ``rejected/`` (reason files cut short by a crash)."""
        return self.rejected.sweep_temps()

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
            _make_submit_folder(folder)
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
            cause = _group_hint(self.tmp_dir, exc.cause)
            raise StorageError(f"stage {name} in", self.tmp_dir, cause) from exc
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
                hinted = _group_hint(self.dir, exc.cause)
                if hinted is exc.cause:
                    raise
                raise StorageError(exc.action, exc.path, hinted) from exc
            raise StorageError("move into spool", final, exc) from exc
        return final

    def submit_problem(self, name: str) -> StorageError | FileExistsError | None:
        """Why :meth:`submit` of a drop named ``name`` would be refused to this process,
        found without writing anything (``submit --dry-run``); None when nothing stands
        in its way.

        Its steps, judged instead of taken: each folder there, or one this process
        could make; the name free; the writer's scratch folder, then the spool, written
        in (by their permissions for its effective ids). The error is the one
        :meth:`submit` would raise there, in its words and with its advice.
        """
        made = False
        for folder in (self.dir, self.tmp_dir):
            if made:
                break  # in a spool it would make, it could make tmp/ too
            made = not os.path.lexists(folder)
            try:
                _make_submit_folder(folder, judge_only=True)
            except StorageError as exc:
                return exc
        final = self.dir / name
        if os.path.lexists(final):
            return FileExistsError(errno.EEXIST, "a drop of that name is waiting", str(final))
        if made:
            return None  # a folder it makes is one it may write in, in a spool it may
        try:
            _may_write_in(self.tmp_dir)
        except OSError as exc:
            cause = _group_hint(self.tmp_dir, OSError(exc.errno, exc.strerror))
            return StorageError(f"stage {name} in", self.tmp_dir, cause)
        try:
            _may_write_in(self.dir)
        except OSError as exc:
            return StorageError(
                "link", final, _group_hint(self.dir, OSError(exc.errno, exc.strerror))
            )
        return None


def _make_submit_folder(folder: Path, *, judge_only: bool = False) -> None:
    """Make the spool or its ``tmp/`` where it is missing, never the parents: a mistyped
    root must not become a spool that no watcher reads, with every submit reporting
    success. With ``judge_only`` nothing is made: what making it would meet is raised.
    Raises :class:`StorageError` in the words a writer is told."""
    try:
        if judge_only:
            _could_make(folder)
        else:
            folder.mkdir(exist_ok=True)
    except FileNotFoundError as exc:
        hint = FileNotFoundError(
            errno.ENOENT, "its parent folder does not exist (is the root right?)"
        )
        raise StorageError("create folder", folder, hint) from exc
    except PermissionError as exc:
        raise _not_entered(folder, exc) from exc
    except OSError as exc:
        raise StorageError("create folder", folder, exc) from exc


def _could_make(folder: Path) -> None:
    """What ``folder.mkdir(exist_ok=True)`` would raise, found without making anything:
    the folder there (a symlink to one too), or a missing one whose parent is a folder
    this process may write in (by its effective ids)."""
    try:
        if stat.S_ISDIR(os.stat(folder).st_mode):
            return
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(folder))
    except FileNotFoundError:
        pass
    parent = folder.parent
    if not parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(folder))
    _may_write_in(parent)


def _may_write_in(folder: Path) -> None:
    """Raise the ``OSError`` a new entry in ``folder`` would meet (``EROFS``, ``EACCES``),
    judged by its permissions for this process's effective ids, without making one."""
    effective = os.access in os.supports_effective_ids
    if os.access(folder, os.W_OK | os.X_OK, effective_ids=effective):
        return
    if on_read_only_filesystem(folder):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(folder))
    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(folder))


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


def _join_group(cause: OSError, group: str) -> PermissionError:
    """``cause`` (a refusal) with the advice a writer of drops is given: join ``group``."""
    return PermissionError(
        errno.EACCES,
        f"{cause.strerror or 'Permission denied'}; a writer of drops must be in its group, "
        f"{group} (a group joined counts from the next login)",
    )


def _group_hint(folder: Path, cause: OSError) -> OSError:
    """``cause`` (a refused write in ``folder``) with the group to join where that is the
    fix: the folder is writable by its group, and this process is not in it (a scraper's
    user not yet in the service's group). Else ``cause`` itself."""
    if cause.errno != errno.EACCES:
        return cause
    try:
        st = os.stat(folder)
        group = grp.getgrgid(st.st_gid).gr_name
    except (OSError, KeyError):
        return cause
    if not st.st_mode & stat.S_IWGRP or st.st_gid in {os.getegid(), *os.getgroups()}:
        return cause
    return _join_group(cause, group)


def _not_entered(folder: Path, exc: PermissionError) -> StorageError:
    """What a writer refused ``folder`` is told: the folder on the way it may not enter
    (the root or the spool of a service's layout, which only the service's group may
    enter), with that group to join; else that ``folder`` cannot be made."""
    blocked = folder_not_entered(folder / "x")
    if blocked is None or not os.path.lexists(blocked):
        # Every folder there may be entered: the one missing cannot be made in its parent.
        return StorageError("create folder", folder, exc)
    try:
        group = grp.getgrgid(os.stat(blocked).st_gid).gr_name
    except (OSError, KeyError):
        return StorageError("enter", blocked, exc)
    return StorageError("enter", blocked, _join_group(exc, group))
