"""The watcher's rounds between groups: the caches, recovery, cleanup, held deletions.

Nothing here is on the ingest path. The latest link and ``_metadata.json`` are caches
of the version files; recovery finishes what a crash or a failed step left in
``.claimed/``; retention deletes old versions and quarantined drops. Each backs off on
its own failures while drops go on being stored, and a wall clock that jumped ahead
holds automatic deletions back (``docs/design.md``, "Failures").

:class:`Maintenance` keeps what is due (the dirty flags, the backoffs) for one
:class:`~ingester.intake.watcher.Watcher`, which tells it what happened and when to run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from ..clock import Backoff, ClockJump
from ..errors import StorageError, describe_os_error
from ..history.cleanup import CleanupIncomplete
from ..history.store import HistoryStore, InitReport
from ..settings.resolved import Settings
from .housekeeping import PRUNE_EVERY, RejectedRetention
from .metrics import NO_METRICS, Metrics
from .spool import Spool

__all__ = ["MAINTENANCE_EVERY", "FaultLines", "Maintenance", "fault_cause"]

log = logging.getLogger("ingester.watcher")

MAINTENANCE_EVERY = 1.0  # seconds between cleanup/metadata rounds while drops keep coming


ROUND_FAILED = "cannot finish claims, clean up or write the metadata"
"""What a failed round says before its error (recovery, cleanup and the metadata are one
round, and the metadata's write at a start is its first try)."""

STUCK_SAY_EVERY = 3600.0
"""Seconds between two ERROR lines for the same expired versions retention cannot delete."""

SAY_AGAIN_EVERY = 600.0
"""Seconds between two ERROR lines for one fault that stands unchanged once its retries
wait their longest (each try between is logged at DEBUG)."""

Cause = tuple[int | None, str, int | str]
"""What makes two failures one fault (see :func:`fault_cause`)."""


def fault_cause(exc: StorageError) -> Cause:
    """The cause of a failed step as a fault is told apart: the errno, the kernel's
    words (which name the attribute and its folder when one refused it) and the
    filesystem it struck on (its folder where that cannot be told); not the file, as
    each try writes a temp file or version of a name of its own. A full or read-only
    filesystem is one fault for the versions, the metadata and the latest link on it."""
    folder = exc.path.parent
    where: int | str
    try:
        where = os.stat(folder).st_dev
    except OSError:
        where = os.fspath(folder)
    return (exc.errno, exc.strerror or "", where)


class FaultLines:
    """The log lines of one fault retried on a backoff, so that a fault that lasts for
    hours does not bury the log: an ERROR line for each try while the waits grow; once
    they wait their longest (``longest`` seconds), the same cause again only every
    :data:`SAY_AGAIN_EVERY` seconds, counting the tries between (each logged at DEBUG);
    an ERROR at once for another cause; and one INFO line once it heals, saying for how
    long it failed and how often (``healed``: what works again, e.g. ``"storing drops"``).

    Times are monotonic seconds. Every try is counted here, whether said or not; the
    metrics count each one too (the caller's part).
    """

    def __init__(self, healed: str, longest: float) -> None:
        self.healed_words = healed
        self.longest = longest
        self.since: float | None = None  # the first failure of the fault standing
        self.tries = 0
        self.cause: Cause | None = None  # the cause last said at ERROR
        self._said_at = 0.0
        self._last_wait = 0.0
        self._unsaid = 0  # tries logged at DEBUG since the last ERROR line

    @property
    def failing(self) -> bool:
        """Whether a fault stands (failed, and not healed since)."""
        return self.since is not None

    def failed(self, what: str, then: str, cause: Cause, wait: float, now: float) -> None:
        """One failed try: ``what`` failed (its error's words included), ``then`` says
        what follows (its retry in ``wait`` seconds); logged as :class:`FaultLines` says."""
        self.tries += 1
        if self.since is None:
            self.since = now
        settled = wait >= self.longest and self._last_wait >= self.longest
        self._last_wait = wait
        if cause == self.cause and settled and now - self._said_at < SAY_AGAIN_EVERY:
            self._unsaid += 1
            log.debug("%s; %s", what, then)
            return
        note = ""
        if self._unsaid:
            note = (
                f" (failing for {now - self.since:.0f} s, {self.tries} tries; the "
                f"{self._unsaid} since it was last said are logged at DEBUG)"
            )
        log.error("%s%s; %s", what, note, then)
        self.cause, self._said_at, self._unsaid = cause, now, 0

    def failed_unsaid(self, what: str, then: str, now: float) -> None:
        """One failed try that another fault's line says already (the same cause): at
        DEBUG, counted, and no line when it heals unless one was said."""
        self.tries += 1
        if self.since is None:
            self.since = now
        log.debug("%s; %s (the fault the drops' store fails for)", what, then)

    def healed(self, now: float) -> None:
        """A try went through: one INFO line if the fault was said, and the count ends."""
        if self.since is None:
            return
        if self.cause is not None:
            log.info(
                "%s again after %.0f s (%d failed tr%s)",
                self.healed_words,
                now - self.since,
                self.tries,
                "y" if self.tries == 1 else "ies",
                extra={"event": "healed", "seconds": round(now - self.since), "tries": self.tries},
            )
        self.since, self.tries, self.cause = None, 0, None
        self._said_at = self._last_wait = 0.0
        self._unsaid = 0


class Maintenance:
    """The latest link, cleanup and metadata: once per group of drops, not once per drop.

    ``recover`` finishes the claims a crash or a failure left (the watcher applies each
    outcome); ``clock_jump`` is the watcher's detector, shared so a test can move it.
    ``metrics`` counts each failed try of the latest link and of a round.

    The lines of each fault (the drops' store, which :class:`~.groups.Backlog` reports
    here, the latest link, and a round) are :class:`FaultLines`': the latest link or a
    round that fails for the cause the drops' store fails for is that fault, not a
    second one, and is said by the store's line alone.
    """

    def __init__(
        self,
        store: HistoryStore,
        spool: Spool,
        settings: Settings,
        retry_max: float,
        recover: Callable[[], None],
        clock_jump: ClockJump,
        *,
        retries: bool = True,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.store = store
        self.metrics = metrics
        # False for a run that ends after one pass (watch --once): a failure is then
        # left for the next start, said once, not promised a retry that never comes.
        self.retries = retries
        self._said: set[str] = set()
        self.spool = spool
        self.clock_jump = clock_jump
        self._recover = recover
        self._rejected_retention = RejectedRetention(
            settings.rejected_dir, settings.rejected_retention_days
        )
        self.cache_backoff = Backoff(retry_max)  # the latest link
        self._backoff = Backoff(retry_max)  # recovery, cleanup and the metadata
        self.store_lines = FaultLines("storing drops", retry_max)  # the Backlog's failures
        self.latest_lines = FaultLines("refreshing the latest link", retry_max)
        self.round_lines = FaultLines(
            "finishing claims, cleaning up and writing the metadata", retry_max
        )
        self.latest_dirty = False
        self.meta_dirty = True
        self.sweep_needed = False
        self._last_round = 0.0
        self._repairing: dict[str, str] = {}  # a cache found wrong while running: why
        self.holding = False  # automatic deletions held back after a wall-clock jump
        self._next_writer_sweep = 0.0  # monotonic
        self._stuck: tuple[str, ...] = ()  # expired versions retention could not delete
        self._stuck_said = 0.0  # monotonic, when they were last logged

    def started(self, report: InitReport) -> None:
        """Say what the store's start found and repaired; a cache it could not write waits."""
        if report.removed_temps:
            log.info("removed %d stale temp file(s)", len(report.removed_temps))
        if report.metadata_created:
            log.info("new history in %s", self.store.history_dir)
        if report.metadata_rebuilt:
            log.warning("metadata rebuilt from a scan (it was %s)", report.metadata_rebuilt)
        if report.latest_repaired:
            log.warning("latest link repaired (%s)", report.latest_repaired)
        # Caches never gate ingest. A start's failed write is its cache's first failed
        # try: said as a round says it, and retried when its backoff says, not again at
        # once by the round after the backlog (one cause, one line).
        if report.latest_error is not None:
            self.latest_failed(report.latest_error)
        if report.metadata_error is not None:
            self.meta_dirty = True
            self._round_failed(report.metadata_error, time.monotonic())

    def run(self, now: float, *, force: bool, busy: bool) -> None:
        """One round if due at ``now`` (monotonic); ``busy``: drops are waiting.

        ``force`` runs it even while drops keep coming; a cache that failed is still
        tried again only when its backoff is due, except in the last round (once
        ``retries`` is False), whose failure waits for the next start.
        """
        last = force and not self.retries
        if self.latest_dirty and (last or self.cache_backoff.due(now)):
            try:
                self.store.update_latest()
                self.latest_ok()
            except StorageError as exc:
                self.latest_failed(exc)
        self._rejected_retention.run_if_due()  # at most every 10 min; logs its own errors
        self.sweep_writer_temps(now)
        if not self.meta_dirty:
            return
        if not (last or self._backoff.due(now)):
            return
        if not force and busy and now - self._last_round < MAINTENANCE_EVERY:
            return
        if self.sweep_needed:
            self.sweep_needed = False
            try:
                removed = self.store.remove_stale_temps() + self.spool.sweep_temps()
            except StorageError as exc:
                log.warning("cannot remove temp files left by a failed step: %s", exc)
            else:
                if removed:
                    log.info("removed %d temp file(s) left by a failed step", len(removed))
        try:
            self._recover()
            self.store.cleanup_old_versions(hold_deletions=self.clock_jumped())
            self._metadata_written()
            self._stuck = ()
        except CleanupIncomplete as exc:
            # Everything else went through, the metadata included: the versions that
            # would not go are tried with the next drops, not on a retry timer, and said
            # again only when they change or an hour on (an ERROR every few seconds for
            # one immutable file would bury the log).
            self._metadata_written()
            self._say_stuck(exc, now)
        except StorageError as exc:
            # The metadata and retention are not on the ingest path: they back off on
            # their own, and drops go on being stored meanwhile.
            self._round_failed(exc, now)
            return
        self._backoff.succeeded()
        self.round_lines.healed(now)
        self.meta_dirty = False
        self._last_round = now

    def _round_failed(self, exc: StorageError, now: float) -> None:
        """A round (claims, cleanup, metadata) failed at ``now`` (monotonic): counted,
        backed off, and said unless the drops' store fails for the same cause."""
        self.metrics.upkeep_failed("metadata")
        retry = self._backoff.failed()
        if not self.retries:
            self._left(ROUND_FAILED, exc)
            return
        self._upkeep_said(self.round_lines, f"{ROUND_FAILED}: {exc}", exc, retry, now)

    def _metadata_written(self) -> None:
        problem = self._repairing.pop("metadata", None)
        if problem is not None:
            log.warning("metadata rebuilt from a scan (it was %s)", problem)

    def _say_stuck(self, exc: CleanupIncomplete, now: float) -> None:
        names = tuple(sorted(f.path.name for f in exc.failures))
        if names == self._stuck and now - self._stuck_said < STUCK_SAY_EVERY:
            return
        self._stuck, self._stuck_said = names, now
        if not self.retries:
            self._left("retention", exc)
            return
        log.error(
            "retention: %s; tried again with the next drops (said again when it changes, "
            "or in an hour)",
            exc,
        )

    def sweep_writer_temps(self, now: float) -> None:
        """At start, then every 10 minutes: remove what killed writers left in the
        spool's ``tmp/`` (see :meth:`Spool.sweep_writer_temps`). ``now`` is monotonic.

        Ages are read from the wall clock, so nothing is removed while it stands
        jumped ahead (a fresh temp file would look old). Never raises: what cannot be
        removed is logged, one line a pass, and tried again at the next.
        """
        if now < self._next_writer_sweep:
            return
        self._next_writer_sweep = now + PRUNE_EVERY
        if self.clock_jumped():
            return
        try:
            removed, errors = self.spool.sweep_writer_temps(time.time())
        except OSError as exc:
            log.warning("cannot remove temp files that writers left: %s", describe_os_error(exc))
            return
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            log.warning("cannot remove temp files that writers left: %s%s", errors[0], more)
        if removed:
            log.info(
                "removed %d temp file(s) that writers left in %s (over an hour old: their "
                "writers stopped before publishing them)",
                len(removed),
                self.spool.tmp_dir,
                extra={"event": "writer-temps", "removed": len(removed)},
            )

    def after_failure(self, *, whole_group: bool) -> None:
        """A step failed: the next round finishes its claims and sweeps its temp files."""
        if whole_group:
            self.latest_dirty = True
        self.meta_dirty = True
        self.sweep_needed = True

    def latest_ok(self) -> None:
        """The latest link points at the newest version: said when it had failed, or
        had been found changed by hand."""
        self.latest_dirty = False
        self.cache_backoff.succeeded()
        self.latest_lines.healed(time.monotonic())
        problem = self._repairing.pop("latest", None)
        if problem is not None:
            log.warning("latest link repaired (%s)", problem)

    def latest_failed(self, exc: StorageError) -> None:
        """The latest link could not be written: counted, logged, retried later; ingest
        goes on."""
        self.latest_dirty = True
        self.metrics.upkeep_failed("latest_link")
        retry = self.cache_backoff.failed()
        what = "cannot refresh the latest link (drops are still stored)"
        if not self.retries:
            self._left(what, exc)
            return
        self._upkeep_said(self.latest_lines, f"{what}: {exc}", exc, retry, time.monotonic())

    def _upkeep_said(
        self, lines: FaultLines, what: str, exc: StorageError, retry: float, now: float
    ) -> None:
        """A failed try of the upkeep, by its fault ``lines``: unsaid when the drops'
        store fails for the same cause (one fault, said by the store's line)."""
        then = f"retrying in {retry:.1f} s"
        cause = fault_cause(exc)
        if self.store_lines.failing and self.store_lines.cause == cause:
            lines.failed_unsaid(what, then, now)
        else:
            lines.failed(what, then, cause, retry, now)

    def _left(self, what: str, exc: StorageError) -> None:
        """One ERROR line for a failure with no retry to come (``retries`` False): left
        for the next start, said once."""
        line = f"{what}: {exc}; left for the next start"
        if line not in self._said:
            self._said.add(line)
            log.error("%s", line)

    def check_caches(self) -> None:
        """Repair a metadata file or latest link changed by hand, rather than on a drop.

        The history can change by hand too (a restored file): the store's index is
        rescanned, and a cache found wrong is marked for the next round. What was wrong
        is said once the round has repaired it (as a start says it), or by the round's
        ERROR when it cannot: one line for one cause, never a promise, then a failure.
        """
        try:
            self.store.scan()
            meta_problem, latest_problem = self.store.cache_problems()
        except StorageError as exc:
            log.error("cannot scan the history: %s", exc)
            return
        for key, problem, dirty in (
            ("metadata", meta_problem, self.meta_dirty),
            ("latest", latest_problem, self.latest_dirty),
        ):
            if problem is None or dirty:
                continue  # fine, or about to be rewritten anyway (drops are coming in)
            self._repairing.setdefault(key, problem)
            self.meta_dirty = True
            if key == "latest":
                self.latest_dirty = True

    def clock_jumped(self) -> bool:
        """Whether automatic deletions must wait: the wall clock jumped ahead.

        Retention is measured from the wall clock: a forward step of days would make
        the watcher's own cleanup delete versions ingested seconds ago. While the jump
        stands, automatic deletions are held back (logged once); an operator's
        ``ingester cleanup``, or a restart, applies the rule from the clock as it is.
        """
        gained = self.clock_jump.gained()
        if gained > self.clock_jump.limit:
            if not self.holding:
                log.warning(
                    "the wall clock jumped %.0f s ahead of the boot clock; automatic "
                    "retention holds deletions back (run 'ingester cleanup' with the "
                    "watcher stopped, or restart it, to apply the rule)",
                    gained,
                    extra={"event": "clock-jump", "seconds": round(gained)},
                )
                self.holding = True
            return True
        if self.holding:
            log.info("the wall clock agrees with the boot clock again; retention resumes")
            self.holding = False
        return False
