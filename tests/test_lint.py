"""Lint and types are part of the tests: ruff check, ruff format --check, mypy --strict."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=TOP, capture_output=True, text=True, timeout=240, check=False)


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; install the test extras: pip install -e '.[test]'")
    return found


def test_ruff_check() -> None:
    result = _run(_tool("ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = _run(_tool("ruff"), "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = _run(sys.executable, "-m", "mypy", "--strict", "ingester")
    assert result.returncode == 0, result.stdout + result.stderr


def test_nothing_read_from_outside_the_repository() -> None:
    """A user's clone has nothing beside it: every fixture lives under the repository."""
    offenders = []
    for folder in ("tests", "ingester", "bench"):
        for path in (TOP / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            # Spelled in pieces so this file does not match its own search.
            for needle in ("../" + "shared", '"' + 'shared"', "'" + "shared'", "parents" + "[2]"):
                if needle in text and path.name != "test_lint.py":
                    offenders.append(f"{path.relative_to(TOP)}: {needle}")
    assert not offenders, offenders
    samples = TOP / "tests" / "samples"
    assert sorted(p.name for p in (samples / "valid").glob("*.json"))
    assert sorted(p.name for p in (samples / "invalid").glob("*.json"))


def test_tests_import_helpers_from_the_support_package() -> None:
    """``conftest`` is pytest's to load: helpers come from ``tests/support``."""
    offenders = [
        str(path.relative_to(TOP))
        for path in (TOP / "tests").rglob("*.py")
        if path.name != "test_lint.py"
        and re.search(r"^\s*(from conftest import|import conftest)", path.read_text("utf-8"), re.M)
    ]
    assert not offenders, offenders


# The files a checkout's root holds on purpose; anything else there is an output of a
# command run from the checkout (an export, a snapshot) committed by mistake.
ROOT_FILES = {".gitignore", "README.md", "constraints.txt", "pyproject.toml"}


def test_the_repository_root_tracks_no_stray_outputs() -> None:
    if not (TOP / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    listed = _run("git", "ls-files", "--", ".")
    assert listed.returncode == 0, listed.stderr
    at_root = {name for name in listed.stdout.splitlines() if "/" not in name}
    assert at_root <= ROOT_FILES, (
        f"stray files at the repository root: {sorted(at_root - ROOT_FILES)}"
    )
