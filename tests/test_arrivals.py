"""The arrival events, and the facts about watchdog's inotify internals we rely on.

``arrivals.py`` is the only module using watchdog's undocumented ``InotifyFD``; if a
watchdog release changes what it reports, these tests fail instead of the watcher
silently missing drops.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
from pathlib import Path

import pytest
from support import INOTIFY_QUEUE_KNOB, inotify_queue_limit, wait_for
from support.signals import survives_a_storm

from ingester.intake.arrivals import (
    Arrival,
    DropSeen,
    FolderSeen,
    How,
    RescanNeeded,
    SpoolGone,
    _InotifyArrivals,
    start_arrivals,
)


class Events:
    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Arrival] = queue.SimpleQueue()
        self.seen: list[Arrival] = []

    def put(self, item: Arrival) -> None:
        self.queue.put(item)

    def until(self, expected: Arrival, timeout: float = 10.0) -> list[Arrival]:
        def arrived() -> bool:
            while True:
                try:
                    self.seen.append(self.queue.get_nowait())
                except queue.Empty:
                    return expected in self.seen

        wait_for(arrived, timeout, f"{expected} among the events")
        return self.seen


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    folder = tmp_path / "spool"
    folder.mkdir()
    return folder


def test_a_rename_into_the_spool_is_complete_at_once(spool: Path) -> None:
    events = Events()
    arrivals = start_arrivals(spool, events.put, polling=False, poll_interval=1.0)
    try:
        (spool.parent / "staged").write_bytes(b"{}")
        os.rename(spool.parent / "staged", spool / "a.json")
        assert events.until(DropSeen("a.json", How.COMPLETE)) == [DropSeen("a.json", How.COMPLETE)]
    finally:
        arrivals.stop()
        arrivals.join(2)


def test_a_write_in_place_is_created_then_complete_on_close(spool: Path) -> None:
    events = Events()
    arrivals = start_arrivals(spool, events.put, polling=False, poll_interval=1.0)
    try:
        with (spool / "b.json").open("wb") as handle:
            events.until(DropSeen("b.json", How.CREATED))
            handle.write(b"{}")
        seen = events.until(DropSeen("b.json", How.COMPLETE))
        assert seen.index(DropSeen("b.json", How.CREATED)) < seen.index(
            DropSeen("b.json", How.COMPLETE)
        )
    finally:
        arrivals.stop()
        arrivals.join(2)


def test_only_published_names_are_reported(spool: Path) -> None:
    events = Events()
    arrivals = start_arrivals(spool, events.put, polling=False, poll_interval=1.0)
    try:
        (spool / ".hidden.json").write_bytes(b"{}")
        (spool / "notes.txt").write_bytes(b"x")
        (spool / "folder.json").mkdir()
        (spool / "last.json").write_bytes(b"{}")
        seen = events.until(DropSeen("last.json", How.COMPLETE))
        assert FolderSeen("folder.json") in seen
        names = {getattr(e, "name", None) for e in seen}
        assert names == {"folder.json", "last.json"}
    finally:
        arrivals.stop()
        arrivals.join(2)


def test_the_spool_removed_is_reported_and_the_source_goes_deaf(spool: Path) -> None:
    events = Events()
    arrivals = start_arrivals(spool, events.put, polling=False, poll_interval=1.0)
    try:
        spool.rmdir()
        events.until(SpoolGone())
        wait_for(lambda: not arrivals.is_alive(), what="the source reports itself dead")
    finally:
        arrivals.stop()
        arrivals.join(2)


def test_one_overflow_asks_for_one_rescan_and_logs_one_warning(
    spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """watchdog 7.1.0 calls ``on_queue_overflow``; 7.1.1 calls it, then ``on_events_lost``.

    Either way: one rescan asked, watchdog's one WARNING, no exception on its thread (the
    suite turns an exception on any thread into a failure).
    """
    if not os.access(INOTIFY_QUEUE_KNOB, os.W_OK):
        pytest.skip(f"cannot change {INOTIFY_QUEUE_KNOB}")
    events = Events()
    with inotify_queue_limit(16):
        arrivals = _InotifyArrivals(spool, events.put)  # the limit is taken here
    try:
        for i in range(50):  # the reader is not started yet: the kernel's queue fills
            (spool / f"o{i}.json").write_bytes(b"{}")
        with caplog.at_level(logging.WARNING, logger="watchdog"):
            arrivals.start()
            events.until(RescanNeeded("inotify queue overflow"))
            # Callbacks run in order on one thread: once a later drop is reported, every
            # hook of the overflow has returned.
            (spool.parent / "staged").write_bytes(b"{}")
            os.rename(spool.parent / "staged", spool / "after.json")
            seen = events.until(DropSeen("after.json", How.COMPLETE))
        assert seen.count(RescanNeeded("inotify queue overflow")) == 1, seen
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert warnings == ["Inotify queue overflowed; filesystem events were lost"]
        assert arrivals.is_alive()
    finally:
        arrivals.stop()
        arrivals.join(2)


def test_polling_reports_every_drop_as_one_to_let_settle(spool: Path) -> None:
    events = Events()
    arrivals = start_arrivals(spool, events.put, polling=True, poll_interval=0.1)
    try:
        (spool / "p.json").write_bytes(b"{}")
        events.until(DropSeen("p.json", How.SETTLE))
        assert arrivals.is_alive()
    finally:
        arrivals.stop()
        arrivals.join(2)


_WAITER = """
import signal, sys
from ingester.intake.arrivals import arrival_queue

signal.signal(signal.SIGUSR1, lambda signum, frame: None)
events = arrival_queue()
print("ready", flush=True)
for _ in range(1500):
    try:
        events.get(timeout=0.001)
    except Exception:
        pass
signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the ones still coming as it exits
print("done", flush=True)
"""


def test_a_timed_wait_on_the_arrival_queue_ends_while_signals_keep_coming() -> None:
    """The loop's wait for arrivals must end at its deadline even when a signal lands
    at that deadline: a wait that does not would leave the watcher deaf to SIGTERM
    until the next drop. Short waits and a signal every few hundred µs make that
    instant come within a run (the queue it replaced hung in every run)."""

    # Up to 60,000 signals: about 30 s of them, far more than the waits need.
    survives_a_storm(_WAITER, (signal.SIGUSR1,), 60_000, 7, "a timed get on the arrival queue")
