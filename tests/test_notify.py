"""sd_notify: the notifier against a real AF_UNIX datagram socket, and the real watcher."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import cli_env
from support.sdnotify import Message, NotifyListener
from support.watchproc import drop, payload, versions

from ingester.runtime.notify import SystemdNotifier

STATUS_COUNTS = re.compile(r"ingested (\d+), rejected (\d+), backlog (\d+)")


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    with NotifyListener() as sock:
        yield sock


class Records(logging.Handler):
    """Collects what the ``ingester.runtime.notify`` logger emits (whatever propagate says)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def notify_log() -> Iterator[Records]:
    logger = logging.getLogger("ingester.notify")
    handler = Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def next_raw(listener: NotifyListener) -> bytes:
    message = listener.receive(5)
    assert message is not None, "no datagram within 5 s"
    return message.raw


# -- the notifier on its own ------------------------------------------------------------


def test_each_message_arrives_as_one_datagram(listener: NotifyListener) -> None:
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": listener.address})
    assert notifier.enabled
    notifier.ready()
    assert next_raw(listener) == b"READY=1"
    notifier.ready("ingested 3, rejected 1, backlog 0")
    assert next_raw(listener) == b"READY=1\nSTATUS=ingested 3, rejected 1, backlog 0"
    notifier.status("ingested 4, rejected 1, backlog 2")
    assert next_raw(listener) == b"STATUS=ingested 4, rejected 1, backlog 2"
    notifier.watchdog()
    assert next_raw(listener) == b"WATCHDOG=1"
    notifier.extend_timeout(45)
    assert next_raw(listener) == b"EXTEND_TIMEOUT_USEC=45000000"
    notifier.stopping()
    assert next_raw(listener) == b"STOPPING=1"
    notifier.stopping("stopping after 4")
    assert next_raw(listener) == b"STOPPING=1\nSTATUS=stopping after 4"
    notifier.close()
    assert listener.receive(0.05) is None, "close() must not send anything"


def test_abstract_namespace_address() -> None:
    with NotifyListener(abstract=True) as listener:
        assert listener.address.startswith("@")
        notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": listener.address})
        notifier.ready("up")
        notifier.watchdog()
        assert next_raw(listener) == b"READY=1\nSTATUS=up"
        assert next_raw(listener) == b"WATCHDOG=1"
        notifier.close()


def test_status_stays_on_one_line_and_utf8(listener: NotifyListener) -> None:
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": listener.address})
    notifier.status("line one\nREADY=1\r\nübrig")
    # A newline would have smuggled in a READY=1 assignment of its own.
    assert next_raw(listener) == "STATUS=line one READY=1 übrig".encode()
    notifier.close()


def test_socket_is_reopened_after_close(listener: NotifyListener) -> None:
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": listener.address})
    notifier.watchdog()
    notifier.close()
    notifier.close()  # twice is fine
    notifier.watchdog()
    assert [next_raw(listener), next_raw(listener)] == [b"WATCHDOG=1", b"WATCHDOG=1"]
    notifier.close()


def test_without_notify_socket_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_socket(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("a disabled notifier opened a socket")

    monkeypatch.setattr(socket, "socket", no_socket)
    for environ in ({}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "1000000"}):
        notifier = SystemdNotifier.from_environ(environ)
        assert not notifier.enabled
        assert notifier.watchdog_interval is None
        notifier.ready("x")
        notifier.status("x")
        notifier.watchdog()
        notifier.extend_timeout(60)
        notifier.stopping("x")
        notifier.close()


