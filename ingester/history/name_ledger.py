"""The names a store has promised but not stored: its naming ledger. Pure, no I/O.

A writer hands out a version's name before the version exists: a group names its
drops before linking any, a drop is claimed under its name before it is stored, and a
crash or a failure can leave a claim waiting under its name for a later start. Every
such name stays used until its version is linked, so no two drops are ever given one
name, and a fresh name sorts above each of them (ingestion order), also with the clock
set back. :class:`NameLedger` keeps the three kinds of promised names, each sorted:

* **handed out**: by :meth:`NameLedger.next_name`, for a version not linked yet;
* **reserved**: for claims found waiting on disk, until each is linked or the next set
  of waiting claims replaces them;
* **taken back**: versions linked and then withdrawn, their names never given again
  (their claims may still wait under them).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from .base import latest_name
from .names import generate_version_filename, is_version_name

__all__ = ["NameLedger"]


def _holds(names: Sequence[str], name: str) -> bool:
    """Whether the sorted ``names`` hold ``name``."""
    index = bisect.bisect_left(names, name)
    return index < len(names) and names[index] == name


def _drop(names: list[str], name: str) -> None:
    """``name`` taken out of the sorted ``names``, when there."""
    index = bisect.bisect_left(names, name)
    if index < len(names) and names[index] == name:
        del names[index]


class NameLedger:
    """The names handed out and not linked yet, reserved for waiting claims, or taken back.

    Owned by one :class:`~ingester.history.store.HistoryStore`, which tells it of each
    version it links (:meth:`linked`) and takes back (:meth:`withdraw`), and passes its
    sorted version names to :meth:`next_name`.
    """

    def __init__(self) -> None:
        # Handed out and not linked yet, and taken back (each sorted): each stays used,
        # as its claim may still wait.
        self._handed: list[str] = []
        self._withdrawn: list[str] = []
        # Claims found waiting on disk (sorted): kept until each is linked or the next
        # set of waiting claims replaces them, never passed by a later version.
        self._reserved: list[str] = []

    @property
    def handed(self) -> list[str]:
        """The names handed out and not linked, given back or passed yet (sorted, a copy)."""
        return list(self._handed)

    def next_name(self, versions: Sequence[str], now: datetime) -> str:
        """A fresh name for a version ingested at ``now`` (aware), handed out until it is
        linked or given back.

        ``versions``: the version names stored, sorted. The name sorts above every
        non-future one of them and every non-future name of the ledger, and is none of
        those names, future or not.
        """
        # A name taken back stays used (its claim may wait), and so does one handed out
        # for a version not linked yet (a group links its versions together). One dated
        # more than a day ahead (the clock was set back since) is passed over: names
        # above it would be future too, so no new version would become the latest until
        # the clock caught up, where a restart names them by the clock again.
        after = latest_name(versions, now)
        if after is not None:
            # Handed out at or below a version linked since: linked in turn, or given
            # up (a drop that waits hands out a name on every try), never waited on. A
            # claim known to wait is reserved apart, and stays: that version may go
            # future (the clock set back) and no longer hold later names above it.
            del self._handed[: bisect.bisect_right(self._handed, after)]
        for used in (self._handed, self._reserved, self._withdrawn):
            above = latest_name(used, now)
            if above is not None and (after is None or above > after):
                after = above
        name = generate_version_filename(now, after=after)
        while self._used(name, versions):  # a name passed over can lie just above the clock's
            name = generate_version_filename(now, after=name)
        bisect.insort(self._handed, name)
        return name

    def reserve(
        self, names: Iterable[str], *, replace: bool, stored: Callable[[str], bool]
    ) -> None:
        """Never hand out any of ``names``, and hand out none below those not dated more
        than a day ahead: the names of claims found waiting. With ``replace``, ``names``
        are every claim waiting now, and the names reserved before are released. A name
        that is not a version name, or that ``stored`` says is a version already, is
        ignored."""
        if replace:
            self._reserved = []
        for name in names:
            # Reserved even when handed out here: a handed-out name is dropped once a
            # version is linked above it, and a claim that waits under it must keep it
            # through that version going future (the clock set back).
            index = bisect.bisect_left(self._reserved, name)
            taken = index < len(self._reserved) and self._reserved[index] == name
            if is_version_name(name) and not taken and not stored(name):
                self._reserved.insert(index, name)

    def give_back(self, name: str) -> None:
        """``name``, handed out by :meth:`next_name`, was never used (its drop could not
        be claimed): later names may take it. A name not handed out is ignored: one
        reserved or taken back stays used."""
        _drop(self._handed, name)

    def linked(self, name: str) -> None:
        """Version ``name`` is linked: the versions keep it used from now on."""
        _drop(self._handed, name)
        _drop(self._reserved, name)

    def withdraw(self, name: str) -> None:
        """Version ``name`` was taken back: it is never given again (its claim may wait)."""
        index = bisect.bisect_left(self._withdrawn, name)
        if index == len(self._withdrawn) or self._withdrawn[index] != name:
            self._withdrawn.insert(index, name)

    def _used(self, name: str, versions: Sequence[str]) -> bool:
        return any(
            _holds(names, name)
            for names in (versions, self._handed, self._reserved, self._withdrawn)
        )
