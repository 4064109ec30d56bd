"""Whether a watcher will store what ``serve`` drops, and what waits in the spool.

``serve`` hands every POSTed snapshot to the spool; only a watcher turns drops into
versions. Without one, a drop waits, durable but not stored: a 2xx must then say so,
``/api/health`` must name the waiting drops, and the log must keep saying it. This
module answers the two questions behind that:

* is a watcher running? In ``serve --watch`` the one in this process answers; otherwise
  the locks do: the history's held by a process that noted a watcher's purpose in it
  (``watch`` or ``serve --watch``), and this spool's held by the same process (a
  watcher reading another spool never takes what ``serve`` drops here). Both are read
  from the kernel's lock table, never by taking a lock, which could make a starting
  watcher fail. Where the lock table is hidden the answer is ``None``: cannot tell.
* what waits in the spool, and since when (the oldest drop's mtime)?
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import describe_os_error
from ..history.lock import HistoryHolder, history_holder, lock_table_readable
from ..intake.spool import Spool
from ..intake.unstored import unstored_for, watcher_started

__all__ = ["BacklogWarnings", "SpoolState", "WatcherProbe", "until_watched", "why_unwatched"]

log = logging.getLogger("ingester.serve")

WARN_EVERY_S = 60.0
"""Least time between two "drops wait and no watcher runs" warnings in the log."""


@dataclass(frozen=True)
class SpoolState:
    """The spool and the watcher at one moment.

    ``waiting``: drops in the spool (``None`` when the spool cannot be listed);
    ``oldest_s``: seconds the oldest has waited (by its mtime; ``None`` when none wait);
    ``watcher``: a watcher runs (``None``: cannot tell); ``pid``: its process, if known;
    ``in_process``: it is this process's own (``serve --watch``); ``elsewhere``: the
    holder of the history that does not hold this spool's lock (a watcher of another
    spool, or a holder that left no note), if that is why ``watcher`` is false;
    ``unstored_s``: seconds the oldest has waited while the running watcher ran
    (:func:`~ingester.intake.unstored.unstored_for`; ``None`` when no watcher runs or
    none wait).
    """

    waiting: int | None
    oldest_s: float | None
    watcher: bool | None
    pid: int | None
    in_process: bool
    elsewhere: HistoryHolder | None = None
    unstored_s: float | None = None

    @property
    def unattended(self) -> bool:
        """Drops wait and it is known that no watcher will take them."""
        return self.watcher is False and bool(self.waiting)

    def why_unwatched(self) -> str:
        """Why no watcher takes these drops (:func:`why_unwatched`)."""
        return why_unwatched(self.elsewhere)

    def until(self) -> str:
        """What must happen for them to be stored (:func:`until_watched`)."""
        return until_watched(self.elsewhere)

    def drops_words(self) -> str:
        """``"3 drops wait in the spool (the oldest for 42 s)"``, for logs and reasons."""
        n = self.waiting or 0
        words = f"{n} drop{'' if n == 1 else 's'} {'waits' if n == 1 else 'wait'} in the spool"
        if self.oldest_s is not None:
            words += f" (the oldest for {self.oldest_s:.0f} s)"
        return words


def why_unwatched(elsewhere: HistoryHolder | None) -> str:
    """Why no watcher takes what ``serve`` drops, for logs, reasons and answers;
    ``elsewhere``: the history's holder when it does not hold this spool's lock."""
    if elsewhere is None:
        return "no watcher holds the history"
    if elsewhere.purpose is None:
        # Nothing says it is a watcher, nor of which spool: say only what the locks show.
        return (
            f"pid {elsewhere.pid} holds the history (it left no note saying what it is) "
            "but not this spool's lock"
        )
    return f"the watcher holding the history (pid {elsewhere.pid}) reads another spool"


def until_watched(elsewhere: HistoryHolder | None) -> str:
    """What must happen for a waiting drop to be stored: ``"'ingester watch' runs"``,
    or (``elsewhere`` given) a watcher of this spool."""
    if elsewhere is not None:
        return "a watcher reads this spool (give it and serve the same --spool-dir)"
    return "'ingester watch' runs"


class WatcherProbe:
    """Answers "does a watcher run, and what waits?" for one history and spool.

    ``in_process``: the state of a watcher run by this process (``serve --watch``), or
    ``None`` to look at the history lock.
    """

    def __init__(
        self,
        lock_path: Path,
        spool: Spool,
        in_process: Callable[[], bool] | None = None,
    ) -> None:
        self.lock_path = lock_path
        self.spool = spool
        self.in_process = in_process
        # Why the last look could not tell whether a watcher runs, for the log.
        self.unknown_why: str | None = None

    def watcher(self) -> tuple[bool | None, int | None]:
        """``(running, pid)``; ``running`` is ``None`` when it cannot be told."""
        running, pid, _elsewhere = self.look()
        return running, pid

    def look(self) -> tuple[bool | None, int | None, HistoryHolder | None]:
        """``(running, pid, elsewhere)``: as :meth:`watcher`, and the holder of the
        history when it is a watcher (or left no note) but does not hold this spool's
        lock (so it never takes what is dropped here), or ``None``."""
        if self.in_process is not None:
            return self.in_process(), os.getpid(), None
        self.unknown_why = None
        try:
            holder = history_holder(self.lock_path, self.spool.lock_path)
        except OSError as exc:
            # A lock file that cannot be looked at: its holder cannot be told.
            self.unknown_why = describe_os_error(exc)
            return None, None, None
        if holder is None:
            if lock_table_readable():
                return False, None, None
            self.unknown_why = "the kernel's lock table is not readable here"
            return None, None, None
        if holder.watches_spool is not False or not holder.watcher:
            return holder.watches_spool, holder.pid, None
        return False, holder.pid, holder

    def state(self) -> SpoolState:
        """The spool and the watcher now (a listing of the spool, a read of the lock table)."""
        running, pid, elsewhere = self.look()
        mine = self.in_process is not None
        try:
            # A folder named like a drop is never taken: it does not wait.
            drops = [c for c in self.spool.scan() if not stat.S_ISDIR(c.mode)]
        except OSError:
            return SpoolState(None, None, running, pid, mine, elsewhere)
        oldest = unstored = None
        if drops:
            now = time.time()
            first = min(d.mtime_ns for d in drops) / 1e9
            oldest = max(0.0, now - first)
            if running:
                unstored = unstored_for(first, watcher_started(self.lock_path), now)
        return SpoolState(len(drops), oldest, running, pid, mine, elsewhere, unstored)


class BacklogWarnings:
    """The log's side of "never a silent 2xx": a warning at start, then while drops wait.

    :meth:`check` is called at start and then every few seconds; it logs when drops wait
    and no watcher runs, at most once per ``every`` seconds, and once more when a watcher
    has taken over.
    """

    def __init__(
        self, probe: WatcherProbe, every: float = WARN_EVERY_S, *, refuses_posts: bool = False
    ) -> None:
        self.probe = probe
        self.every = every
        # --require-watcher: a POST is answered 503 while no watcher runs, never spooled.
        self.refuses_posts = refuses_posts
        self._last = -float("inf")
        self._warned = False

    def at_start(self) -> SpoolState:
        """Log what a starting server must say about the watcher; the state found."""
        state = self.probe.state()
        if state.in_process:
            return state
        if state.watcher is None:
            log.warning(
                "serve: cannot tell whether a watcher runs (%s); POSTed snapshots are stored "
                "only while one does",
                self.probe.unknown_why or "its lock cannot be looked at",
            )
        elif not state.watcher:
            waiting = f"; {state.drops_words()}" if state.waiting else ""
            if self.refuses_posts:
                what = (
                    "POSTs are answered 503 and nothing is dropped (--require-watcher) "
                    f"until {state.until()}"
                )
            else:
                what = f"POSTed snapshots wait in the spool until {state.until()}"
            if state.elsewhere is not None:
                if state.elsewhere.purpose is None:
                    where = f" ({self.probe.spool.dir})"
                else:
                    where = (
                        f", not {self.probe.spool.dir} (its --spool-dir differs from this server's)"
                    )
                log.warning(
                    "serve: %s%s: %s%s",
                    state.why_unwatched(),
                    where,
                    what,
                    waiting,
                    extra={"event": "no-watcher"},
                )
            else:
                log.warning(
                    "serve: no watcher holds the history (%s): %s "
                    "(or run 'ingester serve --watch')%s",
                    self.probe.lock_path,
                    what,
                    waiting,
                    extra={"event": "no-watcher"},
                )
            self._last = time.monotonic()
            self._warned = True
        return state

    def check(self) -> None:
        """Warn again (rate-limited) while drops wait with no watcher."""
        state = self.probe.state()
        now = time.monotonic()
        if state.unattended:
            if now - self._last >= self.every:
                self._last = now
                self._warned = True
                log.warning(
                    "serve: %s and %s: they are not stored until %s%s",
                    state.drops_words(),
                    state.why_unwatched(),
                    state.until(),
                    "; new POSTs are answered 503 (--require-watcher)"
                    if self.refuses_posts
                    else "",
                    extra={"event": "no-watcher", "waiting": state.waiting},
                )
        elif self._warned and state.watcher:
            self._warned = False
            log.info("serve: a watcher holds the history again (pid %s)", state.pid)