def test_from_environ_defaults_to_os_environ(
    listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = SystemdNotifier.from_environ()
    assert notifier.watchdog_interval == 15.0
    notifier.ready()
    assert next_raw(listener) == b"READY=1"
    notifier.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not SystemdNotifier.from_environ().enabled


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("1000000", None, 0.5),
        ("30000000", None, 15.0),
        ("1000000", "self", 0.5),
        ("1000000", "other", None),
        ("1000000", "garbage", None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        ("", None, None),
        (None, None, None),
        (None, "self", None),
    ],
)
def test_watchdog_interval(usec: str | None, pid: str | None, interval: float | None) -> None:
    environ = {"NOTIFY_SOCKET": "/run/systemd/notify"}  # never sent to here
    if usec is not None:
        environ["WATCHDOG_USEC"] = usec
    if pid == "self":
        environ["WATCHDOG_PID"] = str(os.getpid())
    elif pid == "other":
        environ["WATCHDOG_PID"] = str(os.getpid() + 1)
    elif pid is not None:
        environ["WATCHDOG_PID"] = pid
    assert SystemdNotifier.from_environ(environ).watchdog_interval == interval


@pytest.mark.parametrize(
    ("usec", "extension"), [("30000000", 45.0), ("400000", 0.6), (None, 60.0), ("0", 60.0)]
)
def test_a_timeout_extension_is_three_ping_intervals_or_a_minute_without_a_watchdog(
    listener: NotifyListener, usec: str | None, extension: float
) -> None:
    """What a long step's progress asks for: one and a half times ``WatchdogSec=``,
    60 s without one; sent in whole microseconds, never as 0 (which means nothing)."""
    environ = {"NOTIFY_SOCKET": listener.address}
    if usec is not None:
        environ["WATCHDOG_USEC"] = usec
    notifier = SystemdNotifier.from_environ(environ)
    assert notifier.timeout_extension == pytest.approx(extension)
    notifier.extend_timeout(notifier.timeout_extension)
    assert next_raw(listener) == f"EXTEND_TIMEOUT_USEC={round(extension * 1e6)}".encode()
    notifier.extend_timeout(0.0000001)
    assert next_raw(listener) == b"EXTEND_TIMEOUT_USEC=1"
    notifier.close()


def test_a_dead_socket_is_logged_once_and_never_raises(tmp_path: Path, notify_log: Records) -> None:
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    for _ in range(3):
        notifier.ready("x")
        notifier.watchdog()
    warnings = notify_log.at(logging.WARNING)
    assert len(warnings) == 1, warnings
    assert "gone" in warnings[0] and "READY=1" in warnings[0]
    assert len(notify_log.at(logging.DEBUG)) == 5
    notifier.close()


def test_a_socket_of_the_wrong_type_is_a_failure_not_a_crash(
    tmp_path: Path, notify_log: Records
) -> None:
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = tmp_path / "s"
    try:
        stream.bind(str(path))
        stream.listen()
        notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": str(path)})
        notifier.ready()
        notifier.close()
    finally:
        stream.close()
    assert len(notify_log.at(logging.WARNING)) == 1


@pytest.mark.parametrize("value", ["vsock:2:1234", "relative/path", "@"])
def test_an_unusable_address_disables_with_a_warning(value: str, notify_log: Records) -> None:
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready()
    warnings = notify_log.at(logging.WARNING)
    assert len(warnings) == 1 and value in warnings[0]


# -- the real watcher in a subprocess ---------------------------------------------------


def start_watch(
    root: Path, listener: NotifyListener, *, prefix: tuple[str, ...] = (), **env: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """``python -m ingester --root ROOT watch`` told to notify ``listener``; stderr in a file."""
    log_path = root.parent / f"watch-{os.urandom(3).hex()}.log"
    environ = cli_env()
    for key in ("WATCHDOG_USEC", "WATCHDOG_PID"):  # only what the test asks for
        environ.pop(key, None)
    environ.update(NOTIFY_SOCKET=listener.address, **env)
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "ingester", "--root", str(root), "watch"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=environ,
        )
    return proc, log_path


