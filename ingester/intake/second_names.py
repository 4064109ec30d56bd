"""Drops that are a stored version's own file under a second name: removed, never stored again.

A drop's claim is a rename out of the spool, and the spool folder itself is never
fsynced: its fsync would sit on every drop's path, and on a filesystem with a journal
the claim's rename is made durable by the fsyncs the claim already gets. On one without
a journal (ext2, ext4 made without one) a power cut can lose the spool's side of the
rename while the version's name, fsynced, survives. The drop is then back in the spool
and is the version's very inode (stored without a copy), or its claim's (stored as a
copy, the claim not yet removed). Both are second names of bytes already stored: taking
them again would store the drop twice. An operator's hard link of a version into the
spool is the same thing and is treated the same way.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import StorageError
from ..history.names import is_version_name

__all__ = ["version_named_by"]


def version_named_by(history_dir: Path, dev: int, ino: int) -> str | None:
    """The name of the version in ``history_dir`` that is the file ``(dev, ino)``, or None.

    One listing of the folder (the inode numbers come with it, no ``stat`` per entry),
    then an ``lstat`` of the one that matches, for its device. Called only for a drop
    with more than one link, which no drop written by the drop protocol has. Raises
    :class:`StorageError` when the history cannot be listed.
    """
    try:
        with os.scandir(history_dir) as entries:
            matches = [e.name for e in entries if e.inode() == ino and is_version_name(e.name)]
    except OSError as exc:
        raise StorageError("list", history_dir, exc) from exc
    for name in matches:
        try:
            st = os.lstat(history_dir / name)
        except OSError:
            continue  # removed by retention meanwhile: not this file's name any more
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (dev, ino):
            return name
    return None
