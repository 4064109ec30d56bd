"""The original sync server's clients, replayed against a real ``ingester serve``.

The deployment this project replaces had three clients, each kept unchanged:

* the **scraper** POSTs a snapshot every 5 minutes with ``X-API-Key`` from its
  ``CLAUDE_SYNC_API_KEY`` and classifies the answer: a 2xx is a sync (its JSON body is
  the result), 401 an auth failure and 400 a validation failure (neither retried; a
  400's ``message`` or ``error`` is shown), any other status a server failure and a
  refused connection or timeout a network failure (both retried);
* the **dashboard card** GETs the data (a 404 is its empty state) and has a refresh
  button that POSTs, with no body, to the trigger endpoint, showing the answer's
  ``message`` when it is not a 2xx;
* a **health check** reads ``/api/health``.

Each test starts the server the way a user switching over would: the original's
``PORT`` and ``CLAUDE_SYNC_API_KEY``, no option of ours unless the test is about one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import run_cli, wait_for
from support.capabilities import has_ipv6_loopback
from support.ports import free_port
from support.serveproc import ServeProcess, fresh_payload, put_version, version_name
from support.watchproc import WatchProcess

API = "/api/claude/console-usage"
TRIGGER = f"{API}/trigger"
SYNC_KEY = "original-sync-key-5f2c"  # the shared secret of the original's .env


def original_server(
    root: Path,
    *args: str,
    port: int | None = None,
    global_args: tuple[str, ...] = (),
    **env: str,
) -> ServeProcess:
    """``serve`` started with the original server's environment: PORT and its key."""
    return ServeProcess(
        root,
        *args,
        global_args=global_args,
        key=SYNC_KEY,
        key_variable="CLAUDE_SYNC_API_KEY",
        listen=None,
        env={"PORT": str(port or free_port()), **env},
    )


def snapshot(age: timedelta = timedelta(0), **extra: Any) -> dict[str, Any]:
    """What the scraper sends: the sync fields it has (undefined ones are left out)."""
    stamp = datetime.now(UTC) - age
    body: dict[str, Any] = {
        "currentSession": {"resetsIn": "3 hr 10 min", "percentageUsed": 42},
        "weeklyLimits": {
            "allModels": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 61},
            "sonnetOnly": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 12},
        },
        "lastUpdated": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    body.update(extra)
    return body


@dataclass
class Sync:
    """How the scraper classifies one attempt: ``ok``, ``AUTH``, ``VALIDATION``,
    ``SERVER``, ``NETWORK`` (the last two are retried), with the body or message."""

    category: str
    status: int | None
    body: Any


