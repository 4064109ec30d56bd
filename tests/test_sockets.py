"""Socket activation: ``serve`` answers on every socket systemd passes, binds none of its
own meanwhile, and refuses descriptors it cannot serve with one clear line.

The sockets are handed over as systemd does (descriptors 3, 4, ..., ``LISTEN_FDS``,
``LISTEN_PID``, ``LISTEN_FDNAMES``) by a small exec wrapper (:mod:`support.activation`);
``tests/test_systemd_serve.py`` does the same with systemd's own ``systemd-socket-activate``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from support import listening_ports, run_cli, wait_for
from support.activation import activation_wrapper
from support.capabilities import has_ipv6_loopback
from support.ports import free_port
from support.serveproc import ServeProcess, fresh_payload, put_version, version_name

from ingester.serve.sockets import activated_sockets

API = "/api/claude/console-usage"


def listening(family: socket.AddressFamily, address: object) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(address)
    sock.listen(16)
    return sock


@pytest.fixture
def history(root: Path) -> Path:
    put_version(root, version_name(datetime.now(UTC)), fresh_payload())
    return root


@pytest.fixture
def v4_v6() -> Iterator[list[socket.socket]]:
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) on this machine")
    socks = [
        listening(socket.AF_INET, ("127.0.0.1", 0)),
        listening(socket.AF_INET6, ("::1", 0)),
    ]
    yield socks
    for sock in socks:
        sock.close()


def test_every_passed_socket_is_served_and_none_is_bound(history: Path, v4_v6) -> None:
    v4, v6 = v4_v6
    fds = [v4.fileno(), v6.fileno()]
    # --listen names the port of a socket we hold: binding it would fail, so a server
    # that tried to bind --listen could not even start.
    with ServeProcess(
        history,
        wrapper=activation_wrapper(fds, names="web4:web6"),
        pass_fds=tuple(fds),
        listen=f"127.0.0.1:{v4.getsockname()[1]}",
    ) as server:
        for base in (
            f"http://127.0.0.1:{v4.getsockname()[1]}",
            f"http://[::1]:{v6.getsockname()[1]}",
        ):
            with httpx.Client(base_url=base, timeout=10) as client:
                assert client.get(API).status_code == 200
        assert listening_ports(server.proc.pid) == {v4.getsockname()[1], v6.getsockname()[1]}
        line = next(x for x in server.log.splitlines() if "listening on" in x)
        assert f"http://[::1]:{v6.getsockname()[1]}" in line
        assert "2 sockets from systemd (fd 3 'web4', fd 4 'web6'" in line
        # The passed sockets are not handed on to child processes.
        for fd in (3, 4):
            flags = Path(f"/proc/{server.proc.pid}/fdinfo/{fd}").read_text()
            assert int(re.search(r"flags:\s+(\d+)", flags)[1], 8) & 0o2000000  # O_CLOEXEC
        assert server.stop() == 0
    assert "Traceback" not in server.log


def test_a_passed_unix_socket_is_served(history: Path, tmp_path: Path) -> None:
    path = tmp_path / "serve.sock"
    sock = listening(socket.AF_UNIX, str(path))
    try:
        port = free_port()
        server = ServeProcess(
            history,
            wrapper=activation_wrapper([sock.fileno()]),
            pass_fds=(sock.fileno(),),
            listen=f"127.0.0.1:{port}",
        )
        try:
            wait_for(lambda: f"listening on unix:{path}" in server.log, 15, "serve to start")
            transport = httpx.HTTPTransport(uds=str(path))
            with httpx.Client(transport=transport, base_url="http://serve", timeout=10) as c:
                assert c.get(API).status_code == 200
            assert server.stop() == 0
        finally:
            server.__exit__(None, None, None)
    finally:
        sock.close()


def run_activated(root: Path, fds: list[int], **kw: str | None) -> subprocess.CompletedProcess[str]:
    return run_cli(
        root,
        "serve",
        "--listen",
        "127.0.0.1:0",
        wrapper=activation_wrapper(fds, **kw),
        pass_fds=tuple(fds),
    )


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("pipe", "a FIFO or pipe"),
        ("file", "a regular file"),
        ("datagram", "not a stream socket"),
        ("connected", "a connected socket, not a listening one"),
        ("closed", "not open"),
    ],
)
def test_a_passed_descriptor_that_cannot_be_served_is_one_line(
    history: Path, tmp_path: Path, kind: str, words: str
) -> None:
    good = listening(socket.AF_INET, ("127.0.0.1", 0))
    held: list[object] = [good]
    if kind == "pipe":
        r, w = os.pipe()
        held += [r, w]
        bad = [r]
    elif kind == "file":
        handle = (tmp_path / "f").open("wb")
        held.append(handle)
        bad = [handle.fileno()]
    elif kind == "datagram":
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        held.append(udp)
        bad = [udp.fileno()]
    elif kind == "connected":
        a, b = socket.socketpair()
        held += [a, b]
        bad = [a.fileno()]
    else:
        bad = []
    try:
        count = "2" if kind == "closed" else None
        done = run_activated(history, [good.fileno(), *bad], count=count)
    finally:
        for item in held:
            if isinstance(item, int):
                os.close(item)
            else:
                item.close()  # type: ignore[attr-defined]
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: socket activation: passed descriptor 2 of 2 (fd 4)")
    assert words in lines[0]
    assert "serve: listening on" not in done.stderr


@pytest.mark.parametrize("count", ["two", "\u00b9", "0" * 5000 + "1"])
def test_malformed_listen_fds_is_one_line(history: Path, count: str) -> None:
    good = listening(socket.AF_INET, ("127.0.0.1", 0))
    with good:
        done = run_activated(history, [good.fileno()], count=count)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: socket activation: LISTEN_FDS={count!r} is not a number of passed sockets "
        "(0 to 64)"
    ]


def test_sockets_meant_for_another_process_are_left_alone(history: Path) -> None:
    """LISTEN_PID of another process (a wrapper that forked): sd_listen_fds' rule, said."""
    good = listening(socket.AF_INET, ("127.0.0.1", 0))
    with (
        good,
        ServeProcess(
            history, wrapper=activation_wrapper([good.fileno()], pid="1"), pass_fds=(good.fileno(),)
        ) as server,
    ):
        assert server.get(API).status_code == 200  # on the --listen port it bound
        assert "LISTEN_PID=1 is not this process" in server.log
        assert f"http://127.0.0.1:{good.getsockname()[1]}" not in server.log


