"""Fixtures shared by every test module; the helpers live in :mod:`support`."""

from __future__ import annotations

import compileall
import signal
from pathlib import Path

import pytest
from support import SAMPLES
from support.capabilities import can_chattr, can_mount  # noqa: F401  (fixtures for every module)


def pytest_configure(config: pytest.Config) -> None:
    """The commands the tests start meet stop signals as at a terminal.

    A suite started in the background by a shell without job control (as a CI runner may
    start it) has SIGINT ignored, and one started under ``nohup`` SIGHUP. Every command a
    test starts would inherit that, and our commands keep an ignored SIGINT ignored: each
    test of a Ctrl-C would fail. So the defaults are put back in this process (Python's
    own handler for SIGINT), and a command started from here begins with them.
    """
    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(stop) == signal.SIG_IGN:
            default = signal.default_int_handler if stop == signal.SIGINT else signal.SIG_DFL
            signal.signal(stop, default)
    if not hasattr(config, "workerinput"):  # once, before any worker starts
        _compile_the_package()


def _compile_the_package() -> None:
    """Write the package's bytecode once, for the thousands of commands the tests start.

    Where ``PYTHONDONTWRITEBYTECODE`` is set (CI machines set it) no command writes it,
    so each would compile the hundred modules it imports from source again: some 80 ms
    of every command. Python still checks each file's source against its bytecode, so
    what is compiled here is never used stale.
    """
    compileall.compile_dir(Path(__file__).resolve().parent.parent / "ingester", quiet=2)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty folder to use as ``--root``."""
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def valid_payload() -> bytes:
    """The bytes of one valid sample."""
    return (SAMPLES / "valid" / "full.json").read_bytes()
