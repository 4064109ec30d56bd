"""An answer whose body carries the time it was made has a ``Date`` from the same clock
reading: a client (or a cache) that compares the two finds them one second, not one
that lags by how long the answer took or how long the server has been stopping.

uvicorn's own ``Date`` is renewed once a second by its main loop and taken when the
request came: a trigger's run that lasts seconds, and a 503 given at the end of the
stop's grace period (the loop that renews it has ended), would otherwise be dated
seconds before their ``timestamp``.
"""

from __future__ import annotations

import json
import shlex
import sys
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
from support import wait_for
from support.serveproc import KEY, ServeProcess
from test_serve_clients import POST_HEAD, connect, read_all, sample, status

API = "/api/claude/console-usage"


def body_second(timestamp: str) -> datetime:
    """A body's ``timestamp`` to the whole second, as a ``Date`` gives it."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).replace(microsecond=0)


def date_of(r: httpx.Response) -> datetime:
    dates = r.headers.get_list("date")
    assert len(dates) == 1, r.headers  # one Date, never uvicorn's beside ours
    return parsedate_to_datetime(dates[0])


def test_a_trigger_that_runs_for_seconds_is_dated_as_its_timestamp(root: Path) -> None:
    # A run of 2.5 s: the answer is made when it ends, long after the request came.
    command = f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(2.5)'"
    with ServeProcess(root, "--trigger-command", command) as server:
        r = server.post(f"{API}/trigger", headers={"X-API-Key": KEY}, timeout=60)
        assert r.status_code == 200, r.text
        assert date_of(r) == body_second(r.json()["timestamp"])
        # The health's timestamp is its verdict's clock reading: dated the same.
        health = server.get("/api/health")
        assert date_of(health) == body_second(health.json()["timestamp"])
        # An answer without a time in its body keeps one Date, the clock's.
        assert len(server.get(API).headers.get_list("date")) == 1


def test_a_503_at_the_end_of_the_stop_is_dated_as_its_timestamp(root: Path) -> None:
    server = ServeProcess(root, "--body-timeout", "60").start()
    try:
        with connect(server.port) as sock:
            sock.sendall(POST_HEAD + b"Content-Length: 400\r\n\r\n{")
            opened = "ingester_http_connections_open"
            wait_for(lambda: sample(server.get("/metrics").text, opened) >= 2, 10, "the POST")
            assert server.stop() == 0  # the stop's grace period (5 s), then the 503
            answer = read_all(sock)
    finally:
        server.kill()
    assert status(answer) == 503, answer
    head, body = answer.split(b"\r\n\r\n", 1)
    dates = [line for line in head.split(b"\r\n") if line.lower().startswith(b"date:")]
    assert len(dates) == 1, head
    date = parsedate_to_datetime(dates[0].split(b":", 1)[1].strip().decode())
    assert date == body_second(json.loads(body)["timestamp"]), answer
