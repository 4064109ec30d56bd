"""Our watcher against the floor ingester, side by side: latency, burst, memory.

Run from a checkout after ``pip install -e .``::

    python bench/bench_watch.py            # full run, about 1.5-2 minutes
    python bench/bench_watch.py --quick    # about 30 s
    python bench/bench_watch.py --dir /mnt/x --json results.json

Two ingesters are measured in one run, in rounds; each round starts both, each in its own
fresh temp root under one folder (so on the same filesystem), and which one goes first
alternates from round to round:

* **ours**: the real CLI, ``python -m ingester --root ROOT watch``, defaults otherwise;
* **floor**: ``python bench/floor.py ROOT`` (raw inotify -> open -> read -> json.loads ->
  rename into the history -> fsync the folder -> temp symlink + rename over latest ->
  fsync; see that file).

Both are started and stopped the same way (a subprocess; SIGTERM). Each is warmed up
with a few drops (the first waits in the spool as a backlog at start), then measured:

* **latency**: single drops, one at a time with an idle gap before each, alternating
  between the two sides drop by drop so that drift of the disk hits both alike. A unique payload
  (``"seq": N``) is written to ``SPOOL/tmp/`` and fsynced, then the clock starts and it is
  renamed into the spool; the clock stops when ``ROOT/console-usage-synced.json``
  resolves to a version holding that payload (inotify on ROOT wakes the bench, which
  reads the link and the version; no busy polling competing for the 2 cores).
* **burst**: N drops prepared in ``SPOOL/tmp/``, then renamed in as fast as possible; the
  clock stops when the latest link names the last one. Then every drop must be in the
  history (counted) and the spool empty, or the run fails. One side bursts at a time.
* **peak RSS**: ``VmHWM`` of the ingester's process, read just before it is stopped.

Goals: p50 <= 2x the floor, p99 <= 3x, burst >= 0.5x the floor's drops/s,
peak RSS <= 45 MB. When ``bench/bench_store.py`` is present it runs afterwards (the
ingest cost with 100 vs 20,000 versions); ``--skip-store`` leaves it out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from floor import IN_CREATE, IN_MOVED_TO, Inotify

BENCH_DIR = Path(__file__).resolve().parent
FLOOR_SCRIPT = BENCH_DIR / "floor.py"
STORE_SCRIPT = BENCH_DIR / "bench_store.py"

SPOOL = "spool"
HISTORY = "console-usage-history"
LATEST = "console-usage-synced.json"
VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-[A-Za-z0-9]+\.json$")

# A valid payload (shared/samples/valid/full.json), embedded so a fresh clone needs
# nothing else. Each drop gets its own "seq" and "lastUpdated", so every version is unique.
SAMPLE: dict[str, Any] = {
    "currentSession": {"resetsIn": "4 hr 12 min", "percentageUsed": 23},
    "weeklyLimits": {
        "allModels": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 41},
        "sonnetOnly": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 7},
    },
    "lastUpdated": "2026-11-27T14:05:00Z",
}

GOAL_P50 = 2.0
GOAL_P99 = 3.0
GOAL_BURST = 0.5
GOAL_RSS_MB = 45.0


def payload(seq: int) -> bytes:
    """The bytes of drop number ``seq``: the sample with a unique time and ``seq``."""
    body = dict(SAMPLE)
    hours, rest = divmod(seq, 3600)
    body["lastUpdated"] = f"2026-11-{1 + hours % 28:02d}T{rest // 60 % 24:02d}:{rest % 60:02d}:00Z"
    body["seq"] = seq
    return (json.dumps(body, indent=2) + "\n").encode()


def write_fsynced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (what ``ingester submit`` does)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the nearest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


# -- watching the latest link -----------------------------------------------------------


class LatestProbe:
    """Which drop (its ``seq``) the latest link names now; wakes on inotify, not a spin."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.link = root / LATEST
        self.inotify = Inotify(os.fspath(root), IN_MOVED_TO | IN_CREATE, nonblock=True)
        self._target: str | None = None
        self._seq: int | None = None

    def close(self) -> None:
        """Stop watching."""
        self.inotify.close()

    def seq(self) -> int | None:
        """The ``seq`` of the version the latest link resolves to, or None."""
        try:
            target = os.readlink(self.link)
        except FileNotFoundError:
            return None
        except OSError:  # a copy, not a symlink (filesystems without symlinks)
            target = None
        if target is not None and target == self._target:
            return self._seq
        try:
            data = (self.root / target).read_bytes() if target else self.link.read_bytes()
            seq = json.loads(data).get("seq")
        except (OSError, ValueError):
            return None
        if target is not None:
            self._target, self._seq = target, seq
        return seq if isinstance(seq, int) else None

    def wait_for(self, seq: int, timeout: float) -> float:
        """Block until the link names drop ``seq`` (or a later one); the perf_counter then."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.seq()
            if current is not None and current >= seq:
                return time.perf_counter()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the latest link did not reach drop {seq} in {timeout} s")
            select.select([self.inotify.fd], [], [], min(0.05, remaining))
            self.inotify.drain()


# -- one ingester in one root -------------------------------------------------------------


@dataclass
class SideResult:
    """Everything measured for one side (ours or the floor) over all rounds."""

    name: str
    latencies_ms: list[float] = field(default_factory=list)
    burst_rates: list[float] = field(default_factory=list)
    hwm_kb: list[int] = field(default_factory=list)
    stop_s: list[float] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)


def read_hwm_kb(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in kB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for process {pid}")


def count_versions(history: Path) -> int:
    """Version files in the history."""
    return sum(1 for name in os.listdir(history) if VERSION_RE.match(name))


def drops_left(spool: Path) -> list[str]:
    """Drops still waiting in the spool."""
    return [n for n in os.listdir(spool) if n.endswith(".json") and not n.startswith(".")]


class Run:
    """One ingester process in its own fresh root, and the drops the bench feeds it."""

    def __init__(
        self, cmd: list[str], root: Path, log_path: Path, timeout: float, owner: int | None = None
    ) -> None:
        self.root = root
        self.owner = owner
        self.spool = root / SPOOL
        self.tmp = self.spool / "tmp"
        self.history = root / HISTORY
        self.timeout = timeout
        self.seq = 0
        self.log_path = log_path
        self.what = shlex.join(cmd)
        root.mkdir()
        self.tmp.mkdir(parents=True)
        self.probe = LatestProbe(root)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INGESTER_", "NOTIFY_"))}
        env.pop("WATCHDOG_USEC", None)
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, env=env
        )

    def prepare(self, count: int) -> list[tuple[int, Path]]:
        """Write ``count`` fresh drops into ``SPOOL/tmp/`` (fsynced); not yet dropped."""
        prepared = []
        for _ in range(count):
            self.seq += 1
            path = self.tmp / f"{self.seq:07d}.json"
            write_fsynced(path, payload(self.seq))
            if self.owner is not None:
                os.chown(path, self.owner, self.owner)
            prepared.append((self.seq, path))
        return prepared

    def drop(self, path: Path) -> None:
        """Rename a prepared drop into the spool."""
        os.rename(path, self.spool / path.name)

    def check_alive(self) -> None:
        """Fail loudly (with the log's tail) if the ingester died."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.what} exited {self.proc.returncode}\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        """The last lines the ingester logged."""
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def wait_for(self, seq: int, timeout: float | None = None) -> float:
        """``LatestProbe.wait_for`` with the log's tail in the error."""
        try:
            return self.probe.wait_for(seq, timeout or self.timeout)
        except TimeoutError as exc:
            self.check_alive()
            raise RuntimeError(f"{exc}\n{self.log_tail()}") from None

    def warm_up(self, count: int) -> None:
        """Drop 1 waits in the spool as a backlog; the rest come one at a time."""
        for _seq, path in self.prepare(1):
            self.drop(path)
        self.wait_for(self.seq, 60)
        for seq, path in self.prepare(count):
            self.drop(path)
            self.wait_for(seq)

    def single(self) -> float:
        """One drop, with the ingester idle; milliseconds from the rename to the latest link."""
        [(seq, path)] = self.prepare(1)
        started = time.perf_counter()
        self.drop(path)
        seen = self.wait_for(seq)
        return (seen - started) * 1000

    def burst(self, count: int) -> float:
        """``count`` drops renamed in at once; drops per second until the last is latest."""
        prepared = self.prepare(count)
        time.sleep(0.2)
        started = time.perf_counter()
        for _seq, path in prepared:
            self.drop(path)
        seen = self.wait_for(prepared[-1][0], self.timeout + count * 0.05)
        rate = count / (seen - started)
        stored = count_versions(self.history)
        left = drops_left(self.spool)
        if stored != self.seq or left:
            raise RuntimeError(
                f"{self.what}: {stored} versions stored, {self.seq} dropped, "
                f"{len(left)} left in the spool\n{self.log_tail()}"
            )
        return rate

    def stop(self) -> tuple[int, float, int]:
        """SIGTERM; wait. Returns (peak RSS in kB, seconds to exit, exit code)."""
        self.check_alive()
        hwm = read_hwm_kb(self.proc.pid)
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return hwm, time.monotonic() - started, code

    def kill(self) -> None:
        """Make sure the process is gone and the probe closed (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.probe.close()
        self._log.close()


# -- the machine --------------------------------------------------------------------------


def filesystem_of(path: Path) -> str:
    """Type and device of the filesystem holding ``path`` (from /proc/self/mounts)."""
    real = os.path.realpath(path)
    best = ("", "?", "?")
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                device, point, fstype = line.split()[:3]
                point = point.replace("\\040", " ")
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best[0]):
                    best = (point, fstype, device)
    except OSError:
        pass
    return f"{best[1]} ({best[2]} on {best[0]})"


def cpu_model() -> str:
    """The CPU's model name."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def version_of(dist: str) -> str:
    """An installed distribution's version, or '?'."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def git_commit() -> str:
    """The checkout's commit (and '+dirty' when ingester/ has changes), or '?'."""
    try:
        head = subprocess.run(
            ["git", "-C", os.fspath(BENCH_DIR), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", os.fspath(BENCH_DIR.parent), "status", "--porcelain", "ingester"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+dirty" if dirty else "")


def machine(bench_dir: Path) -> dict[str, str]:
    """What the numbers were measured on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    with open("/proc/meminfo") as info:
        mem_kb = int(info.readline().split()[1])
    return {
        "cpus": f"{usable} usable of {os.cpu_count()} (nproc {usable})",
        "cpu": cpu_model(),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "filesystem": filesystem_of(bench_dir),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": f"ingester {version_of('console-usage-ingester')} ({git_commit()}), "
        f"watchdog {version_of('watchdog')}, pydantic {version_of('pydantic')}",
    }


# -- the run ------------------------------------------------------------------------------


def run_round(
    n: int,
    sides: dict[str, Callable[[Path], list[str]]],
    base: Path,
    args: argparse.Namespace,
    latency_count: int,
    results: dict[str, SideResult],
    rng: random.Random,
) -> None:
    """One round: both sides in fresh roots, single drops alternating, then each burst."""
    order = list(sides) if n % 2 == 0 else list(sides)[::-1]
    runs: dict[str, Run] = {}
    try:
        for name in order:
            root = base / f"{name}-{n + 1}"
            runs[name] = Run(
                sides[name](root), root, root.with_suffix(".log"), 30.0, args.foreign_drops
            )
        for name in order:
            runs[name].warm_up(args.warmup)
        for i in range(latency_count):
            for name in order if i % 2 == 0 else order[::-1]:
                time.sleep(args.gap * rng.uniform(0.5, 1.5))  # both idle, the last drop done
                results[name].latencies_ms.append(runs[name].single())
        for name in order:
            time.sleep(0.2)
            results[name].burst_rates.append(runs[name].burst(args.burst))
        for name in order:
            hwm, took, code = runs[name].stop()
            result = results[name]
            result.hwm_kb.append(hwm)
            result.stop_s.append(took)
            result.exit_codes.append(code)
            print(
                f"  {name:<5}  latency p50 "
                f"{percentile(result.latencies_ms[-latency_count:], 50):6.2f} ms"
                f"  burst {result.burst_rates[-1]:7.0f} drops/s  peak RSS {hwm / 1024:5.1f} MB"
                f"  stopped in {took:.2f} s (exit {code})",
                flush=True,
            )
    finally:
        for run in runs.values():
            run.kill()
        if not args.keep:
            for name in runs:
                shutil.rmtree(base / f"{name}-{n + 1}", ignore_errors=True)


def summarize(ours: SideResult, floor: SideResult) -> list[dict[str, Any]]:
    """The table's rows: metric, ours, floor, ratio, goal, verdict."""
    rows: list[dict[str, Any]] = []

    def row(
        metric: str, a: float, b: float, fmt: str, goal: str = "", ok: bool | None = None
    ) -> None:
        rows.append(
            {
                "metric": metric,
                "ours": a,
                "floor": b,
                "ratio": a / b if b else float("nan"),
                "fmt": fmt,
                "goal": goal,
                "pass": ok,
            }
        )

    for q, goal in ((50, GOAL_P50), (90, None), (99, GOAL_P99)):
        a, b = percentile(ours.latencies_ms, q), percentile(floor.latencies_ms, q)
        if goal is None:
            row(f"latency p{q} (ms)", a, b, ".2f")
        else:
            row(f"latency p{q} (ms)", a, b, ".2f", f"<= {goal:g}x floor", a <= goal * b)
    row("latency max (ms)", max(ours.latencies_ms), max(floor.latencies_ms), ".2f")
    a, b = statistics.median(ours.burst_rates), statistics.median(floor.burst_rates)
    row("burst (drops/s, median)", a, b, ".0f", f">= {GOAL_BURST:g}x floor", a >= GOAL_BURST * b)
    a, b = max(ours.hwm_kb) / 1024, max(floor.hwm_kb) / 1024
    row("peak RSS (MB, VmHWM)", a, b, ".1f", f"<= {GOAL_RSS_MB:g} MB", a <= GOAL_RSS_MB)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """The results as a plain-text table."""
    header = ("metric", "ours", "floor", "ours/floor", "goal", "result")
    lines = [header]
    for r in rows:
        verdict = "" if r["pass"] is None else "PASS" if r["pass"] else "FAIL"
        lines.append(
            (
                r["metric"],
                format(r["ours"], r["fmt"]),
                format(r["floor"], r["fmt"]),
                f"{r['ratio']:.2f}x",
                r["goal"],
                verdict,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        cells = [
            cell.ljust(w) if i in (0, 4, 5) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def run_store_bench(args: argparse.Namespace, base: Path) -> None:
    """The store's cost with 100 vs 20,000 versions: bench_store.py, when it exists."""
    if args.skip_store:
        return
    if not STORE_SCRIPT.exists():
        print("\nstore cost (100 vs 20,000 versions): bench/bench_store.py is not here yet")
        return
    cmd = [sys.executable, os.fspath(STORE_SCRIPT), "--dir", os.fspath(base)]
    if args.quick:
        cmd += ["--iterations", "200"]
    print(f"\nstore cost (100 vs 20,000 versions): {shlex.join(cmd[1:])}", flush=True)
    code = subprocess.call(cmd)
    if code:
        print(f"(bench_store.py exited {code}; run it on its own for details)")


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the rounds, print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="2 short rounds (~30 s)")
    parser.add_argument("--rounds", type=int, help="rounds [full 6, quick 2]")
    parser.add_argument("--latency", type=int, help="single drops per side [full 300, quick 60]")
    parser.add_argument("--burst", type=int, help="drops per burst [full 2000, quick 1000]")
    parser.add_argument("--warmup", type=int, default=5, help="untimed drops after start")
    parser.add_argument("--gap", type=float, default=0.05, help="mean idle seconds between drops")
    parser.add_argument("--seed", type=int, default=6, help="seed for the gaps")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="bench dir")
    parser.add_argument(
        "--ours",
        default=f"{shlex.quote(sys.executable)} -m ingester",
        help="command that runs the ingester CLI (e.g. under a profiler)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp roots and logs")
    parser.add_argument("--skip-store", action="store_true", help="do not run bench_store.py")
    parser.add_argument(
        "--foreign-drops",
        type=int,
        metavar="UID",
        help="chown every drop to UID (root only): the systemd case, where the scraper is "
        "another user and our watcher copies each drop instead of sealing it",
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 6)
    total_latency = args.latency or (60 if args.quick else 300)
    args.burst = args.burst or (1000 if args.quick else 2000)
    per_round = max(1, -(-total_latency // rounds))

    base = Path(tempfile.mkdtemp(prefix="bench-watch-", dir=args.dir))
    info = machine(base)
    print("machine:")
    for key, value in info.items():
        print(f"  {key:<10}  {value}")
    print(
        f"plan: {rounds} round(s) per side, alternating; {per_round} single drops and a burst "
        f"of {args.burst} per round; in {base}",
        flush=True,
    )
    sides: dict[str, Callable[[Path], list[str]]] = {
        "ours": lambda root: [*shlex.split(args.ours), "--root", os.fspath(root), "watch"],
        "floor": lambda root: [sys.executable, os.fspath(FLOOR_SCRIPT), os.fspath(root)],
    }
    results = {name: SideResult(name) for name in sides}
    rng = random.Random(args.seed)
    started = time.monotonic()
    try:
        for n in range(rounds):
            print(f"round {n + 1}/{rounds}", flush=True)
            run_round(n, sides, base, args, per_round, results, rng)
        rows = summarize(results["ours"], results["floor"])
        print(f"\nresults ({time.monotonic() - started:.0f} s):\n")
        print_table(rows)
        ours = results["ours"]
        print(
            f"\nlatency samples: {len(ours.latencies_ms)} per side; burst rates ours "
            f"{[round(r) for r in ours.burst_rates]}, floor "
            f"{[round(r) for r in results['floor'].burst_rates]}; ours stopped in "
            f"{max(ours.stop_s):.2f} s at most, exit codes {ours.exit_codes}"
        )
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": info,
                        "rounds": rounds,
                        "burst": args.burst,
                        "rows": [{k: v for k, v in r.items() if k != "fmt"} for r in rows],
                        "raw": {k: vars(v) for k, v in results.items()},
                    },
                    indent=2,
                )
            )
        run_store_bench(args, base)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    failed = [r["metric"] for r in rows if r["pass"] is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
