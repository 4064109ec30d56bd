"""Shared test helpers: real folders, the real CLI in a subprocess, waiting on conditions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

# The project's own fixtures: tests never read anything outside the repository.
SAMPLES = Path(__file__).resolve().parent / "samples"
VALID_SAMPLES = sorted((SAMPLES / "valid").glob("*.json"))
INVALID_SAMPLES = sorted((SAMPLES / "invalid").glob("*.json"))
IS_ROOT = os.geteuid() == 0


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.01)


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess, without any INGESTER_* of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTER_")}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("JOURNAL_STREAM", None)
    env.update(extra)
    return env


def run_cli(
    root: Path, *args: str, input: bytes | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``ingester --root ROOT ARGS...`` in a subprocess; return the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "ingester", "--root", str(root), *args],
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(**env),
        check=False,
    )


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
