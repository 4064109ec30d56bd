"""One drop's path: what is claimed is what is stored, exactly once."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from support import IS_ROOT, run_cli, wait_for
from support.watchproc import WatchProcess, drop, latest_bytes, payload, versions

from ingester.payload.model import judge_payload


def test_a_writer_holding_its_drop_open_cannot_change_the_version(root: Path) -> None:
    spool = root / "spool"
    with WatchProcess(root):
        staged = spool / "tmp" / ".held.part"
        with staged.open("wb") as handle:
            handle.write(payload(1))
            handle.flush()
            os.rename(staged, spool / "held.json")  # renamed in, but still open for writing
            wait_for(lambda: latest_bytes(root) == payload(1), what="stored")
            [version] = versions(root)
            handle.seek(0)
            handle.write(b"X" * 20)  # the writer misbehaves
            handle.flush()
            assert version.read_bytes() == payload(1)  # a copy, not the writer's inode


@pytest.mark.skipif(not IS_ROOT, reason="chattr +a needs root")
def test_an_append_only_history_stores_a_copied_drop_once(root: Path) -> None:
    history = root / "console-usage-history"
    assert run_cli(root, "init").returncode == 0
    if subprocess.run(["chattr", "+a", str(history)], capture_output=True).returncode:
        pytest.skip("chattr +a does not work here")
    try:
        spool = root / "spool"
        staged = spool / "tmp" / ".theirs.part"
        staged.write_bytes(payload(3))
        os.chown(staged, 65534, 65534)  # another user's drop: copied
        os.rename(staged, spool / "theirs.json")
        with WatchProcess(root, "--retry-max", "0.2") as w:
            wait_for(lambda: not (spool / "theirs.json").exists(), what="taken")
            w.wait_log("ingested theirs.json")
            assert [p.read_bytes() for p in versions(root)] == [payload(3)]
    finally:
        subprocess.run(["chattr", "-a", str(history)], check=False)


def test_every_version_stored_from_a_mixed_burst_is_valid(root: Path) -> None:
    """The same checks as everywhere: a burst of mixed drops, all valid ones stored once."""
    with WatchProcess(root):
        for i in range(20):
            drop(root / "spool", f"m{i:02d}.json", payload(i) if i % 3 else b"[]")
        wait_for(lambda: len(versions(root)) == 13, what="13 valid drops")
    for version in versions(root):
        judge_payload(version.read_bytes())
