"""Does a save plus its cleanup cost the same with 20,000 versions as with 100?

Run from a checkout after ``pip install -e .``::

    python bench/bench_store.py [--iterations 1000] [--big 20000] [--small 100] [--dir DIR]

Two histories are built in temp folders, each in its **steady state** under the default
policy (newest 100 or within 7 days): ``M`` versions, one every ``7 days / M``, so the
oldest is just about to expire. The store's clock is simulated and moves on by that
spacing before every operation, so each ``save_version`` + ``cleanup_old_versions``
adds one version and deletes about one, and the history stays at ``M`` versions, as it
would in service. With 100 versions it is the newest-N rule that holds the count, with
20,000 the 7-day window (a scraper syncing every 30 s).

Both stores live in the same process and their operations are interleaved, so drift
in the machine (other load, the disk's write cache) hits both alike. Each operation is
timed on its own (it includes the fsyncs of the version file, the folder, the latest
link and the metadata); the medians are compared. Goal: ratio <= 1.3.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ingester import HistoryStore, RetentionPolicy
from ingester.history.names import generate_version_filename

PAYLOAD = (
    b'{"currentSession": {"resetsIn": "4 hr 12 min", "percentageUsed": 23}, '
    b'"weeklyLimits": {"allModels": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 41}, '
    b'"sonnetOnly": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 7}}, '
    b'"lastUpdated": "2026-11-27T14:05:00Z"}\n'
)
START = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class SimulatedClock:
    """The store's clock: moved on by hand, one spacing per operation."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Case:
    """One history of ``size`` versions in its steady state, and its timings."""

    size: int
    folder: Path
    policy: RetentionPolicy
    clock: SimulatedClock = field(init=False)
    store: HistoryStore = field(init=False)
    step: timedelta = field(init=False)
    times: list[float] = field(default_factory=list)
    deleted: int = 0
    ops: int = 0

    def __post_init__(self) -> None:
        self.step = timedelta(days=self.policy.retention_days) / self.size
        self.clock = SimulatedClock(START)
        history = self.folder / "console-usage-history"
        history.mkdir(parents=True)
        previous: str | None = None
        for k in range(self.size, 0, -1):  # oldest first, the newest one step before START
            name = generate_version_filename(START - k * self.step, after=previous)
            fd = os.open(history / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            os.write(fd, PAYLOAD)
            os.close(fd)
            previous = name
        self.store = HistoryStore(
            history, self.folder / "console-usage-synced.json", self.policy, clock=self.clock
        )
        self.store.initialize()  # the one scan at start: not part of the measurement

    def op(self, *, timed: bool = True) -> None:
        """One save and its cleanup, the clock moved on by one spacing first."""
        self.clock.now += self.step
        started = time.perf_counter()
        self.store.save_version(PAYLOAD)
        result = self.store.cleanup_old_versions()
        elapsed = time.perf_counter() - started
        if timed:
            self.times.append(elapsed)
            self.deleted += len(result.deleted)
            self.ops += 1

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000

    def count(self) -> int:
        return self.store.get_storage_metadata().version_count


def filesystem_of(path: Path) -> str:
    """The type of the filesystem ``path`` is on, from /proc/mounts (Linux), best effort."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return f"{kind} (mounted at {best})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=1000, help="timed ops per history")
    parser.add_argument("--warmup", type=int, default=20, help="untimed ops per history first")
    parser.add_argument("--big", type=int, default=20_000, help="versions in the big history")
    parser.add_argument("--small", type=int, default=100, help="versions in the small history")
    parser.add_argument("--dir", type=Path, default=None, help="where to build the histories")
    args = parser.parse_args(argv)

    policy = RetentionPolicy()  # the defaults: newest 100 or within 7 days
    base = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    try:
        print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}")
        print(f"python:  {platform.python_version()} on {platform.system()} {platform.release()}")
        print(f"folder:  {base} on {filesystem_of(base)}")
        print(f"policy:  newest {policy.max_versions} or within {policy.retention_days:g} days")
        built = time.perf_counter()
        small = Case(args.small, base / "small", policy)
        big = Case(args.big, base / "big", policy)
        print(
            f"built histories of {small.size} and {big.size} versions "
            f"in {time.perf_counter() - built:.1f} s"
        )
        for _ in range(args.warmup):
            small.op(timed=False)
            big.op(timed=False)
        for i in range(args.iterations):
            # Interleaved, alternating which goes first, so drift hits both alike.
            first, second = (small, big) if i % 2 == 0 else (big, small)
            first.op()
            second.op()
        print()
        print(
            f"{'versions':>9}  {'ops':>5}  {'median ms':>9}  {'p90 ms':>7}  "
            f"{'deleted/op':>10}  {'count after':>11}"
        )
        for case in (small, big):
            p90 = statistics.quantiles(case.times, n=10)[-1] * 1000
            print(
                f"{case.size:>9}  {case.ops:>5}  {case.median_ms:>9.3f}  {p90:>7.3f}  "
                f"{case.deleted / case.ops:>10.2f}  {case.count():>11}"
            )
        ratio = big.median_ms / small.median_ms
        verdict = "goal met" if ratio <= 1.3 else "GOAL MISSED"
        print()
        print(
            f"ratio (median {big.size} / median {small.size}): {ratio:.2f}  "
            f"(goal <= 1.3: {verdict})"
        )
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
