"""The systemd notify protocol (``sd_notify``) without libsystemd.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET``: the address of an ``AF_UNIX``
datagram socket. Each message is one datagram of newline-separated ``KEY=value``
assignments (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``). A leading
``@`` in the address means Linux's abstract namespace (the ``@`` stands for a NUL byte).
With ``WatchdogSec=`` systemd also passes ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, the
process that is meant to ping); the service pings at half that interval.

The watchdog is armed only once ``READY=1`` is sent: before it, the start-up timeout
(``TimeoutStartSec=``) runs, and ``WATCHDOG=1`` does not extend it.
``EXTEND_TIMEOUT_USEC=`` (systemd 236 and later) does: a step that makes progress says
so to keep a start from being killed while it is still getting somewhere.

Nothing here ever raises to the caller: the service must keep working when the notify
socket is gone or refuses a message. The first failure is logged as a warning on the
``ingester.runtime.notify`` logger, later ones at debug level. Without ``NOTIFY_SOCKET`` every
method is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from types import TracebackType

from ..errors import os_cause

__all__ = ["SystemdNotifier"]

log = logging.getLogger("ingester.notify")

# A send that cannot complete within this time (systemd's queue full) is dropped and
# logged rather than left to stall the pipeline.
_SEND_TIMEOUT = 1.0

# With no watchdog to take a measure from, how long each extension of a timeout lasts:
# long enough for a piece of work on a slow disk, short enough that a hang still ends.
_EXTENSION_WITHOUT_WATCHDOG = 60.0


def _socket_address(raw: str) -> bytes | None:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value, or None if it is not usable.

    ``/path`` is a file-system socket, ``@name`` an abstract one. Other forms (e.g. the
    ``vsock:`` addresses of newer systemd for virtual machines) are not supported.
    """
    if raw.startswith("/"):
        return os.fsencode(raw)
    if raw.startswith("@") and len(raw) > 1:
        return b"\0" + os.fsencode(raw[1:])
    return None


def _one_line(text: str) -> str:
    """A ``STATUS=`` value must be one line: newlines would start new assignments."""
    return " ".join(text.splitlines())


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """``WATCHDOG_USEC`` as a positive int if it is meant for ``pid``, else None."""
    raw_usec = environ.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number", raw_usec)
        return None
    if usec <= 0:
        return None
    raw_pid = environ.get("WATCHDOG_PID")
    if raw_pid:
        try:
            meant_for = int(raw_pid)
        except ValueError:
            log.warning("ignoring the watchdog: WATCHDOG_PID=%r is not a number", raw_pid)
            return None
        if meant_for != pid:
            log.debug("the watchdog is meant for pid %d, not this one (%d)", meant_for, pid)
            return None
    return usec


class SystemdNotifier:
    """Sends ``sd_notify`` messages to systemd; a no-op when not run under ``Type=notify``.

    Build one with :meth:`from_environ`. Safe to call from several threads. The socket is
    opened on the first message and kept until :meth:`close` (a later message opens a new
    one).
    """

    def __init__(self, notify_socket: str | None, watchdog_usec: int | None = None) -> None:
        """Notify ``notify_socket`` (a ``NOTIFY_SOCKET`` value; None: disabled).

        ``watchdog_usec`` is the watchdog timeout systemd asked for (``WATCHDOG_USEC``),
        or None when there is no watchdog for this process.
        """
        self._address: bytes | None = None
        if notify_socket:
            self._address = _socket_address(notify_socket)
            if self._address is None:
                log.warning(
                    "NOTIFY_SOCKET=%r is not a socket path or @abstract name: "
                    "systemd will not hear from this service",
                    notify_socket,
                )
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """A notifier configured from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``, ``WATCHDOG_PID``.

        ``environ`` defaults to ``os.environ``. ``WATCHDOG_PID``, when set, must name this
        process, or there is no watchdog for it (as in ``sd_watchdog_enabled``).
        """
        env: Mapping[str, str] = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, _watchdog_usec(env, os.getpid()))

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to talk to."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between :meth:`watchdog` pings (half the timeout), or None: no watchdog."""
        if not self.enabled or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1e6

    @property
    def timeout_extension(self) -> float:
        """Seconds each :meth:`extend_timeout` from a long step's progress asks for.

        Three ping intervals (one and a half ``WatchdogSec=``) when there is a watchdog,
        so that progress keeps a start alive on the terms the watchdog keeps a running
        service alive, with room for one late report; 60 s without one.
        """
        interval = self.watchdog_interval
        return 3 * interval if interval is not None else _EXTENSION_WITHOUT_WATCHDOG

    def ready(self, status: str | None = None) -> None:
        """``READY=1``: start-up is complete (and ``STATUS=status`` if given)."""
        self._send("READY=1", status)

    def status(self, text: str) -> None:
        """``STATUS=text``: a one-line state shown by ``systemctl status``."""
        self._send(None, text)

    def watchdog(self) -> None:
        """``WATCHDOG=1``: the service is alive and well (call every watchdog_interval)."""
        self._send("WATCHDOG=1", None)

    def extend_timeout(self, seconds: float) -> None:
        """``EXTEND_TIMEOUT_USEC=``: ``seconds`` more for the timeout of the current state.

        See ``sd_notify(3)`` (systemd 236 and later; older ones ignore it): before
        ``READY=1`` it extends ``TimeoutStartSec=``, after ``STOPPING=1``
        ``TimeoutStopSec=``, in between ``RuntimeMaxSec=``. systemd then waits
        ``seconds`` from now for the next message, and only a state that has outlasted
        its own timeout is cut short, so an extension never shortens one. ``seconds``
        is rounded to whole microseconds, at least 1.
        """
        self._send(f"EXTEND_TIMEOUT_USEC={max(1, round(seconds * 1e6))}", None)

    def stopping(self, status: str | None = None) -> None:
        """``STOPPING=1``: shutdown has begun (and ``STATUS=status`` if given)."""
        self._send("STOPPING=1", status)

    def close(self) -> None:
        """Close the socket, if one is open."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> SystemdNotifier:
        """Use as a context manager that closes the socket at the end."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the socket."""
        self.close()

    def _send(self, assignment: str | None, status: str | None) -> None:
        """Send one datagram with ``assignment`` and ``STATUS=status`` (either may be None)."""
        if self._address is None:
            return
        lines = [assignment] if assignment else []
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        if not lines:
            return
        message = "\n".join(lines).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                    self._sock.settimeout(_SEND_TIMEOUT)
                self._sock.sendto(message, self._address)
            except OSError as exc:
                self._failed(message, exc)

    def _failed(self, message: bytes, exc: OSError) -> None:
        """Log a failed send: a warning the first time, debug detail after that."""
        first_line = message.split(b"\n", 1)[0].decode("utf-8", "replace")
        address = self._address.replace(b"\0", b"@", 1) if self._address else b""
        if not self._warned:
            self._warned = True
            log.warning(
                "cannot notify systemd at %s (%s): %s; further failures are logged at debug level",
                os.fsdecode(address),
                first_line,
                os_cause(exc),
            )
        else:
            log.debug("cannot notify systemd (%s): %s", first_line, os_cause(exc))
