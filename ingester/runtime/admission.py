"""Which connections ``serve`` takes: a limit in all and a limit per client address.

A connection holds a slot from the moment it is accepted until it closes, whether or
not a request ever arrives on it. With one limit in all, one address that opens
connections and sends half a request head holds every slot until the head deadline
frees them, and again as soon as it reopens them. So each client address may hold at
most ``per_client`` slots; a connection over either limit is refused at once, before a
byte is read, and never queued::

    on accept:   key = the client's address (an IPv6 client: its /64, which it controls whole)
                 refuse if open[key] >= per_client     ("per_client")
                 refuse if total open >= max_total     ("total")
                 else open[key] += 1
    on close:    open[key] -= 1

A client with no IP address (a Unix socket: a proxy on this host) has only the total
limit. Refusals come in floods, so they are logged as one summarising line per
interval (:class:`EventTally`), not one line each.

Pure bookkeeping: no sockets, no clock of its own; the connection layer
(:mod:`ingester.serve.http_protocol`) calls it.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_PER_CLIENT",
    "REFUSAL_REASONS",
    "SEND_TIMEOUT_S",
    "ConnectionLimits",
    "EventTally",
    "client_key",
    "format_peer",
]

# 256 slots, and at most an eighth of them for any one address: eight addresses acting
# together are needed to fill them, while a browser (6 connections per host), a
# Prometheus server and a scraper never come near 32. Behind a reverse proxy every
# client has the proxy's address: raise the per-client limit to the total there.
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_PER_CLIENT = 32
REFUSAL_REASONS = ("per_client", "total")

# How long an answer may wait on a client that reads none of it (its socket's buffer and
# the server's full) before the connection is ended. Without it such a client holds its
# slot for ever: the head deadline starts only once an answer has gone out whole.
SEND_TIMEOUT_S = 30.0


def format_peer(peer: Any) -> str:
    """``127.0.0.1:5000``, ``[::1]:5000``, or ``local`` (a Unix socket peer)."""
    if isinstance(peer, tuple) and len(peer) >= 2 and isinstance(peer[0], str):
        host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
        return f"{host}:{peer[1]}"
    return "local"


def client_key(peer: Any) -> str | None:
    """The address a per-client limit counts by, from a socket's peer name.

    ``('192.0.2.7', 5000)`` -> ``'192.0.2.7'``; an IPv6 peer -> its /64 prefix
    (``'2001:db8:1:2::/64'``), since one host is routinely given a whole /64;
    an IPv4-mapped IPv6 peer -> its IPv4 address; a Unix socket peer (no address) and
    anything unparsable -> ``None`` (no per-client limit).
    """
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return None
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        prefix = ipaddress.IPv6Network((int(address) >> 64 << 64, 64))
        return str(prefix)
    return str(address)


@dataclass
class ConnectionLimits:
    """Open connections in all and per client address, against two limits.

    ``max_total`` >= 1; ``per_client`` >= 1 (a value above ``max_total`` acts as
    ``max_total``).
    """

    max_total: int = DEFAULT_MAX_CONNECTIONS
    per_client: int = DEFAULT_MAX_PER_CLIENT
    total: int = 0
    by_client: dict[str, int] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)  # by reason, since start

    def admit(self, key: str | None) -> str | None:
        """Take a slot for a new connection from ``key``; ``None``, or why it is refused
        (``"per_client"`` or ``"total"``, counted in :attr:`refused`)."""
        reason = None
        if key is not None and self.by_client.get(key, 0) >= self.per_client:
            reason = "per_client"
        elif self.total >= self.max_total:
            reason = "total"
        if reason is not None:
            self.refused[reason] += 1
            return reason
        self.total += 1
        if key is not None:
            self.by_client[key] = self.by_client.get(key, 0) + 1
        return None

    def release(self, key: str | None) -> None:
        """Give back the slot of a connection :meth:`admit` took (once, when it closes)."""
        self.total = max(0, self.total - 1)
        if key is not None:
            left = self.by_client.get(key, 0) - 1
            if left > 0:
                self.by_client[key] = left
            else:
                self.by_client.pop(key, None)


@dataclass
class EventTally:
    """Events of one kind from many clients, logged as at most one line per interval.

    The first event after a quiet interval is reported at once; later ones are counted
    and reported together when the interval since the last report has passed (the
    caller runs :meth:`flush` at :meth:`due`, and once more when it stops, so no count
    is lost). ``describe(count, seconds, by_reason, by_client)`` makes the line.
    """

    describe: Callable[[int, float, Counter[str], Counter[str]], str]
    emit: Callable[[str], None]
    clock: Callable[[], float]
    interval: float = 10.0
    _by_reason: Counter[str] = field(default_factory=Counter)
    _by_client: Counter[str] = field(default_factory=Counter)
    _since: float | None = None  # when the first event not yet reported happened
    _last_report: float | None = None

    def note(self, reason: str, client: str | None) -> None:
        """Count one event; report at once when nothing was reported within the interval."""
        now = self.clock()
        if self._since is None:
            self._since = now
        self._by_reason[reason] += 1
        self._by_client[client or "local"] += 1
        if self._last_report is None or now - self._last_report >= self.interval:
            self.flush()

    def due(self) -> float | None:
        """Seconds until the counted events should be reported; ``None`` if none wait."""
        if self._since is None:
            return None
        last = self._last_report if self._last_report is not None else self._since
        return max(0.0, last + self.interval - self.clock())

    def flush(self) -> None:
        """Report the events counted since the last report, if any, as one line."""
        if self._since is None:
            return
        now = self.clock()
        count = sum(self._by_reason.values())
        self.emit(self.describe(count, now - self._since, self._by_reason, self._by_client))
        self._by_reason = Counter()
        self._by_client = Counter()
        self._since = None
        self._last_report = now


def top_clients(by_client: Counter[str], limit: int = 3) -> str:
    """``127.0.0.1 (268), 192.0.2.7 (3)``: the clients with the most events, most first."""
    shown = ", ".join(f"{key} ({n})" for key, n in by_client.most_common(limit))
    rest = len(by_client) - limit
    return shown + (f" and {rest} more" if rest > 0 else "")
