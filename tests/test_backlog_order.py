"""Drops are stored in the order they arrived, across a restart too (SPEC §3).

Another user's drops found at start cannot be leased (only their owner or CAP_LEASE
may), so they are judged complete by staying unchanged for the settle time. A drop that
arrives meanwhile (renamed in: complete at once) must still wait for them: stored first,
it would leave the latest link naming older data than the newest drop. Real uids: the
watcher runs as another user (``setpriv``), the older drops are root's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_for
from support.capabilities import AS_OTHER, OTHER_UID, immutable, other_user_problem, others_folder
from support.watchproc import WatchProcess, drop, latest_bytes, payload, versions

needs_other_user = pytest.mark.skipif(
    other_user_problem() is not None, reason=str(other_user_problem())
)


@pytest.fixture
def root() -> Iterator[Path]:
    with others_folder("backlog-order-") as folder:
        spool = folder / "spool"
        spool.mkdir()
        os.chown(spool, OTHER_UID, OTHER_UID)
        yield folder


@needs_other_user
def test_a_new_drop_waits_for_the_older_drops_of_another_user(root: Path) -> None:
    spool = root / "spool"
    older = [payload(n) for n in range(3)]
    now = time.time()
    for n, data in enumerate(older):
        # The scraper's, submitted while the watcher was stopped, oldest first.
        path = drop(spool, f"older-{n}.json", data)
        os.utime(path, (now - 3 + n, now - 3 + n))
    newest = payload(99)
    with WatchProcess(
        root, "--settle", "2", global_args=("-v",), wrapper=tuple(AS_OTHER)
    ) as watcher:
        watcher.wait_log("rescanned the spool (start): 3 candidate(s)")
        # A drop of the watcher's own user (a POST, a same-user submit), renamed in: it
        # is known complete at once, while the older ones still settle.
        drop(spool, "newest.json", newest, owner=(OTHER_UID, OTHER_UID))
        wait_for(lambda: len(versions(root)) == 4, 30, "4 versions")
        assert watcher.stop() == 0
    assert [v.read_bytes() for v in versions(root)] == [*older, newest]
    assert latest_bytes(root) == newest


def test_an_older_drop_that_cannot_be_taken_holds_no_newer_one(
    tmp_path: Path, can_chattr: None
) -> None:
    """A drop that waits out a failure of its own (here it cannot be claimed: immutable)
    must not stall the spool for its backoff: the newer drop is stored meanwhile."""
    root = tmp_path / "root"
    spool = root / "spool"
    stuck = drop(spool, "older.json", payload(1))
    newest = payload(2)
    with immutable(stuck), WatchProcess(root, "--settle", "2", global_args=("-v",)) as watcher:
        watcher.wait_log("rescanned the spool (start): 1 candidate(s)")
        drop(spool, "newest.json", newest)
        wait_for(lambda: len(versions(root)) == 1, 30, "the newer drop stored")
        assert "cannot take drop older.json" in watcher.log
        assert watcher.stop() == 0
    assert [v.read_bytes() for v in versions(root)] == [newest]
    assert stuck.exists()
