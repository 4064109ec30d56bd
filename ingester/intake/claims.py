"""A claimed drop's own file in ``.claimed/``: checked, sealed, put back, released.

A claim (``<spool>/.claimed/<version>.json``) is the drop itself, renamed out of the
spool, and what is stored must be what was judged: the claim is opened without following
a link, and compared through that descriptor with what was read. These are the
operations on that one file: open it, compare it with the bytes judged, make its inode
a version (read-only, no writer), put it back in the spool after a failure, remove it
once stored unless written to since; and, at start, whether a claim can be linked into
the history at all. They hold no state of the drop path: :mod:`.intake` decides when
each is done, in the order of the steps (and :mod:`.second_names` puts back a claim
that is not the version it named). Apart, each reads as the check it is, and the steps
read as their order.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from pathlib import Path
from typing import Literal

from ..errors import StorageError
from ..history import durable
from ..history.store import VERSION_MODE
from .outcomes import Deferred
from .readiness import writers_present
from .spool import Opened

__all__ = [
    "ACCESS_ACL",
    "DEFAULT_ACL",
    "WRITTEN",
    "acl_of",
    "claim_changed",
    "claim_holds",
    "has_acl",
    "links_reach",
    "open_claim",
    "release_copy",
    "seal_claim",
    "unclaim",
]

log = logging.getLogger("ingester.watcher")

ACCESS_ACL = "system.posix_acl_access"
"""The extended attribute that holds a file's POSIX ACL beyond its mode."""
DEFAULT_ACL = "system.posix_acl_default"
"""The extended attribute that holds the ACL a folder hands down to every file made in it."""


def acl_of(target: int | durable.StrPath, kind: str) -> bytes | None:
    """The ACL ``kind`` (:data:`ACCESS_ACL` or :data:`DEFAULT_ACL`) of the file (path, or
    open descriptor) ``target``, as the kernel stores it: ``b""`` where it has none (a
    filesystem without ACLs has none), None where it cannot be asked. Never raises."""
    try:
        return os.getxattr(target, kind)
    except OSError as exc:
        return b"" if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP) else None


def has_acl(target: int | durable.StrPath, kind: str) -> bool:
    """Whether the file (path, or open descriptor) ``target`` has the ACL ``kind``
    (:data:`ACCESS_ACL` or :data:`DEFAULT_ACL`). A filesystem without ACLs has none; a
    file that cannot be asked is taken to have one (the caller then copies, which is
    always right). Never raises."""
    return acl_of(target, kind) != b""


def open_claim(claim: str) -> int:
    """A descriptor on the claimed drop, for reading, without following a link (a link
    put in its place is refused: ELOOP); :class:`StorageError` if it cannot be opened."""
    try:
        return os.open(claim, durable.READ_NOFOLLOW)
    except OSError as exc:
        raise StorageError("open claim", claim, exc) from exc


def claim_holds(claim: str, data: bytes) -> tuple[int, int] | None:
    """The claim's ``(st_size, st_mtime_ns)`` if it holds exactly ``data``, else None.

    Read without following links. The stat lets the release see a later write. Raises
    :class:`StorageError` when the claim cannot be opened or read.
    """
    fd = open_claim(claim)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or os.pread(fd, len(data) + 1, 0) != data:
            return None
        return st.st_size, st.st_mtime_ns
    except OSError as exc:
        raise StorageError("read claim", claim, exc) from exc
    finally:
        os.close(fd)


def seal_claim(claim: str, opened: Opened, umask: int) -> int | str:
    """Make the claimed drop's own inode a version: read-only (less ``umask``).

    ``opened`` is what was read and judged of the drop. Returns its open descriptor, for
    the group's commit to fsync (the caller closes it); or, with nothing sealed:
    ``"changed"`` (another file, another link to it, or bytes other than those judged),
    ``"copy"`` (the bytes judged, but someone may hold it open for writing: a read
    lease is refused or not offered; or it has an ACL of its own). Raises
    :class:`StorageError` when the claim cannot be opened, looked at, made read-only or
    read.
    """
    fd = open_claim(claim)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_ino, st.st_nlink, st.st_size) != (
            opened.ino,
            1,
            len(opened.data),
        ):
            os.close(fd)
            return "changed"
        if has_acl(fd, ACCESS_ACL):
            # Its own ACL (handed down by the spool's default ACL, say) is none that a
            # new file in the history gets: the bytes judged are copied instead.
            os.close(fd)
            return "copy"
        durable.set_fd_mode(fd, VERSION_MODE & ~umask)
        if writers_present(fd) is not False:
            os.close(fd)
            return "copy"  # the copy path compares the claim's bytes first
        if os.pread(fd, len(opened.data) + 1, 0) != opened.data:
            os.close(fd)
            return "changed"
    except OSError as exc:
        os.close(fd)
        raise StorageError("seal", claim, exc) from exc
    return fd


