"""Setting one drop aside in the quarantine, and what a long copy there tells the loop.

A drop that cannot be stored (invalid bytes, not a regular file, a mode we cannot read)
leaves the spool for ``rejected/`` with its reason (:meth:`Quarantine.set_aside`). This is
apart from the drop's steps (:mod:`.intake`) because it is the one step that may last
minutes: a ``rejected/`` on another filesystem takes a copy, and a runaway writer's
gigabytes take a while. During it the loop must still ping its watchdog, say in the log
why it takes no other drop, and give the copy up when a stop is asked. None of that
concerns claiming or storing a drop, and none of the drop's steps concerns it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MovedNotDurable, StorageError
from ..history import durable
from ..runtime.signals import StopFlag
from .outcomes import Abandoned, Blocked, Rejected
from .spool import Spool

__all__ = ["SetAside", "size_words"]

log = logging.getLogger("ingester.watcher")

_SAY_COPY_BYTES = 64 << 20
"""A copy into the quarantine of more data than this says so as it begins: a runaway
writer's gigabytes may take minutes, during which the loop takes no other drop."""


@dataclass
class SetAside:
    """Drops set aside in ``spool``'s quarantine.

    ``alive`` is called each time a copy into a quarantine on another filesystem has put
    another piece on disk (the loop's watchdog pings follow the copy's progress);
    ``stop`` is the loop's stop flag: once it is set, such a copy is given up at its next
    piece (:class:`Abandoned`), so that a stop never waits for the rest of it.
    """

    spool: Spool
    alive: Callable[[], None]
    stop: StopFlag

    def drop(
        self,
        path: durable.StrPath,
        name: str,
        reason: str,
        errors: list[dict[str, Any]] | None = None,
        kind: str | None = None,
        *,
        expect: tuple[int, int] | None = None,
    ) -> Rejected | Blocked | Abandoned:
        """Set ``path`` (the spool's drop ``name``) aside with ``reason``.

        ``errors``: the gate's findings, written to the reason file (default: the reason
        alone); ``kind``: the kind of rejection, for the metrics; ``expect``: the
        ``(st_dev, st_ino)`` of what was judged (see :meth:`Quarantine.set_aside`).

        Returns :class:`Rejected` (set aside; a move that may not survive a crash is
        logged, and counts as set aside), :class:`Blocked` when it cannot be set aside
        (a problem of this drop or of ``rejected/``, never raised: the valid drops
        behind it go on), or :class:`Abandoned` when a stop was asked amid its copy into
        the quarantine (see :meth:`_copy_progress`): ``path`` is then left as it was.
        """
        try:
            where = self.spool.rejected.set_aside(
                Path(path),
                name,
                reason,
                errors or [{"msg": reason}],
                expect=expect,
                progress=self._copy_progress(name),
            )
        except MovedNotDurable as exc:
            # It is in rejected/ (so nothing is left to retry), but a crash may put it
            # back in the spool, where it would be judged and set aside again.
            where = exc.moved_to
            log.error(
                "%s is set aside as %s, but a crash may put it back in the spool: %s",
                name,
                where,
                exc,
            )
        except StorageError as exc:
            # A problem of this drop (or of the rejected folder), not of the history:
            # it waits on its own, and the valid drops behind it go on.
            return Blocked(name, "quarantine", exc, reason)
        except durable.CopyAbandoned as exc:
            # Nothing failed: the drop is as it was before the copy began, to be judged
            # again at the next start.
            return Abandoned(name, self.spool.rejected_dir, exc.done, exc.total)
        return Rejected(name, reason, where, kind)

    def _copy_progress(self, name: str) -> durable.CopyProgress:
        """What a copy of drop ``name`` into the quarantine on another filesystem tells:
        its start, said in the log when it is large (the loop takes nothing else until it
        ends), then each piece on disk, passed on to :attr:`alive`.

        Once :attr:`stop` is set, the next word of progress (its start included) gives
        the copy up (raises :class:`~ingester.history.durable.CopyAbandoned`): a runaway
        writer's gigabytes would hold a stop for minutes, past systemd's
        ``TimeoutStopSec``, and the drop loses nothing by waiting in the spool. Even a
        copy past its counted ``total`` is given up: a file still growing has no end to
        wait for, and nothing is named before the last word of progress.
        """

        def progress(done: int, total: int) -> None:
            if self.stop.is_set():
                raise durable.CopyAbandoned(done, total)
            if done:
                self.alive()
            elif total > _SAY_COPY_BYTES:
                log.info(
                    "setting aside %s (%s) across filesystems, into %s",
                    name,
                    size_words(total),
                    self.spool.rejected_dir,
                )

        return progress


def size_words(size: int) -> str:
    """A large size (bytes) as an operator reads it: ``80.0 MiB``, ``3.2 GiB``."""
    if size >= 1 << 30:
        return f"{size / (1 << 30):.1f} GiB"
    return f"{size / (1 << 20):.1f} MiB"
