"""The benches' own support: the watcher bench's machine header, against real
filesystems; the drop timeline's steps; every script starting.

The header names the bench folder's filesystem and, for ext4, whether it has a journal:
without one, ext4 makes a file's creation dearer the more files were deleted lately, and
the copied layout's numbers depend on that. Checked on two real ext4 images, loop-mounted,
one made with a journal and one without. Skipped, with the reason, where root,
``mkfs.ext4`` or a loop device is missing.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from support import IS_ROOT
from support.capabilities import loop_ext4

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def watch_support(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/watch_support.py: bench/ is a folder of scripts that import each other."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    return importlib.import_module("watch_support")


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "no-journal"])
def test_the_header_says_whether_an_ext4_has_a_journal(
    tmp_path: Path, journal: bool, watch_support: ModuleType
) -> None:
    if not IS_ROOT:
        pytest.skip("loop-mounting an image needs root")
    features = [] if journal else ["-O", "^has_journal"]
    with loop_ext4(tmp_path, *features) as point:
        shown = watch_support.filesystem_of(point)
    assert shown.startswith("ext4 (/dev/loop"), shown
    assert shown.endswith(f" on {point}, journal)" if journal else f" on {point}, no journal)")


def test_the_header_names_other_filesystems_without_a_journal_word(
    watch_support: ModuleType,
) -> None:
    shown = watch_support.filesystem_of(Path("/proc"))
    assert shown == "proc (proc on /proc)"


def test_the_header_adds_nothing_for_a_device_the_kernel_does_not_list_as_ext4(
    watch_support: ModuleType,
) -> None:
    assert watch_support.ext4_journal("/dev/no-such-device") == ""


def test_every_step_the_drop_timeline_times_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/drop_timeline.py wraps our functions by name: a rename in the code must be
    followed there, or the bench stops at its start."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    timeline = importlib.import_module("drop_timeline")
    missing = []
    for module_name, path, label in timeline.STEPS:
        owner: object = importlib.import_module(module_name)
        for name in path.split("."):
            if not hasattr(owner, name):
                missing.append(f"{module_name}.{path} ({label.strip()})")
                break
            owner = getattr(owner, name)
    assert missing == []


# The scripts a reader runs by name, each with its options; the floors and the load
# generator take bare positional arguments and stay that small on purpose.
SCRIPTS = sorted(
    path.name
    for path in (REPO / "bench").glob("*.py")
    if path.name not in ("watch_support.py", "floor.py", "floor_serve.py", "http_load.py")
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_bench_script_starts(script: str) -> None:
    """A script whose imports went stale (a helper moved to another module) fails here,
    not on the day someone runs it for the numbers the docs quote."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:")