def unclaim(claim: durable.StrPath, path: durable.StrPath) -> None:
    """Put a claimed drop back in the spool (as ``path``), untouched, after a failure to
    store it.

    The spool's name is made durable (its folder fsynced) before the claim goes. If
    any of that fails (or the name was reused meanwhile), the claim stays and is
    finished by the recovery path once the fault clears: nothing is lost either way,
    and a drop back in the spool waits for its claim to go. Never raises; what could
    not be done is logged.
    """
    folder, claim_name = os.path.split(claim)
    try:
        durable.link_entry(claim, path)  # never clobbers a new drop of the same name
    except OSError as exc:
        log.warning("%s stays in %s for now: %s", claim_name, folder, exc.strerror)
        return
    try:
        # The spool's new name on disk before the claim goes: without a journal, a
        # power cut could keep the removal and lose the name, and the drop with it.
        durable.fsync_dir(os.path.dirname(path))
        # Held open across the removal: to its writer the drop looked taken, so a new
        # drop may be renamed onto its name at any moment, and then the claim is the
        # last name of these bytes.
        fd = open_claim(os.fspath(claim))
        try:
            replaced = not _still_named(fd, path)
            if not replaced:
                durable.unlink_entry(claim)
        except OSError:
            os.close(fd)
            raise
    except OSError as exc:
        # Both names hold the drop now. The spool's waits while the claim is there
        # (remove_second_name), and recovery takes it out of the spool and stores the
        # claim; removing the spool's name here could remove a new drop a writer
        # renamed onto it.
        log.warning(
            "%s stays in %s for now (its drop is back in the spool, and waits for it): %s",
            claim_name,
            folder,
            exc.strerror,
        )
        return
    if replaced:
        # The claim is the last name of these bytes already: it stays, for recovery to
        # store them (nothing to copy, nothing that can fail).
        os.close(fd)
        log.warning(
            "%s was replaced in the spool as it was put back (a new drop renamed onto it): "
            "it stays in %s as %s, for recovery to store",
            os.path.basename(path),
            folder,
            claim_name,
        )
        return
    try:
        _kept_if_replaced(fd, claim, path)
    except OSError as exc:
        log.error(
            "%s was replaced in the spool as it was put back, and its bytes could not be "
            "kept as the claim %s: %s",
            os.path.basename(path),
            claim_name,
            exc.strerror,
        )
    finally:
        os.close(fd)


def _still_named(fd: int, path: durable.StrPath) -> bool:
    """Whether ``path`` is still the file open as ``fd`` (``False`` when it is gone)."""
    try:
        return os.path.samestat(os.lstat(path), os.fstat(fd))
    except FileNotFoundError:
        return False


def _kept_if_replaced(fd: int, claim: durable.StrPath, path: durable.StrPath) -> None:
    """After a put-back drop's claim was removed: unless ``path`` is still that file
    (open as ``fd``), its bytes are written back as ``claim``, durably, for recovery to
    store: a new drop renamed onto ``path`` in the two calls between the last look and
    the removal left it no name. Raises ``OSError`` when they cannot be (said by the
    caller; the drop is then lost)."""
    if _still_named(fd, path):
        return
    held = os.fstat(fd)
    data = b"".join(iter(functools.partial(os.read, fd, 1 << 20), b""))
    folder, name = os.path.split(os.fspath(claim))
    durable.write_file(Path(folder), name, data, mode=stat.S_IMODE(held.st_mode))
    log.warning(
        "%s was replaced in the spool as it was put back (a new drop renamed onto it): "
        "its bytes are kept as the claim %s, for recovery to store",
        os.path.basename(path),
        name,
    )


def claim_changed(claim: str, path: str, name: str, settle: float) -> Deferred:
    """The claimed file is not the one judged: another file, or other bytes.

    Nothing is stored and nothing is deleted: the claim goes back to the spool as
    ``path`` (or, if its name is taken meanwhile, stays for recovery, which judges the
    claimed bytes), and the drop ``name`` is looked at again in ``settle`` seconds.
    """
    log.warning("%s changed while being taken; looking at it again", name)
    unclaim(claim, path)
    return Deferred(name, time.monotonic() + settle, claim_left=True)


def _written_since(claim: str, seen: tuple[int, int]) -> bool:
    """Whether the claim's ``(size, mtime_ns)`` moved from ``seen``; ``False`` when it
    is gone. Raises ``OSError`` when it cannot be looked at."""
    try:
        st = os.lstat(claim)
    except FileNotFoundError:
        return False
    return (st.st_size, st.st_mtime_ns) != seen


WRITTEN: Literal["written"] = "written"
"""What :func:`release_copy` returns for a claim written to since its copy was made."""


def release_copy(job: tuple[str, tuple[int, int]]) -> StorageError | Literal["written"] | None:
    """Remove one copied claim, unless it was written to since its copy was made.

    ``job`` is the claim's path and the ``(st_size, st_mtime_ns)`` its copy was made
    from. Returns None when removed, :data:`WRITTEN` when kept (it goes back to the
    spool), or the error (never raised). The check comes right before the removal, on
    the same thread, so that a write in between has the least time to land.
    """
    claim, seen = job
    try:
        if _written_since(claim, seen):
            return WRITTEN
    except OSError as exc:
        # Cannot tell: the claim stays, and recovery compares its bytes with the
        # version's (stores them anew if they differ).
        return StorageError("check claim", claim, exc)
    try:
        durable.remove_file(claim)
    except StorageError as exc:
        return exc
    return None


def links_reach(source: Path, target: Path) -> bool:
    """Whether a file in ``source`` can be linked into ``target`` (both on one
    filesystem): not when they are that filesystem seen through two mounts (a
    container's bind mounts), where every link fails with EXDEV. Told by the mounts'
    ids (``/proc/self/fdinfo``), so nothing is written to find out; where they cannot
    be read, True: a link that fails later says so then. Never raises.
    """
    source_mount, target_mount = _mount_id(source), _mount_id(target)
    return source_mount is None or target_mount is None or source_mount == target_mount


def _mount_id(folder: Path) -> int | None:
    """The id of the mount ``folder`` is reached through, or None when it cannot be told."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key == "mnt_id" and value.strip().isdigit():
                    return int(value)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return None
