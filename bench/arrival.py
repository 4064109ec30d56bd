"""How soon a drop renamed into the spool is seen: our source, watchdog's reader, a plain read.

    python bench/arrival.py                # all three, 150 renames each, in $TMPDIR or /tmp
    python bench/arrival.py --renames 300 --dir /mnt/data

A child process renames files into a folder, one at a time with an idle gap of 25-75
ms before each (as bench_watch.py's latency rounds do), and notes the time of each
rename. Three readers watch the folder, one after the other:

* **ours**: ``ingester.intake.arrivals``'s inotify source, waited on by the main thread
  as the watcher's loop waits on it; the time is taken as ``wait`` returns.
* **watchdog**: its ``InotifyFD`` reader, as the watcher ran it before (a reader thread
  hands what it reads to a dispatcher thread, which calls a callback); the time is taken
  in the callback. The watcher's loop then took it from a queue, one hand-off later
  still (``bench/drop_timeline.py`` of then, "the loop takes it").
* **plain**: the main thread blocked in ``read`` on an inotify descriptor of its own
  (``inotify_init1`` through ctypes, as ``bench/floor.py`` does); the time is taken as
  the read returns.

Prints, for each, the median and the 90th percentile of the time from the rename to
that first sight, in µs, leaving out the first five renames (warm-up). The clocks are
the same: ``time.perf_counter`` is CLOCK_MONOTONIC in both processes. A measuring tool,
not a test.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from watchdog.observers.inotify_c import CallbackId, InotifyConstants, InotifyFD, Mask

from ingester.intake.arrivals import DropSeen, start_arrivals

_RENAMER = """
import os, random, sys, time
tmp, spool, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = []
for i in range(n):
    path = os.path.join(tmp, f"f{i}.json")
    with open(path, "w") as f:
        f.write("{}")
    time.sleep(random.uniform(0.025, 0.075))
    times.append(time.perf_counter())
    os.rename(path, os.path.join(spool, f"f{i}.json"))
print(" ".join(map(str, times)))
"""


def _renames(tmp: Path, spool: Path, n: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", _RENAMER, str(tmp), str(spool), str(n)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


class _Seen:
    """watchdog's WatchCallback protocol: notes when each name is first seen."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def on_event(self, event: Any) -> None:
        self.at.setdefault(os.fsdecode(event.name), time.perf_counter())

    def on_watch_deleted(self, wd: Any) -> None:
        pass

    def on_queue_overflow(self) -> None:
        pass

    def on_events_lost(self) -> None:
        pass


def watchdog_reader(tmp: Path, spool: Path, n: int) -> list[float]:
    seen = _Seen()
    reader = InotifyFD()
    mask = Mask(InotifyConstants.IN_MOVED_TO)
    reader.add_callback(os.fsencode(spool), mask, seen, CallbackId(id(seen)))
    reader.start()
    try:
        renamed = _renames(tmp, spool, n).communicate()[0].split()
        deadline = time.monotonic() + 5
        while len(seen.at) < n and time.monotonic() < deadline:  # the last may be in flight
            time.sleep(0.01)
    finally:
        reader.stop()
        reader.join(5)
    return [seen.at[f"f{i}.json"] - float(t) for i, t in enumerate(renamed)]


def our_reader(tmp: Path, spool: Path, n: int) -> list[float]:
    source = start_arrivals(spool, polling=False, poll_interval=1.0)
    seen: dict[str, float] = {}
    child = _renames(tmp, spool, n)
    try:
        while len(seen) < n:
            arrivals = source.wait(0.25)
            now = time.perf_counter()
            for arrival in arrivals:
                if isinstance(arrival, DropSeen):
                    seen.setdefault(arrival.name, now)
        renamed = child.communicate()[0].split()
    finally:
        source.stop()
    return [seen[f"f{i}.json"] - float(t) for i, t in enumerate(renamed)]


def plain_reader(tmp: Path, spool: Path, n: int) -> list[float]:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, os.fsencode(spool), 0x80) < 0:  # IN_MOVED_TO
        raise OSError(ctypes.get_errno(), "inotify")
    seen: dict[str, float] = {}
    child = _renames(tmp, spool, n)
    try:
        while len(seen) < n:
            buffer = os.read(fd, 65536)
            now = time.perf_counter()
            offset = 0
            while offset < len(buffer):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", buffer, offset)
                name = buffer[offset + 16 : offset + 16 + length].rstrip(b"\0")
                seen.setdefault(os.fsdecode(name), now)
                offset += 16 + length
        renamed = child.communicate()[0].split()
    finally:
        os.close(fd)
    return [seen[f"f{i}.json"] - float(t) for i, t in enumerate(renamed)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renames", type=int, default=150, help="renames per reader")
    parser.add_argument("--dir", type=Path, default=None, help="where to make the folders")
    args = parser.parse_args()
    readers = (("ours", our_reader), ("watchdog", watchdog_reader), ("plain", plain_reader))
    for name, reader in readers:
        with tempfile.TemporaryDirectory(dir=args.dir) as base:
            tmp, spool = Path(base, "tmp"), Path(base, "spool")
            tmp.mkdir()
            spool.mkdir()
            delays = sorted(d * 1e6 for d in reader(tmp, spool, args.renames)[5:])
        p50, p90 = statistics.median(delays), delays[int(0.9 * len(delays))]
        print(f"{name:9} rename -> seen: p50 {p50:5.0f} µs, p90 {p90:5.0f} µs")


if __name__ == "__main__":
    main()
