"""``ingester serve`` with the rest of the system: a real watcher, kill -9, a large history,
and the committed OpenAPI description (checked by schemathesis against the running server).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from support import cli_env, wait_for
from support.serveproc import (
    KEY,
    ServeProcess,
    fill_history,
    fresh_payload,
    put_version,
    version_name,
)
from support.watchproc import WatchProcess

API = "/api/claude/console-usage"
TOP = Path(__file__).resolve().parents[1]
HEADERS = {"Content-Type": "application/json", "X-API-Key": KEY}


def test_post_then_watcher_then_get_gives_the_same_bytes(root: Path):
    data = fresh_payload(seq=42, note="héllo")
    with WatchProcess(root) as watcher, ServeProcess(root) as server:
        r = server.post(API, content=data, headers=HEADERS)
        assert r.status_code == 202, r.text
        assert r.json()["success"] is True

        def stored() -> list[dict[str, object]]:
            page = server.get(f"{API}/versions").json()
            return page["versions"]  # type: ignore[no-any-return]

        rows = wait_for(stored, 10, "the POSTed snapshot to be stored")
        assert isinstance(rows, list) and len(rows) == 1
        name = str(rows[0]["name"])
        assert server.get(f"{API}/versions/{name}").content == data
        latest = server.get(API).json()
        for key, value in json.loads(data).items():
            assert latest[key] == value
        assert latest["versionInfo"]["filename"] == name
        assert latest["isStale"] is False
        assert server.get("/api/health").json()["status"] == "healthy"
        assert watcher.stop() == 0


def test_kill_9_loses_no_accepted_post(root: Path):
    """Every 202 names a drop that is in the spool, whole, after serve dies mid-stream."""
    server = ServeProcess(root).start()
    accepted: dict[str, bytes] = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer(worker: int) -> None:
        with httpx.Client(base_url=server.base, timeout=5) as client:
            seq = 0
            while not stop.is_set():
                seq += 1
                data = fresh_payload(seq=seq, worker=worker)
                try:
                    r = client.post(API, content=data, headers=HEADERS)
                except httpx.HTTPError:
                    return  # the server died under us: that request was never answered
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)
                    return
                if r.status_code == 202:
                    accepted[r.json()["drop"]] = data

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(accepted) >= 30, 30, "30 accepted POSTs")
    server.kill()
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors
    spool = root / "spool"
    for name, data in accepted.items():
        assert (spool / name).read_bytes() == data, name
    # Nothing half-written under a drop name: every drop is a valid payload.
    for path in spool.glob("*.json"):
        json.loads(path.read_bytes())
    # And the watcher takes them all.
    done = subprocess.run(
        [sys.executable, "-m", "ingester", "--root", str(root), "watch", "--once"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    history = root / "console-usage-history"
    stored = {p.read_bytes() for p in history.glob("20*.json")}
    assert set(accepted.values()) <= stored


def test_twenty_thousand_versions(root: Path):
    """Lookups over a long history: the right answers, from the index."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    count = 20_000
    old = fresh_payload(timedelta(days=300))
    names = fill_history(root, count - 1, start, timedelta(seconds=30), old)
    names.append(version_name(start + timedelta(seconds=30 * (count - 1)), count - 1))
    put_version(root, names[-1], fresh_payload(seq=count - 1))

    def pick(**params: str) -> str:
        r = server.get(API, params=params)
        assert r.status_code == 200, r.text
        return str(r.json()["versionInfo"]["filename"])

    with ServeProcess(root) as server:
        latest = server.get(API).json()
        assert latest["versionInfo"]["current"] == count
        assert latest["versionInfo"]["total"] == count
        assert latest["seq"] == count - 1
        assert pick(version="1") == names[0]
        assert pick(version="-20000") == names[0]
        assert pick(version="12345") == names[12344]
        assert pick(version="-2") == names[-2]
        assert server.get(API, params={"version": "20001"}).status_code == 400
        when = start + timedelta(seconds=30 * 7777 + 10)
        assert pick(timestamp=when.isoformat()) == names[7777]
        assert pick(timestamp=(when + timedelta(seconds=10)).isoformat()) == names[7778]
        page = server.get(f"{API}/versions", params={"limit": "1000"}).json()
        assert page["total"] == count
        assert page["versions"][0]["name"] == names[-1]
        assert page["next"] == names[-1000]
        page = server.get(f"{API}/versions", params={"limit": "1000", "before": names[1000]}).json()
        assert [v["name"] for v in page["versions"]] == names[999::-1]
        assert page["next"] is None
        # The first /metrics reads a day of versions for the forecast (2,880 here, where a
        # scraper every 5 minutes makes 288): seconds on a loaded machine, so it is given
        # longer than the client's usual 10 s. This test is about listings, not that read.
        listings = [
            line
            for line in server.get("/metrics", timeout=60).text.splitlines()
            if line.startswith("ingester_history_listings_total")
        ]
        for i in range(100):
            server.get(API, params={"timestamp": (start + timedelta(minutes=i)).isoformat()})
        again = [
            line
            for line in server.get("/metrics").text.splitlines()
            if line.startswith("ingester_history_listings_total")
        ]
        assert again == listings


