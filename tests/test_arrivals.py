"""The arrival events, and the facts about inotify and watchdog we rely on.

``arrivals.py`` reads the spool's inotify descriptor itself, through watchdog's bindings
and constants, and polls through watchdog's observer; if the kernel or a watchdog release
reports something else than these tests expect, they fail instead of the watcher
silently missing drops.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import INOTIFY_QUEUE_KNOB, IS_ROOT, inotify_queue_limit, wait_for
from support.capabilities import STRACE, needs_strace_root, tmpfs
from support.signals import survives_a_storm

from ingester.intake.arrivals import (
    Arrival,
    Arrivals,
    DropSeen,
    FolderSeen,
    How,
    RescanNeeded,
    SpoolGone,
    start_arrivals,
)


class Events:
    """What a source reported so far, as the watcher's loop takes it."""

    def __init__(self, source: Arrivals) -> None:
        self.source = source
        self.seen: list[Arrival] = []

    def until(self, expected: Arrival, timeout: float = 10.0) -> list[Arrival]:
        def arrived() -> bool:
            self.seen += self.source.wait(0.05)
            return expected in self.seen

        wait_for(arrived, timeout, f"{expected} among the events")
        return self.seen


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    folder = tmp_path / "spool"
    folder.mkdir()
    return folder


@pytest.fixture
def inotify(spool: Path) -> Iterator[Arrivals]:
    """The inotify source on ``spool``, stopped after the test."""
    arrivals = start_arrivals(spool, polling=False, poll_interval=1.0)
    yield arrivals
    arrivals.stop()


def test_a_rename_into_the_spool_is_complete_at_once(spool: Path, inotify: Arrivals) -> None:
    events = Events(inotify)
    (spool.parent / "staged").write_bytes(b"{}")
    os.rename(spool.parent / "staged", spool / "a.json")
    assert events.until(DropSeen("a.json", How.COMPLETE)) == [DropSeen("a.json", How.COMPLETE)]


def test_a_write_in_place_is_created_then_complete_on_close(spool: Path, inotify: Arrivals) -> None:
    events = Events(inotify)
    with (spool / "b.json").open("wb") as handle:
        events.until(DropSeen("b.json", How.CREATED))
        handle.write(b"{}")
    seen = events.until(DropSeen("b.json", How.COMPLETE))
    assert seen.index(DropSeen("b.json", How.CREATED)) < seen.index(
        DropSeen("b.json", How.COMPLETE)
    )


def test_only_published_names_are_reported(spool: Path, inotify: Arrivals) -> None:
    events = Events(inotify)
    (spool / ".hidden.json").write_bytes(b"{}")
    (spool / "notes.txt").write_bytes(b"x")
    (spool / "folder.json").mkdir()
    (spool / "last.json").write_bytes(b"{}")
    seen = events.until(DropSeen("last.json", How.COMPLETE))
    assert FolderSeen("folder.json") in seen
    names = {getattr(e, "name", None) for e in seen}
    assert names == {"folder.json", "last.json"}


def test_the_spool_removed_is_reported_and_the_source_goes_deaf(
    spool: Path, inotify: Arrivals
) -> None:
    events = Events(inotify)
    spool.rmdir()
    events.until(SpoolGone())
    assert not inotify.is_alive()


