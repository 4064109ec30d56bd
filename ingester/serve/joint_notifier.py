"""``serve --watch``'s one voice towards systemd: :class:`JointNotifier`, for two halves.

The server and the watcher of one process share one :class:`SystemdNotifier`.
``READY=1`` is sent once both are up; ``WATCHDOG=1`` only while both are healthy (the
server's event loop pings, and only while the watcher's own pings keep coming, which it
makes only while its observer is alive); ``STATUS=`` carries both halves' words;
``EXTEND_TIMEOUT_USEC=`` passes on the watcher's, while the process has not said
``READY=1`` (a long copy in the backlog it takes first). The watcher speaks through a
view of it that records its pings instead of sending them.
"""

from __future__ import annotations

import logging
import threading
import time

from ..runtime.notify import SystemdNotifier

__all__ = ["JointNotifier"]


log = logging.getLogger("ingester.serve")


class JointNotifier:
    """One :class:`SystemdNotifier` shared by the server and the watcher of one process."""

    def __init__(self, notifier: SystemdNotifier, *, freshness: float | None = None) -> None:
        """Speak through ``notifier``; the watcher counts as well while its last ping is
        at most ``freshness`` seconds old (default: three of its ping intervals, at
        least 2 s)."""
        self.notifier = notifier
        interval = notifier.watchdog_interval
        self.freshness = freshness
        if freshness is None:
            self.freshness = max(3 * _view_interval(interval), 2.0) if interval else 2.0
        self._lock = threading.Lock()
        self._watcher_ready = False
        self._server_ready = False
        self._ready_sent = False
        self._watcher_seen = time.monotonic()  # the watcher's last "I am healthy"
        self._watcher_status: str | None = None  # its counts, once it has said them
        self._url: str | None = None  # where the server listens, once it does
        self._stop_step: str | None = None  # what the stop is doing, once it has begun
        self._next_ping = 0.0

    @property
    def enabled(self) -> bool:
        """True under systemd's ``Type=notify``."""
        return self.notifier.enabled

    def watcher_view(self) -> SystemdNotifier:
        """The notifier to give the watcher: it reports here, not to systemd."""
        return _WatcherView(self)

    def watcher_ready(self, status: str | None) -> None:
        """The watcher has taken the backlog."""
        with self._lock:
            self._watcher_ready = True
            self._watcher_seen = time.monotonic()
            if status:
                self._watcher_status = status
        self._maybe_ready()

    def watcher_alive(self, status: str | None = None) -> None:
        """The watcher says it is healthy (its watchdog ping), or reports its counts."""
        with self._lock:
            if status is None:
                self._watcher_seen = time.monotonic()
            else:
                self._watcher_status = status

    def watcher_extends(self, seconds: float) -> None:
        """The watcher's long step made progress while it takes its backlog: ask systemd
        for ``seconds`` more of its start-up timeout (``EXTEND_TIMEOUT_USEC=``).

        Passed on only while the process is starting (no ``READY=1``, no stop begun):
        later, it would extend the timeout of another state, which a copy does not need
        (at a stop it is given up at its next piece).
        """
        with self._lock:
            starting = not self._ready_sent and self._stop_step is None
        if starting:
            self.notifier.extend_timeout(seconds)

    def server_ready(self, url: str) -> None:
        """The server listens at ``url``."""
        with self._lock:
            self._server_ready = True
            self._url = url
        self._maybe_ready()

    def watcher_is_ready(self) -> bool:
        """Whether the watcher has taken its backlog."""
        with self._lock:
            return self._watcher_ready

    def _status(self) -> str:
        """One line for ``systemctl status``: the phase, then each half in words.

        ``starting: listening on URL; watcher taking the backlog``, ``serving URL;
        watcher: ingested 3, rejected 0, backlog 0``, ``stopping: STEP; watcher: ...``.
        """
        watcher = (
            f"watcher: {self._watcher_status}"
            if self._watcher_status
            else "watcher taking the backlog"
        )
        if self._stop_step is not None:
            return f"stopping: {self._stop_step}; {watcher}"
        if self._ready_sent:
            return f"serving {self._url}; {watcher}"
        server = f"listening on {self._url}" if self._url else "server not listening yet"
        return f"starting: {server}; {watcher}"

    def _maybe_ready(self) -> None:
        with self._lock:
            if self._ready_sent or self._stop_step is not None:
                return
            if not (self._watcher_ready and self._server_ready):
                return
            self._ready_sent = True
            status = self._status()
        self.notifier.ready(status)
        log.info("serve --watch: ready (%s)", status)

    def tick(self) -> None:
        """From the server's event loop: ping systemd's watchdog while both halves are well.

        The event loop calling this is the server's proof of life; the watcher's is a
        recent ping of its own (it pings only while its observer is alive).
        """
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        now = time.monotonic()
        with self._lock:
            fresh = now - self._watcher_seen <= (self.freshness or 0.0)
            due = now >= self._next_ping
            if due and fresh:
                self._next_ping = now + interval
            status = self._status()
        if due and fresh:
            self.notifier.watchdog()
            self.notifier.status(status)

    def stopping(self, step: str) -> None:
        """``STOPPING=1`` once, with a status saying what the stop does first (``step``)."""
        with self._lock:
            if self._stop_step is not None:
                return
            self._stop_step = step
            status = self._status()
        self.notifier.stopping(status)

    def stop_step(self, step: str) -> None:
        """A later step of the stop, as ``STATUS=`` (after :meth:`stopping`)."""
        with self._lock:
            if self._stop_step is None:
                return
            self._stop_step = step
            status = self._status()
        self.notifier.status(status)

    def close(self) -> None:
        """Close the notify socket."""
        self.notifier.close()


def _view_interval(interval: float) -> float:
    """How often the watcher reports health to the joint notifier (often, and cheap)."""
    return min(1.0, interval / 4)


class _WatcherView(SystemdNotifier):
    """What the watcher talks to: its messages go to the joint notifier, not to systemd."""

    def __init__(self, joint: JointNotifier) -> None:
        super().__init__(None)
        self._joint = joint

    @property
    def enabled(self) -> bool:
        return self._joint.enabled

    @property
    def watchdog_interval(self) -> float | None:
        interval = self._joint.notifier.watchdog_interval
        return None if interval is None else _view_interval(interval)

    @property
    def timeout_extension(self) -> float:
        # The watcher reports more often than the process pings: its extension is still
        # measured by the real watchdog, not by these reports.
        return self._joint.notifier.timeout_extension

    def ready(self, status: str | None = None) -> None:
        self._joint.watcher_ready(status)

    def extend_timeout(self, seconds: float) -> None:
        self._joint.watcher_extends(seconds)

    def status(self, text: str) -> None:
        self._joint.watcher_alive(text)

    def watchdog(self) -> None:
        self._joint.watcher_alive()

    def stopping(self, status: str | None = None) -> None:
        if status:
            self._joint.watcher_alive(status)  # the owner of the signals says STOPPING

    def close(self) -> None:
        pass  # the joint notifier's socket is closed by its owner
