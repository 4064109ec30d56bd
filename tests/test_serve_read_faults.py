"""A fault every read meets (the history unreadable) is one line, not one per request.

A dashboard and a Prometheus server polling ``serve`` while its history cannot be read
would otherwise write an ERROR line per request. The first read to meet the fault logs
it, naming the client, the request and the cause; the reads meeting it after that are
counted and said once a minute; the first read that goes through again says so.

One version among many that this user may not read is no fault of the history: the
forecast leaves it out, as ``export`` does, says so once, and counts it once it can.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from support import wait_for
from support.capabilities import AS_OTHER, other_user_problem, others_folder, run_as_other
from support.serveproc import KEY, ServeProcess, fresh_payload, put_version, version_name

from ingester.serve.read_faults import ReadFaults

API = "/api/claude/console-usage"
FORECAST = f"{API}/forecast"
WHY_NOT = other_user_problem()


def _errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line]


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_an_unreadable_history_is_one_line_then_one_when_it_passes() -> None:
    with others_folder("ingester-read-faults-") as root:
        assert run_as_other(root, "init").returncode == 0
        older = version_name(datetime.now(UTC) - timedelta(hours=1))  # never read below
        put_version(root, older, fresh_payload())
        put_version(root, version_name(datetime.now(UTC)), fresh_payload())
        history = root / "console-usage-history"
        with ServeProcess(root, wrapper=tuple(AS_OTHER)) as server:
            assert server.get(API).status_code == 200
            history.chmod(0)
            try:
                paths = [API, f"{API}/versions", f"{API}/forecast", f"{API}/series", API]
                answers = [server.get(p) for p in paths]
                assert [r.status_code for r in answers] == [503] * 5
                # The cause, never the server's paths.
                assert {r.json()["message"] for r in answers} == {
                    "the history cannot be read: Permission denied"
                }
            finally:
                history.chmod(0o755)
            errors = _errors(server.log)
            assert len(errors) == 1, server.log
            assert " ERROR client 127.0.0.1:" in errors[0]
            assert (
                f": GET {API}: the history cannot be read: cannot list {history}: "
                "Permission denied [EACCES]; answered 503 (reads meeting this fault are "
                "counted, and said once a minute while it lasts)"
            ) in errors[0]
            assert server.get(API).status_code == 200
            assert (
                "INFO reads go through again (last fault: the history cannot be read: "
                f"cannot list {history}: Permission denied [EACCES]); 4 more read(s) were "
                "answered 503"
            ) in server.log
            # Another fault, one version's file: a line of its own, the same way, while
            # reads of the history and of the newest version go through in between.
            (history / older).chmod(0)
            for _ in range(3):
                assert server.get(f"{API}/versions/{older}").status_code == 503
                assert server.get(API).status_code == 200
                assert server.get(API, params={"version": "1"}).status_code == 503
            errors = _errors(server.log)
            assert len(errors) == 2, server.log
            assert f"the version {older} cannot be read: " in errors[1]
            assert server.stop() == 0
        assert "Traceback" not in server.log


def _request(port: int) -> Request:
    scope = {
        "type": "http",
        "method": "GET",
        "path": API,
        "headers": [],
        "client": ("127.0.0.1", port),
        "query_string": b"",
    }
    return Request(scope)


def test_a_lasting_fault_is_said_again_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    faults = ReadFaults(clock=lambda: now[0], every=60.0)
    denied = PermissionError(13, "Permission denied", "/h")
    with caplog.at_level(logging.INFO, logger="ingester.serve"):
        for second in range(0, 150, 10):  # 15 reads, 10 s apart
            now[0] = float(second)
            faults.failed(_request(1000 + second), "the history cannot be read", denied)
        faults.passed("the version x.json cannot be read")  # not this fault: nothing said
        faults.passed("the history cannot be read")
        faults.passed("the history cannot be read")  # nothing more to say
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "client 127.0.0.1:1000: GET /api/claude/console-usage: the history cannot be read: "
        "/h: Permission denied [EACCES]; answered 503 (reads meeting this fault are counted, "
        "and said once a minute while it lasts)",
        "the history still cannot be read: /h: Permission denied [EACCES]; 6 more read(s) "
        "answered 503 since the last line",
        "the history still cannot be read: /h: Permission denied [EACCES]; 6 more read(s) "
        "answered 503 since the last line",
        "reads go through again (last fault: the history cannot be read: /h: Permission "
        "denied [EACCES]); 2 more read(s) were answered 503",
    ]


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_a_lock_file_it_cannot_look_at_is_named_as_why_it_cannot_tell() -> None:
    # The kernel's lock table is readable here: what stops serve from telling whether a
    # watcher runs is the history's lock file, and the line must say so.
    with others_folder("ingester-lock-unseen-") as root:
        assert run_as_other(root, "init").returncode == 0
        history = root / "console-usage-history"
        lock = history / ".lock"
        os.chown(history, 0, 0)  # root's, closed to others: its lock cannot be looked at
        history.chmod(0o700)
        with ServeProcess(root, wrapper=tuple(AS_OTHER)) as server:
            server.wait_log("cannot tell whether a watcher runs")
            assert (
                f"cannot tell whether a watcher runs ({lock}: Permission denied [EACCES])"
                in server.log
            ), server.log
            assert server.stop() == 0
        # A POST's answer must not claim what cannot be told: that a watcher stores it.
        headers = {"Content-Type": "application/json", "X-API-Key": KEY}
        for require in ((), ("--require-watcher",)):
            with ServeProcess(root, *require, wrapper=tuple(AS_OTHER)) as server:
                answer = server.post(API, content=fresh_payload(), headers=headers)
                assert answer.status_code == 202, answer.text
                message = answer.json()["message"]
                assert "the watcher stores it" not in message, message
                assert (
                    f"whether a watcher runs to store it cannot be told here ({lock}: "
                    "Permission denied [EACCES])"
                ) in message, message
                assert server.stop() == 0


def _put_session(root: Path, observed: datetime, seq: int, pct: float) -> str:
    """A version observed (and stored) at ``observed`` whose ``currentSession`` is ``pct``."""
    body = {
        "currentSession": {"resetsIn": "3 hr", "percentageUsed": pct},
        "lastUpdated": observed.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    name = version_name(observed, seq)
    put_version(root, name, json.dumps(body).encode())
    return name


def _session(body: dict[str, Any]) -> dict[str, Any]:
    return next(limit for limit in body["limits"] if limit["limit"] == "currentSession")


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_one_version_it_may_not_read_is_left_out_of_the_forecast() -> None:
    """A version placed by hand as root, mode 0, among seven: ``forecast``, ``check
    --forecast``, the served forecast and ``/metrics`` answer from the other six (as
    ``export`` skips it), the log says it once however many requests meet it, and once
    its mode is put right it counts again."""
    with others_folder("ingester-forecast-unreadable-") as root:
        assert run_as_other(root, "init").returncode == 0
        now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        start = now - timedelta(minutes=60)
        names = [
            _put_session(root, start + timedelta(minutes=10 * i), i, 20 + 5 * i) for i in range(7)
        ]
        unreadable = root / "console-usage-history" / names[1]
        unreadable.chmod(0)
        export = run_as_other(root, "export")
        assert export.returncode == 0, export.stderr
        assert names[1] in export.stderr
        done = run_as_other(root, "forecast", "--json")
        assert done.returncode == 0, done.stderr
        session = _session(json.loads(done.stdout))
        assert (session["percentageUsed"], session["basis"]["points"]) == (50, 6), session
        said = [line for line in done.stderr.splitlines() if "cannot be read" in line]
        assert len(said) == 1 and f"{names[1]} cannot be read (" in said[0], done.stderr
        judged = run_as_other(root, "check", "--forecast")
        assert judged.returncode in (0, 1), judged.stdout
        assert "unreadable" not in judged.stdout, judged.stdout
        with ServeProcess(root, wrapper=tuple(AS_OTHER)) as server:
            for _ in range(3):
                answer = server.get(FORECAST)
                assert answer.status_code == 200, answer.text
                assert _session(answer.json())["basis"]["points"] == 6
                metrics = server.get("/metrics").text
                assert 'ingester_usage_percent{limit="currentSession"} 50.0' in metrics
            unreadable.chmod(0o644)
            _put_session(root, now + timedelta(seconds=30), 7, 55)

            def points() -> object:
                return _session(server.get(FORECAST).json())["basis"]["points"]

            wait_for(lambda: points() == 8, 10, "the version counted once it can be read")
            assert server.stop() == 0
        assert server.log.count(f"{names[1]} cannot be read (") == 1, server.log
        assert "Traceback" not in server.log


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_a_history_it_may_read_no_version_of_is_one_line_and_many_are_named_few() -> None:
    """A user who may list the history but read none of its versions (root's files,
    mode 0600: a restore made as root): the history's fault, said in one line, exit 1,
    as before any version could be left out. Once the newest can be read, the forecast
    goes on from it, naming the first few it may not read and the rest in one line."""
    with others_folder("ingester-forecast-none-readable-") as root:
        assert run_as_other(root, "init").returncode == 0
        now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        names = [
            _put_session(root, now - timedelta(minutes=10 * (59 - i)), i, 20) for i in range(60)
        ]
        history = root / "console-usage-history"
        for name in names:
            os.chown(history / name, 0, 0)
            (history / name).chmod(0o600)
        done = run_as_other(root, "forecast")
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 1, done.stdout
        assert len(lines) == 1 and "Permission denied" in lines[0], done.stderr
        (history / names[-1]).chmod(0o644)
        done = run_as_other(root, "forecast", "--json")
        assert done.returncode == 0, done.stderr
        said = [line for line in done.stderr.splitlines() if "cannot be read" in line]
        assert len(said) == 6, done.stderr
        assert " WARNING more versions cannot be read (" in said[-1], said[-1]
        assert _session(json.loads(done.stdout))["percentageUsed"] == 20
