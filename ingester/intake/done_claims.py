"""Whether a claim left in ``.claimed/`` (a watcher stopped before removing it) is where
its drop was going already: stored in the history, or set aside in the quarantine.

The watcher's recovery finishes such a claim by these rules (removing it), and
``status`` and ``check`` count it by the same ones, so that a drop counts once, as what
the next watcher makes of it. A name the watcher never gives a claim (a file put there
by hand) is no claim at all: the watcher leaves it with a warning, so it is named apart
(:func:`stray_claims`), never counted as a drop to come. Reads only; nothing here loads
the watcher's machinery.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import StorageError
from ..history.names import is_version_name
from .quarantine import is_set_aside_claim, set_aside_already
from .spool import Opened, is_claim_name, open_entry

__all__ = ["finished_already", "is_claim_name", "stored_already", "stray_claims"]


def stray_claims(names: list[str]) -> list[str]:
    """Of ``names`` (as listed in ``.claimed/``), those no watcher takes (see
    :func:`is_claim_name`), sorted: files only an operator can remove or move."""
    return sorted(n for n in names if not is_claim_name(n))


def stored_already(claim: Path, version_file: Path) -> bool:
    """Whether the claim's bytes are stored as ``version_file`` already, so that only
    the claim's removal is left (a watcher stopped between the two steps).

    A claim and its version that are one directory entry (seen through a link) are
    never that; hard links to one inode are; two regular files are when their bytes are
    equal. False when ``version_file`` is missing. Raises :class:`StorageError` when
    the claim cannot be judged (``EPERM`` when it is the version's very entry).

    The one rule by which the watcher's recovery finishes a claim named as a version,
    and by which ``status`` and ``check`` count it.
    """
    try:
        a = os.lstat(claim)
    except OSError as exc:
        raise StorageError("stat claim", claim, exc) from exc
    try:
        b = os.lstat(version_file)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError("stat", version_file, exc) from exc
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
        if a.st_nlink < 2:
            raise StorageError(
                "finish claim",
                claim,
                OSError(errno.EPERM, f"unsafe: it is the version {version_file} itself"),
            )
        return True
    if not (stat.S_ISREG(a.st_mode) and stat.S_ISREG(b.st_mode)) or a.st_size != b.st_size:
        return False
    opened = open_entry(claim, max(a.st_size, 1))
    if not isinstance(opened, Opened):
        return False
    try:
        return version_file.read_bytes() == opened.data
    except OSError as exc:
        raise StorageError("read", version_file, exc) from exc


def finished_already(claim: Path, history_dir: Path, rejected_dir: Path) -> bool:
    """Whether the drop claimed as ``claim`` (in ``.claimed/``) is where it was going
    already: stored in ``history_dir`` (see :func:`stored_already`) or set aside in
    ``rejected_dir`` (see :func:`.quarantine.set_aside_already`), by the rules the
    watcher's recovery finishes it by. False for a claim that cannot be judged, or whose
    name is neither a version's nor a set-aside claim's. Reads only; never raises."""
    if is_set_aside_claim(claim.name):
        return set_aside_already(claim, rejected_dir)
    if not is_version_name(claim.name):
        return False
    try:
        return stored_already(claim, history_dir / claim.name)
    except StorageError:
        return False
