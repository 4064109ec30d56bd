"""A complete drop that waits behind an older one still settling (SPEC §3: arrival order),
looked at by a hostile writer: what was known of it when it was held must still be true
when it is taken. Real watcher, real files."""

from __future__ import annotations

import os
import time
from pathlib import Path

from support import wait_for
from support.capabilities import immutable
from support.watchproc import WatchProcess, drop, payload, versions


def _settling_drop(spool: Path, name: str, data: bytes, ahead: float) -> Path:
    """A drop found by the start's scan that must wait to settle: its mtime ``ahead``
    seconds in the future (a writer's clock ahead), so it waits the settle time from its
    first look, however slow the start."""
    path = drop(spool, name, data)
    when = time.time() + ahead
    os.utime(path, (when, when))
    return path


def test_a_held_drop_rewritten_in_place_is_not_taken_as_complete(tmp_path: Path) -> None:
    """A drop renamed in (complete) is held behind an older settling one; meanwhile its
    writer opens it again, truncates it and writes half of a new payload. When the hold
    ends it must be judged as it is now (open for writing: wait), never set aside half
    written as if the rename still vouched for it."""
    root = tmp_path / "root"
    spool = root / "spool"
    older = payload(1)
    _settling_drop(spool, "older.json", older, ahead=2)
    with WatchProcess(root, "--settle", "3", global_args=("-v",)) as watcher:
        watcher.wait_log("rescanned the spool (start): 1 candidate(s)")
        newer = drop(spool, "newer.json", payload(2))
        when = time.time() + 10  # newer than the older drop's future mtime
        os.utime(newer, (when, when))
        watcher.wait_log("newer.json waits for older.json")
        rewritten = payload(3, note="x" * 200)
        fd = os.open(newer, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, rewritten[:40])
            # Its hold ends as the older drop is looked at: it is looked at again.
            watcher.wait_log("newer.json is looked at again after waiting for older drops")
            os.write(fd, rewritten[40:])
        finally:
            os.close(fd)
        _stored_or_set_aside(root, watcher)
    assert not list((spool / "rejected").iterdir()), watcher.log
    assert [v.read_bytes() for v in versions(root)] == [older, rewritten]


def test_a_held_drop_waits_no_longer_than_the_bound_under_a_stream_of_settling_drops(
    tmp_path: Path,
) -> None:
    """A drop whose writer's clock is an hour ahead is newer than every drop that comes
    after it for that hour. Polled, each of those settles first, and a steady stream of
    them keeps one settling at every look: each holds it for less than the bound, but
    it must not wait behind all of them, for as long as the stream lasts. (The stream's
    drops are dated ahead too, less far, so that each waits the settle time from its
    first look, longer than the polling's interval: one settles at every look.)"""
    root = tmp_path / "root"
    spool = root / "spool"
    with WatchProcess(root, "--polling", "--settle", "1.5", global_args=("-v",)) as watcher:
        watcher.wait_log("watching ")
        ahead = payload(0)
        held = drop(spool, "ahead.json", ahead)
        when = time.time() + 3600
        os.utime(held, (when, when))
        stored_with_stream_running = False
        deadline = time.monotonic() + 30
        n = 0
        while time.monotonic() < deadline:
            if ahead in {v.read_bytes() for v in versions(root)}:
                stored_with_stream_running = True
                break
            n += 1
            path = drop(spool, f"stream-{n:04d}.json", payload(n))
            os.utime(path, (when - 3000, when - 3000))
            time.sleep(0.25)  # the stream's pace, not a wait for the watcher
        assert watcher.stop() == 0
    assert stored_with_stream_running, watcher.log


def test_a_drop_put_back_after_a_failure_and_rewritten_is_not_taken_as_complete(
    tmp_path: Path, can_chattr: None
) -> None:
    """A drop renamed in (complete) whose group fails (the history refuses new names) is
    put back and waits out the backoff; meanwhile its writer truncates it and writes
    half of a new payload. At its retry it must be judged as it is now, never set
    aside half written."""
    root = tmp_path / "root"
    spool = root / "spool"
    with WatchProcess(root, "--retry-max", "1", global_args=("-v",)) as watcher:
        watcher.wait_log("watching ")
        history = root / "console-usage-history"
        rewritten = payload(3, note="x" * 200)
        with immutable(history):
            first = drop(spool, "a.json", payload(1))
            # Its group's failure, not the metadata's, which may come first: truncated
            # before its first look, a.json would be judged as it is (no put-back).
            watcher.wait_log("cannot store drop a.json")
            fd = os.open(first, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, rewritten[:40])
            # Behind it in arrival order: once this one is stored, a.json was retried.
            drop(spool, "b.json", payload(2))
            watcher.wait_log("ingested b.json")
            os.write(fd, rewritten[40:])
        finally:
            os.close(fd)
        _stored_or_set_aside(root, watcher)
    assert not list((spool / "rejected").iterdir()), watcher.log
    assert sorted(v.read_bytes() for v in versions(root)) == sorted([payload(2), rewritten])


def _stored_or_set_aside(root: Path, watcher: WatchProcess) -> None:
    """Wait until the rewritten drop is judged (a second version, or anything set aside),
    then stop the watcher."""
    rejected = root / "spool" / "rejected"
    wait_for(
        lambda: len(versions(root)) == 2 or any(rejected.iterdir()),
        30,
        "the rewritten drop stored (or set aside)",
    )
    assert watcher.stop() == 0
