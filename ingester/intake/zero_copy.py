"""Zero-copy: when a drop's own inode may become its version, instead of a copy.

A version must be what a new file made in the history would be, so that every reader
the history lets in can read it, and no one else can ever write to it. A drop's own
inode (renamed into ``.claimed/``, then linked into the history) is taken as its version
only where:

* the drop is on the history's filesystem (a link reaches it), is the watcher's own
  (same effective uid) and has one link;
* the history has no default ACL (one would be handed to a new file there, and an inode
  that missed it would stay closed to the readers it lets in), and the drop's group is
  the group a new file there gets (the history's own where it is setgid, else the
  watcher's);
* the drop has no ACL of its own, which a new file there never has: that is looked at on
  the claimed inode itself, as it is sealed (:func:`.claims.seal_claim`).

Otherwise the bytes judged are copied. What a new file in the history gets is looked at
once per group (one ``stat``, one ``getxattr``) and kept for the rest of the group: a
default ACL applied to a running service's history counts from its next group. Where it
changed since the last look, the spare temp file the history store made ahead for the
next copy is let go, since it was made as a new file was then.
"""

from __future__ import annotations

import os
import stat

from ..history import durable
from ..history.store import HistoryStore
from .claims import DEFAULT_ACL, acl_of
from .spool import Opened

__all__ = ["NewFile", "ZeroCopy", "what_new_files_get"]


NewFile = tuple[int, bytes] | None
"""What a new file made in a folder gets: its group and the folder's default ACL (b"":
none); None where the folder cannot be looked at."""


def what_new_files_get(folder: durable.StrPath) -> NewFile:
    """The group a new file made in ``folder`` gets (the folder's own where it is
    setgid, else this process's), and the default ACL it inherits (``b""``: none);
    None where the folder, or its default ACL, cannot be looked at. One ``stat`` and
    one ``getxattr``: a default ACL changed in content (an entry added) is seen too."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    acl = acl_of(folder, DEFAULT_ACL)
    if acl is None:
        return None
    return (st.st_gid if st.st_mode & stat.S_ISGID else os.getegid()), acl


class ZeroCopy:
    """Whether a drop's own inode may be its version in the history of ``store``, with
    what a new file there gets as last looked at (once per group). Never raises."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self._looked = False  # looked at in this group
        self._new_file: NewFile = None
        self._known = False  # looked at once at least: a change can be seen

    def allows(self, opened: Opened, *, same_fs: bool, euid: int) -> bool:
        """Whether the drop read and judged as ``opened`` may be stored as its own inode
        (zero-copy): ``same_fs`` where a link from ``.claimed/`` reaches the history,
        ``euid`` the watcher's. Its own ACL is looked at later, on the claim."""
        # Looked at for every drop, a copy's too: a change found lets go of the spare
        # temp file the copy would otherwise be written to.
        new_files_gid = self._new_file_gid()
        return same_fs and opened.uid == euid and opened.nlink == 1 and opened.gid == new_files_gid

    def next_group(self) -> None:
        """The group's drops are committed: the next group looks at the history again."""
        self._looked = False

    def _new_file_gid(self) -> int | None:
        """The group of a new file made in the history, where that is all it inherits;
        None where it inherits more (the history has a default ACL) or cannot be looked
        at: then no drop's own inode is a version, each is copied. Looked at once per
        group (:meth:`look_at_history`)."""
        if not self._looked:
            self._looked = True
            return self.look_at_history()
        new_file = self._new_file
        return None if new_file is None or new_file[1] != b"" else new_file[0]

    def look_at_history(self) -> int | None:
        """Look now at what a new file made in the history gets (one ``stat``, one
        ``getxattr``): its group where that is all (as :meth:`_new_file_gid`), else None.

        Where it changed since the last look (the group, or the default ACL: added,
        removed, or an entry of it changed), the spare temp file made ahead for the next
        copy is let go: made before, it would not be what a new file is now.
        """
        new_file = what_new_files_get(self.store.history_dir)
        if self._known and new_file != self._new_file:
            self.store.close()
        self._new_file, self._known = new_file, True
        return None if new_file is None or new_file[1] != b"" else new_file[0]
