"""``serve --watch``: the watcher in the serve process, as one service.

A POST is stored within moments; ``kill -9`` mid-burst loses no 2xx and stores none
twice; SIGTERM finishes both halves; under systemd READY waits for both halves, the
watchdog is pinged only while both are well, STOPPING is sent once. And the other side
of the same promise, ``serve`` alone: it never answers a silent 2xx for a snapshot no
watcher will store.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from support import cli_env, run_cli, wait_for
from support.sdnotify import NotifyListener
from support.serveproc import KEY, ServeProcess, fresh_payload
from support.watchproc import WatchProcess, drop, payload

from ingester.api.backlog import BacklogWarnings, WatcherProbe
from ingester.lock import HistoryLock
from ingester.notify import SystemdNotifier
from ingester.spool import Spool
from ingester.watch_thread import JointNotifier

API = "/api/claude/console-usage"
HEADERS = {"Content-Type": "application/json", "X-API-Key": KEY}


def stored(root: Path) -> Counter[bytes]:
    history = root / "console-usage-history"
    return Counter(p.read_bytes() for p in history.glob("20*.json"))


def spool_drops(root: Path) -> list[Path]:
    spool = root / "spool"
    return sorted(p for p in spool.glob("*.json") if p.is_file()) if spool.is_dir() else []


# -- one process ------------------------------------------------------------------------


def test_a_post_is_served_back_within_a_second(root: Path) -> None:
    with ServeProcess(root, "--watch") as server:
        server.wait_log("serve --watch: ready")
        data = fresh_payload(seq=1)
        r = server.post(API, content=data, headers=HEADERS)
        assert r.status_code == 202, r.text
        assert r.json()["waitingForWatcher"] is False

        def served() -> bool:
            got = server.get(API)
            return got.status_code == 200 and got.json().get("seq") == 1

        wait_for(served, 1.0, "the POSTed snapshot to be served back")
        health = server.get("/api/health").json()
        assert health["watcher"] == {"running": True, "pid": server.proc.pid, "inProcess": True}
        # The watcher's own metrics are served beside the server's.
        metrics = server.get("/metrics").text
        assert "ingester_watch_drops_ingested_total 1.0" in metrics
        assert "ingester_http_posts_total" in metrics
        assert server.stop() == 0
    assert "Traceback" not in server.log


def _hammer(
    base: str, stop: threading.Event, accepted: dict[str, bytes], sent: list[bytes]
) -> None:
    with httpx.Client(base_url=base, timeout=5) as client:
        seq = 0
        while not stop.is_set():
            seq += 1
            data = fresh_payload(seq=seq, worker=threading.get_ident())
            sent.append(data)
            try:
                r = client.post(API, content=data, headers=HEADERS)
            except httpx.HTTPError:
                return  # the server went away under this request: it was never answered
            if r.status_code == 202:
                accepted[r.json()["drop"]] = data


def test_kill_9_mid_burst_then_restart_stores_every_2xx_exactly_once(root: Path) -> None:
    server = ServeProcess(root, "--watch").start()
    accepted: dict[str, bytes] = {}
    sent: list[bytes] = []
    stop = threading.Event()
    workers = [
        threading.Thread(target=_hammer, args=(server.base, stop, accepted, sent)) for _ in range(3)
    ]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: len(stored(root)) >= 20 and len(accepted) >= 40, 60, "a burst under way")
    finally:
        server.kill()
        stop.set()
        for w in workers:
            w.join(10)
    with ServeProcess(root, "--watch") as again:
        wait_for(lambda: not spool_drops(root), 30, "the restarted watcher to take the spool")
        assert again.stop() == 0
    counts = stored(root)
    for data in accepted.values():
        assert counts[data] == 1, "a 2xx was lost or stored twice"
    assert max(counts.values()) == 1, "something was stored twice"
    assert set(counts) <= set(sent)
    assert run_cli(root, "verify").returncode == 0


def test_sigterm_finishes_the_requests_and_the_drop_in_hand(root: Path) -> None:
    server = ServeProcess(root, "--watch").start()
    accepted: dict[str, bytes] = {}
    stop = threading.Event()
    worker = threading.Thread(target=_hammer, args=(server.base, stop, accepted, []))
    worker.start()
    try:
        wait_for(lambda: len(accepted) >= 10, 30, "POSTs under way")
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(20)
    finally:
        stop.set()
        worker.join(10)
        server.stop()
    assert code == 0, server.log
    log = server.log
    assert "serve --watch: stopping the server and the watcher" in log
    assert "serve --watch: stopped" in log
    assert re.search(r"stopped: \d+ ingested", log)  # the watcher's own clean stop
    assert "Traceback" not in log
    # Everything acknowledged is stored, or durable in the spool for the next start.
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    counts = stored(root)
    assert all(counts[data] == 1 for data in accepted.values())


def test_readiness_watchdog_and_stopping_speak_for_both_halves(root: Path) -> None:
    spool = root / "spool"
    for i in range(20):
        drop(spool, f"backlog-{i:02d}.json", payload(i))
    with NotifyListener() as listener:
        env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000"}
        server = ServeProcess(root, "--watch", env=env)
        try:
            alive = lambda: server.proc.poll() is None  # noqa: E731
            ready = listener.wait_for(lambda m: "READY" in m.fields, 60, "READY=1", alive)
            # Both halves: the backlog is stored, and the server answers.
            assert len(stored(root)) == 20 and not spool_drops(root)
            assert "serving http://127.0.0.1:" in ready.fields["STATUS"]
            assert "ingested 20" in ready.fields["STATUS"]
            server.start()
            assert server.get(API).status_code == 200

            def pings(_m: object = None) -> bool:
                return sum("WATCHDOG" in m.fields for m in listener.messages) >= 2

            listener.wait_for(pings, 5, "two WATCHDOG=1 pings", alive)
            assert server.stop() == 0
            listener.wait_for(lambda m: "STOPPING" in m.fields, 5, "STOPPING=1")
        finally:
            server.kill()
    ready_at = [i for i, m in enumerate(listener.messages) if "READY" in m.fields]
    assert len(ready_at) == 1
    assert sum("STOPPING" in m.fields for m in listener.messages) == 1


def test_the_watchdog_waits_for_the_watcher_s_own_pings() -> None:
    """In process, on a real notify socket: the server's ping goes out only while the
    watcher keeps saying it is well."""
    with NotifyListener() as listener:
        notifier = SystemdNotifier(listener.address, watchdog_usec=400_000)  # pings every 0.2 s
        joint = JointNotifier(notifier, freshness=0.5)
        view = joint.watcher_view()
        view.watchdog()
        said_well = time.monotonic()
        joint.tick()
        listener.wait_for(lambda m: "WATCHDOG" in m.fields, 2, "the first ping")
        # Let the watcher's word go stale (its freshness is 0.5 s), then tick on.
        while time.monotonic() < said_well + 0.6:
            time.sleep(0.05)
        while listener.receive(0.05) is not None:
            pass  # the STATUS that came with the first ping
        until = time.monotonic() + 0.6
        while time.monotonic() < until:
            joint.tick()
            assert listener.receive(0.05) is None, "a ping went out for a silent watcher"
        view.watchdog()
        joint.tick()
        listener.wait_for(lambda m: "WATCHDOG" in m.fields, 2, "the ping to resume")
        joint.close()


def test_a_second_watcher_is_refused_at_start(root: Path) -> None:
    with WatchProcess(root):
        done = run_cli(root, "serve", "--watch", "--listen", "127.0.0.1:0")
    assert done.returncode == 1
    assert "locked by pid" in done.stderr and "watch" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_when_the_watcher_stops_on_its_own_serve_stops_with_1(root: Path) -> None:
    with ServeProcess(root, "--watch") as server:
        server.wait_log("serve --watch: ready")
        history = root / "console-usage-history"
        history.rename(root / "moved-away")  # the lock no longer guards this history
        code = server.proc.wait(30)
    assert code == 1
    assert "serve stops too" in server.log


def test_watch_options_need_watch(root: Path) -> None:
    done = run_cli(root, "serve", "--polling")
    assert done.returncode == 2 and "--polling" in done.stderr and "--watch" in done.stderr


def test_serve_watch_with_polling_stores_a_post(root: Path) -> None:
    with ServeProcess(root, "--watch", "--polling", "--settle", "0.2") as server:
        r = server.post(API, content=fresh_payload(seq=5), headers=HEADERS)
        assert r.status_code == 202
        wait_for(lambda: server.get(API).status_code == 200, 10, "the polled drop to be stored")
        assert "(polling)" in server.log
        assert server.stop() == 0


# -- serve alone: never a silent 2xx ---------------------------------------------------------


def test_without_a_watcher_serve_warns_and_every_answer_says_the_drop_waits(root: Path) -> None:
    history = root / "console-usage-history"
    history.mkdir()
    now = datetime.now(UTC)
    (history / f"{now:%Y-%m-%dT%H-%M-%S}-00000001.json").write_bytes(
        fresh_payload(timedelta(minutes=1))
    )
    with ServeProcess(root) as server:
        server.wait_log("no watcher holds the history")
        assert server.get("/api/health").json()["status"] == "healthy"  # nothing waits yet
        r = server.post(API, content=fresh_payload(seq=1), headers=HEADERS)
        assert r.status_code == 202
        body = r.json()
        assert body["success"] is True and body["waitingForWatcher"] is True
        assert "no watcher is running" in body["message"]
        health = server.get("/api/health")
        assert health.status_code == 200
        facts = health.json()
        assert facts["status"] == "degraded"
        assert "1 drop waits in the spool" in facts["reason"]
        assert "no watcher holds the history" in facts["reason"]
        assert facts["spool"]["waiting"] == 1
        assert facts["watcher"]["running"] is False
        server.wait_log("waits in the spool until 'ingester watch' runs")
        # A watcher starts: the drop is stored, and health says so.
        with WatchProcess(root):
            wait_for(
                lambda: server.get("/api/health").json()["spool"]["waiting"] == 0,
                15,
                "the watcher to take the drop",
            )
            r = server.post(API, content=fresh_payload(seq=2), headers=HEADERS)
            assert r.json()["waitingForWatcher"] is False
            assert "the watcher stores it" in r.json()["message"]


def test_drops_waiting_past_the_stale_threshold_make_health_unhealthy(root: Path) -> None:
    spool = root / "spool"
    old = drop(spool, "old.json", payload(1))
    eleven_minutes_ago = time.time() - 11 * 60
    os.utime(old, (eleven_minutes_ago, eleven_minutes_ago))
    with ServeProcess(root) as server:
        r = server.get("/api/health")
        assert "1 drop waits in the spool" in server.log  # the start-up warning names it
    assert r.status_code == 503
    assert r.json()["status"] == "unhealthy"
    assert "no watcher" in r.json()["reason"]
    assert r.json()["spool"]["oldestWaitingSeconds"] >= 11 * 60


def test_require_watcher_refuses_then_accepts_once_a_watcher_runs(root: Path) -> None:
    data = fresh_payload(seq=7)
    with ServeProcess(root, "--require-watcher") as server:
        refused = server.post(API, content=data, headers=HEADERS)
        assert refused.status_code == 503
        assert refused.json()["success"] is False
        assert spool_drops(root) == []
        with WatchProcess(root) as watcher:
            wait_for(
                lambda: server.post(API, content=data, headers=HEADERS).status_code == 202,
                15,
                "the retry to be accepted",
            )
            watcher.wait_log("ingested ")
    assert list(stored(root).values()) == [1]
    assert stored(root)[data] == 1


def test_the_warning_repeats_while_drops_wait_and_stops_when_a_watcher_comes(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In process, on real folders and a real lock: rate-limited, then quiet."""
    spool = Spool(root / "spool", root / "spool" / "rejected")
    drop(root / "spool", "waiting.json", payload(1))
    history = root / "console-usage-history"
    history.mkdir()
    warnings = BacklogWarnings(WatcherProbe(history / ".lock", spool), every=0.0)
    caplog.set_level("INFO", logger="ingester.serve")
    warnings.at_start()
    warnings.check()
    warnings.check()
    said = [r.getMessage() for r in caplog.records]
    assert sum("no watcher holds the history" in m for m in said) == 3
    caplog.clear()
    with HistoryLock(history / ".lock", "watch"):
        warnings.check()
        warnings.check()
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"serve: a watcher holds the history again (pid {os.getpid()})"]


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/locks")
def test_a_writer_that_is_not_a_watcher_does_not_count(root: Path) -> None:
    history = root / "console-usage-history"
    history.mkdir()
    probe = WatcherProbe(history / ".lock", Spool(root / "spool", root / "spool" / "rejected"))
    with HistoryLock(history / ".lock", "cleanup"):
        assert probe.watcher() == (False, os.getpid())
    with HistoryLock(history / ".lock", "watch"):
        assert probe.watcher() == (True, os.getpid())
    assert probe.watcher() == (False, None)


def test_serve_alone_under_systemd_is_quiet_about_readiness(root: Path) -> None:
    """The split unit is Type=exec: serve alone sends nothing to a notify socket."""
    with (
        NotifyListener() as listener,
        ServeProcess(root, env={"NOTIFY_SOCKET": listener.address}) as server,
    ):
        assert server.get("/api/health").status_code == 503
        assert server.stop() == 0
        assert listener.receive(0.3) is None


def test_serve_watch_exits_0_on_sigint_too(root: Path) -> None:
    argv = ["serve", "--watch", "--listen", "127.0.0.1:0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingester", "--root", str(root), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=cli_env(),
    )
    assert proc.stdout is not None
    lines: list[bytes] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if b"serve --watch: ready" in line:
                break
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, b"".join(lines) + rest
    assert b"serve --watch: stopping the server and the watcher" in rest
