"""The folders' layout: the spool, the quarantine, the history and the latest link must
not overlap, by name or by identity (a bind mount shows one folder under two paths).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SettingError

__all__ = ["check_layout"]


def _identity(path: Path) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of ``path`` itself (a link is not followed), or None if absent."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _identities_above(path: Path) -> set[tuple[int, int]]:
    """The identities of the folders above ``path`` (a real path), as far as they exist."""
    found = set()
    for folder in path.parents:
        identity = _identity(folder)
        if identity is not None:
            found.add(identity)
    return found


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies in ``folder``: by name, or by the folder's identity among the
    folders above ``path``. A bind mount shows one folder under two paths, and names
    alone cannot see that; only folders that exist can be compared so."""
    if path == folder:
        return False
    if path.is_relative_to(folder):
        return True
    identity = _identity(folder)
    return identity is not None and identity in _identities_above(path)


def _same(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file: by name, or by identity (a bind mount)."""
    if a == b:
        return True
    identity = _identity(a)
    return identity is not None and identity == _identity(b)


def _overlaps(a: Path, b: Path) -> bool:
    return _same(a, b) or _inside(a, b) or _inside(b, a)


def _by_identity(a: Path, b: Path) -> str:
    """What to add to an overlap of ``a`` and ``b`` that their names do not show."""
    by_name = a == b or a.is_relative_to(b) or b.is_relative_to(a)
    return "" if by_name else " (one folder under two paths: a bind mount?)"


def _named(path: Path, real: Path) -> str:
    """``path`` as the user gave it, and where it leads when a symlink on it leads
    elsewhere: the overlap may only be seen there."""
    return str(path) if real == path else f"{path} (which leads to {real})"


def check_layout(spool: Path, history: Path, rejected: Path, latest: Path) -> None:
    """Refuse folders that overlap: :class:`SettingError` naming the option and why.

    Each pair is compared as real paths (a symlinked folder is the folder it names), and
    folders that exist also by identity (``st_dev``, ``st_ino``: a bind mount shows one
    folder under two paths), so it is checked again wherever a folder may have been
    replaced since (a watcher whose spool was replaced by a link to its history would
    set up its folders in there).
    """
    real = {k: Path(os.path.realpath(v)) for k, v in (("s", spool), ("h", history))}
    real["r"] = Path(os.path.realpath(rejected))
    if _overlaps(real["s"], real["h"]):
        raise SettingError(
            "--spool-dir/--history-dir",
            f"the spool {_named(spool, real['s'])} and the history "
            f"{_named(history, real['h'])} overlap{_by_identity(real['s'], real['h'])}",
        )
    if (
        _overlaps(real["r"], real["h"])
        or _same(real["r"], real["s"])
        or _inside(real["s"], real["r"])
    ):
        raise SettingError(
            "--rejected-dir",
            f"the quarantine {_named(rejected, real['r'])} must not be, hold or lie in the "
            f"history {_named(history, real['h'])}, nor be or hold the spool "
            f"{_named(spool, real['s'])}",
        )
    # The spool's own folders: a drop quarantined among the claims would be stored as a
    # version by the next start, and writers' scratch files are swept.
    for own in (".claimed", "tmp"):
        if _overlaps(real["r"], real["s"] / own):
            raise SettingError(
                "--rejected-dir",
                f"the quarantine {_named(rejected, real['r'])} must not be, hold or lie in "
                f"the spool's own folder {real['s'] / own}",
            )
    real_latest = Path(os.path.realpath(latest.parent)) / latest.name
    roles = ((spool, "s", "spool"), (history, "h", "history"), (rejected, "r", "quarantine"))
    for path, key, role in roles:
        # A link is one name: it cannot lie in a folder another role owns, nor be one of
        # those folders or hold them (replacing it would replace the folder).
        if _overlaps(real_latest, real[key]) or _overlaps(latest, path):
            raise SettingError(
                "--latest-path",
                f"{latest} must not be, hold or lie in the {role} {_named(path, real[key])}",
            )
