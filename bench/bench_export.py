"""Does ``ingester export`` stream, i.e. is its memory flat in the size of the history?

Run from a checkout after ``pip install -e .``::

    python bench/bench_export.py [--big 20000] [--small 2000] [--runs 3] [--dir DIR]

Two histories are built in temp folders (``--small`` and ``--big`` versions, one every
30 s, varied payloads of about 330 bytes). Then the real CLI runs in a subprocess,
``ingester --root R export --format F --output FILE`` for each size and format, ``--runs``
times; the wall time and the child's peak RSS (``wait4``'s ``ru_maxrss``) are reported,
with ``ingester --version`` as the floor (the interpreter and the imports). Flat memory
means: the big history's peak RSS is within a few MiB of the small one's, although it
has ten times the rows; only the sorted list of names (about 100 bytes a version) grows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ingester.history.names import generate_version_filename

START = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)


def payload(i: int) -> bytes:
    body = {
        "currentSession": {"resetsIn": f"{i % 5} hr {i % 60} min", "percentageUsed": i % 101},
        "weeklyLimits": {
            "allModels": {"resetsIn": "Mon 8:59 AM", "percentageUsed": (i * 0.37) % 100},
            "sonnetOnly": {"resetsIn": "Mon 8:59 AM", "percentageUsed": (i * 0.11) % 100},
        },
        "lastUpdated": (START + timedelta(seconds=30 * i)).isoformat(),
        "isPartial": i % 50 == 0,
    }
    return json.dumps(body).encode()


def build(root: Path, count: int) -> None:
    """A history of ``count`` versions written straight to disk (no fsync: a bench fixture)."""
    history = root / "console-usage-history"
    history.mkdir(parents=True)
    after = None
    for i in range(count):
        name = generate_version_filename(START + timedelta(seconds=30 * i), after=after)
        after = name
        (history / name).write_bytes(payload(i))


def run(args: list[str]) -> tuple[float, float]:
    """Run a command; its wall time in seconds and peak RSS in MiB."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {stderr.strip()}")
    return elapsed, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="where to build the histories (default: /tmp)")
    opts = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench-export-", dir=opts.dir))
    cli = [sys.executable, "-m", "ingester"]
    try:
        print(f"python {platform.python_version()}, {os.cpu_count()} CPU, {platform.platform()}")
        print(f"histories in {base}")
        for size in (opts.small, opts.big):
            t0 = time.perf_counter()
            build(base / str(size), size)
            print(f"built {size} versions in {time.perf_counter() - t0:.1f} s")
        floor = [run([*cli, "--version"]) for _ in range(opts.runs)]
        floor_rss = max(rss for _, rss in floor)
        print(f"\nfloor ('ingester --version'): peak RSS {floor_rss:.1f} MiB")
        print(
            f"\n{'versions':>8}  {'format':<6}  {'time (s)':>14}  {'rows/s':>7}  {'peak RSS':>10}"
        )
        results: dict[tuple[int, str], float] = {}
        for fmt in ("csv", "jsonl"):
            for size in (opts.small, opts.big):
                root = base / str(size)
                out = base / f"out-{size}.{fmt}"
                times, peaks = [], []
                for _ in range(opts.runs):
                    args = [*cli, "--root", str(root), "export", "--format", fmt, "-o", str(out)]
                    elapsed, rss = run(args)
                    times.append(elapsed)
                    peaks.append(rss)
                median = statistics.median(times)
                results[(size, fmt)] = max(peaks)
                print(
                    f"{size:>8}  {fmt:<6}  {median:>6.2f} ({min(times):.2f}-{max(times):.2f})"
                    f"  {size / median:>7.0f}  {max(peaks):>6.1f} MiB"
                )
        print()
        for fmt in ("csv", "jsonl"):
            grow = results[(opts.big, fmt)] - results[(opts.small, fmt)]
            per = grow * 1024 * 1024 / (opts.big - opts.small)
            print(
                f"{fmt}: {opts.big} versions use {grow:+.1f} MiB more than {opts.small} "
                f"({per:.0f} bytes per extra version)"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
