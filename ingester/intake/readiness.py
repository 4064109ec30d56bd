"""Is this drop complete? The rules that decide when a spool entry may be taken.

A drop renamed into the spool, or closed after writing (inotify's close-write), is
complete. Anything else (created in place, found by a scan, seen by polling) is judged
here:

* someone has it open for writing (a read lease is refused): not yet; it is looked at
  again at its close-write, and after the settle time (a second at the least) too, as
  that close-write may never come to the spool (a file hard-linked in has it under its
  writer's name, elsewhere; the polling observer reports no close);
* we may not ask (another user's file, no CAP_LEASE): a file inotify saw created in
  place is taken to be in the writing; anything else must stay unchanged for the
  settle time, and for much longer (``patient``) when inotify saw it created in place;
* otherwise it is complete once its mtime is ``settle`` seconds old, or once its size
  and mtime have not changed for ``settle`` seconds (a writer's clock may be ahead).

An invalid drop judged by stability alone may be a slow writer pausing mid-file, so it
waits (up to :data:`UNFINISHED_PATIENCE` seconds unchanged) before it is rejected.
A regular file with several names (hard-linked in, or a version's own file under a
second name) passes the same checks; whether it is a version's is asked later
(:mod:`.second_names`). All times are seconds; deadlines are on the monotonic clock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import time
from dataclasses import dataclass

from ..errors import StorageError
from ..history.durable import READ_NOFOLLOW
from .arrivals import How

__all__ = [
    "UNFINISHED_PATIENCE",
    "Folder",
    "Gone",
    "Readiness",
    "Ready",
    "Wait",
    "open_for_writing",
    "writers_present",
]

log = logging.getLogger("ingester.watcher")

UNFINISHED_PATIENCE = 300.0
"""Seconds an invalid drop that may still be written must stay unchanged to be rejected."""
LONG_AGO = 86400.0
"""Seconds since its mtime after which an invalid drop is no writer's pause, whatever this
process saw of it: a day, as no clock a writer or a file server keeps is that far off
(five minutes, the patience, is: the mtime is the writer's clock, not ours)."""
_UNFINISHED_RECHECK = 5.0  # seconds between looks at such a drop
_OPEN_RECHECK = 1.0  # seconds, at the least, between looks at a drop open for writing


def writers_present(fd: int) -> bool | None:
    """Whether anyone has the open file ``fd`` open for writing; None when we may not ask.

    A read lease (``F_SETLEASE``) is refused with EAGAIN while the file is open for
    writing anywhere. Leases need the file's owner or CAP_LEASE.
    """
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return True if exc.errno in (errno.EAGAIN, errno.EBUSY) else None
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


def open_for_writing(path: str | os.PathLike[str]) -> bool | None:
    """:func:`writers_present` for ``path`` (never following a link); None if unopenable."""
    try:
        fd = os.open(path, READ_NOFOLLOW)
    except OSError:
        return None
    try:
        return writers_present(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Ready:
    """Take it now. ``may_be_open``: judged by stability alone (its stat then)."""

    may_be_open: os.stat_result | None = None


@dataclass(frozen=True)
class Wait:
    """Not yet: look again at ``until`` (monotonic), or when an event says so (None)."""

    until: float | None


@dataclass(frozen=True)
class Gone:
    """No entry of that name any more."""


@dataclass(frozen=True)
class Folder:
    """A folder with a drop's name."""


class Readiness:
    """What is remembered per drop name to decide whether it is complete.

    ``settle`` and ``rescan_interval`` are in seconds.
    """

    def __init__(self, settle: float, rescan_interval: float) -> None:
        self.settle = settle
        self.rescan_interval = rescan_interval
        self._writing: set[str] = set()  # created in place, close-write not seen yet
        self._watched: dict[str, tuple[tuple[int, int, int], float]] = {}  # settle checks
        self._unfinished: dict[str, tuple[tuple[int, int, int], float]] = {}
        # Found open for writing at the last look: they wait for their writer, not to
        # settle, and hold neither READY nor a --once run's end back.
        self._open: set[str] = set()
        # Drops known complete, read and judged but not taken yet (held behind an older
        # drop, or put back after a failure): (ino, size, mtime_ns) as judged. The event
        # that said complete vouches for that file only, not for what a writer may make
        # of the name while it waits.
        self._judged: dict[str, tuple[int, int, int]] = {}

    def judged(self, name: str, seen: tuple[int, int, int]) -> None:
        """``name`` was read and judged as ``seen`` (ino, size, mtime in ns): at a later
        look, an event's word that it is complete holds only while it is still so."""
        self._judged[name] = seen

    def completed(self, name: str) -> None:
        """An event said ``name`` is complete (renamed in, or closed after writing)."""
        self._writing.discard(name)
        self._watched.pop(name, None)
        self._open.discard(name)
        self._judged.pop(name, None)

    def forget(self, name: str) -> None:
        """Drop what is remembered about a name that is gone or taken."""
        self._unfinished.pop(name, None)
        self._watched.pop(name, None)
        self._writing.discard(name)
        self._open.discard(name)
        self._judged.pop(name, None)

    def is_open(self, name: str) -> bool:
        """Whether ``name`` was open for writing when last looked at."""
        return name in self._open

    def is_unfinished(self, name: str) -> bool:
        """Whether ``name`` is an invalid drop waiting to be finished by its writer."""
        return name in self._unfinished

    def settling(self, name: str) -> int | None:
        """The mtime (ns since the epoch) of ``name`` as last seen, when it waits only to
        settle (to stay unchanged, or for its mtime to age, up to ``settle`` seconds);
        None when it waits for anything else (a writer that has it open or created it
        in place, an invalid drop's writer) or for nothing."""
        watched = self._watched.get(name)
        if watched is None or name in self._open or name in self._writing:
            return None
        if name in self._unfinished:
            return None
        return watched[0][2]

    def check(self, path: str | os.PathLike[str], how: How) -> Ready | Wait | Gone | Folder:
        """Whether the drop at ``path`` may be taken now.

        Raises :class:`StorageError` when it cannot even be looked at.
        """
        name = os.path.basename(path)
        judged = self._judged.pop(name, None)
        if how is How.COMPLETE and judged is None:
            return Ready()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return Gone()
        except OSError as exc:
            raise StorageError("stat drop", path, exc) from exc
        if stat.S_ISDIR(st.st_mode):
            return Folder()
        if not stat.S_ISREG(st.st_mode):
            return Ready()  # judged (and rejected) as it is, never opened
        if how is How.COMPLETE and judged == (st.st_ino, st.st_size, st.st_mtime_ns):
            return Ready()
        # Otherwise a drop known complete was written again (or replaced) while it
        # waited, with no close-write since: judged as one found by a scan.
        # A hard link makes IN_CREATE and no close-write here (its writer's name is
        # elsewhere): its creation says nothing of a writer.
        linked = st.st_nlink > 1
        busy = open_for_writing(path)
        self._open.discard(name)
        if busy:
            self._open.add(name)
            # Still open for writing: its close-write may never come here. A drop linked
            # in has it under its writer's name elsewhere (even once that name is gone
            # and one link is left), and the polling observer reports no close at all.
            # So it is looked at again after the settle time, as well as at any event.
            if not linked:
                self._writing.add(name)
            return Wait(time.monotonic() + max(self.settle, _OPEN_RECHECK))
        if busy is None and how is How.CREATED and not linked:
            self._writing.add(name)
            return Wait(None)
        may_be_open = None
        if busy is None:
            # No lease to ask: judge by stability alone, never by the mtime's age, and
            # for much longer when inotify saw it created in place.
            patient = name in self._writing
            wait = self._settled(name, st, stable_only=True, patient=patient)
            if wait is not None:
                return Wait(wait)
            may_be_open = st
        self._writing.discard(name)
        wait = self._settled(name, st)
        if wait is not None:
            return Wait(wait)
        return Ready(may_be_open)

    def _settled(
        self, name: str, st: os.stat_result, *, stable_only: bool = False, patient: bool = False
    ) -> float | None:
        """None when the file is done being written; else when to look again.

        Done when its mtime is ``settle`` seconds old, or when its size and mtime have
        not changed since we first looked, ``settle`` seconds ago. Otherwise look again
        in ``settle`` seconds, never later.
        """
        now = time.monotonic()
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        first = self._watched.get(name)
        age = time.time() - st.st_mtime_ns / 1e9
        window = self.settle
        if patient:
            window = max(10 * self.settle, self.rescan_interval)
        if (not stable_only and window <= age) or (
            first is not None and first[0] == seen and now - first[1] >= window
        ):
            # What was seen is kept until the drop is taken (forget): one found settled
            # but held behind an older drop is settled still at its next look, unless
            # it changed meanwhile, and never made to wait the whole window again.
            return None
        if first is None or first[0] != seen:
            self._watched[name] = (seen, now)
        wait = window - age if 0 <= age < window and not stable_only else window
        return now + max(0.01, min(wait, window))

    def still_being_written(self, name: str, st: os.stat_result) -> float | None:
        """For an invalid drop judged by stability alone: when to look again, or None.

        A writer that started before we watched (no close-write tells us of its start),
        or pauses mid-file, leaves a partial file that looks stable. Rejecting it would
        move an inode the writer still holds into quarantine, where it finishes writing.
        So it waits: for its close-write (then it is judged as complete), or until it
        has been unchanged for :data:`UNFINISHED_PATIENCE` (None: reject it now),
        counted from when this process first saw it: the mtime is the writer's clock
        (or a file server's), which may be minutes off ours. Only a file last written
        more than :data:`LONG_AGO` before is rejected at once, so that a drop left for
        days is not waited for again by every run (``watch --once`` above all, which
        never waits that long).
        """
        if time.time() - st.st_mtime_ns / 1e9 >= LONG_AGO:
            self._unfinished.pop(name, None)
            return None
        seen = (st.st_ino, st.st_size, st.st_mtime_ns)
        now = time.monotonic()
        first = self._unfinished.get(name)
        if first is None or first[0] != seen:
            if first is None:
                log.info(
                    "%s is not valid yet and may still be written; waiting up to %.0f s "
                    "for it to be closed or finished",
                    name,
                    UNFINISHED_PATIENCE,
                )
            first = self._unfinished[name] = (seen, now)
        remaining = UNFINISHED_PATIENCE - (now - first[1])
        if remaining <= 0:
            return None
        return now + min(remaining, _UNFINISHED_RECHECK)
