"""A stand-in for systemd's side of the notify protocol: a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


@dataclass(frozen=True)
class Message:
    """One datagram: its assignments in order, and when it arrived (monotonic seconds)."""

    fields: dict[str, str]
    raw: bytes
    at: float


def parse(raw: bytes) -> dict[str, str]:
    """``KEY=value`` lines into a dict; a line without ``=`` fails the test."""
    fields: dict[str, str] = {}
    for line in raw.decode("utf-8").split("\n"):
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r} in {raw!r}"
        fields[key] = value
    return fields


class NotifyListener:
    """Binds a datagram socket (a short path under /tmp, or an abstract name) and collects.

    ``address`` is what goes into ``NOTIFY_SOCKET``. Every received message is kept in
    ``messages``, so a test can both wait for one and look at the ones before it.
    """

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._dir: str | None = None
        if abstract:
            name = f"ingester-test-{os.getpid()}-{os.urandom(6).hex()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            # sun_path holds 108 bytes: pytest's tmp_path can be longer than that.
            self._dir = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
            self.address = str(Path(self._dir) / "notify")
            self.sock.bind(self.address)
        self.messages: list[Message] = []

    def receive(self, timeout: float) -> Message | None:
        """The next datagram, or None if none arrives within ``timeout`` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            raw = self.sock.recv(65536)
        except TimeoutError:
            return None
        message = Message(parse(raw), raw, time.monotonic())
        self.messages.append(message)
        return message

    def wait_for(
        self,
        predicate: Callable[[Message], bool],
        timeout: float,
        what: str,
        alive: Callable[[], bool] | None = None,
    ) -> Message:
        """Receive until a message matches ``predicate``; fail after ``timeout`` seconds.

        ``alive`` (e.g. "the process still runs") is checked between receives so a
        crashed service fails the test at once instead of at the deadline.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {what} within {timeout}s; got {[m.raw for m in self.messages]}"
                )
            message = self.receive(min(left, 0.25))
            if message is not None and predicate(message):
                return message
            if message is None and alive is not None and not alive():
                raise AssertionError(
                    f"the service ended before {what}; got {[m.raw for m in self.messages]}"
                )

    def close(self) -> None:
        """Close the socket and remove its folder."""
        self.sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
