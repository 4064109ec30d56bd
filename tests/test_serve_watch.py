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
import shutil
import signal
import socket
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
from support.signals import pause
from support.watchproc import WatchProcess, drop, payload

from ingester.history.lock import HistoryHolder, HistoryLock
from ingester.intake.spool import Spool
from ingester.runtime.notify import SystemdNotifier
from ingester.serve.backlog import BacklogWarnings, WatcherProbe
from ingester.serve.joint_notifier import JointNotifier

API = "/api/claude/console-usage"
HEADERS = {"Content-Type": "application/json", "X-API-Key": KEY}


def stored(root: Path) -> Counter[bytes]:
    history = root / "console-usage-history"
    return Counter(p.read_bytes() for p in history.glob("20*.json"))


def spool_drops(root: Path) -> list[Path]:
    spool = root / "spool"
    return sorted(p for p in spool.glob("*.json") if p.is_file()) if spool.is_dir() else []


# -- one process ------------------------------------------------------------------------


def test_a_post_is_served_back_by_the_same_process(root: Path) -> None:
    """No other process runs: the POST is stored by the watcher inside ``serve``. (How
    fast is for the benchmarks to say; the deadline here only bounds a hang.)"""
    with ServeProcess(root, "--watch") as server:
        server.wait_log("serve --watch: ready")
        data = fresh_payload(seq=1)
        r = server.post(API, content=data, headers=HEADERS)
        assert r.status_code == 202, r.text
        assert r.json()["waitingForWatcher"] is False

        def served() -> bool:
            got = server.get(API)
            return got.status_code == 200 and got.json().get("seq") == 1

        wait_for(served, 30, "the POSTed snapshot to be served back")
        health = server.get("/api/health").json()
        assert health["watcher"] == {"running": True, "pid": server.proc.pid, "inProcess": True}
        # The watcher's own metrics are served beside the server's. Its counter moves
        # just after the version is published, so a GET may see the version first.
        wait_for(
            lambda: "ingester_watch_drops_ingested_total 1.0" in server.get("/metrics").text,
            30,
            "the watcher's counter",
        )
        assert "ingester_http_posts_total" in server.get("/metrics").text
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


def _hammer_answers(base: str, stop: threading.Event, answers: list[tuple[bytes, dict]]) -> None:
    """POST flat out; every 2xx answer's body is kept with the payload it answered."""
    with httpx.Client(base_url=base, timeout=30) as client:
        seq = 0
        while not stop.is_set():
            seq += 1
            data = fresh_payload(seq=seq, worker=threading.get_ident())
            try:
                r = client.post(API, content=data, headers=HEADERS)
            except httpx.HTTPError:
                continue  # never answered (the server closed): the scraper retries
            if r.is_success:
                answers.append((data, r.json()))


def backlog(root: Path) -> int:
    """Drops not stored: in the spool and claimed (what ``status`` counts)."""
    claimed = root / "spool" / ".claimed"
    return len(spool_drops(root)) + (
        sum(1 for p in claimed.glob("*.json") if p.is_file()) if claimed.is_dir() else 0
    )


STOP_LINE = re.compile(r" INFO stopped: (\d+) ingested, (\d+) rejected, (\d+) waiting$", re.M)


