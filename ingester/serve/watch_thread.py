"""``serve --watch``: the watcher loop on a thread of its own inside the serve process.

The watcher is the same :class:`ingester.intake.watcher.Watcher` that ``ingester watch`` runs:
the same lock, recovery, groups and retention; it stays the only writer of the history.
Only where it runs changes: on one thread, while the HTTP server answers requests on
the main thread's event loop (and Starlette's worker threads), so request work never
runs on the watcher's thread.

One process, one voice towards systemd (:class:`.joint_notifier.JointNotifier`):

* ``READY=1`` once both halves are up: the watcher has taken the backlog and the
  server listens;
* ``WATCHDOG=1`` only while both are healthy: the server's event loop sends the pings,
  and only while the watcher's own pings (which it makes only while its observer is
  alive) keep coming;
* ``EXTEND_TIMEOUT_USEC=`` from the watcher while it takes the backlog, before
  ``READY=1``: a long copy into a quarantine on another filesystem that makes progress
  is not cut short by ``TimeoutStartSec=`` (the watchdog is not armed yet);
* ``STATUS=`` with both halves' words (``starting: ...``, ``serving URL; watcher ...``,
  ``stopping: ...``); ``STOPPING=1`` once, when the stop begins, with a status saying
  what the stop is doing (and a new ``STATUS=`` at each of its steps).

One owner of the signals, the HTTP server's handler (``server._Server.handle_exit``),
until the server has stopped; the drain's own after that. A stop runs in this order, so
that no answer ever promises what the stopped watcher cannot keep::

    SIGTERM/SIGINT/SIGHUP -> STOPPING=1; the server stops accepting (its listeners close)
    requests in flight finish (at most the server's grace period), the watcher
        still running: a POST answered 202 "the watcher stores it" is then true
    the watcher takes what waits in the spool, for at most the drain budget
        (a signal meanwhile, or a second SIGINT before, skips this); what is left
        is logged, and stored at the next start
    the watcher finishes the drop in hand and stops; its stop line counts the
        drops still in the spool; exit 0

If the watcher stops on its own (it cannot lock the history, or the history folder was
replaced), the server stops too and the process exits 1, so a supervisor restarts both;
on an internal error (a bug), 70 (sysexits' EX_SOFTWARE, as any command's bug), which
``Restart=on-failure`` restarts all the same.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from ..clock import utc_now
from ..errors import StorageError
from ..history.lock import SERVE_WATCH
from ..intake.metrics import NO_METRICS, Metrics
from ..intake.spool import Spool
from ..intake.watcher import Watcher
from ..runtime.logs import cut, escape_text, one_line
from ..runtime.signals import StopFlag, handled_stop_signals
from ..settings.resolved import Settings
from ..settings.watch import DRAIN_S, WatchOptions
from ..threads import OffLoop

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
from .joint_notifier import JointNotifier

__all__ = ["StoreFaults", "ThreadedWatcher", "drain", "run_beside", "supervise"]

log = logging.getLogger("ingester.serve")

_EXIT_INTERNAL = 70  # sysexits EX_SOFTWARE: a bug, the code every command exits with for one
_TICK = 0.1  # seconds between the supervisor's looks (a stop, watchdog, the watcher)


CAUSE_MAX = 1000
"""Most characters of a store failure's cause that ``/api/health`` carries (a path in it
may be long; the log has it whole)."""


def cause_line(text: str) -> str:
    """``text`` as one line of at most :data:`CAUSE_MAX` characters (cut with ``...``)."""
    line = one_line(escape_text(text))
    return cut(line, CAUSE_MAX)


class StoreFaults:
    """The watcher's metrics (``inner``), seen on the way: whether its stores are failing.

    A drop or the history that cannot be written is retried after a backoff (its log
    says the fault once, and again only now and then while it lasts); meanwhile the
    POSTs it was handed are answered 202 and only the data's age would tell, ten minutes
    later. This keeps ``since`` (the UTC time of the first failure since the last drop
    stored or set aside), ``failures`` (how many since then) and ``cause`` (the last
    one's error, one line of at most :data:`CAUSE_MAX` characters), for ``/api/health``
    to say at once. Written on the watcher's thread, read on the server's: each is one
    attribute set at a time (``cause`` before ``since``, so a reader that sees a fault
    sees its cause).
    """

    def __init__(self, inner: Metrics, clock: Callable[[], datetime] = utc_now) -> None:
        self.inner = inner
        self.clock = clock
        self.since: datetime | None = None
        self.failures = 0
        self.cause = ""
        self.registry: CollectorRegistry | None = getattr(inner, "registry", None)

    def ingested(self, seconds: float) -> None:
        self.since, self.failures = None, 0
        self.inner.ingested(seconds)

    def rejected(self, reason: str, kind: str | None = None) -> None:
        self.since, self.failures = None, 0  # set aside: the quarantine was written
        self.inner.rejected(reason, kind)

    def failed(self, cause: str) -> None:
        self.cause = cause_line(cause)
        if self.since is None:
            self.since = self.clock()
        self.failures += 1
        self.inner.failed(cause)

    def upkeep_failed(self, step: str) -> None:
        self.inner.upkeep_failed(step)  # drops are still stored: no store fault

    def watch(self, backlog: Callable[[], int], holding: Callable[[], bool]) -> None:
        self.inner.watch(backlog, holding)


class ThreadedWatcher:
    """A :class:`Watcher` run on a thread of its own; :meth:`start`, :meth:`stop`, :meth:`join`."""

    def __init__(
        self,
        settings: Settings,
        options: WatchOptions,
        joint: JointNotifier,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.joint = joint
        self.store_faults = StoreFaults(metrics)
        self.watcher = Watcher(
            settings, options, notifier=joint.watcher_view(), metrics=self.store_faults
        )
        self.watcher.lock_purpose = SERVE_WATCH  # the holder's name in the lock file
        # Its own metrics, when they are kept (WatchMetrics), for the server to expose.
        self.metrics_registry: CollectorRegistry | None = self.store_faults.registry
        self.code: int | None = None
        self.stop_requested = False
        self.asked_to_stop_first = False  # the stop came from outside, not from the watcher
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def _run(self) -> None:
        try:
            self.code = self.watcher.run()
        except BaseException as exc:  # a bug: the process must not go on without its writer
            log.error(
                "the watcher stopped on an internal error: %s: %s (please report)",
                type(exc).__name__,
                str(exc) or "no detail",
            )
            self.code = _EXIT_INTERNAL

    def start(self) -> None:
        """Start the watcher's thread."""
        self._thread.start()

    def running(self) -> bool:
        """Whether the watcher's loop runs (started and not ended)."""
        return self._thread.is_alive()

    def ended(self) -> bool:
        """Whether the watcher's loop has ended (asked to or not)."""
        return self.code is not None and not self._thread.is_alive()

    def stop(self) -> None:
        """Ask the watcher to finish the drop in hand and stop (any thread, signal handlers)."""
        self.stop_requested = True
        self.watcher.request_stop()

    def join(self, timeout: float | None = None) -> int:
        """Wait for the watcher to end; its exit code (1 if it has not ended in time)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the watcher did not stop within %.0f s", timeout or 0)
            return 1
        return self.code if self.code is not None else 1


class _Server(Protocol):
    started: bool
    should_exit: bool
    interrupted_twice: bool


def run_beside(
    server: _Server,
    serving: Coroutine[Any, Any, None],
    watcher: ThreadedWatcher,
    url: str,
    drain_timeout: float = DRAIN_S,
) -> int:
    """Run ``serving`` (the HTTP server ``server``'s coroutine) with the watcher beside it.

    Call from the main thread, with the server's stop handler in place: a stop signal
    starts the stop, in the order of the module doc: the server first, then what waits in the
    spool (at most ``drain_timeout`` seconds), then the watcher. Returns the exit code:
    the watcher's (0 after a clean stop), 1 when the watcher stopped on its own, 70 when it
    stopped on an internal error.
    """
    # A read lease (the watcher's test for a drop still being written) is broken with
    # SIGIO, whose default action ends the process.
    signal.signal(signal.SIGIO, signal.SIG_IGN)

    async def both() -> None:
        http = asyncio.ensure_future(serving)
        try:
            await supervise(server, http, watcher, url, drain_timeout)
        finally:
            if not http.done():
                server.should_exit = True  # the supervisor failed: stop serving all the same
            await http  # its error, if it failed, is the process's

    try:
        asyncio.run(both())
    finally:
        if not watcher.stop_requested:
            watcher.joint.stopping("stopping the watcher")
            watcher.stop()
        code = watcher.join(timeout=30)
        watcher.joint.close()
    log.info("serve --watch: stopped")
    return code if watcher.asked_to_stop_first else (code or 1)


async def supervise(
    server: _Server,
    http: asyncio.Future[None],
    watcher: ThreadedWatcher,
    url: str,
    drain_timeout: float = DRAIN_S,
) -> None:
    """Beside the HTTP server (``http``, its running task): start the watcher, say READY
    once both are up, ping the watchdog while both are well; at a stop signal, stop them
    in the module doc's order; when the watcher stops on its own, stop the server too.

    Runs in the server's event loop: the server's stop handler is in place before the
    watcher starts.
    """
    joint = watcher.joint
    watcher.start()
    told_listening = False
    while not server.should_exit and not http.done():
        if server.started and not told_listening:
            told_listening = True
            joint.server_ready(url)
        if watcher.ended():
            log.error(
                "the watcher stopped (exit %s): serve stops too, so that both restart together",
                watcher.code,
            )
            server.should_exit = True
            # The stop begins now, not once the requests in flight have finished (up
            # to the server's grace period later): systemd is told so at once.
            joint.stopping(
                f"the watcher stopped (exit {watcher.code}); no new connections; "
                "finishing the requests in flight"
            )
            return
        joint.tick()
        await asyncio.sleep(_TICK)
    watcher.asked_to_stop_first = True
    log.info(
        "serve --watch: stopping: no new connections; the requests in flight finish, then "
        "the watcher takes what waits in the spool (at most %g s), then it stops",
        drain_timeout,
    )
    joint.stopping("no new connections; finishing the requests in flight")
    while not http.done():  # uvicorn: listeners closed, requests in flight finishing
        joint.tick()
        await asyncio.wait({http}, timeout=_TICK)
    # The server has stopped: a signal from now on cuts the drain short, as does a
    # second Ctrl-C before (a closed terminal's two SIGHUPs do not). The drain's handlers
    # go in first, so that no signal falls between the two looks.
    forced = StopFlag()
    previous = {
        sig: signal.signal(sig, lambda _sig, _frame: forced.set()) for sig in handled_stop_signals()
    }
    if server.interrupted_twice:
        forced.set()
    try:
        if not watcher.ended():
            await drain(watcher, drain_timeout, forced.is_set)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if forced.is_set():
        log.warning(
            "serve --watch: stop forced (a second signal): what waits in the spool is "
            "stored at the next start"
        )
    joint.stop_step("the watcher finishes the drop in hand")
    watcher.stop()


async def drain(
    watcher: ThreadedWatcher, budget: float, forced: Callable[[], bool] = lambda: False
) -> None:
    """Let the running watcher take what waits in the spool: until none is left, the
    watcher ends, ``budget`` seconds have passed, or ``forced()`` says to stop now.
    Logs what it left when the budget runs out."""
    if forced():
        return
    spool = watcher.watcher.spool
    # The spool is listed off the loop, which still answers requests meanwhile.
    counts = OffLoop("ingester-drain")
    try:
        await _drain(watcher, budget, forced, lambda: counts.run(lambda: _backlog(spool)))
    finally:
        counts.close()


async def _drain(
    watcher: ThreadedWatcher,
    budget: float,
    forced: Callable[[], bool],
    backlog: Callable[[], Awaitable[int | None]],
) -> None:
    """:func:`drain`'s wait, ``backlog()`` counting what is left in the spool."""
    joint = watcher.joint
    deadline = time.monotonic() + budget
    first = await backlog()
    if not first:
        return
    step = (
        f"the watcher takes the {first} drop{'s' if first != 1 else ''} "
        f"left in the spool (at most {budget:g} s)"
    )
    log.info("serve --watch: %s", step)
    joint.stop_step(step)
    while True:
        await asyncio.sleep(_TICK)
        left = await backlog()
        if left is None:
            log.warning(
                "serve --watch: the spool cannot be listed any more; the watcher stops now "
                "(what is left is stored at its next start)"
            )
            return
        if not left:
            log.info("serve --watch: the spool is drained (%d drop(s) were waiting)", first)
            return
        if watcher.ended() or forced():
            return
        if time.monotonic() >= deadline:
            log.warning(
                "serve --watch: %s drop(s) still wait in the spool after %g s; the watcher "
                "stops now, and they are stored at its next start",
                left,
                budget,
            )
            return


def _backlog(spool: Spool) -> int | None:
    """Drops not stored yet (waiting and claimed), or ``None`` when the spool cannot be
    listed (nothing to wait for then: the watcher's own stop line says more)."""
    try:
        return spool.backlog()
    except StorageError:
        return None
