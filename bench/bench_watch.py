"""Our watcher against the floor ingester, side by side, in every layout that matters.

Run from a checkout after ``pip install -e .`` (as root for the copied layout)::

    python bench/bench_watch.py            # everything, one table; about 20 minutes
    python bench/bench_watch.py --quick    # the same table from shorter runs, about 3 minutes
    python bench/bench_watch.py --dir /mnt/x --json results.json

Two ingesters are measured in one run, in rounds; each round starts both, each in its own
fresh temp root under one folder (so on the same filesystem), and which one goes first
alternates from round to round:

* **ours**: the real CLI, ``python -m ingester --root ROOT watch``, defaults otherwise;
* **floor**: ``python bench/floor.py ROOT`` (raw inotify -> open -> read -> json.loads ->
  rename into the history -> fsync the folder -> temp symlink + rename over latest ->
  fsync; see that file).

Each **layout** is measured on its own:

* **same user**: the drops belong to the watcher's user, so ours makes each drop's own
  inode the version (zero-copy);
* **copied** (root only; ``--foreign-drops UID``, 65534 by default): every drop belongs to
  another user, as under systemd where the scraper is not the watcher's user, so ours
  copies each one; the floor still renames it.

In each layout:

* **latency**: single drops, one at a time with an idle gap before each, alternating
  between the two sides drop by drop so that drift of the disk hits both alike. A unique payload
  (``"seq": N``) is written to ``SPOOL/tmp/`` and fsynced, then the clock starts and it is
  renamed into the spool; the clock stops when ``ROOT/console-usage-synced.json``
  resolves to a version holding that payload (inotify on ROOT wakes the bench, which
  reads the link and the version; no busy polling competing for the 2 cores).
* **burst**: N drops prepared in ``SPOOL/tmp/``, then renamed in as fast as possible; the
  clock stops when the latest link names the last one. One side bursts at a time.
* **backlog**: N drops already in the spool (written, then one ``sync``) when the
  ingester starts; drops per second from its start until the latest link names the last.
* **peak RSS**: ``VmHWM`` of the ingester's process, read just before it is stopped
  (the backlog rounds' peak is shown on a row of its own).

After every burst and every backlog, each drop must be stored exactly once (every
version's ``seq`` is read) and the spool empty, or the bench stops with an error.

**serve --watch** (when the CLI has it): three processes side by side, each with its own
root: ``watch``, ``serve --watch`` with no requests, and ``serve --watch`` answering
``GET`` of the latest at a steady 200 requests/s (``bench/http_load.py``); single drops
alternate between the three. Goal: the loaded server's p50 within 1.2x of the idle one's.

Goals, as ratios against the floor (burst and backlog: ours' drops/s over the floor's):

=========  =====  =====  =====  =======  ========
layout     p50    p99    burst  backlog  peak RSS
=========  =====  =====  =====  =======  ========
same user  <=1.0  <=1.2  >=2.0  >=2.0    <=2.5
copied     <=1.2  <=1.5  >=1.5  >=1.5    <=2.5
=========  =====  =====  =====  =======  ========

It exits 1 when a goal is missed, 2 when a layout could not be measured at all.
``bench/bench_store.py`` runs afterwards unless ``--skip-store``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watch_support import (
    BENCH_DIR,
    FLOOR_SCRIPT,
    STORE_SCRIPT,
    Run,
    SideResult,
    machine,
    percentile,
    prepare_backlog,
)

LOAD_SCRIPT = BENCH_DIR / "http_load.py"
FOREIGN_UID = 65534  # "nobody"


@dataclass(frozen=True)
class Goals:
    """One layout's goals: latency ratios at most, throughput ratios at least."""

    p50: float
    p99: float
    burst: float
    backlog: float
    rss: float


LAYOUT_GOALS = {
    "same user": Goals(p50=1.0, p99=1.2, burst=2.0, backlog=2.0, rss=2.5),
    "copied": Goals(p50=1.2, p99=1.5, burst=1.5, backlog=1.5, rss=2.5),
}
SERVE_GOAL_P50 = 1.2
SERVE_RATE = 200.0  # GET requests per second while drops come in