def test_sigterm_stops_the_posts_first_then_stores_the_spool_then_stops_the_watcher(
    root: Path,
) -> None:
    server = ServeProcess(root, "--watch").start()
    server.wait_log("serve --watch: ready")
    answers: list[tuple[bytes, dict]] = []
    stop = threading.Event()
    workers = [
        threading.Thread(target=_hammer_answers, args=(server.base, stop, answers))
        for _ in range(4)
    ]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: len(answers) >= 40, 60, "POSTs under way")
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(60)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
        server.stop()
    log = server.log
    assert code == 0, log
    assert "Traceback" not in log
    lines = log.splitlines()
    (watcher_stopped,) = [i for i, line in enumerate(lines) if STOP_LINE.search(line)]
    # No POST was taken once the watcher had stopped, and every answer that said "the
    # watcher stores it" came while it ran.
    accepted = [i for i, line in enumerate(lines) if "accepted POST as drop" in line]
    assert accepted and max(accepted) < watcher_stopped, log
    assert not any("no watcher holds the history" in line for line in lines), log
    running = [body for _data, body in answers if body["waitingForWatcher"] is False]
    assert len(running) == len(answers)
    # The stop line counts what the spool really holds.
    match = STOP_LINE.search(lines[watcher_stopped])
    assert match is not None
    assert int(match[3]) == backlog(root), log
    if int(match[3]):  # the drain budget ran out (a very slow machine): it says so
        assert "still wait in the spool after" in log
    # Every 2xx is stored exactly once (after a restart for what was left).
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    counts = stored(root)
    assert all(counts[data] == 1 for data, _body in answers)
    assert max(counts.values()) == 1
    assert run_cli(root, "verify").returncode == 0


def test_a_second_signal_cuts_the_drain_short(root: Path, can_chattr: None) -> None:
    stuck = drop(root / "spool", "stuck.json", payload(1))
    subprocess.run(["chattr", "+i", str(stuck)], check=True)
    try:
        # A budget far beyond the test: only the second signal can end the drain.
        server = ServeProcess(root, "--watch", "--drain-timeout", "600").start()
        server.wait_log("serve --watch: ready")
        server.proc.send_signal(signal.SIGTERM)
        server.wait_log("the watcher takes the 1 drop left in the spool (at most 600 s)")
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(120)
        server.stop()
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    assert code == 0, server.log
    assert "stop forced (a second signal)" in server.log
    match = STOP_LINE.search(server.log)
    assert match is not None and int(match[3]) == backlog(root) == 1