def scraper_sync(base: str, key: str | None, data: object) -> Sync:
    """One POST as the scraper makes it, classified as the scraper classifies it."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-API-Key"] = key
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    try:
        r = httpx.post(f"{base}{API}", content=body, headers=headers, timeout=10)
    except (httpx.ConnectError, httpx.TimeoutException) as exc:
        return Sync("NETWORK", None, str(exc))
    if r.is_success:
        return Sync("ok", r.status_code, r.json())
    if r.status_code == 401:
        return Sync("AUTH", 401, r.json())
    if r.status_code == 400:
        answer = r.json()
        return Sync("VALIDATION", 400, answer.get("message") or answer.get("error"))
    return Sync("SERVER" if r.status_code >= 500 else "UNKNOWN", r.status_code, r.text)


def card_refresh(base: str, key: str) -> httpx.Response:
    """The refresh button: a POST with a JSON content type and no body."""
    return httpx.post(
        f"{base}{TRIGGER}",
        headers={"Content-Type": "application/json", "X-API-Key": key},
        timeout=30,
    )


def spool_drops(root: Path) -> list[Path]:
    spool = root / "spool"
    return sorted(p for p in spool.glob("*.json") if p.is_file()) if spool.is_dir() else []


def stored(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((root / "console-usage-history").glob("20*.json"))]


# -- the scraper ------------------------------------------------------------------------


def test_the_scraper_syncs_with_the_original_port_and_key(root: Path) -> None:
    port = free_port()
    with original_server(root, "--watch", port=port) as server:
        assert server.port == port
        # The configuration's lines follow the listening line that start() waits for.
        server.wait_log("POST key from CLAUDE_SYNC_API_KEY")
        assert SYNC_KEY not in server.log
        data = snapshot()
        sync = scraper_sync(server.base, SYNC_KEY, data)
        assert sync.category == "ok", sync
        assert sync.body["success"] is True
        assert isinstance(sync.body["message"], str) and sync.body["timestamp"].endswith("Z")

        def shown() -> dict[str, Any] | None:
            r = server.get(API)
            return r.json() if r.status_code == 200 else None

        card = wait_for(shown, 10, "the card to see the synced snapshot")
        assert isinstance(card, dict)
        assert card["currentSession"] == data["currentSession"]
        assert card["lastUpdated"] == data["lastUpdated"]
        assert server.stop() == 0


def test_a_snapshot_with_a_string_cut_mid_emoji_is_stored_as_sent(root: Path) -> None:
    """The scraper's ``JSON.stringify`` writes a string cut in the middle of an emoji
    (an extraction error's message cut short, say) with half a surrogate pair as an
    escape: JSON, and stored by the original. Taken, stored byte for byte as sent, and
    read back with U+FFFD in its place, by the card and by every command."""
    cut = {"resetsIn": "3 hr \ud83d", "percentageUsed": 42}
    data = snapshot(currentSession=cut, extractionErrors={"weekly": "cut \ud83d"})
    body = json.dumps(data, ensure_ascii=True)
    assert "\\ud83d" in body
    with original_server(root, "--watch") as server:
        sync = scraper_sync(server.base, SYNC_KEY, body.encode())
        assert sync.category == "ok", sync
        wait_for(lambda: stored(root) == [body.encode()], 10, "the snapshot stored")
        card = server.get(API)
        assert card.status_code == 200, card.text
        assert card.json()["extractionErrors"] == {"weekly": "cut \ufffd"}
        assert server.stop() == 0
    for args in (("status",), ("forecast",), ("export",), ("export", "--format", "jsonl")):
        done = run_cli(root, *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        if args[0] == "export":
            assert "3 hr \ufffd" in done.stdout, done.stdout
    done = run_cli(root, "verify")
    assert done.returncode == 0 and "damaged" not in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({k: v for k, v in snapshot().items() if k != "lastUpdated"}, "lastUpdated"),
        (snapshot(currentSession={"resetsIn": "1 hr", "percentageUsed": 140}), "percentageUsed"),
        ({"lastUpdated": snapshot()["lastUpdated"]}, "currentSession"),
        (b"{not json", "JSON"),
    ],
    ids=["no-lastUpdated", "over-100", "no-sections", "not-json"],
)
def test_scraper_validation_failures_are_400_with_a_message(
    root: Path, data: object, words: str
) -> None:
    with original_server(root) as server:
        sync = scraper_sync(server.base, SYNC_KEY, data)
    assert sync.category == "VALIDATION", sync
    assert isinstance(sync.body, str) and words in sync.body
    assert spool_drops(root) == []


def test_scraper_auth_failures_are_401_and_drop_nothing(root: Path) -> None:
    with original_server(root) as server:
        assert scraper_sync(server.base, "not-the-key", snapshot()).category == "AUTH"
        assert scraper_sync(server.base, None, snapshot()).category == "AUTH"
    # A server started without any key refuses every POST the same way.
    with ServeProcess(root, key=None) as keyless:
        sync = scraper_sync(keyless.base, SYNC_KEY, snapshot())
        assert sync.category == "AUTH"
        assert "no API key is configured" in sync.body["message"]
    assert spool_drops(root) == []


def test_a_network_failure_is_retried_and_the_retry_is_stored_once(root: Path) -> None:
    port = free_port()
    data = snapshot()
    first = scraper_sync(f"http://127.0.0.1:{port}", SYNC_KEY, data)
    assert first.category == "NETWORK"  # nothing listens yet: the scraper retries later
    with original_server(root, "--watch", port=port) as server:
        retry = scraper_sync(server.base, SYNC_KEY, data)
        assert retry.category == "ok", retry
        wait_for(lambda: len(stored(root)) == 1, 10, "the retried snapshot to be stored")
        assert server.stop() == 0
    assert [json.loads(b) for b in stored(root)] == [data]


def test_require_watcher_answers_503_which_the_scraper_retries_and_nothing_is_lost(
    root: Path,
) -> None:
    data = snapshot()
    with original_server(root, "--require-watcher") as server:
        refused = scraper_sync(server.base, SYNC_KEY, data)
        assert refused.category == "SERVER" and refused.status == 503
        assert "no watcher" in json.loads(refused.body)["message"]
        assert spool_drops(root) == []
        with WatchProcess(root):
            wait_for(
                lambda: server.get("/api/health").json()["watcher"]["running"] is True,
                10,
                "serve to see the watcher",
            )
            retry = scraper_sync(server.base, SYNC_KEY, data)
            assert retry.category == "ok", retry
            assert retry.body["waitingForWatcher"] is False
            wait_for(lambda: len(stored(root)) == 1, 10, "the retried snapshot to be stored")
    assert [json.loads(b) for b in stored(root)] == [data]


# -- the dashboard card -------------------------------------------------------------------


def test_the_card_gets_an_empty_state_then_the_data(root: Path) -> None:
    with original_server(root) as server:
        empty = server.get(API)
        assert empty.status_code == 404  # the card shows its "no data" state
        assert empty.json()["error"] and empty.json()["versionsAvailable"] == 0
        data = json.dumps(snapshot(timedelta(minutes=2))).encode()
        name = version_name(datetime.now(UTC))
        put_version(root, name, data)
        r = wait_for(lambda: (r := server.get(API)).status_code == 200 and r, 5)
        assert isinstance(r, httpx.Response)
        body = r.json()
        for key, value in json.loads(data).items():
            assert body[key] == value
        assert body["isStale"] is False and body["ageMinutes"] == 2
        assert body["source"] == "ec2-sync"
        assert body["versionInfo"]["current"] == body["versionInfo"]["total"] == 1
        assert body["versionInfo"]["filename"] == name
        assert r.headers["cache-control"] == "max-age=60"
        assert r.headers["etag"] and r.headers["last-modified"]


# -- health, both shapes -------------------------------------------------------------------


def test_health_without_data_has_the_original_shape_and_503(root: Path) -> None:
    with original_server(root) as server:
        r = server.get("/api/health")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "unhealthy"
        assert body["timestamp"].endswith("Z")
        # No history folder yet: as the original said, storage is not accessible.
        assert body["storage"] == {"accessible": False, "versionCount": 0}
        assert body["latestData"] == {"ageMinutes": None, "status": "unhealthy", "timestamp": None}
        (root / "console-usage-history").mkdir()
        assert server.get("/api/health").json()["storage"]["accessible"] is True


def test_health_with_data_has_the_original_fields_and_ours(root: Path) -> None:
    ingested = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    put_version(root, version_name(ingested), fresh_payload(timedelta(minutes=3, seconds=20)))
    with original_server(root) as server:
        r = server.get("/api/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy"
    assert body["storage"] == {"accessible": True, "versionCount": 1}
    assert body["latestData"]["status"] == "healthy"
    assert body["latestData"]["ageMinutes"] == 3
    assert body["latestData"]["timestamp"] == ingested.isoformat().replace("+00:00", ".000Z")
    # Ours beside them, as before.
    for key in ("reason", "versionCount", "latestVersion", "lastUpdated", "ageMinutes"):
        assert key in body, key
    assert body["ageMinutes"] == 3  # 3 min 20 s rounds to 3


def test_latest_data_ages_from_the_newest_stored_version(root: Path) -> None:
    """The original's latestData counts from the newest version's ingest time (its
    metadata's newestTimestamp), not from the payload's lastUpdated."""
    ingested = datetime.now(UTC) - timedelta(minutes=45)
    put_version(root, version_name(ingested), fresh_payload(timedelta(minutes=1)))
    with original_server(root) as server:
        body = server.get("/api/health").json()
    assert body["latestData"]["ageMinutes"] == 45
    assert body["latestData"]["status"] == "unhealthy"
    assert body["ageMinutes"] == 1  # the payload itself is fresh


# -- the refresh button ---------------------------------------------------------------------


def py_command(code: str) -> str:
    """A --trigger-command running ``code`` with this interpreter."""
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def test_refresh_without_a_command_is_501_with_how_to(root: Path) -> None:
    with original_server(root) as server:
        r = card_refresh(server.base, SYNC_KEY)
        assert r.status_code == 501
        assert r.json()["success"] is False
        assert "--trigger-command" in r.json()["message"]
        assert "POST /api/claude/console-usage/trigger: no trigger command" in server.log
        assert "; answered 501" in server.log


def test_refresh_with_a_wrong_key_is_401_and_runs_nothing(root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    command = py_command(f"open({str(marker)!r}, 'w').close()")
    with original_server(root, "--trigger-command", command) as server:
        r = card_refresh(server.base, "wrong")
        assert r.status_code == 401 and r.json()["success"] is False
    assert not marker.exists()


def test_refresh_runs_the_command_and_answers_as_the_original(root: Path, tmp_path: Path) -> None:
    argv_file = tmp_path / "argv.json"
    command = py_command(
        "import json, sys; "
        f"json.dump(sys.argv[1:], open({str(argv_file)!r}, 'w')); "
        "print('scraped 3 limits'); print('to stderr', file=sys.stderr)"
    )
    with original_server(root, "--trigger-command", command + " --fresh 'two words'") as server:
        # Request data never reaches the command line: a body and query are ignored.
        r = httpx.post(
            f"{server.base}{TRIGGER}?x=;rm",
            content=b'{"cmd": "$(touch /tmp/owned)"}',
            headers={"Content-Type": "application/json", "X-API-Key": SYNC_KEY},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["success"] is True
        assert body["message"] and body["timestamp"].endswith("Z")
        assert body["requestId"].startswith("trigger-")
        server.wait_log("| scraped 3 limits")
        server.wait_log("| to stderr")
    assert json.loads(argv_file.read_text()) == ["--fresh", "two words"]


def test_a_failing_command_is_500_with_the_reason(root: Path) -> None:
    with original_server(root, "--trigger-command", py_command("raise SystemExit(3)")) as server:
        r = card_refresh(server.base, SYNC_KEY)
        assert r.status_code == 500
        assert r.json()["success"] is False
        assert "exit status 3" in r.json()["message"]
        assert r.json()["requestId"]


def test_a_second_refresh_joins_the_run_under_way(root: Path, tmp_path: Path) -> None:
    runs, release = tmp_path / "runs", tmp_path / "release"
    command = py_command(
        "import os, time; "
        f"open({str(runs)!r}, 'a').write('run\\n'); "
        "deadline = time.monotonic() + 30\n"
        f"while not os.path.exists({str(release)!r}) and time.monotonic() < deadline: "
        "time.sleep(0.01)"
    )
    answers: list[httpx.Response] = []
    with original_server(root, "--trigger-command", command) as server:
        first = threading.Thread(target=lambda: answers.append(card_refresh(server.base, SYNC_KEY)))
        first.start()
        wait_for(runs.exists, 10, "the first run to start")
        second = threading.Thread(
            target=lambda: answers.append(card_refresh(server.base, SYNC_KEY))
        )
        second.start()
        server.wait_log("trigger requested", count=2)
        release.touch()
        first.join(30)
        second.join(30)
    assert [r.status_code for r in answers] == [200, 200]
    assert answers[0].json()["requestId"] == answers[1].json()["requestId"]
    assert sorted(r.json()["joined"] for r in answers) == [False, True]
    assert runs.read_text() == "run\n", "one run for both requests"


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie waiting for init has ended too)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:  # reaped, even while it was looked at
        return True


def test_a_command_past_its_timeout_is_stopped_with_its_children(
    root: Path, tmp_path: Path
) -> None:
    child_pid = tmp_path / "child.pid"
    command = py_command(
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(child_pid)!r}, 'w').write(str(child.pid)); "
        "time.sleep(120)"
    )
    args = ("--trigger-command", command, "--trigger-timeout", "1")
    with original_server(root, *args) as server:
        r = card_refresh(server.base, SYNC_KEY)
        assert r.status_code == 500
        assert "timed out after 1 s" in r.json()["message"]
        pid = int(child_pid.read_text())
        wait_for(lambda: gone(pid), 10, "the command's child to be stopped")


def test_a_command_that_starts_a_job_and_exits_0_is_200_at_once_saying_the_job_runs_on(
    root: Path, tmp_path: Path
) -> None:
    # A wrapper that starts the scraper in the background and returns: its child keeps
    # the output pipe open, which must not hold the answer back until the timeout. The
    # answer says the run ended with a job left running, not a plain "finished".
    job_pid = tmp_path / "job.pid"
    command = py_command(
        "import subprocess, sys; "
        "job = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(job_pid)!r}, 'w').write(str(job.pid)); print('started')"
    )
    try:
        with original_server(
            root, "--trigger-command", command, "--trigger-timeout", "30"
        ) as server:
            r = card_refresh(server.base, SYNC_KEY)
            assert r.status_code == 200, r.text
            message = r.json()["message"]
            assert message.startswith("the trigger command finished in "), message
            assert message.endswith("; a process it started runs on (what it prints is not logged)")
            server.wait_log("| started")
            server.wait_log(message)
            pid = int(job_pid.read_text())
            os.kill(pid, 0)  # the job it started was left running, not stopped as a timeout
    finally:
        # The job outlives the server by design: however the test ends, it ends here.
        if job_pid.exists() and job_pid.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(job_pid.read_text()), signal.SIGKILL)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(root: Path, tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    command = py_command(
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)'], "
        # Not holding the output pipe: only the process group ties it to the command.
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
        f"open({str(child_pid)!r}, 'w').write(str(child.pid)); "
        "time.sleep(120)"
    )
    with original_server(root, "--trigger-command", command, "--trigger-timeout", "1") as server:
        r = card_refresh(server.base, SYNC_KEY)
        assert r.status_code == 500
        assert "timed out after 1 s" in r.json()["message"]
        pid = int(child_pid.read_text())
        wait_for(lambda: gone(pid), 15, "the child that ignores SIGTERM to be killed")


def test_the_command_output_is_logged_and_capped(root: Path) -> None:
    command = py_command("import sys; sys.stdout.write(('x' * 99 + '\\n') * 1000)")
    with original_server(root, "--trigger-command", command) as server:
        assert card_refresh(server.base, SYNC_KEY).status_code == 200
        server.wait_log("output cut after 16384 bytes")
        log = server.log
    assert 100 <= log.count("| " + "x" * 99) <= 170
    assert "83616 more not logged" in log


# -- the query's edge cases ------------------------------------------------------------------


@pytest.fixture
def three(root: Path) -> list[str]:
    """Three versions an hour apart, the newest 1 hour ago."""
    names = []
    now = datetime.now(UTC).replace(microsecond=0)
    for i in range(3):
        name = version_name(now - timedelta(hours=3 - i), i)
        put_version(root, name, fresh_payload(seq=i))
        names.append(name)
    return names


@pytest.mark.parametrize(
    "query", ["version=", "timestamp=", "version=&timestamp=", "timestamp=&version="]
)
def test_an_empty_parameter_counts_as_not_given(root: Path, three: list[str], query: str) -> None:
    with original_server(root) as server:
        r = server.get(f"{API}?{query}")
    assert r.status_code == 200, r.text
    assert r.json()["versionInfo"]["filename"] == three[-1]


def test_timestamp_wins_over_version(root: Path, three: list[str]) -> None:
    oldest = datetime.strptime(three[0][:19], "%Y-%m-%dT%H-%M-%S").replace(tzinfo=UTC)
    near_oldest = (oldest + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    with original_server(root) as server:
        both = server.get(API, params={"version": "-1", "timestamp": near_oldest})
        bad_version = server.get(API, params={"version": "nope", "timestamp": near_oldest})
        empty_stamp = server.get(API, params={"version": "1", "timestamp": ""})
    assert both.json()["versionInfo"]["filename"] == three[0]
    assert bad_version.status_code == 200  # the version is not even looked at
    assert empty_stamp.json()["versionInfo"]["filename"] == three[0]


@pytest.mark.parametrize(
    ("age", "minutes", "stale", "cache"),
    [
        # Each age lies a second past a half minute: the answer holds for the next 59 s,
        # so a slow machine between the write and the GET cannot change it. Where the
        # nearest minute and the whole minutes differ, the verdicts follow the nearest.
        (timedelta(seconds=1), 0, False, "max-age=60"),
        (timedelta(seconds=91), 2, False, "max-age=60"),
        (timedelta(minutes=4, seconds=31), 5, False, "max-age=30"),
        (timedelta(minutes=9, seconds=31), 10, False, "no-cache"),
        (timedelta(minutes=10, seconds=31), 11, True, "no-cache"),
    ],
)
def test_age_minutes_round_to_the_nearest_and_the_rest_follows(
    root: Path, age: timedelta, minutes: int, stale: bool, cache: str
) -> None:
    with original_server(root) as server:
        # Written once the server runs: its start-up time is no part of the age.
        put_version(root, version_name(datetime.now(UTC)), fresh_payload(age))
        r = server.get(API)
        health = server.get("/api/health").json()
    assert r.json()["ageMinutes"] == minutes
    assert r.json()["isStale"] is stale
    assert r.headers["cache-control"] == cache
    assert health["ageMinutes"] == minutes
    assert health["status"] == ("degraded" if stale else "healthy")


# -- the log: every refused POST is one line, without key material --------------------------


def test_every_refused_post_is_one_log_line_without_key_material(root: Path) -> None:
    wrong = "wrong-key-material-9d1e"
    headers = {"Content-Type": "application/json", "X-API-Key": SYNC_KEY}
    with original_server(root, "--require-watcher", global_args=("--max-bytes", "2048")) as s:
        cases = [
            (401, s.post(API, json=snapshot(), headers={"X-API-Key": wrong})),
            (415, s.post(API, content=b"{}", headers={"X-API-Key": SYNC_KEY})),
            (413, s.post(API, content=b" " * 4096, headers=headers)),
            (400, s.post(API, content=b"[]", headers=headers)),
            (503, s.post(API, content=json.dumps(snapshot()).encode(), headers=headers)),
        ]
        for status, r in cases:
            assert r.status_code == status, (status, r.text)
        for status, _r in cases:
            s.wait_log(f"; answered {status}")
        log = s.log
    lines = [line for line in log.splitlines() if "POST /api/claude/console-usage:" in line]
    assert len(lines) == len(cases), lines
    for (status, _r), line in zip(cases, lines, strict=True):
        assert "client 127.0.0.1:" in line and line.endswith(f"; answered {status}"), line
    assert wrong not in log and SYNC_KEY not in log
    assert "Traceback" not in log


# -- the key and the port, as the original read them -------------------------------------


def test_ingester_api_key_wins_over_the_original_variable(root: Path) -> None:
    server = original_server(root, INGESTER_API_KEY="ours-first")
    with server:
        # The configuration's lines follow the listening line that start() waits for.
        server.wait_log("POST key from INGESTER_API_KEY")
        assert scraper_sync(server.base, "ours-first", snapshot()).category == "ok"
        assert scraper_sync(server.base, SYNC_KEY, snapshot()).category == "AUTH"
        assert "ours-first" not in server.log


def test_a_non_ascii_key_matches_as_node_clients_send_it(root: Path) -> None:
    """Node.js writes a header's value one byte a character (Latin-1: ``clé`` as
    ``cl\\xe9``), and the original server read it back the same way and compared the
    text; so a key with such a character, in the original's UTF-8 ``.env``, worked from
    the scraper. It still does, and from clients that send its UTF-8 bytes (curl)."""
    key = "clé-" + SYNC_KEY
    with ServeProcess(root, key=key, key_variable="CLAUDE_SYNC_API_KEY") as server:
        for sent, expected in (
            (key.encode("latin-1"), 202),
            (key.encode(), 202),
            (("cle-" + SYNC_KEY).encode(), 401),
            (key.encode("latin-1")[:-1], 401),
        ):
            r = server.post(
                API,
                content=json.dumps(snapshot()).encode(),
                headers={"X-API-Key": sent, "Content-Type": "application/json"},
            )
            assert r.status_code == expected, (sent, r.text)
        assert SYNC_KEY not in server.log


def test_listen_and_ingester_listen_win_over_port(root: Path) -> None:
    port, other = free_port(), free_port()
    server = original_server(root, port=other, INGESTER_LISTEN=f"127.0.0.1:{port}")
    with server:
        assert server.port == port
        # Answered, so every start-up line is written: the listening line that start()
        # waits for comes before the configuration's, this one's place among them.
        assert server.get("/api/health").status_code == 503
        assert "POST key from " in server.log
        assert "address from PORT" not in server.log


@pytest.mark.parametrize("value", ["abc", "70000", "-1", "\u00b2", "\uff18\uff10", "9" * 5000])
def test_a_bad_port_is_a_usage_error(root: Path, value: str) -> None:
    done = run_cli(root, "serve", PORT=value)
    assert done.returncode == 2
    said = repr(value) if len(value) < 20 else repr(value)[:37] + "..."
    assert f"PORT={said} is not a port number" in done.stderr, done.stderr
    assert done.stderr.count("\n") <= 4 and len(done.stderr) < 500, done.stderr
    assert "Traceback" not in done.stderr


needs_ipv6_loopback = pytest.mark.skipif(
    not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)"
)


def _answers(url: str) -> int | None:
    """The status of ``GET url``, or ``None`` when the connection is refused."""
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.ConnectError:
        return None


def both_loopbacks_port() -> int:
    """A port free on both 127.0.0.1 and ::1 (the default binds both)."""
    return free_port(("127.0.0.1", "::1"))


def test_the_port_variable_keeps_the_loopback_host(root: Path) -> None:
    port = both_loopbacks_port()
    with original_server(root, port=port) as server:
        assert f"listening on http://127.0.0.1:{port}" in server.log
        # The configuration's lines follow the listening line that start() waits for.
        server.wait_log(f"address from PORT={port}; on the loopback addresses only")
        assert server.get("/api/health").status_code == 503  # it answers: no data yet
    listening = server.log.split("listening on ", 1)[1].split(" (", 1)[0]
    assert "0.0.0.0" not in listening and "[::]" not in listening


@needs_ipv6_loopback
def test_localhost_answers_on_both_loopback_addresses_by_default(root: Path) -> None:
    """A client that resolves localhost to ::1 first, and does not fall back to
    127.0.0.1, reaches the server as it reached the original (which listened on every
    address); a named --listen is that address only."""
    port = both_loopbacks_port()
    with original_server(root, port=port) as server:
        assert f"listening on http://127.0.0.1:{port}, http://[::1]:{port} (" in server.log
        assert _answers(f"http://127.0.0.1:{port}/api/health") == 503
        assert _answers(f"http://[::1]:{port}/api/health") == 503
    named = original_server(root, port=both_loopbacks_port(), INGESTER_LISTEN=f"127.0.0.1:{port}")
    with named:
        assert _answers(f"http://127.0.0.1:{port}/api/health") == 503
        assert _answers(f"http://[::1]:{port}/api/health") is None


@needs_ipv6_loopback
def test_a_taken_ipv6_loopback_port_is_a_warning_not_a_failure(root: Path) -> None:
    port = both_loopbacks_port()
    with socket.socket(socket.AF_INET6) as squatter:
        squatter.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        squatter.bind(("::1", port))
        squatter.listen(1)
        with original_server(root, port=port) as server:
            assert server.get("/api/health").status_code == 503
            assert f"WARNING serve: cannot listen on [::1]:{port} as well" in server.log
            assert f"listening on http://127.0.0.1:{port} (" in server.log