def test_one_overflow_asks_for_one_rescan(spool: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The kernel's queue overflows while nobody reads: one rescan asked, the source
    alive, the drops after it reported as before, and nothing said at WARNING or above
    (the watcher says the one line, as it rescans)."""
    if not os.access(INOTIFY_QUEUE_KNOB, os.W_OK):
        pytest.skip(f"cannot change {INOTIFY_QUEUE_KNOB}")
    with inotify_queue_limit(16):
        arrivals = start_arrivals(spool, polling=False, poll_interval=1.0)  # taken here
    events = Events(arrivals)
    try:
        with caplog.at_level(logging.WARNING):
            for i in range(50):  # nothing reads yet: the kernel's queue fills
                (spool / f"o{i}.json").write_bytes(b"{}")
            events.until(RescanNeeded("inotify queue overflow"))
            (spool.parent / "staged").write_bytes(b"{}")
            os.rename(spool.parent / "staged", spool / "after.json")
            seen = events.until(DropSeen("after.json", How.COMPLETE))
        assert seen.count(RescanNeeded("inotify queue overflow")) == 1, seen
        assert [r.getMessage() for r in caplog.records] == []
        assert arrivals.is_alive()
    finally:
        arrivals.stop()


def test_polling_reports_every_drop_as_one_to_let_settle(spool: Path) -> None:
    arrivals = start_arrivals(spool, polling=True, poll_interval=0.1)
    events = Events(arrivals)
    try:
        (spool / "p.json").write_bytes(b"{}")
        events.until(DropSeen("p.json", How.SETTLE))
        assert arrivals.is_alive()
    finally:
        arrivals.stop()


_WAITER = """
import signal, sys, tempfile
from ingester.intake.arrivals import start_arrivals

signal.signal(signal.SIGUSR1, lambda signum, frame: None)
with tempfile.TemporaryDirectory() as spool:
    arrivals = start_arrivals(spool, polling=POLLING, poll_interval=0.1)
    print("ready", flush=True)
    for _ in range(1500):
        assert arrivals.wait(0.001) == []
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the ones still coming as it exits
    arrivals.stop()
print("done", flush=True)
"""


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_a_timed_wait_for_arrivals_ends_while_signals_keep_coming(polling: bool) -> None:
    """The loop's wait for arrivals must end at its deadline even when a signal lands
    at that deadline: a wait that does not would leave the watcher deaf to SIGTERM
    until the next drop. Short waits and a signal every few hundred µs make that
    instant come within a run (``queue.SimpleQueue``, which polling's queue replaced,
    hung in every run)."""
    script = _WAITER.replace("POLLING", str(polling))
    # Up to 60,000 signals: about 30 s of them, far more than the waits need.
    survives_a_storm(script, (signal.SIGUSR1,), 60_000, 7, "a timed wait for arrivals")


def test_arrivals_come_in_order_many_reads_to_a_wait_and_a_long_queue_over_several(
    spool: Path,
) -> None:
    """A burst whose events fill several reads of the descriptor is reported whole, in
    the order it came: one wait takes several reads' worth, but not without end (the
    loop must get back to its stop checks), and the next waits take the rest."""
    arrivals = start_arrivals(spool, polling=False, poll_interval=1.0)
    # Long names: about 270 bytes of event per drop, 4,500 drops: 1.2 MB to read, more
    # than one wait takes (1 MiB); one read takes 64 KiB, about 240 events.
    names = [f"{i:05d}-{'x' * 240}.json" for i in range(4_500)]
    staged = spool.parent / "staged"
    try:
        for name in names:
            staged.write_bytes(b"{}")
            os.rename(staged, spool / name)
        first = arrivals.wait(5.0)  # every event is queued once its rename returned
        assert 2_000 < len(first) < len(names)
        seen = Events(arrivals)
        seen.seen = first
        assert seen.until(DropSeen(names[-1], How.COMPLETE)) == [
            DropSeen(name, How.COMPLETE) for name in names
        ]
    finally:
        arrivals.stop()


@pytest.mark.skipif(not IS_ROOT, reason="mounting a tmpfs needs root")
def test_a_spool_unmounted_from_under_its_watch_goes_deaf(tmp_path: Path) -> None:
    """The kernel ends the watch (IN_UNMOUNT, then IN_IGNORED) with no event of the folder
    itself: the source must say it is dead, for the watcher to restart it."""
    with tmpfs(tmp_path / "spool") as spool:
        arrivals = start_arrivals(spool, polling=False, poll_interval=1.0)
    try:
        wait_for(lambda: not (arrivals.wait(0.05) or arrivals.is_alive()), what="the source deaf")
        assert arrivals.failure is None  # nothing failed: the watch ended
    finally:
        arrivals.stop()


def test_a_failed_or_stopped_source_waits_out_its_deadline(spool: Path) -> None:
    """A source that cannot read says why and is dead; waiting on it then sleeps until
    the deadline, as a live one with nothing to report does: the loop, which checks its
    source's liveness only once it is ready, must not spin on it before."""
    arrivals = start_arrivals(spool, polling=False, poll_interval=1.0)
    try:
        (descriptor,) = [p for p in Path("/proc/self/fd").iterdir() if _is_inotify(p)]
        os.close(int(descriptor.name))  # the descriptor lost from under it: EBADF
        assert arrivals.wait(1.0) == []
        assert not arrivals.is_alive()
        assert arrivals.failure == "cannot read its inotify events: Bad file descriptor [EBADF]"
        for source in (arrivals, start_arrivals(spool, polling=False, poll_interval=1.0)):
            source.stop()
            started = time.monotonic()
            assert source.wait(0.2) == []
            assert time.monotonic() - started >= 0.2
    finally:
        arrivals.stop()


def test_the_inotify_descriptor_is_not_left_to_programs_the_watcher_starts(
    spool: Path, inotify: Arrivals
) -> None:
    """A hook or a backup tool the process starts must not keep the spool's watch."""
    listing = subprocess.run(
        ["find", "/proc/self/fd", "-lname", "anon_inode:inotify"],
        close_fds=False,
        capture_output=True,
        text=True,
        check=True,
    )
    own = [p for p in Path("/proc/self/fd").iterdir() if _is_inotify(p)]
    assert own, "the source holds no inotify descriptor: the test proves nothing"
    assert listing.stdout == ""


@needs_strace_root
def test_the_inotify_descriptor_is_close_on_exec_from_its_first_instant(spool: Path) -> None:
    """Made close-on-exec in the call that makes it (inotify_init1), not by a second
    call after it: a program another thread starts in between would keep the watch."""
    code = (
        "import sys; from pathlib import Path; "
        "from ingester.intake.arrivals import start_arrivals; "
        "start_arrivals(Path(sys.argv[1]), polling=False, poll_interval=1.0).stop()"
    )
    trace = [STRACE, "-f", "-e", "trace=inotify_init,inotify_init1"]
    traced = subprocess.run(
        [*trace, sys.executable, "-c", code, str(spool)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert traced.returncode == 0, traced.stderr[-2000:]
    calls = [line for line in traced.stderr.splitlines() if "inotify_init" in line]
    assert len(calls) == 1, calls
    assert "inotify_init1(" in calls[0] and "IN_CLOEXEC" in calls[0], calls
    assert "IN_NONBLOCK" in calls[0], calls


def _is_inotify(fd: Path) -> bool:
    try:
        return os.readlink(fd) == "anon_inode:inotify"
    except OSError:
        return False  # the listing's own descriptor, closed by now


def test_a_spool_that_cannot_be_watched_is_an_os_error_naming_the_cause(tmp_path: Path) -> None:
    with pytest.raises(OSError) as caught:
        start_arrivals(tmp_path / "missing", polling=False, poll_interval=1.0)
    assert caught.value.errno == errno.ENOENT
    assert caught.value.strerror == os.strerror(errno.ENOENT)
