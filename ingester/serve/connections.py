"""Which connections ``serve`` takes, and what a refused one is told.

:class:`ConnectionLayer` gives every accepted connection a slot of
:class:`ingester.runtime.admission.ConnectionLimits` or refuses it at once: a short 503
is written, our side is shut down, and whatever the client sends is read and dropped
for at most :data:`LINGER_S` seconds, so the client reads the 503 instead of a reset.
Refusals, head timeouts and answers left unread past :data:`SEND_TIMEOUT_S` are
summarised, one line per :data:`SUMMARY_INTERVAL_S`.
The protocol that asks it for a slot is :mod:`ingester.serve.http_protocol`'s.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ..runtime.admission import SEND_TIMEOUT_S, ConnectionLimits, EventTally, top_clients

__all__ = ["LINGER_S", "SUMMARY_INTERVAL_S", "ConnectionLayer"]


log = logging.getLogger("ingester.serve")


# How long a refused connection is drained before it is closed; while draining it holds
# a file descriptor but no slot. At most as many connections linger as there are slots.
LINGER_S = 2.0


SUMMARY_INTERVAL_S = 10.0


def _answer(status: int, reason: str, error: str, message: str, extra: str = "") -> bytes:
    """A whole answer written straight to the socket (no request was read, or none will
    be answered): JSON, dated like every other answer, and ending the connection."""
    body = json.dumps({"error": error, "message": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ndate: {email.utils.formatdate(usegmt=True)}\r\n"
        "content-type: application/json\r\n"
        f"connection: close\r\n{extra}content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _describe_refusals(
    count: int, seconds: float, by_reason: Counter[str], by_client: Counter[str], limits: str
) -> str:
    parts = []
    if by_reason["per_client"]:
        parts.append(f"{by_reason['per_client']} from an address at its limit")
    if by_reason["total"]:
        parts.append(f"{by_reason['total']} with every slot taken")
    span = f" in {seconds:.0f} s" if seconds >= 1 else ""
    return (
        f"refused {count} connection{'s' if count != 1 else ''}{span} ({', '.join(parts)}; "
        f"{limits}); most from {top_clients(by_client)}"
    )


def _describe_send_timeouts(
    count: int, seconds: float, by_reason: Counter[str], by_client: Counter[str], timeout: float
) -> str:
    span = f" in {seconds:.0f} s" if seconds >= 1 else ""
    return (
        f"closed {count} connection{'s' if count != 1 else ''}{span} whose client read "
        f"nothing of its answer for {timeout:g} s; most from {top_clients(by_client)}"
    )


def _describe_head_timeouts(
    count: int, seconds: float, by_reason: Counter[str], by_client: Counter[str], timeout: float
) -> str:
    span = f" in {seconds:.0f} s" if seconds >= 1 else ""
    kinds = []
    if by_reason["partial"]:
        kinds.append(f"{by_reason['partial']} sent part of a head")
    if by_reason["silent"]:
        kinds.append(f"{by_reason['silent']} sent nothing")
    return (
        f"closed {count} connection{'s' if count != 1 else ''}{span} without a request head "
        f"within {timeout:g} s, answered 408 ({', '.join(kinds)}); "
        f"most from {top_clients(by_client)}"
    )


@dataclass
class ConnectionLayer:
    """What every connection of one server shares: the limits, the deadline, the tallies.

    ``head_timeout`` and ``send_timeout`` in seconds. Build it, pass
    :func:`protocol_class` of it to uvicorn, and call :meth:`close` once the server has
    stopped.
    """

    limits: ConnectionLimits
    head_timeout: float = 10.0
    send_timeout: float = SEND_TIMEOUT_S
    summary_interval: float = SUMMARY_INTERVAL_S
    clock: Callable[[], float] = time.monotonic
    head_timeouts: Counter[str] = field(default_factory=Counter)  # by kind, since start
    lingering: set[asyncio.Transport] = field(default_factory=set)
    _refusals: EventTally = field(init=False)
    _timeouts: EventTally = field(init=False)
    _unread: EventTally = field(init=False)
    _timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)

    def __post_init__(self) -> None:
        limits = (
            f"at most {self.limits.per_client} per client address "
            f"and {self.limits.max_total} in all"
        )
        self._refusals = self._tally(
            lambda n, span, reasons, clients: _describe_refusals(n, span, reasons, clients, limits),
            log.warning,
        )
        self._timeouts = self._tally(
            lambda n, span, kinds, clients: _describe_head_timeouts(
                n, span, kinds, clients, self.head_timeout
            ),
            log.info,
        )
        self._unread = self._tally(
            lambda n, span, kinds, clients: _describe_send_timeouts(
                n, span, kinds, clients, self.send_timeout
            ),
            log.warning,
        )

    def _tally(
        self,
        describe: Callable[[int, float, Counter[str], Counter[str]], str],
        level: Callable[..., None],
    ) -> EventTally:
        """A tally of one kind of event, summarised at ``level`` once per interval."""
        return EventTally(
            describe, lambda line: level("%s", line), self.clock, self.summary_interval
        )

    def refused(self, loop: asyncio.AbstractEventLoop, reason: str, key: str | None) -> None:
        """Count a refusal; its line comes now or with the next summary."""
        self._note(loop, "refusals", self._refusals, reason, key)

    def head_timed_out(
        self, loop: asyncio.AbstractEventLoop, partial: bool, key: str | None
    ) -> None:
        """Count a connection closed at the head deadline (``partial``: it sent some bytes)."""
        kind = "partial" if partial else "silent"
        self.head_timeouts[kind] += 1
        self._note(loop, "timeouts", self._timeouts, kind, key)

    def send_timed_out(self, loop: asyncio.AbstractEventLoop, key: str | None) -> None:
        """Count a connection ended because its client read none of its answer."""
        self._note(loop, "unread", self._unread, "unread", key)

    def _note(
        self,
        loop: asyncio.AbstractEventLoop,
        name: str,
        tally: EventTally,
        reason: str,
        key: str | None,
    ) -> None:
        tally.note(reason, key)
        due = tally.due()
        if due is not None and name not in self._timers:

            def flush() -> None:
                self._timers.pop(name, None)
                tally.flush()

            self._timers[name] = loop.call_later(due, flush)

    def close(self) -> None:
        """At stop: report what is still counted, end the connections still draining."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for tally in (self._refusals, self._timeouts, self._unread):
            tally.flush()
        for transport in list(self.lingering):
            transport.abort()
        self.lingering.clear()
