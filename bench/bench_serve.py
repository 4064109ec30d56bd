"""How fast does ``ingester serve`` answer, against a bare ASGI app on the same stack?

Run from a checkout after ``pip install -e .``::

    python bench/bench_serve.py [--seconds 1.5] [--rounds 5] [--connections 8] [--clients 1]

Three servers run side by side, each a real process on 127.0.0.1:

* ``floor``: ``bench/floor_serve.py``, a bare ASGI app on the same uvicorn settings and
  socket setup, answering every request with the bytes ``serve`` gives for the latest
  version (or 304 when ``If-None-Match`` is sent);
* ``serve-100`` and ``serve-20000``: ``ingester serve`` over a history of 100 and of
  20,000 versions (hard links to one fresh payload, named 30 s apart).

Three requests are measured on each: ``GET /api/claude/console-usage`` (latest),
``GET ...?timestamp=T`` cycling through 100 instants spread over the history (so both
histories answer from 100 distinct versions), and the latest with ``If-None-Match``
(a 304 revalidation: each connection sends back the last tag it was given, as a client
does, since the latest's tag changes as its age moves on; the share of answers that were
304s is printed). The load comes from ``--clients`` processes, each holding
``--connections`` keep-alive connections and sending the next request as soon as an
answer is complete. Targets and requests are interleaved over ``--rounds`` rounds of
``--seconds`` each, so drift in the machine hits all alike; the medians of the rounds
are reported. Peak RSS is each server's ``VmHWM`` at the end.

Each server's CPU time per request (from ``/proc/PID/stat``) is reported beside
requests/s and latency: on a shared machine, other load moves requests/s a lot from one
measurement to the next, but hardly what a request costs the server itself.

Goals: latest >= 0.5x the floor's requests/s; ``?timestamp=`` on 20,000 versions within
1.2x of its cost on 100 (CPU per request; the requests/s ratio is printed too); peak
RSS <= 80 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

API = "/api/claude/console-usage"
HERE = Path(__file__).resolve().parent
STEP = timedelta(seconds=30)


def payload() -> bytes:
    """A valid payload updated a minute ago (so every answer is fresh: max-age=60)."""
    stamp = datetime.now(UTC) - timedelta(minutes=1)
    return json.dumps(
        {
            "currentSession": {"resetsIn": "4 hr 12 min", "percentageUsed": 23},
            "weeklyLimits": {
                "allModels": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 41},
                "sonnetOnly": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 7},
            },
            "lastUpdated": stamp.isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
    ).encode()


def build_history(root: Path, count: int, data: bytes) -> datetime:
    """``count`` versions ending now, ``STEP`` apart, as hard links to one file."""
    history = root / "console-usage-history"
    history.mkdir(parents=True)
    source = root / "payload.json"
    source.write_bytes(data)
    start = datetime.now(UTC).replace(microsecond=0) - STEP * count
    fd = os.open(history, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(count):
            name = f"{(start + STEP * i).strftime('%Y-%m-%dT%H-%M-%S')}-{i:08x}.json"
            os.link(source, name, dst_dir_fd=fd)
    finally:
        os.close(fd)
    return start


class Server:
    """A server subprocess that prints ``listening on http://127.0.0.1:PORT``."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._out = log.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTER_")}
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while True:
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
            if match:
                self.port = int(match[1])
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start:\n{log.read_text()}")
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        """``VmHWM`` of the process, in MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


# -- the load generator: raw HTTP/1.1 keep-alive over asyncio streams ----------------------


@dataclass
class Load:
    """What one client's connections measured: each answer's latency (seconds) and how
    many answers were 304s."""

    latencies: list[float]
    not_modified: int = 0


def _with_tag(request: bytes, tag: bytes) -> bytes:
    """``request`` (a bodiless GET) with ``If-None-Match: tag`` in place of its own."""
    head = b"\r\n".join(
        line
        for line in request.removesuffix(b"\r\n\r\n").split(b"\r\n")
        if not line.lower().startswith(b"if-none-match:")
    )
    return head + b"\r\nIf-None-Match: " + tag + b"\r\n\r\n"


async def _connection(
    port: int, requests: list[bytes], offset: int, until: float, load: Load, follow: bool
) -> None:
    """Send ``requests`` in turn over one keep-alive connection until ``until``.

    ``follow``: revalidate as a client does, sending back the ``ETag`` of the last
    answer: the latest's tag changes as its age moves on, and a tag read once at the
    start would turn every later "304" request into a 200.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while time.perf_counter() < until:
            request = requests[i % len(requests)]
            i += 1
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            length = 0
            tag = None
            for line in head.split(b"\r\n"):
                lower = line[:15].lower()
                if lower == b"content-length:":
                    length = int(line[15:])
                elif lower.startswith(b"etag:"):
                    tag = line[5:].strip()
            if length:
                await reader.readexactly(length)
            load.latencies.append(time.perf_counter() - start)
            if status == b"304":
                load.not_modified += 1
            elif status != b"200":
                raise SystemExit(f"unexpected answer: {head[:200]!r}")
            elif follow and tag is not None:
                requests = [_with_tag(r, tag) for r in requests]
    finally:
        writer.close()


