"""Reason files in the quarantine: ``<name>.reason.json`` beside each drop set aside.

A reason file is written before its drop is moved beside it, under a name taken by a
step that never replaces, and held locked (``flock``) while that move is under way: the
quarantine may be shared by several watchers, and one of them tells a reason file whose
move is in progress (locked) from one a crash left alone (unlocked). This module names,
writes, locks and reads them; :mod:`.quarantine` moves the drops.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from ..errors import StorageError
from ..history import durable
from ..runtime.logs import escape_text

__all__ = [
    "REASON_SUFFIX",
    "fit_name",
    "held_lock",
    "left_reason",
    "lock_leftover",
    "may_name",
    "record_of",
    "reserve",
    "take_back",
]

REASON_SUFFIX = ".reason.json"

_NAME_MAX = 255
# Room for the reason suffix and a collision counter such as "-12".
_REJECTED_NAME_MAX = _NAME_MAX - len(REASON_SUFFIX) - 8


def fit_name(name: str) -> str:
    """``name`` as kept in ``rejected/``: itself, or when too long to carry
    ``.reason.json`` and a numeric suffix, its first bytes (never half a UTF-8
    character), ``-``, 12 hex digits of its digest, and ``.json``."""
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


def may_name(said: str, target: str) -> bool:
    """Whether ``said``, a reason file's ``file`` (a name as the log says it, see
    :func:`escape_text`), can be the drop given ``target`` in ``rejected/``: ``target``
    said so is ``said``, or ``said`` with a numeric suffix (its name was taken there), or
    a shortened name (``said`` too long to be kept, see :func:`fit_name`).

    The name to compare is what the reason file says, never ``target`` said again: a
    byte that is not UTF-8 is said as ``\\xNN``, which a real name may spell too, so no
    name is read back from it."""
    shown = escape_text(target)
    if shown == said:
        return True
    stem, dot, ext = said.rpartition(".")
    if dot and re.fullmatch(re.escape(stem) + r"-[1-9][0-9]*" + re.escape(dot + ext), shown):
        return True
    return len(os.fsencode(said)) > _REJECTED_NAME_MAX and bool(
        re.search(r"-[0-9a-f]{12}(-[1-9][0-9]*)?\.json$", shown)
    )


def held_lock(path: Path) -> int:
    """A descriptor on ``path`` holding an exclusive ``flock`` (see :func:`reserve`).

    On a filesystem without ``flock`` the descriptor is left unlocked: no process can
    lock a reason file there either, so none is ever taken for a leftover."""
    try:
        fd = os.open(path, durable.READ_NOFOLLOW)
    except OSError as exc:
        raise StorageError("open", path, exc) from exc
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def take_back(reason_file: Path) -> None:
    """Remove a reason file whose drop was not moved beside it (best effort: alone, it
    is counted nowhere)."""
    with contextlib.suppress(StorageError):
        durable.remove_file(reason_file)
        durable.fsync_dir(reason_file.parent)


def left_reason(reason: Path, original: str) -> bool:
    """Whether ``reason`` is a reason file for drop ``original`` that no process holds
    locked (see :func:`reserve`): not one whose move is under way."""
    record = _read_record(reason, unlocked=True)
    return record is not None and record.get("file") == original


def record_of(reason: Path) -> dict[str, Any] | None:
    """What the reason file ``reason`` says, or None when it cannot be read as one."""
    return _read_record(reason, unlocked=False)


def _read_record(reason: Path, *, unlocked: bool) -> dict[str, Any] | None:
    """The JSON object the regular file ``reason`` holds (a symlink is not followed), or
    None; with ``unlocked``, also None while another process holds it locked."""
    try:
        fd = os.open(reason, durable.READ_NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        if unlocked:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        record = json.loads(os.read(fd, 1 << 20))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return record if isinstance(record, dict) else None


def reserve(folder: Path, candidate: str, original: str, data: bytes) -> tuple[Path, int] | None:
    """Write ``data`` as ``candidate``'s reason file in ``folder``, unless the name is
    taken.

    Returns the reason file and a descriptor holding an exclusive ``flock`` on it,
    taken before the file got its name: another process setting a drop aside into
    the same folder (two watchers may share one ``--rejected-dir``) can then tell
    a reason file whose move is under way (locked) from one left alone by a process
    killed between the two steps of
    :meth:`Quarantine.set_aside <.quarantine.Quarantine.set_aside>` (unlocked). Only the latter,
    naming this same drop and with no drop beside it, is replaced: the same drop
    has come again. Returns None when the name is taken (a drop, another drop's
    reason file, or a name another process took meanwhile).
    """
    if candidate.endswith(REASON_SUFFIX) or os.path.lexists(folder / candidate):
        return None
    reason_name = candidate + REASON_SUFFIX
    leftover = lock_leftover(folder / reason_name, original)
    if leftover is False:
        return None
    try:
        if os.path.lexists(folder / candidate):
            return None  # a drop came meanwhile: that reason file was no leftover
        staged = durable.StagedFile(folder, data, 0o644, name=reason_name)
        with staged:
            assert staged.temp is not None  # a named temp file: one can be opened
            held = held_lock(staged.temp)
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


def lock_leftover(reason: Path, original: str) -> int | bool | None:
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
