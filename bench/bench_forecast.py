"""Is the forecast as cheap as the latest? ``GET .../forecast`` against ``GET`` latest.

Run from a checkout after ``pip install -e .``::

    python bench/bench_forecast.py [--versions 20000] [--seconds 1.5] [--rounds 5]

One ``ingester serve`` over a history of ``--versions`` versions, each a distinct
snapshot observed 30 s after the previous one (so a day holds 2,880 of them, and the
forecast's basis is a day), rising at a steady rate. Measured on the same server, side
by side, interleaved over ``--rounds`` rounds of ``--seconds`` each (the load generator
of ``bench_serve.py``: keep-alive connections from a separate process, the next request
as soon as an answer is complete):

* ``latest``: ``GET /api/claude/console-usage``;
* ``forecast``: ``GET /api/claude/console-usage/forecast``.

Also reported, once each: the first forecast after start (it reads every version once),
and the first forecast after one more version is stored (one read, one pass over the
cached snapshots).

Goal: the forecast's median latency (p50) under 2x the latest's; server CPU per request
is printed beside it, the ratio other load on the machine moves least.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import Result, Server, get, measure, median_result

API = "/api/claude/console-usage"
FORECAST = API + "/forecast"
STEP = timedelta(seconds=30)


def snapshot(i: int, count: int, updated: datetime) -> bytes:
    return json.dumps(
        {
            "currentSession": {"resetsIn": "4 hr 12 min", "percentageUsed": (i * 0.05) % 100},
            "weeklyLimits": {
                "allModels": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 10 + 80 * i / count},
                "sonnetOnly": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 7},
            },
            "lastUpdated": updated.isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
    ).encode()


def build_history(root: Path, count: int) -> datetime:
    """``count`` distinct versions ending a minute ago, ``STEP`` apart by name and lastUpdated."""
    history = root / "console-usage-history"
    history.mkdir(parents=True)
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    start = end - STEP * (count - 1)
    for i in range(count):
        at = start + STEP * i
        name = f"{at.strftime('%Y-%m-%dT%H-%M-%S')}-{i:08x}.json"
        (history / name).write_bytes(snapshot(i, count, at))
    return end


def timed_get(port: int, path: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as answer:
        answer.read()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-forecast-"))
    server = None
    try:
        root = work / "root"
        end = build_history(root, args.versions)
        argv = [sys.executable, "-m", "ingester", "--root", str(root)]
        argv += ["--console-timezone", "UTC", "serve", "--listen", "127.0.0.1:0"]
        server = Server("serve", argv, work / "serve.log")
        cold = timed_get(server.port, FORECAST)
        nxt = end + STEP
        name = f"{nxt.strftime('%Y-%m-%dT%H-%M-%S')}-{args.versions:08x}.json"
        path = root / "console-usage-history" / name
        path.write_bytes(snapshot(args.versions, args.versions, nxt))
        time.sleep(0.1)  # past the folder's settle time, so the next request sees it
        one_more = timed_get(server.port, FORECAST)

        kinds = {"latest": [get(API)], "forecast": [get(FORECAST)]}
        results: dict[str, list[Result]] = {k: [] for k in kinds}
        with ProcessPoolExecutor(max_workers=1) as pool:
            order = list(kinds)
            shuffler = random.Random(1)
            for _round in range(args.rounds):
                shuffler.shuffle(order)
                for kind in order:
                    r = measure(pool, server, kinds[kind], args.seconds, args.connections, 1)
                    results[kind].append(r)

        def med(kind: str) -> Result:
            return median_result(results[kind])

        print(
            f"# bench_forecast: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}; {args.versions} versions; {args.rounds} rounds "
            f"x {args.seconds:g} s, {args.connections} connections; load {os.getloadavg()[0]:.1f}"
        )
        print(f"{'request':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10}")
        for kind in kinds:
            r = med(kind)
            print(f"{kind:<10} {r.rps:>8.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.cpu_us:>10.0f}")
        print()
        print(f"{'first forecast after start (reads every version)':<52} {cold * 1000:>8.1f} ms")
        print(f"{'first forecast after one more version':<52} {one_more * 1000:>8.1f} ms")
        latency = med("forecast").p50_ms / med("latest").p50_ms
        cpu = med("forecast").cpu_us / med("latest").cpu_us
        print(f"{'CPU per request, forecast / latest':<52} {cpu:>8.2f}")
        ok = latency < 2
        verdict = "ok" if ok else "MISSED"
        print(f"{'p50 latency, forecast / latest':<52} {latency:>8.2f}  goal < 2  {verdict}")
        sys.exit(0 if ok else 1)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
