"""Free TCP ports for servers that tests start in another process.

A test that needs a port number before its server starts (``PORT=`` for ``serve``,
``-s3.port=`` for SeaweedFS, ``ListenStream=`` for socket activation) must pick one
that is free and stays free until the server binds it. Asking the kernel for port 0 and
closing the socket gives a port from the *ephemeral* range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by default), and that is where
the kernel also picks the local port of every outgoing connection. With the suite
running on several workers, each of them connecting to servers all the time, such a
port is often taken as a client's local port before the server comes to bind it ("port
... is not available").

So the ports given here lie below the ephemeral range, where the kernel never places a
connection on its own. Each pytest-xdist worker draws from its own slice of that range,
so two workers never hand out the same port, and one process never hands out the same
port twice while unused ones remain. Each port is checked bindable (on every host asked
for) when it is handed out.
"""

from __future__ import annotations

import errno
import os
import random
import socket
from pathlib import Path

# Below this, ports are the well-known and registered services' (and root's alone below
# 1024); the range from here to the ephemeral range's start is what the tests use.
_LOWEST = 10000
_EPHEMERAL_DEFAULT = (32768, 60999)
_given: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports it picks itself (inclusive), from /proc."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _EPHEMERAL_DEFAULT


def _slice() -> range:
    """This worker's share of the ports outside the ephemeral range."""
    low, high = ephemeral_range()
    if low - _LOWEST >= 1000:
        start, stop = _LOWEST, low
    else:  # an unusual range reaching low: use what lies above it instead
        start, stop = high + 1, 65536
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
    index, workers = (int(worker), int(count)) if worker.isdigit() and count.isdigit() else (0, 1)
    width = (stop - start) // max(workers, 1)
    return range(start + index * width, start + (index + 1) * width)


def _bindable(port: int, hosts: tuple[str, ...]) -> bool:
    """``port`` can be bound on each of ``hosts`` that this machine has (a host it lacks,
    such as ::1 without IPv6, cannot take the port either)."""
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family) as probe:
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
    return True


def free_ports(count: int, hosts: tuple[str, ...] = ("127.0.0.1",)) -> list[int]:
    """``count`` distinct ports, each bindable now on every one of ``hosts``, outside the
    kernel's ephemeral range, and never given before by this process (while any remain).

    Raises ``RuntimeError`` when this worker's slice has too few free ports left.
    """
    ports: list[int] = []
    candidates = [port for port in _slice() if port not in _given]
    random.shuffle(candidates)
    for port in candidates:
        if _bindable(port, hosts):
            ports.append(port)
            _given.add(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"fewer than {count} free ports left in {_slice()}")


def free_port(hosts: tuple[str, ...] = ("127.0.0.1",)) -> int:
    """One port as ``free_ports`` gives them."""
    return free_ports(1, hosts)[0]