def counts(message: Message) -> tuple[int, int, int] | None:
    """(ingested, rejected, backlog) from a message's STATUS=, if it has one."""
    match = STATUS_COUNTS.fullmatch(message.fields.get("STATUS", ""))
    if match is None:
        return None
    ingested, rejected, backlog = (int(g) for g in match.groups())
    return ingested, rejected, backlog


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_watcher_speaks_the_protocol(root: Path, listener: NotifyListener) -> None:
    spool = root / "spool"
    spool.mkdir()
    for seq in range(3):
        drop(spool, f"backlog-{seq}.json", payload(seq))
    drop(spool, "broken.json", b"{not json")
    proc, log_path = start_watch(root, listener, WATCHDOG_USEC="1000000")
    alive = lambda: proc.poll() is None  # noqa: E731
    try:
        # READY=1 comes once the backlog is taken, with the counts.
        ready = listener.wait_for(lambda m: "READY" in m.fields, 30, "READY=1", alive)
        assert ready.fields["READY"] == "1"
        assert counts(ready) == (3, 1, 0), ready.raw
        assert len(versions(root)) == 3
        assert (spool / "rejected" / "broken.json").exists()
        assert not any(m.fields.get("STOPPING") for m in listener.messages)

        # WATCHDOG=1 every WATCHDOG_USEC/2 = 0.5 s: at least two within 2 s.
        pings: list[Message] = []
        first = listener.wait_for(lambda m: "WATCHDOG" in m.fields, 2.0, "WATCHDOG=1", alive)
        pings.append(first)
        pings.append(
            listener.wait_for(
                lambda m: "WATCHDOG" in m.fields,
                2.0 - (first.at - ready.at),
                "a second WATCHDOG=1 within 2 s of READY",
                alive,
            )
        )
        assert all(m.fields["WATCHDOG"] == "1" for m in pings)

        # A new drop shows in STATUS=.
        drop(spool, "later.json", payload(99))
        listener.wait_for(lambda m: counts(m) == (4, 1, 0), 30, "STATUS= with 4 ingested", alive)

        # SIGTERM: STOPPING=1, then exit 0.
        proc.send_signal(signal.SIGTERM)
        stopping = listener.wait_for(lambda m: "STOPPING" in m.fields, 10, "STOPPING=1")
        assert stopping.fields["STOPPING"] == "1"
        assert proc.wait(10) == 0
        assert len(versions(root)) == 4
    finally:
        stop(proc)
    log = log_path.read_text()
    assert "Traceback" not in log, log
    assert "cannot notify" not in log, log


def test_watcher_without_notify_socket_runs_as_before(root: Path) -> None:
    """No NOTIFY_SOCKET: nothing is sent and nothing is logged about it."""
    (root / "spool").mkdir()
    drop(root / "spool", "a.json", payload(1))
    result = subprocess.run(
        [sys.executable, "-m", "ingester", "--root", str(root), "watch", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(WATCHDOG_USEC="1000000"),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(versions(root)) == 1
    assert "cannot notify" not in result.stderr, result.stderr
    assert "NOTIFY_SOCKET" not in result.stderr, result.stderr


def test_a_notify_socket_that_is_gone_is_said_once_with_its_errno_name(root: Path) -> None:
    """A unit's NOTIFY_SOCKET left pointing at a socket that is gone (systemd restarted
    with another runtime folder, a copied environment): the watcher works on, and the
    one warning names the address and the cause in the words of every other error."""
    (root / "spool").mkdir()
    drop(root / "spool", "a.json", payload(1))
    gone = root / "no-notify-socket"
    result = subprocess.run(
        [sys.executable, "-m", "ingester", "--root", str(root), "watch", "--once"],
        capture_output=True,
        text=True,
        env=cli_env(NOTIFY_SOCKET=str(gone)),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(versions(root)) == 1
    said = [line for line in result.stderr.splitlines() if "cannot notify" in line]
    assert len(said) == 1, result.stderr
    assert f"cannot notify systemd at {gone} (" in said[0]
    assert "No such file or directory [ENOENT]" in said[0], said[0]
    assert "Errno" not in said[0], said[0]