Sides = dict[str, Callable[[Path], list[str]]]


def _stop_all(runs: dict[str, Run], results: dict[str, SideResult], backlog: bool) -> None:
    for name, run in runs.items():
        hwm, took, code = run.stop()
        result = results[name]
        (result.backlog_hwm_kb if backlog else result.hwm_kb).append(hwm)
        result.stop_s.append(took)
        result.exit_codes.append(code)


def _cleanup(runs: dict[str, Run], base: Path, keep: bool) -> None:
    for run in runs.values():
        run.kill()
        if not keep:
            shutil.rmtree(run.root, ignore_errors=True)


def run_round(
    n: int,
    sides: Sides,
    base: Path,
    args: argparse.Namespace,
    owner: int | None,
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
            runs[name] = Run(sides[name](root), root, root.with_suffix(".log"), 30.0, owner)
        for name in order:
            runs[name].warm_up(args.warmup)
        for i in range(latency_count):
            for name in order if i % 2 == 0 else order[::-1]:
                time.sleep(args.gap * rng.uniform(0.5, 1.5))  # both idle, the last drop done
                results[name].latencies_ms.append(runs[name].single())
        for name in order:
            time.sleep(0.2)
            results[name].burst_rates.append(runs[name].burst(args.burst))
        _stop_all(runs, results, backlog=False)
        for name in order:
            r = results[name]
            print(
                f"    {name:<5}  latency p50 {percentile(r.latencies_ms[-latency_count:], 50):6.2f}"
                f" ms  burst {r.burst_rates[-1]:7.0f} drops/s  peak RSS {r.hwm_kb[-1] / 1024:5.1f}"
                f" MB  stopped in {r.stop_s[-1]:.2f} s (exit {r.exit_codes[-1]})",
                flush=True,
            )
    finally:
        _cleanup(runs, base, args.keep)


def run_backlog(
    n: int,
    sides: Sides,
    base: Path,
    args: argparse.Namespace,
    owner: int | None,
    results: dict[str, SideResult],
) -> None:
    """One backlog round: each side alone, started on ``--backlog`` drops already waiting."""
    order = list(sides) if n % 2 == 0 else list(sides)[::-1]
    for name in order:
        root = base / f"{name}-backlog-{n + 1}"
        prepare_backlog(root, args.backlog, owner)
        time.sleep(0.5)
        runs = {
            name: Run(
                sides[name](root), root, root.with_suffix(".log"), 60.0, owner, seq=args.backlog
            )
        }
        try:
            results[name].backlog_rates.append(runs[name].backlog())
            _stop_all(runs, results, backlog=True)
            r = results[name]
            print(
                f"    {name:<5}  backlog of {args.backlog}: {r.backlog_rates[-1]:7.0f} drops/s"
                f"  peak RSS {r.backlog_hwm_kb[-1] / 1024:5.1f} MB",
                flush=True,
            )
        finally:
            _cleanup(runs, base, args.keep)


def measure_layout(
    layout: str, owner: int | None, sides: Sides, base: Path, args: argparse.Namespace
) -> dict[str, SideResult]:
    """Every round of one layout: latency and burst, then the backlog."""
    results = {name: SideResult(name) for name in sides}
    rng = random.Random(args.seed)
    per_round = max(1, -(-args.latency // args.rounds))
    for n in range(args.rounds):
        print(f"  {layout}: round {n + 1}/{args.rounds}", flush=True)
        run_round(n, sides, base, args, owner, per_round, results, rng)
    for n in range(args.backlog_rounds):
        print(f"  {layout}: backlog round {n + 1}/{args.backlog_rounds}", flush=True)
        run_backlog(n, sides, base, args, owner, results)
    return results


# -- serve --watch --------------------------------------------------------------------------


def serve_has_watch(ours: list[str]) -> bool:
    """Whether this checkout's ``serve`` takes ``--watch``."""
    shown = subprocess.run(
        [*ours, "serve", "--help"], capture_output=True, text=True, check=False
    ).stdout
    return "--watch" in shown


def measure_serve(ours: list[str], base: Path, args: argparse.Namespace) -> dict[str, SideResult]:
    """``watch``, idle ``serve --watch`` and loaded ``serve --watch``, drop by drop."""
    serve = ["serve", "--watch", "--listen", "127.0.0.1:0"]
    sides: Sides = {
        "watch": lambda root: [*ours, "--root", os.fspath(root), "watch"],
        "serve-idle": lambda root: [*ours, "--root", os.fspath(root), *serve],
        "serve-loaded": lambda root: [*ours, "--root", os.fspath(root), *serve],
    }
    results = {name: SideResult(name) for name in sides}
    rng = random.Random(args.seed)
    per_round = max(1, -(-args.serve_latency // args.rounds))
    for n in range(args.rounds):
        print(f"  serve --watch: round {n + 1}/{args.rounds}", flush=True)
        order = list(sides)
        rng.shuffle(order)
        runs: dict[str, Run] = {}
        load: subprocess.Popen[bytes] | None = None
        try:
            for name in order:
                root = base / f"{name}-{n + 1}"
                runs[name] = Run(sides[name](root), root, root.with_suffix(".log"), 30.0)
            for name in order:
                runs[name].warm_up(args.warmup)
            port = runs["serve-loaded"].port()
            load = subprocess.Popen(
                [sys.executable, os.fspath(LOAD_SCRIPT), str(port), str(SERVE_RATE)],
                stdout=subprocess.PIPE,
            )
            time.sleep(0.5)
            for i in range(per_round):
                for name in order if i % 2 == 0 else order[::-1]:
                    time.sleep(args.gap * rng.uniform(0.5, 1.5))
                    results[name].latencies_ms.append(runs[name].single())
            load.send_signal(signal.SIGTERM)
            answered = json.loads(load.communicate(timeout=15)[0] or b"{}")
            print(f"    load: {answered}", flush=True)
            if set(answered.get("statuses", {})) != {"200"}:
                raise RuntimeError(f"serve --watch answered the load badly: {answered}")
            for run in runs.values():
                run.check_stored_once()
            _stop_all(runs, results, backlog=False)
        finally:
            if load is not None and load.poll() is None:
                load.kill()
            _cleanup(runs, base, args.keep)
    return results


# -- the table ------------------------------------------------------------------------------


def layout_rows(layout: str, ours: SideResult, floor: SideResult) -> list[dict[str, Any]]:
    """The table's rows for one layout."""
    goals = LAYOUT_GOALS[layout]
    rows: list[dict[str, Any]] = []

    def row(metric: str, a: float, b: float, fmt: str, goal: str = "", ok: bool | None = None):
        ratio = a / b if b else float("nan")
        rows.append(
            {"layout": layout, "metric": metric, "ours": a, "floor": b, "ratio": ratio}
            | {"fmt": fmt, "goal": goal, "pass": ok}
        )

    for q, goal in ((50, goals.p50), (90, None), (99, goals.p99)):
        a, b = percentile(ours.latencies_ms, q), percentile(floor.latencies_ms, q)
        if goal is None:
            row(f"latency p{q} (ms)", a, b, ".2f")
        else:
            row(f"latency p{q} (ms)", a, b, ".2f", f"<= {goal:g}x", a <= goal * b)
    a, b = statistics.median(ours.burst_rates), statistics.median(floor.burst_rates)
    row("burst (drops/s)", a, b, ".0f", f">= {goals.burst:g}x", a >= goals.burst * b)
    if ours.backlog_rates and floor.backlog_rates:
        a, b = statistics.median(ours.backlog_rates), statistics.median(floor.backlog_rates)
        row("backlog (drops/s)", a, b, ".0f", f">= {goals.backlog:g}x", a >= goals.backlog * b)
    a, b = max(ours.hwm_kb) / 1024, max(floor.hwm_kb) / 1024
    row("peak RSS (MB)", a, b, ".1f", f"<= {goals.rss:g}x", a <= goals.rss * b)
    if ours.backlog_hwm_kb and floor.backlog_hwm_kb:
        a, b = max(ours.backlog_hwm_kb) / 1024, max(floor.backlog_hwm_kb) / 1024
        row("peak RSS, backlog (MB)", a, b, ".1f")
    return rows


def serve_rows(results: dict[str, SideResult]) -> list[dict[str, Any]]:
    """The serve --watch rows: the loaded server against the idle one (and plain watch)."""
    loaded = percentile(results["serve-loaded"].latencies_ms, 50)
    idle = percentile(results["serve-idle"].latencies_ms, 50)
    alone = percentile(results["watch"].latencies_ms, 50)
    base = {"layout": "serve --watch", "fmt": ".2f"}
    return [
        base
        | {"metric": "p50 at 200 GET/s vs idle (ms)", "ours": loaded, "floor": idle}
        | {
            "ratio": loaded / idle,
            "goal": f"<= {SERVE_GOAL_P50:g}x",
            "pass": loaded <= SERVE_GOAL_P50 * idle,
        },
        base
        | {"metric": "p50 idle vs plain watch (ms)", "ours": idle, "floor": alone}
        | {"ratio": idle / alone, "goal": "", "pass": None},
    ]


def pending_row(layout: str, why: str) -> dict[str, Any]:
    """A row for what could not be measured here."""
    return {"layout": layout, "metric": why, "ours": None, "floor": None, "ratio": None}


def print_table(rows: list[dict[str, Any]]) -> None:
    """Every goal in one plain-text table."""
    header = ("layout", "metric", "ours", "floor / base", "ratio", "goal", "result")
    lines = [header]
    for r in rows:
        if r["ours"] is None:
            lines.append((r["layout"], r["metric"], "", "", "", "", "PENDING"))
            continue
        verdict = "" if r["pass"] is None else "PASS" if r["pass"] else "FAIL"
        lines.append(
            (
                r["layout"],
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
            cell.ljust(w) if i in (0, 1, 5, 6) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def run_store_bench(args: argparse.Namespace, base: Path) -> None:
    """The store's cost with 100 vs 20,000 versions: bench_store.py, when it exists."""
    if args.skip_store or not STORE_SCRIPT.exists():
        return
    cmd = [sys.executable, os.fspath(STORE_SCRIPT), "--dir", os.fspath(base)]
    if args.quick:
        cmd += ["--iterations", "200"]
    print(f"\nstore cost (100 vs 20,000 versions): {shlex.join(cmd[1:])}", flush=True)
    code = subprocess.call(cmd)
    if code:
        print(f"(bench_store.py exited {code}; run it on its own for details)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, with the full or quick plan filled in."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="shorter rounds (~3 min)")
    parser.add_argument("--rounds", type=int, help="rounds per layout [full 6, quick 2]")
    parser.add_argument("--latency", type=int, help="single drops per side [full 300, quick 60]")
    parser.add_argument("--burst", type=int, help="drops per burst [full 2000, quick 1000]")
    parser.add_argument("--backlog", type=int, help="drops at start [full 100000, quick 10000]")
    parser.add_argument("--backlog-rounds", type=int, help="backlog rounds [full 2, quick 1]")
    parser.add_argument("--serve-latency", type=int, help="serve --watch drops per side [200, 60]")
    parser.add_argument("--warmup", type=int, default=5, help="untimed drops after start")
    parser.add_argument("--gap", type=float, default=0.05, help="mean idle seconds between drops")
    parser.add_argument("--seed", type=int, default=6, help="seed for the gaps")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="bench dir")
    parser.add_argument(
        "--layouts",
        default="same,copied,serve",
        help="what to measure, comma-separated: same, copied, serve",
    )
    parser.add_argument(
        "--foreign-drops",
        type=int,
        default=FOREIGN_UID,
        metavar="UID",
        help="the copied layout's drops belong to UID (chown needs root)",
    )
    parser.add_argument(
        "--ours",
        default=f"{shlex.quote(sys.executable)} -m ingester",
        help="command that runs the ingester CLI (e.g. under a profiler)",
    )
    parser.add_argument(
        "--baseline",
        metavar="CMD",
        help="measure this ingester CLI in the floor's place (e.g. another checkout's"
        " 'python -m ingester'), for a before/after ratio; the goals do not apply then",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temp roots and logs")
    parser.add_argument("--skip-store", action="store_true", help="do not run bench_store.py")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (2 if quick else 6)
    args.latency = args.latency or (60 if quick else 300)
    args.burst = args.burst or (1000 if quick else 2000)
    args.backlog = args.backlog if args.backlog is not None else (10_000 if quick else 100_000)
    args.backlog_rounds = (
        args.backlog_rounds if args.backlog_rounds is not None else (1 if quick else 2)
    )
    if not args.backlog:
        args.backlog_rounds = 0
    args.serve_latency = args.serve_latency or (60 if quick else 200)
    args.layouts = {part.strip() for part in args.layouts.split(",") if part.strip()}
    return args


def main(argv: list[str] | None = None) -> int:
    """Parse options, run every layout, print one table."""
    args = parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-watch-", dir=args.dir))
    os.chmod(base, 0o755)  # another user's drops are read through it
    info = machine(base)
    print("machine:")
    for key, value in info.items():
        print(f"  {key:<10}  {value}")
    print(
        f"plan: {args.rounds} round(s) per layout ({-(-args.latency // args.rounds)} single "
        f"drops and a burst of {args.burst} per side each), {args.backlog_rounds} backlog "
        f"round(s) of {args.backlog}; layouts {sorted(args.layouts)}; in {base}",
        flush=True,
    )
    ours = shlex.split(args.ours)
    sides: Sides = {
        "ours": lambda root: [*ours, "--root", os.fspath(root), "watch"],
        "floor": lambda root: [sys.executable, os.fspath(FLOOR_SCRIPT), os.fspath(root)],
    }
    if args.baseline:
        other = shlex.split(args.baseline)
        # PYTHONSAFEPATH: "-m ingester" must import the baseline's own install, not the
        # checkout in the current folder.
        sides["floor"] = lambda root: [
            *("env", "PYTHONSAFEPATH=1", *other),
            *("--root", os.fspath(root), "watch"),
        ]
        print(f"the 'floor' side is the baseline: {args.baseline}", flush=True)
    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    started = time.monotonic()
    try:
        for layout, key, owner in (
            ("same user", "same", None),
            ("copied", "copied", args.foreign_drops),
        ):
            if key not in args.layouts:
                continue
            if owner is not None and os.geteuid() != 0:
                rows.append(pending_row(layout, "not measured: giving drops away needs root"))
                continue
            results = measure_layout(layout, owner, sides, base, args)
            rows += layout_rows(layout, results["ours"], results["floor"])
            raw[layout] = {k: vars(v) for k, v in results.items()}
        if "serve" in args.layouts:
            if serve_has_watch(ours):
                results = measure_serve(ours, base, args)
                rows += serve_rows(results)
                raw["serve --watch"] = {k: vars(v) for k, v in results.items()}
            else:
                rows.append(pending_row("serve --watch", "not measured: serve has no --watch here"))
        print(f"\nresults ({time.monotonic() - started:.0f} s):\n")
        print_table(rows)
        if args.json:
            clean = [{k: v for k, v in r.items() if k != "fmt"} for r in rows]
            args.json.write_text(
                json.dumps(
                    {
                        "machine": info,
                        "args": {k: str(v) for k, v in vars(args).items()},
                        "rows": clean,
                        "raw": raw,
                    },
                    indent=2,
                )
            )
        run_store_bench(args, base)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    if any(r.get("pass") is False for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