def test_openapi_served_matches_the_committed_file(root: Path):
    committed = (TOP / "docs" / "openapi.json").read_bytes()
    with ServeProcess(root) as server:
        served = server.get("/openapi.json")
    assert served.status_code == 200
    assert served.content == committed, (
        "docs/openapi.json is out of date: python -m ingester.serve.openapi > docs/openapi.json"
    )
    doc = json.loads(committed)
    paths = set(doc["paths"])
    assert {
        API,
        f"{API}/versions",
        f"{API}/versions/{{name}}",
        f"{API}/series",
        "/api/health",
    } <= paths


ST = shutil.which("st", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(ST is None, reason="schemathesis is not installed (the test extra)")
def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(root: Path):
    for i in range(5):
        put_version(
            root,
            version_name(datetime.now(UTC) - timedelta(minutes=5 - i), i),
            fresh_payload(timedelta(minutes=1), seq=i),
        )
    # A trigger command that succeeds: without one the endpoint's 501 is a server error
    # to schemathesis (it is tested on its own in test_compat_original).
    with ServeProcess(root, "--trigger-command", "true") as server:
        assert ST is not None
        done = subprocess.run(
            [
                ST,
                "run",
                f"{server.base}/openapi.json",
                "--header",
                f"X-API-Key: {KEY}",
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,"
                "response_headers_conformance,response_schema_conformance",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "25",
                "--workers",
                "1",
                "--seed",
                "1",
                "--request-timeout",
                "10",
            ],
            capture_output=True,
            text=True,
            env=cli_env(SCHEMATHESIS_HOOKS="", NO_COLOR="1"),
            cwd=root.parent,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
        assert "Traceback" not in server.log


def test_a_long_trigger_s_output_is_logged_as_it_comes_and_kept_when_serve_stops(
    root: Path, tmp_path: Path
) -> None:
    """A trigger that prints, then runs on: its lines reach the log while it runs, and
    what it printed (a last line without its end too) is logged when serve stops it."""
    printed = tmp_path / "printed"
    script = tmp_path / "scrape.py"
    script.write_text(
        "import pathlib, sys, time\n"
        "print('started', flush=True)\n"
        "sys.stdout.write('half a line'); sys.stdout.flush()\n"
        f"pathlib.Path({str(printed)!r}).touch()\n"
        "time.sleep(30)\n"
    )
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    server = ServeProcess(root, "--trigger-command", command).start()
    answers: list[int] = []

    def press() -> None:
        with contextlib.suppress(httpx.HTTPError):
            answers.append(server.post(f"{API}/trigger", headers=HEADERS, timeout=60).status_code)

    button = threading.Thread(target=press, daemon=True)
    button.start()
    try:
        server.wait_log(": | started")
        wait_for(printed.exists, 15, "the trigger to print its half line")
        assert server.stop() == 0
    finally:
        server.kill()
    button.join(timeout=15)
    log = server.log
    assert ": | started" in log and ": | half a line" in log, log
    assert "Traceback" not in log, log


def test_a_job_the_trigger_leaves_running_may_still_print_after_the_run(
    root: Path, tmp_path: Path
) -> None:
    """A wrapper that starts the scraper in the background and exits 0: the job keeps
    the output pipe, and a line it prints once the run is over is not logged, but
    neither does it kill the job (SIGPIPE, or a broken pipe), as a closed pipe would."""
    finished = tmp_path / "finished"
    job = (
        "import os, select, sys\n"
        "print('job started', flush=True)\n"
        # Until serve stops reading the pipe (its end then shows an error), 4 s at most:
        # a server that closed it a second after the run would show it well before.
        "poll = select.poll(); poll.register(1, 0)\n"
        "poll.poll(4_000)\n"
        "print('job done', flush=True)\n"
        f"open({str(finished)!r}, 'w').close()\n"
    )
    script = tmp_path / "job.py"
    script.write_text(job)
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, {str(script)!r}])\n"
        "print('wrapper done', flush=True)\n"
    )
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(wrapper))}"
    with ServeProcess(root, "--trigger-command", command) as server:
        r = server.post(f"{API}/trigger", headers=HEADERS, timeout=60)
        assert r.status_code == 200, r.text
        wait_for(finished.exists, 30, "the job to print its last line and finish")
        log = server.log
    assert ": | wrapper done" in log, log
    assert ": | job done" not in log, log