def test_names_that_do_not_match_the_count_are_ignored(history: Path) -> None:
    good = listening(socket.AF_INET, ("127.0.0.1", 0))
    with (
        good,
        ServeProcess(
            history,
            wrapper=activation_wrapper([good.fileno()], names="a:b:c"),
            pass_fds=(good.fileno(),),
        ) as server,
    ):
        with httpx.Client(base_url=f"http://127.0.0.1:{good.getsockname()[1]}") as client:
            assert client.get(API).status_code == 200
        assert "LISTEN_FDNAMES names 3 descriptors but LISTEN_FDS=1: names ignored" in server.log
        assert "1 socket from systemd (fd 3;" in server.log


def test_the_activation_variables_are_not_handed_on() -> None:
    """Cleared as sd_listen_fds(unset_environment=1) does, whether used or not."""
    environ = {"LISTEN_FDS": "2", "LISTEN_PID": "1", "LISTEN_FDNAMES": "a:b", "PATH": "/bin"}
    assert activated_sockets(environ, pid=os.getpid()) is None
    assert environ == {"PATH": "/bin"}
    environ = {"LISTEN_FDS": "0", "LISTEN_PID": str(os.getpid())}
    assert activated_sockets(environ) is None
    assert environ == {}


@pytest.mark.parametrize(
    ("listen", "words"),
    [
        ("[::1:0", "brackets hold an IPv6 address"),
        ("[::1]]:0", "brackets hold an IPv6 address"),
        ("[127.0.0.1]:0", "brackets hold an IPv6 address"),
        ("::1:0", "write an IPv6 address in brackets"),
        ("127.0.0.1:\u0660", "is not HOST:PORT"),  # an Arabic-Indic zero
        ("127.0.0.1:0:0", "is not HOST:PORT"),
        ("http://127.0.0.1:0", "without a scheme"),
        (" 127.0.0.1:0", "is not a host name or an IPv4 address"),
        ("127.0.0.1:65536", "a port from 0 to 65535"),
        # More digits than Python parses: said in our words, not the interpreter's.
        ("127.0.0.1:" + "0" * 5000 + "80", "a port from 0 to 65535"),
    ],
)
def test_a_malformed_listen_address_is_a_usage_error(
    tmp_path: Path, listen: str, words: str
) -> None:
    # Never bound as something else, nor a name lookup that fails (exit 1): exit 2.
    done = run_cli(tmp_path, "serve", "--listen", listen)
    assert done.returncode == 2, done.stdout + done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert "--listen" in error and words in error, error
    metrics = run_cli(tmp_path, "watch", "--metrics", listen)
    assert metrics.returncode == 2, metrics.stdout + metrics.stderr
    assert words in metrics.stderr
