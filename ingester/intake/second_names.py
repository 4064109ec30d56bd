"""Drops that are a stored version's own file under a second name: removed, never stored again.

A drop's claim is a rename out of the spool, and the spool folder is fsynced on no
drop's path (only before a group's copied claims are removed, after its versions are
visible): its fsync would sit on every drop's path, and on a filesystem with a journal
the claim's rename is made durable by the fsyncs that follow it. On one without
a journal (ext2, ext4 made without one) a power cut can lose the spool's side of the
rename while the version's name, fsynced, survives. The drop is then back in the spool
and is the version's very inode (stored without a copy), or its claim's (stored as a
copy, the claim not yet removed). Both are second names of bytes already stored: taking
them again would store the drop twice. An operator's hard link of a version into the
spool is the same thing and is treated the same way.

Such a drop is found, and removed from the spool, here rather than among the drop's
steps (:mod:`.intake`): only a drop with more than one link can be one, which no drop
written by the drop protocol has, and the care its removal takes (the name taken as the
version's claim first, never removed as a name) concerns this case alone. The steps
call :func:`remove_second_name` for a judged drop with more than one link, and store it
if it is no version's file.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import StorageError
from ..history import durable
from ..history.names import is_version_name
from .claims import claim_changed
from .outcomes import Blocked, Deferred, Dropped, SecondName
from .spool import Opened

__all__ = ["remove_second_name", "version_named_by"]


_listings: dict[str, dict[int, list[str]]] = {}
"""The last listing of each folder looked in, its version-named entries by inode number:
after a power cut many drops in the spool can be versions' files, and one listing of a
history of 100,000 versions per drop made a restart take minutes."""


def _list_versions(folder: str) -> dict[int, list[str]]:
    inodes: dict[int, list[str]] = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if is_version_name(entry.name):
                    inodes.setdefault(entry.inode(), []).append(entry.name)
    except OSError as exc:
        raise StorageError("list", folder, exc) from exc
    _listings[folder] = inodes
    return inodes


def _version_names_of(folder: durable.StrPath, dev: int, ino: int) -> list[str]:
    """The version-named entries of ``folder`` that are the regular file ``(dev, ino)``.

    The folder's last listing answers (the inode numbers come with it, no ``stat`` per
    entry), each name of that inode number checked by ``lstat``, for its device: a name
    removed or given to another file since is no longer one. A name made since is not in
    it, so a listing that finds none is taken again before the answer is none. Raises
    :class:`StorageError` when the folder cannot be listed.
    """
    key = os.fspath(folder)
    listing = _listings.get(key)
    if listing is not None:
        found = [n for n in listing.get(ino, []) if _is_file(os.path.join(key, n), dev, ino)]
        if found:
            return found
    listing = _list_versions(key)
    return [n for n in listing.get(ino, []) if _is_file(os.path.join(key, n), dev, ino)]


def _is_file(path: str, dev: int, ino: int) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False  # removed meanwhile (retention, a finished claim): not its name now
    return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (dev, ino)


def version_named_by(history_dir: Path, dev: int, ino: int) -> str | None:
    """The name of the version in ``history_dir`` that is the file ``(dev, ino)``, or None.

    Called only for a drop with more than one link, which no drop written by the drop
    protocol has. Raises :class:`StorageError` when the history cannot be listed.
    """
    return next(iter(_version_names_of(history_dir, dev, ino)), None)


def claim_named_by(claimed_dir: str, dev: int, ino: int) -> bool:
    """Whether a claim in ``claimed_dir`` (a version-named entry, as recovery finishes) is
    the file ``(dev, ino)``. Called only for a drop with more than one link. Raises
    :class:`StorageError` when the folder cannot be listed."""
    return bool(_version_names_of(claimed_dir, dev, ino))


def remove_second_name(
    path: str,
    name: str,
    opened: Opened,
    *,
    history_dir: Path,
    claimed_dir: str,
    check_claimed: Callable[[], None],
    settle: float,
) -> Blocked | Deferred | Dropped | SecondName | None:
    """A drop that is a version's own file: its spool name removed (None: it is not).

    ``path`` is the spool's drop ``name``, ``opened`` what was read and judged of it;
    ``claimed_dir`` is ``.claimed/``, ``check_claimed`` checks it is still our own
    folder (raising :class:`StorageError`), ``settle`` (seconds) is how long a drop
    waits before another look. Only a drop with more than one link can be one, so the
    history is listed for those alone. The name is never removed as a name: a writer
    may have renamed a new drop onto it since it was looked at. It is taken as that
    version's claim (a rename), and the claim removed only once it is seen to be the
    version's own inode; anything else goes back to the spool (or stays for recovery,
    which judges its bytes). A crash between leaves a claim that is the version itself,
    which recovery removes.

    A drop that is no version's file but a claim's (a failed drop put back in the
    spool, its claim not removed yet) waits for recovery, which takes it out of the
    spool and stores it from that claim: stored now, it would be stored twice.

    Returns :class:`SecondName` (removed), :class:`Dropped` (gone meanwhile),
    :class:`Deferred` (the version's own claim waits for recovery, the file is a claim's,
    the file changed, or its claim left for recovery) or :class:`Blocked` (it cannot be
    claimed); never raises :class:`StorageError`.
    """
    try:
        version = version_named_by(history_dir, opened.dev, opened.ino)
        check_claimed()
        if version is None:
            if claim_named_by(claimed_dir, opened.dev, opened.ino):
                # A claim not finished yet (a failed drop put back, its claim not yet
                # removed): stored now, the drop would be stored again by recovery.
                return Deferred(name, time.monotonic() + settle, claim_left=True)
            return None
        claim = os.path.join(claimed_dir, version)
        if os.path.lexists(claim):
            # The version's own claim still waits for recovery: after it, this one.
            return Deferred(name, time.monotonic() + settle)
        durable.rename_entry(path, claim)
    except FileNotFoundError:
        return Dropped(name)  # taken or removed meanwhile
    except StorageError as exc:
        return Blocked(name, "claim", exc)
    except OSError as exc:
        return Blocked(name, "claim", StorageError("claim", path, exc))
    try:
        st = os.lstat(claim)
        if (st.st_dev, st.st_ino) != (opened.dev, opened.ino):
            return claim_changed(claim, path, name, settle)
        durable.remove_file(claim)
    except OSError:
        # Left as a claim: recovery finishes it (the version's own inode is removed
        # as stored; anything else is judged and stored).
        return Deferred(name, None, claim_left=True)
    return SecondName(name, version)
