"""A paced HTTP load for ``bench_watch.py``: GET one path at a steady rate until stopped.

Run as ``python bench/http_load.py PORT RATE [PATH]``. It holds one keep-alive
connection to 127.0.0.1:PORT and sends ``GET PATH`` (default: the latest version) every
``1 / RATE`` seconds on a fixed schedule (a late answer is not made up for by a burst).
SIGTERM stops it; it then prints one line of JSON: requests sent, answers by status,
and the median and 99th percentile of the answer times in milliseconds.
"""

from __future__ import annotations

import http.client
import json
import signal
import statistics
import sys
import time
from collections import Counter

API = "/api/claude/console-usage"


def main(argv: list[str]) -> int:
    """``http_load.py PORT RATE [PATH]``."""
    if len(argv) not in (2, 3):
        print("usage: http_load.py PORT RATE [PATH]", file=sys.stderr)
        return 2
    port, rate = int(argv[0]), float(argv[1])
    path = argv[2] if len(argv) == 3 else API
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    statuses: Counter[str] = Counter()
    times: list[float] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    period = 1 / rate
    due = time.monotonic()
    while not stop:
        started = time.monotonic()
        try:
            conn.request("GET", path)
            answer = conn.getresponse()
            answer.read()
            statuses[str(answer.status)] += 1
        except (OSError, http.client.HTTPException) as exc:
            statuses[type(exc).__name__] += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        times.append((time.monotonic() - started) * 1000)
        due = max(due + period, time.monotonic() - period)
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    times.sort()
    print(
        json.dumps(
            {
                "requests": sum(statuses.values()),
                "statuses": dict(statuses),
                "p50_ms": statistics.median(times) if times else None,
                "p99_ms": times[int(0.99 * (len(times) - 1))] if times else None,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
