"""One drop's path: what is claimed is what is stored, exactly once."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path

import pytest
from support import IS_ROOT, run_cli, wait_for
from support.capabilities import immutable
from support.watchproc import WatchProcess, drop, latest_bytes, payload, versions

from ingester.history.store import HistoryStore
from ingester.intake.arrivals import How
from ingester.intake.intake import Intake
from ingester.intake.outcomes import Stored
from ingester.intake.readiness import Readiness
from ingester.intake.spool import Spool
from ingester.payload.model import judge_payload
from ingester.settings.sources import resolve_settings


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


def started_intake(root: Path) -> tuple[HistoryStore, Spool, Intake]:
    """The watcher's drop steps on ``root``'s default layout, started, without its loop:
    for a test to take and release drops one step at a time."""
    settings = resolve_settings({"root": str(root)}, environ={})
    store = settings.store()
    store.initialize()
    spool = Spool(settings.spool_dir, settings.rejected_dir)
    intake = Intake(store, spool, settings.max_bytes, Readiness(1.0, 30.0), settle=1.0)
    intake.start()
    return store, spool, intake


def test_a_claim_written_to_after_its_copy_was_stored_goes_back_to_the_spool(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Step 8 in a group of copies: the one whose writer added bytes after its copy was
    stored is taken again as a new drop (its version keeps the bytes judged); the claims
    of the others are removed."""
    store, spool, intake = started_intake(tmp_path)
    names = ["a.json", "b.json", "c.json", "d.json"]
    with contextlib.ExitStack() as writers:
        handles = {}
        for n, name in enumerate(names):
            part = spool.tmp_dir / f".{name}.part"
            handles[name] = writers.enter_context(part.open("wb"))
            handles[name].write(payload(n))
            handles[name].flush()
            os.rename(part, spool.dir / name)  # renamed in, still open: stored as a copy
        with store.batch() as batch:
            for name in names:
                assert isinstance(intake.take(name, How.COMPLETE, batch), Stored)
            stored, failure = intake.commit_group(batch)
        assert failure is None and [item.drop for item in stored] == names
        handles["b.json"].write(b"\n")  # after its copy was stored: still valid, longer
        handles["b.json"].flush()
        with caplog.at_level(logging.WARNING, logger="ingester.watcher"):
            assert intake.release(stored) == [None, None, None, None]
    assert "b.json was written to after it was stored; taking it again" in caplog.text
    assert os.listdir(spool.claimed_dir) == []
    assert (spool.dir / "b.json").read_bytes() == payload(1) + b"\n"
    assert sorted(os.listdir(spool.dir)) == [".claimed", "b.json", "rejected", "tmp"]
    assert sorted(v.read_bytes() for v in versions(tmp_path)) == sorted(
        payload(n) for n in range(4)
    )


@pytest.mark.parametrize("done", [0, 16 << 20, 48 << 20], ids=["at its start", "midway", "past"])
def test_a_stop_gives_up_a_copy_into_the_quarantine_at_its_next_word_of_progress(
    tmp_path: Path, done: int
) -> None:
    """Once a stop is asked, a copy into a quarantine on another filesystem is given up at
    its next piece, its start included, and also past the data counted when it began (a
    drop still growing has no end to wait for); never a ping after the stop."""
    from ingester.history.durable import CopyAbandoned
    from ingester.intake.set_aside import SetAside
    from ingester.runtime.signals import StopFlag

    pings: list[int] = []
    stop = StopFlag()
    progress = SetAside(Spool(tmp_path / "spool"), lambda: pings.append(1), stop)._copy_progress(
        "big.json"
    )
    progress(16 << 20, 32 << 20)  # no stop yet: the loop hears of the piece
    assert pings == [1]
    stop.set()
    with pytest.raises(CopyAbandoned) as abandoned:
        progress(done, 32 << 20)
    assert (abandoned.value.done, abandoned.value.total) == (done, 32 << 20)
    assert pings == [1]


def test_a_drop_that_cannot_be_claimed_keeps_no_name_from_later_drops(
    tmp_path: Path, can_chattr: None
) -> None:
    """A drop that cannot be moved (immutable) is tried again and again, each try with a
    fresh version name. A name no claim was made under is given back: kept, they would
    pile up for as long as the drop waits (one per retry, for days)."""
    store, spool, intake = started_intake(tmp_path)
    stuck = drop(spool.dir, "stuck.json", payload(1))
    with immutable(stuck):
        for _ in range(50):
            with store.batch() as batch:
                assert not isinstance(intake.take("stuck.json", How.COMPLETE, batch), Stored)
        assert store._ledger.handed == []  # what the store keeps from later names
    with store.batch() as batch:
        taken = intake.take("stuck.json", How.COMPLETE, batch)
    assert isinstance(taken, Stored)  # taken once it can be moved
