"""Fixtures shared by every test module; the helpers live in :mod:`support`."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import SAMPLES
from support.capabilities import can_chattr, can_mount  # noqa: F401  (fixtures for every module)


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
