"""Files the tool reads by name that someone may have replaced: a FIFO, an endless file.

The metadata, the mirror's state file, a lock's note, the config and the API key file
are read on their paths. A FIFO there would hold the reader up for ever (no writer
comes), and ``/dev/zero`` would be read until memory runs out; a watcher stuck so holds
the lock and stores nothing more. Each is read without waiting and only so far: what is
not a regular file, or is far larger than such a file ever is, is said in one line.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support import VALID_SAMPLES, run_cli

HISTORY = "console-usage-history"
# Each command must end well within this (the suite's run_cli raises past it): a FIFO
# left waited on would hang it, /dev/zero read whole would take minutes and gigabytes.
WITHIN = 30

# Also a limit on memory: reading /dev/zero without bound ends in "out of memory" fast.
LIMITED = ("prlimit", f"--as={2 << 30}", "--")
needs_prlimit = pytest.mark.skipif(
    shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed"
)


KINDS = ["fifo", "endless", "huge"]


def put_in_place(path: Path, kind: str) -> None:
    """A FIFO no one writes to, a symlink to ``/dev/zero``, or a 3 GiB sparse file."""
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "endless":
        path.symlink_to("/dev/zero")
    else:
        with path.open("wb") as handle:
            handle.truncate(3 << 30)


def history_with_a_version(root: Path) -> None:
    assert run_cli(root, "init").returncode == 0
    assert run_cli(root, "ingest", str(VALID_SAMPLES[0])).returncode == 0


def drop(root: Path, name: str) -> None:
    (root / "spool" / name).write_bytes(VALID_SAMPLES[0].read_bytes())


@needs_prlimit
@pytest.mark.parametrize("kind", KINDS)
def test_something_else_in_the_metadata_s_place_is_rebuilt_not_waited_on(
    root: Path, kind: str
) -> None:
    history_with_a_version(root)
    metadata = root / HISTORY / "_metadata.json"
    put_in_place(metadata, kind)
    status = run_cli(root, "status", timeout=WITHIN, wrapper=LIMITED)
    assert status.returncode in (0, 1), status.stderr
    assert "Traceback" not in status.stderr
    verify = run_cli(root, "verify", timeout=WITHIN, wrapper=LIMITED)
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "metadata" in verify.stdout + verify.stderr
    # The watcher stores what comes and writes the metadata anew, a regular file.
    drop(root, "next.json")
    watch = run_cli(root, "watch", "--once", timeout=WITHIN, wrapper=LIMITED)
    assert watch.returncode == 0, watch.stderr
    assert "Traceback" not in watch.stderr
    assert not (root / "spool" / "next.json").exists()
    assert metadata.is_file() and not metadata.is_symlink()
    assert run_cli(root, "verify", timeout=WITHIN).returncode == 0


@needs_prlimit
@pytest.mark.parametrize("kind", KINDS)
def test_something_else_in_the_mirror_state_s_place_holds_retention_back_not_the_watcher(
    root: Path, kind: str
) -> None:
    history_with_a_version(root)
    put_in_place(root / HISTORY / "_mirror.json", kind)
    for i in range(3):
        drop(root, f"d{i}.json")
    watch = run_cli(root, "watch", "--once", timeout=WITHIN, wrapper=LIMITED)
    assert watch.returncode == 0, watch.stderr
    assert "Traceback" not in watch.stderr
    assert sorted(p.name for p in (root / "spool").glob("*.json")) == []
    status = run_cli(root, "status", timeout=WITHIN, wrapper=LIMITED)
    assert "Traceback" not in status.stderr
    assert "state file is not a regular file" in status.stdout + status.stderr or (
        "state file corrupt" in status.stdout + status.stderr
    ), status.stdout


@needs_prlimit
@pytest.mark.parametrize("kind", KINDS)
def test_a_config_or_key_file_that_is_no_file_is_one_line(
    root: Path, tmp_path: Path, kind: str
) -> None:
    history_with_a_version(root)
    named = tmp_path / "named"
    put_in_place(named, kind)
    config = run_cli(root, "--config", str(named), "status", timeout=WITHIN, wrapper=LIMITED)
    assert config.returncode == 2, config.stderr
    assert "Traceback" not in config.stderr
    last = config.stderr.strip().splitlines()[-1]
    said = "over 1048576 bytes" if kind == "huge" else "not a regular file"
    assert f"cannot read {named}: " in last and last.endswith(said), config.stderr
    key = run_cli(
        root,
        *("serve", "--api-key-file", str(named), "--listen", "127.0.0.1:0"),
        timeout=WITHIN,
        wrapper=LIMITED,
    )
    assert key.returncode == 1, key.stderr
    said = "over 65536 bytes" if kind == "huge" else "not a regular file"
    assert key.stderr == f"error: --api-key-file: {named}: {said}\n", key.stderr
