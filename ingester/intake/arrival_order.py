"""Arrival order: a newer drop is never stored before an older one that still settles.

SPEC: drops are stored in the order they arrived, oldest mtime first, then name.
:class:`ArrivalOrder` keeps the drops found waiting to settle (each with its mtime and
when it was first found so, the oldest at the top of a heap) and the drops that wait
behind one of them; it answers, for a drop found complete and valid, which older drop it
must wait for, if any. Only a drop that waits to settle holds others back, and for
:func:`hold_limit` at most, counted either way: from when the older drop was first found
waiting, and from when the newer one first waited. The group pipeline
(:mod:`.groups`) tells it what each look at a drop found and asks it before each claim;
it holds no drop's place in the backlog, only what the order needs.
"""

from __future__ import annotations

import heapq
import logging
import time

from .outcomes import Behind, Deferred, Outcome

__all__ = ["ArrivalOrder", "hold_limit"]

log = logging.getLogger("ingester.watcher")


def hold_limit(settle: float) -> float:
    """Seconds an older drop that waits to settle may hold newer drops back, counted from
    when it was first found waiting: three looks at it (``settle`` seconds each), and
    five seconds at the least, as long as a start waits for drops settling before it
    says READY. One that has not settled by then (a writer's clock far ahead, a file
    rewritten in place with its mtime kept) no longer holds the spool up."""
    return max(5.0, 3 * settle)


class ArrivalOrder:
    """The drops that wait to settle, oldest first, and which newer drops wait for them.

    ``settle`` (seconds) is the watcher's: it sets :func:`hold_limit`. Used from the
    loop's thread only.
    """

    def __init__(self, settle: float) -> None:
        self.hold_limit = hold_limit(settle)
        # Drops found waiting to settle: name -> (its mtime in ns, and the monotonic time
        # it was first found so). A newer drop is never stored before one of them.
        self._settling: dict[str, tuple[int, float]] = {}
        self._oldest: list[tuple[int, str]] = []  # a heap of _settling's (mtime, name)
        self._overdue: set[str] = set()  # settling past hold_limit: said once, held none
        # When each drop first waited behind an older one: it waits no longer than
        # hold_limit in all, however many older drops take their turn to settle.
        self._behind_since: dict[str, float] = {}

    def looked_at(self, name: str, outcome: Outcome) -> None:
        """After a look at drop ``name`` that came to ``outcome``: whether it now waits
        to settle (a :class:`Deferred` with its ``settling`` mtime), and whether it waits
        behind an older drop (:class:`Behind`: its wait is counted from the first)."""
        mtime = outcome.settling if isinstance(outcome, Deferred) else None
        if mtime is None:
            self.settled(name)
        else:
            seen = self._settling.get(name)
            if seen is None or seen[0] != mtime:
                self._settling[name] = (mtime, time.monotonic() if seen is None else seen[1])
                heapq.heappush(self._oldest, (mtime, name))
        if isinstance(outcome, Behind):
            self._behind_since.setdefault(name, time.monotonic())
        else:
            self._behind_since.pop(name, None)

    def settled(self, name: str) -> None:
        """Drop ``name`` no longer waits to settle (a close-write said it complete, or a
        look found it otherwise): it holds no newer drop back."""
        if self._settling.pop(name, None) is not None and not self._settling:
            self._oldest.clear()
        self._overdue.discard(name)

    def waits_for(self, name: str, mtime_ns: int, now: float) -> str | None:
        """The older drop that drop ``name`` (found complete and valid, its mtime
        ``mtime_ns``) must wait for at monotonic time ``now``, else None.

        Only a drop that waits to settle holds others back, and for :func:`hold_limit`
        at most: one that waits for its writer (open for writing, made in place, not
        valid yet) has not arrived, and one that waits after a failure of its own (a
        claim refused, the quarantine) must not stall the spool for its backoff. And a
        drop waits :func:`hold_limit` at most in all: one dated ahead (its writer's
        clock) is newer than every drop for as long, and a stream of them settling one
        after another would hold it that long. Costs nothing while no drop settles,
        and a look at the oldest one while some do.
        """
        if not self._settling:
            return None
        since = self._behind_since.get(name)
        if since is not None and now - since >= self.hold_limit:
            log.info(
                "%s has waited %.0f s for older drops to settle; it no longer waits for them",
                name,
                self.hold_limit,
            )
            return None
        oldest = self._oldest_settling(now)
        if oldest is None or oldest[1] == name or oldest >= (mtime_ns, name):
            return None
        log.debug("%s waits for %s, older, to settle", name, oldest[1])
        return oldest[1]

    def _oldest_settling(self, now: float) -> tuple[int, str] | None:
        """The oldest drop that waits to settle and still holds newer ones back, as
        ``(mtime_ns, name)``; None when there is none. Entries of drops looked at since
        (or settled, or gone) are dropped from the heap as they come to its top, and so
        is a drop that no longer holds others (said once in the log)."""
        heap = self._oldest
        while heap:
            mtime, name = heap[0]
            entry = self._settling.get(name)
            if entry is not None and entry[0] == mtime:
                if now - entry[1] < self.hold_limit:
                    return mtime, name
                if name not in self._overdue:
                    self._overdue.add(name)
                    log.info(
                        "%s has not settled within %.0f s; newer drops no longer wait for it",
                        name,
                        self.hold_limit,
                    )
            heapq.heappop(heap)
        return None