def _client(
    port: int, requests: list[bytes], seconds: float, connections: int, follow: bool = False
) -> Load:
    """One load process: ``connections`` connections for ``seconds`` (see
    :func:`_connection` for ``follow``)."""

    async def run() -> Load:
        load = Load([])
        until = time.perf_counter() + seconds
        await asyncio.gather(
            *(_connection(port, requests, k * 7, until, load, follow) for k in range(connections))
        )
        return load

    return asyncio.run(run())


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float = 0.0  # server CPU time per request: what other load cannot inflate
    not_modified: float = 0.0  # the share of answers that were 304s


def median_result(rs: list[Result]) -> Result:
    """Each number's median over the rounds ``rs``."""
    return Result(
        statistics.median(r.rps for r in rs),
        statistics.median(r.p50_ms for r in rs),
        statistics.median(r.p99_ms for r in rs),
        statistics.median(r.cpu_us for r in rs),
        statistics.median(r.not_modified for r in rs),
    )


def measure(
    pool: ProcessPoolExecutor,
    server: Server,
    requests: list[bytes],
    seconds: float,
    connections: int,
    clients: int,
    follow: bool = False,
) -> Result:
    """``clients`` load processes of ``connections`` connections each sending
    ``requests`` to ``server`` for ``seconds`` (after a short warm-up); ``follow``: each
    connection sends back the last ``ETag`` it was given (:func:`_connection`)."""
    port = server.port
    ports, reqs, follows = [port] * clients, [requests] * clients, [follow] * clients
    # A short warm-up (connections, caches), then the measured run.
    list(pool.map(_client, ports, reqs, [0.2] * clients, [2] * clients, follows))
    cpu_before = server.cpu_seconds()
    start = time.perf_counter()
    parts = list(
        pool.map(_client, ports, reqs, [seconds] * clients, [connections] * clients, follows)
    )
    elapsed = time.perf_counter() - start
    cpu = server.cpu_seconds() - cpu_before
    lat = sorted(x for part in parts for x in part.latencies)
    return Result(
        rps=len(lat) / elapsed,
        p50_ms=lat[len(lat) // 2] * 1000,
        p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        cpu_us=cpu / len(lat) * 1e6,
        not_modified=sum(part.not_modified for part in parts) / len(lat),
    )


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n{extra}\r\n".encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8, help="per client process")
    parser.add_argument("--clients", type=int, default=1, help="load processes")
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--big", type=int, default=20_000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    servers: list[Server] = []
    try:
        data = payload()
        starts = {}
        for count in (args.small, args.big):
            root = work / f"h{count}"
            starts[count] = build_history(root, count, data)
            servers.append(
                Server(
                    f"serve-{count}",
                    [
                        sys.executable,
                        "-m",
                        "ingester",
                        "--root",
                        str(root),
                        "serve",
                        "--listen",
                        "127.0.0.1:0",
                    ],
                    work / f"serve-{count}.log",
                )
            )
        # The floor answers with exactly what serve answers for the latest.
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{servers[0].port}{API}") as answer:
            body = answer.read()
            etag = answer.headers["ETag"]
        (work / "body.json").write_bytes(body)
        floor = Server(
            "floor",
            [sys.executable, str(HERE / "floor_serve.py"), str(work / "body.json"), etag],
            work / "floor.log",
        )
        servers.insert(0, floor)

        def timestamps(count: int) -> list[bytes]:
            span = STEP * count
            picks = [starts[count] + span * (k / 100) + timedelta(seconds=7) for k in range(100)]
            return [get(f"{API}?timestamp={p.strftime('%Y-%m-%dT%H:%M:%SZ')}") for p in picks]

        def requests_for(server: Server, kind: str) -> list[bytes]:
            if kind == "latest":
                return [get(API)]
            if kind == "304":
                # The tag as of now: the latest's changes as its age moves on, and each
                # measurement opens new connections.
                tag = etag if server is floor else current_tag(server)
                return [get(API, f"If-None-Match: {tag}\r\n")]
            count = args.small if server.name in ("floor", f"serve-{args.small}") else args.big
            return timestamps(count)

        def current_tag(server: Server) -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{API}") as answer:
                return str(answer.headers["ETag"])

        kinds = ("latest", "timestamp", "304")
        results: dict[tuple[str, str], list[Result]] = {}
        with ProcessPoolExecutor(max_workers=args.clients) as pool:
            order = [(kind, server) for kind in kinds for server in servers]
            shuffler = random.Random(1)
            for _round in range(args.rounds):
                # A new order each round: a burst of load from elsewhere on the machine
                # then hits different measurements each time, and the median drops it.
                shuffler.shuffle(order)
                for kind, server in order:
                    r = measure(
                        pool,
                        server,
                        requests_for(server, kind),
                        args.seconds,
                        args.connections,
                        args.clients,
                        follow=kind == "304",
                    )
                    results.setdefault((server.name, kind), []).append(r)

        def med(name: str, kind: str) -> Result:
            return median_result(results[(name, kind)])

        print(
            f"# bench_serve: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}; {args.rounds} rounds x {args.seconds:g} s, "
            f"{args.clients} client(s) x {args.connections} connections"
        )
        print(
            f"{'request':<10} {'server':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'CPU us/req':>10} {'304 %':>6}"
        )
        for kind in kinds:
            for server in servers:
                r = med(server.name, kind)
                print(
                    f"{kind:<10} {server.name:<12} {r.rps:>8.0f} {r.p50_ms:>8.2f} "
                    f"{r.p99_ms:>8.2f} {r.cpu_us:>10.0f} {100 * r.not_modified:>6.1f}"
                )
        print()
        small, big = f"serve-{args.small}", f"serve-{args.big}"
        ok = True

        def goal(label: str, value: float, target: str, passed: bool) -> None:
            nonlocal ok
            ok &= passed
            print(f"{label:<58} {value:>6.2f}  goal {target:<8} {'ok' if passed else 'MISSED'}")

        for name in (small, big):
            ratio = med(name, "latest").rps / med("floor", "latest").rps
            goal(f"latest req/s, {name} / floor", ratio, ">= 0.5", ratio >= 0.5)
        for name in (small, big):
            ratio = med(name, "304").rps / med("floor", "304").rps
            print(f"{f'304 req/s, {name} / floor':<58} {ratio:>6.2f}")
        for kind in kinds:
            for name in (small, big):
                ratio = med("floor", kind).cpu_us / med(name, kind).cpu_us
                print(f"{f'{kind}: floor / {name}, CPU per request':<58} {ratio:>6.2f}")
        cost = med(small, "timestamp").rps / med(big, "timestamp").rps
        print(f"{f'?timestamp= cost by req/s, {args.big} / {args.small}':<58} {cost:>6.2f}")
        cpu_cost = med(big, "timestamp").cpu_us / med(small, "timestamp").cpu_us
        goal(
            f"?timestamp= CPU per request, {args.big} / {args.small} versions",
            cpu_cost,
            "<= 1.2",
            cpu_cost <= 1.2,
        )
        for server in servers:
            rss = server.peak_rss_mb()
            if server is floor:
                print(f"{'peak RSS floor (MiB)':<58} {rss:>6.1f}")
            else:
                goal(f"peak RSS {server.name} (MiB)", rss, "<= 80", rss <= 80)
        sys.exit(0 if ok else 1)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
