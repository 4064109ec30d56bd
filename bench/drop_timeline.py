"""Where one drop's latency goes: the watcher's steps, timed from the inotify event.

Runs the real watcher (``ingester watch``) in this process on a fresh temp root, with
timers wrapped around the steps of the drop path (the names below); a child process
makes single drops, one at a time with an idle gap before each (as bench_watch.py's
latency rounds do), then stops the watcher with SIGTERM. Prints, for each step, the
median time from the inotify event to its start and its median duration, in µs.

    python bench/drop_timeline.py                   # 60 drops of our own user
    python bench/drop_timeline.py --foreign-drops 65534   # copied drops (as root)
    python bench/drop_timeline.py --floor           # the floor ingester (bench/floor.py)

The timers cost about 1 µs each. The first few drops (warm-up) are left out. It is a
measuring tool, not a test: a step renamed in the code makes it fail at start.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"

# (module, attribute path, label): the drop path in the order a drop meets it.
STEPS = [
    ("ingester.intake.arrivals", "_InotifyArrivals._parse", "inotify event (read by the loop)"),
    ("ingester.intake.watcher", "Watcher._absorb", "the loop takes it"),
    ("ingester.intake.groups", "Backlog.take_group", "the group"),
    ("ingester.intake.intake", "Intake.open_and_judge", "1-2 read and judge"),
    ("ingester.intake.intake", "check_payload", "   the payload's check"),
    ("ingester.intake.intake", "Intake._claim", "3-4 name, claim, seal"),
    ("ingester.intake.intake", "Intake.commit_group", "5-6 fsyncs and link"),
    ("ingester.history.durable", "fsync_each", "   5 the fsyncs"),
    ("ingester.history.batch", "Batch.link", "   6 link (own inode)"),
    ("ingester.history.batch", "Batch.commit", "   6 link (a copy)"),
    ("ingester.history.store", "HistoryStore.update_latest", "7 latest link (visible)"),
    ("ingester.history.batch", "Batch._finish", "7 latest + history fsync"),
    ("ingester.intake.intake", "Intake.release", "8 release the claim"),
]

# The floor's path (bench/floor.py), timed through the calls it makes: it has no steps
# of its own to wrap. Its first fsync is the history folder's; the latest link's rename
# is where a drop becomes visible.
FLOOR_STEPS = [
    ("floor", "Inotify.read", "inotify event"),
    ("floor", "Floor.ingest", "the drop"),
    ("json", "loads", "   json.loads"),
    ("os", "rename", "   rename into the history"),
    ("os", "fsync", "   fsync the history folder"),
    ("os", "symlink", "   temp symlink"),
    ("os", "replace", "   its rename (visible)"),
]

_marks: list[tuple[int, str]] = []


def _timed(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _marks.append((time.perf_counter_ns(), label + ">"))
        try:
            return fn(*args, **kwargs)
        finally:
            _marks.append((time.perf_counter_ns(), label + "<"))

    return wrapper


def _install(steps: list[tuple[str, str, str]]) -> None:
    import importlib

    for module_name, path, label in steps:
        owner: Any = importlib.import_module(module_name)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        step = getattr(owner, name)
        timed = _timed_events if inspect.isgeneratorfunction(step) else _timed
        setattr(owner, name, timed(step, label))


def _timed_events(read: Callable[..., Any], label: str) -> Callable[..., Any]:
    """A generator step (the floor's inotify reader): each item is marked as it is yielded."""

    @functools.wraps(read)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for event in read(*args, **kwargs):
            _marks.append((time.perf_counter_ns(), label + ">"))
            _marks.append((time.perf_counter_ns(), label + "<"))
            yield event

    return wrapper


# The same drops as bench_watch.py's latency rounds (its payload, written and fsynced as
# ingester submit does), made by another process so that its work is not the watcher's.
DROPPER = """
import os, sys, time, random
bench, spool, n, gap, uid = sys.argv[1:6]
sys.path.insert(0, bench)
from watch_support import payload, write_fsynced
n, gap, uid = int(n), float(gap), int(uid)
tmp = os.path.join(spool, "tmp")
os.makedirs(tmp, exist_ok=True)
rng = random.Random(6)
time.sleep(0.5)
for i in range(n):
    path = os.path.join(tmp, f"d{i}.json")
    write_fsynced(path, payload(i))
    if uid >= 0:
        os.chown(path, uid, uid)
    time.sleep(gap * rng.uniform(0.5, 1.5))
    os.rename(path, os.path.join(spool, f"d{i}.json"))
deadline = time.monotonic() + 30
while time.monotonic() < deadline and any(
    e.endswith(".json") for e in os.listdir(spool)
):
    time.sleep(0.05)
time.sleep(0.3)
os.kill(os.getppid(), 15)
"""


def _table(steps: list[tuple[str, str, str]], warmup: int) -> list[tuple[str, float, float, int]]:
    drops: list[list[tuple[int, str]]] = []
    for stamp, mark in _marks:
        if mark == steps[0][2] + ">":
            drops.append([])
        if drops:
            drops[-1].append((stamp, mark))
    starts: dict[str, list[float]] = {}
    lengths: dict[str, list[float]] = {}
    for marks in drops[warmup:]:
        t0 = marks[0][0]
        began: dict[str, int] = {}
        ended: set[str] = set()
        for stamp, mark in marks:
            label, edge = mark[:-1], mark[-1]
            if edge == ">" and label not in began:
                began[label] = stamp
                starts.setdefault(label, []).append((stamp - t0) / 1000)
            elif edge == "<" and label in began and label not in ended:
                ended.add(label)
                lengths.setdefault(label, []).append((stamp - began[label]) / 1000)
    rows = []
    for _module, _path, label in steps:
        if label in starts:
            rows.append(
                (
                    label,
                    statistics.median(starts[label]),
                    statistics.median(lengths.get(label, [0.0])),
                    len(starts[label]),
                )
            )
    return sorted(rows, key=lambda row: row[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drops", type=int, default=60, help="single drops (default 60)")
    parser.add_argument("--gap", type=float, default=0.1, help="mean idle seconds before each")
    parser.add_argument("--warmup", type=int, default=5, help="first drops left out")
    parser.add_argument(
        "--foreign-drops", type=int, default=-1, metavar="UID", help="drops belong to UID"
    )
    parser.add_argument("--floor", action="store_true", help="time the floor, not ours")
    parser.add_argument("--dir", default=None, help="where the temp root goes")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    steps = FLOOR_STEPS if args.floor else STEPS
    sys.path.insert(0, str(BENCH))
    _install(steps)

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="drop-timeline-") as root:
        spool = Path(root, "spool")
        spool.mkdir(mode=0o777)
        os.chmod(spool, 0o777)
        child = subprocess.Popen(
            [
                *(sys.executable, "-c", DROPPER, str(BENCH), str(spool)),
                *(str(args.drops), str(args.gap), str(args.foreign_drops)),
            ]
        )
        try:
            if args.floor:
                import floor

                floor.main([root])
            else:
                from ingester.cli.group import run

                sys.argv = ["ingester", "--root", root, "watch"]
                run()
        except SystemExit:
            pass
        child.wait()
    rows = _table(steps, args.warmup)
    print(f"\n{'step':32} {'starts at':>10} {'takes':>8}   (median µs from the event; n)")
    for label, start, length, n in rows:
        print(f"{label:32} {start:10.0f} {length:8.0f}   {n}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
