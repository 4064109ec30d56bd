"""How long does ``ingester snapshot`` take, for a default history and a large one?

Run from a checkout after ``pip install -e .``::

    python bench/bench_snapshot.py [--sizes 100,20000] [--dir DIR]

For each size a history of that many versions (about 300 bytes each, read-only, as the
watcher leaves them) is written in a temp folder under ``--dir`` (default: ``$TMPDIR``),
then timed, in process, without the CLI's start-up:

* ``link``: :func:`ingester.ops.snapshot.take_snapshot` into a folder beside it (hard links);
* ``copy``: the same with ``link=False`` (every version copied and fsynced);
* ``tar``: :func:`ingester.ops.snapshot.write_snapshot_tar` to ``/dev/null`` (its scratch
  tree under the same ``--dir``: links).

Each is run three times; the median is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from ingester.history.names import generate_version_filename
from ingester.ops.snapshot import take_snapshot, write_snapshot_tar


def make_history(folder: Path, count: int) -> Path:
    history = folder / "console-usage-history"
    history.mkdir()
    name = None
    for seq in range(count):
        name = generate_version_filename(after=name)
        body = {
            "currentSession": {"resetsIn": "4 hr", "percentageUsed": seq % 101},
            "weeklyLimits": {
                "allModels": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 41},
                "sonnetOnly": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 7},
            },
            "lastUpdated": "2026-11-27T14:05:00Z",
            "seq": seq,
        }
        path = history / name
        path.write_text(json.dumps(body))
        path.chmod(0o444)
    return history


def bench_size(size: int, base: str | None) -> str:
    """The medians for one history size, as one line."""
    work = Path(tempfile.mkdtemp(prefix="bench-snapshot-", dir=base))
    try:
        history = make_history(work, size)
        results: dict[str, list[float]] = {"link": [], "copy": [], "tar": []}
        for run in range(3):
            start = time.perf_counter()
            take_snapshot(history, work / f"link-{run}")
            results["link"].append(time.perf_counter() - start)
            start = time.perf_counter()
            take_snapshot(history, work / f"copy-{run}", link=False)
            results["copy"].append(time.perf_counter() - start)
            with open(os.devnull, "wb") as sink:
                start = time.perf_counter()
                write_snapshot_tar(history, sink, tmp_dir=work)
                results["tar"].append(time.perf_counter() - start)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = ", ".join(f"{k} {statistics.median(v) * 1000:.0f} ms" for k, v in results.items())
    return f"{size} versions: {medians}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", default="100,20000")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        print(bench_size(size, args.dir), flush=True)


if __name__ == "__main__":
    main()