@pytest.mark.parametrize("stop", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_a_signal_repeated_at_once_still_lets_the_drain_run(
    root: Path, can_chattr: None, stop: signal.Signals
) -> None:
    """A closed terminal sends SIGHUP twice, a fraction of a millisecond apart: that is
    one stop, and the drain runs (only a signal during it, or Ctrl-C twice, skips it)."""
    stuck = drop(root / "spool", "stuck.json", payload(1))
    subprocess.run(["chattr", "+i", str(stuck)], check=True)
    try:
        server = ServeProcess(root, "--watch", "--drain-timeout", "1").start()
        server.wait_log("serve --watch: ready")
        server.proc.send_signal(stop)
        pause(0.0002)
        server.proc.send_signal(stop)
        code = server.stop(timeout=30)
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    assert code == 0, server.log
    assert "stop forced" not in server.log
    assert "1 drop(s) still wait in the spool after 1 s" in server.log


@pytest.fixture
def can_chattr(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr to make a drop the watcher cannot take")
    probe = tmp_path / "probe"
    probe.touch()
    if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i does not work on this filesystem")
    subprocess.run(["chattr", "-i", str(probe)], check=True)


def test_a_drain_that_runs_out_of_time_says_what_it_left(root: Path, can_chattr: None) -> None:
    stuck = drop(root / "spool", "stuck.json", payload(1))
    subprocess.run(["chattr", "+i", str(stuck)], check=True)  # it cannot be claimed
    try:
        with ServeProcess(root, "--watch", "--drain-timeout", "0.5") as server:
            server.wait_log("serve --watch: ready")
            r = server.post(API, content=fresh_payload(seq=1), headers=HEADERS)
            assert r.status_code == 202 and r.json()["waitingForWatcher"] is False
            # Taken whole (its claim released) before the stop: left to the drain, its
            # store (fsyncs) races the 0.5 s budget, and a busy disk leaves it behind
            # with the stuck one. The drain's report of what it left is the point here.
            server.wait_log(f"ingested {r.json()['drop']} -> ", timeout=30)
            assert server.stop() == 0
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    log = server.log
    assert "serve --watch: 1 drop(s) still wait in the spool after 0.5 s" in log
    match = STOP_LINE.search(log)
    assert match is not None and int(match[3]) == backlog(root) == 1, log
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    assert stored(root)[payload(1)] == 1 and stored(root)[r.request.content] == 1


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
    # Each status says the phase and each half in words, never a bare word twice.
    statuses = [m.fields["STATUS"] for m in listener.messages if "STATUS" in m.fields]
    (stopping_at,) = [i for i, m in enumerate(listener.messages) if "STOPPING" in m.fields]
    for i, m in enumerate(listener.messages):
        status = m.fields.get("STATUS")
        if status is None:
            continue
        assert "starting; starting" not in status
        phase = status.split(":", 1)[0].split(" ", 1)[0]
        if i < ready_at[0]:
            assert phase == "starting", status
        elif i < stopping_at:
            assert phase == "serving", status
        else:
            assert phase == "stopping", status
            assert "watcher" in status
    assert listener.messages[stopping_at].fields["STATUS"].startswith("stopping: no new ")
    assert statuses


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


def test_the_watcher_s_extensions_reach_systemd_only_while_the_process_starts() -> None:
    """In process, on a real notify socket: the watcher's ``EXTEND_TIMEOUT_USEC=`` (a
    long copy in the backlog) goes out before ``READY=1``, measured by the real watchdog
    (the watcher's own reports come more often); once ready, or once a stop began, it
    would extend another timeout, and is dropped."""
    with NotifyListener() as listener:
        notifier = SystemdNotifier(listener.address, watchdog_usec=30_000_000)
        joint = JointNotifier(notifier)
        view = joint.watcher_view()
        assert view.watchdog_interval == 1.0  # its reports, not the process's pings
        assert view.timeout_extension == notifier.timeout_extension == 45.0
        view.extend_timeout(view.timeout_extension)
        sent = listener.wait_for(lambda m: True, 2, "the extension")
        assert sent.raw == b"EXTEND_TIMEOUT_USEC=45000000"
        view.ready("ingested 0, rejected 1, backlog 0")
        joint.server_ready("http://127.0.0.1:4000")
        listener.wait_for(lambda m: "READY" in m.fields, 2, "READY=1")
        view.extend_timeout(45.0)
        assert listener.receive(0.1) is None, "an extension after READY=1"
        joint.stopping("no new connections; finishing the requests in flight")
        listener.wait_for(lambda m: "STOPPING" in m.fields, 2, "STOPPING=1")
        view.extend_timeout(45.0)
        assert listener.receive(0.1) is None, "an extension during the stop"
        joint.close()

    with NotifyListener() as listener:  # a stop before READY=1: no extension either
        joint = JointNotifier(SystemdNotifier(listener.address))
        joint.stopping("no new connections; finishing the requests in flight")
        listener.wait_for(lambda m: "STOPPING" in m.fields, 2, "STOPPING=1")
        joint.watcher_view().extend_timeout(60.0)
        assert listener.receive(0.1) is None, "an extension during the stop"
        joint.close()


def test_a_second_watcher_is_refused_at_start(root: Path) -> None:
    with WatchProcess(root):
        done = run_cli(root, "serve", "--watch", "--listen", "127.0.0.1:0")
    assert done.returncode == 1
    assert "locked by pid" in done.stderr and "watch" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_lock_names_serve_watch_as_its_holder(root: Path) -> None:
    with ServeProcess(root, "--watch") as server:
        server.wait_log("serve --watch: ready")
        pid = server.proc.pid
        status = run_cli(root, "status")
        assert f"running (pid {pid}, serve --watch)" in status.stdout
        second = run_cli(root, "serve", "--watch", "--listen", "127.0.0.1:0")
        assert second.returncode == 1
        assert f"locked by pid {pid} serve --watch" in second.stderr
        writer = run_cli(root, "cleanup")
        assert writer.returncode == 1 and f"pid {pid} serve --watch" in writer.stderr
        # serve alone beside it counts it as the watcher.
        with ServeProcess(root) as alone:
            facts = alone.get("/api/health").json()
            assert facts["watcher"] == {"running": True, "pid": pid, "inProcess": False}
        assert server.stop() == 0


def test_when_the_watcher_stops_on_its_own_serve_stops_with_1(root: Path) -> None:
    with ServeProcess(root, "--watch") as server:
        server.wait_log("serve --watch: ready")
        history = root / "console-usage-history"
        history.rename(root / "moved-away")  # the lock no longer guards this history
        code = server.proc.wait(30)
    assert code == 1
    assert "serve stops too" in server.log


def test_a_watcher_that_dies_of_a_bug_ends_serve_with_70_as_its_help_and_docs_say(
    root: Path, tmp_path: Path
) -> None:
    """A bug in the watcher (a module that fails as none expects stands in for one) ends
    the process with 70, every command's code for a bug, in one reportable line; the
    POSTed drop waits in the spool, and the single unit restarts on 70."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import ingester.intake.watcher as w\n"
        "def boom(*a, **k):\n"
        "    raise ZeroDivisionError('boom')\n"
        "w.Watcher._absorb = boom\n"
    )
    path = os.pathsep.join(filter(None, (str(shim), os.environ.get("PYTHONPATH"))))
    with ServeProcess(root, "--watch", env={"PYTHONPATH": path}) as server:
        server.wait_log("serve --watch: ready")
        assert server.post(API, content=fresh_payload(), headers=HEADERS).status_code == 202
        wait_for(lambda: server.proc.poll() is not None, 30, "serve to end with its watcher")
        code = server.stop()
    assert code == 70, server.log
    assert "the watcher stopped on an internal error: ZeroDivisionError: boom (please report)" in (
        server.log
    )
    assert "Traceback" not in server.log
    assert len(spool_drops(root)) == 1 and not stored(root)
    help_text = " ".join(run_cli(root, "serve", "--help").stdout.split())
    assert "70 when the watcher stops on an internal error" in help_text, help_text
    docs = " ".join((Path(__file__).parents[1] / "docs" / "serve.md").read_text().split())
    assert "70 when the watcher stops on an internal error" in docs
    unit = Path(__file__).parents[1] / "systemd" / "console-usage-ingester-single.service"
    service = unit.read_text()
    assert "Restart=on-failure" in service and "RestartPreventExitStatus" not in service


def test_a_watcher_that_stops_on_its_own_sends_stopping_before_the_server_winds_down(
    root: Path,
) -> None:
    """The stop begins when the watcher ends: systemd hears ``STOPPING=1`` (and why) then,
    not only once the requests in flight have finished, up to the grace period later."""
    with NotifyListener() as listener:
        env = {"NOTIFY_SOCKET": listener.address}
        server = ServeProcess(root, "--watch", "--body-timeout", "60", env=env)
        try:
            alive = lambda: server.proc.poll() is None  # noqa: E731
            listener.wait_for(lambda m: "READY" in m.fields, 60, "READY=1", alive)
            server.start()
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as held:
                # A POST whose body never comes whole: in flight until the grace ends.
                held.sendall(
                    f"POST {API} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
                    "Content-Type: application/json\r\nContent-Length: 400\r\n\r\n{".encode()
                )
                wait_for(
                    lambda: "ingester_http_connections_open 2.0" in server.get("/metrics").text,
                    10,
                    "the held POST",
                )
                (root / "console-usage-history").rename(root / "moved-away")
                stopping = listener.wait_for(
                    lambda m: "STOPPING" in m.fields, 30, "STOPPING=1", alive
                )
                held.setblocking(False)
                with pytest.raises(BlockingIOError):
                    held.recv(1)  # still unanswered: the server is winding down
            assert "the watcher stopped" in stopping.fields["STATUS"], stopping.fields
            assert server.proc.wait(30) == 1
        finally:
            server.kill()
    assert sum("STOPPING" in m.fields for m in listener.messages) == 1


WATCH_ONLY = ("--polling", "--rescan-interval", "--retry-max", "--settle", "--drain-timeout")


def test_watch_options_need_watch_and_their_help_says_so(root: Path) -> None:
    for option in WATCH_ONLY:
        args = (option,) if option == "--polling" else (option, "3")
        done = run_cli(root, "serve", *args)
        assert done.returncode == 2 and option in done.stderr and "--watch" in done.stderr
    text = run_cli(root, "serve", "--help").stdout
    for option in WATCH_ONLY:
        entry = text.split(f"  {option}", 1)[1].split("\n  --", 1)[0]
        assert "[with --watch only]" in " ".join(entry.split()), entry


def test_serve_help_names_every_stop_signal_and_the_watcher_stopping_on_its_own(
    root: Path,
) -> None:
    """What the help says of the stop and the exit codes is what serve does (and what
    docs/serve.md says): SIGHUP starts the drain as SIGTERM does, and a watcher that stops
    on its own ends the process with 1."""
    text = " ".join(run_cli(root, "serve", "--help").stdout.split())
    drain = text.split("--drain-timeout S", 1)[1].split(" --", 1)[0]
    assert "SIGTERM/SIGINT/SIGHUP" in drain, drain
    assert "stops on its own" in text.split("Options:", 1)[0], text


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
        # The start line says what happens in this mode: refused, not spooled.
        server.wait_log("no watcher holds the history")
        assert "POSTs are answered 503 and nothing is dropped" in server.log
        assert "wait in the spool" not in server.log
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
    with (
        HistoryLock(history / ".lock", "watch"),
        HistoryLock(spool.lock_path, "watch", what="spool"),
    ):
        warnings.check()
        warnings.check()
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"serve: a watcher holds the history again (pid {os.getpid()})"]


@pytest.mark.parametrize("refuses", [False, True], ids=["spooled", "require-watcher"])
def test_the_start_and_periodic_lines_say_what_a_post_meets(
    root: Path, caplog: pytest.LogCaptureFixture, refuses: bool
) -> None:
    spool = Spool(root / "spool", root / "spool" / "rejected")
    drop(root / "spool", "waiting.json", payload(1))
    history = root / "console-usage-history"
    history.mkdir()
    probe = WatcherProbe(history / ".lock", spool)
    warnings = BacklogWarnings(probe, every=0.0, refuses_posts=refuses)
    caplog.set_level("INFO", logger="ingester.serve")
    warnings.at_start()
    warnings.check()
    start, periodic = (r.getMessage() for r in caplog.records)
    if refuses:
        assert "POSTs are answered 503 and nothing is dropped (--require-watcher)" in start
        assert "wait in the spool until" not in start
        assert periodic.endswith("new POSTs are answered 503 (--require-watcher)")
    else:
        assert "POSTed snapshots wait in the spool until 'ingester watch' runs" in start
        assert "503" not in start + periodic


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/locks")
def test_a_writer_that_is_not_a_watcher_does_not_count(root: Path) -> None:
    history = root / "console-usage-history"
    history.mkdir()
    spool = Spool(root / "spool", root / "spool" / "rejected")
    spool.ensure_folders()
    probe = WatcherProbe(history / ".lock", spool)
    with HistoryLock(history / ".lock", "cleanup"):
        assert probe.watcher() == (False, os.getpid())
    for purpose in ("watch", "serve --watch"):
        with (
            HistoryLock(history / ".lock", purpose),
            HistoryLock(spool.lock_path, purpose, what="spool"),
        ):
            assert probe.look() == (True, os.getpid(), None)
    assert probe.watcher() == (False, None)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/locks")
def test_a_watcher_of_another_spool_does_not_count(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It holds the history but never takes what is dropped in this spool.
    history = root / "console-usage-history"
    history.mkdir()
    here = Spool(root / "spool", root / "spool" / "rejected")
    there = Spool(root / "other-spool")
    here.ensure_folders()
    there.ensure_folders()
    probe = WatcherProbe(history / ".lock", here)
    caplog.set_level("INFO", logger="ingester.serve")
    with (
        HistoryLock(history / ".lock", "watch"),
        HistoryLock(there.lock_path, "watch", what="spool"),
    ):
        assert probe.look() == (False, os.getpid(), HistoryHolder(os.getpid(), "watch", False))
        BacklogWarnings(probe).at_start()
    [said] = [r.getMessage() for r in caplog.records]
    assert said == (
        f"serve: the watcher holding the history (pid {os.getpid()}) reads another spool, "
        f"not {here.dir} (its --spool-dir differs from this server's): POSTed snapshots "
        "wait in the spool until a watcher reads this spool (give it and serve the same "
        "--spool-dir)"
    )


def test_serve_alone_under_systemd_is_quiet_about_readiness(root: Path) -> None:
    """The split unit is Type=exec: serve alone sends nothing to a notify socket."""
    with (
        NotifyListener() as listener,
        ServeProcess(root, env={"NOTIFY_SOCKET": listener.address}) as server,
    ):
        assert server.get("/api/health").status_code == 503
        assert server.stop() == 0
        assert listener.receive(0.3) is None


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_serve_watch_exits_0_on_sigint_and_sighup_too(root: Path, stop: signal.Signals) -> None:
    # SIGHUP: the terminal it ran in was closed; its default would end it mid-answer.
    argv = ["serve", "--watch", "--listen", "127.0.0.1:0"]
    lines: list[bytes] = []
    # As a context manager, Popen closes its pipe however the block ends.
    with subprocess.Popen(
        [sys.executable, "-m", "ingester", "--root", str(root), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=cli_env(),
    ) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                lines.append(line)
                if b"serve --watch: ready" in line:
                    break
            proc.send_signal(stop)
            rest, _ = proc.communicate(timeout=20)
        finally:
            proc.kill()  # nothing if it has ended
    assert proc.returncode == 0, b"".join(lines) + rest
    assert b"serve --watch: stopping: no new connections" in rest
    assert re.search(rb"INFO stopped: \d+ ingested, \d+ rejected, 0 waiting", rest)


def test_health_says_at_once_that_the_watcher_in_process_cannot_store(
    root: Path, can_chattr: None
) -> None:
    """A POST is answered 202 once its drop is durable in the spool; when the watcher of
    the same process then cannot store it (an immutable history), health says so at once,
    not ten minutes later by the data's age, and says it no more once a drop is stored."""
    history = root / "console-usage-history"
    with ServeProcess(root, "--watch") as server:
        assert server.post(API, content=fresh_payload(seq=1), headers=HEADERS).status_code == 202
        wait_for(lambda: server.get("/api/health").json()["status"] == "healthy", 20, "healthy")
        subprocess.run(["chattr", "+i", str(history)], check=True)
        try:
            answer = server.post(API, content=fresh_payload(seq=2), headers=HEADERS)
            assert answer.status_code == 202, answer.text
            wait_for(
                lambda: "storeFault" in server.get("/api/health").json()["watcher"],
                20,
                "health to name the failing stores",
            )
            health = server.get("/api/health").json()
            assert health["status"] == "degraded", health
            fault = health["watcher"]["storeFault"]
            assert fault["failures"] >= 1
            assert "the watcher in this process cannot store drops since " in health["reason"]
            # The last failure's cause, one line, as the reason ends with it too.
            assert re.fullmatch(
                rf"cannot link {re.escape(str(history))}/\S+\.json: Operation not permitted: "
                rf"its folder {re.escape(str(history))} is immutable \(chattr -i "
                rf"{re.escape(str(history))} clears that\) \[EPERM\]",
                fault["cause"],
            ), fault
            assert f"tries; the last: {fault['cause']})" in health["reason"], health
        finally:
            subprocess.run(["chattr", "-i", str(history)], check=True)
        wait_for(
            lambda: "storeFault" not in server.get("/api/health").json()["watcher"],
            30,
            "the fault to clear once the drop is stored",
        )
        assert server.get("/api/health").json()["status"] == "healthy"
