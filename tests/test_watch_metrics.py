"""``ingester watch --metrics HOST:PORT``: the watcher's own metrics over real HTTP.

A real watcher in a subprocess, real drops in a real spool, and its metrics scraped
from its own HTTP server on loopback and parsed by ``prometheus-client``'s parser.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import IS_ROOT, SAMPLES, listening_ports, run_cli, wait_for
from support.capabilities import STRACE, needs_strace_root, traced_program
from support.watchproc import WatchProcess, drop, payload, versions

from ingester.intake.metrics import REJECT_LABELS, reject_kind

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_port(watcher: WatchProcess) -> int:
    """The port the watcher logged for its metrics server."""
    watcher.wait_log("metrics on http://")
    found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", watcher.log)
    assert found, watcher.log
    return int(found.group(1))


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics``: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def rejected_total(samples: Samples) -> float:
    return sum(v for (n, _), v in samples.items() if n == "ingester_watch_drops_rejected_total")


def test_counters_match_what_was_ingested_and_rejected(root: Path) -> None:
    spool = root / "spool"
    drop(spool, "before-start.json", payload(0))  # the backlog found at start counts too
    schema_bad = (SAMPLES / "invalid" / "percentage-out-of-range.json").read_bytes()
    with WatchProcess(root, "--metrics", "127.0.0.1:0") as watcher:
        port = metrics_port(watcher)
        for seq in range(1, 4):
            drop(spool, f"good-{seq}.json", payload(seq))
        drop(spool, "not-json.json", b"{this is not json")
        drop(spool, "schema.json", schema_bad)

        def settled() -> Samples | None:
            samples = scrape(port)
            done = (
                value(samples, "ingester_watch_drops_ingested_total") == 4
                and rejected_total(samples) == 2
                and value(samples, "ingester_watch_backlog_drops") == 0
            )
            return samples if done else None

        samples = wait_for(settled, 15, "4 ingested, 2 rejected, backlog 0 in /metrics")
        assert isinstance(samples, dict)
        assert watcher.stop() == 0
    assert len(versions(root)) == 4
    assert value(samples, "ingester_watch_drops_rejected_total", reason="not_json") == 1
    assert value(samples, "ingester_watch_drops_rejected_total", reason="schema") == 1
    assert value(samples, "ingester_watch_ingest_duration_seconds_count") == 4
    assert value(samples, "ingester_watch_ingest_duration_seconds_bucket", le="+Inf") == 4
    assert value(samples, "ingester_watch_store_failures_total") == 0
    assert value(samples, "ingester_watch_retention_held") == 0
    last = value(samples, "ingester_watch_last_ingest_timestamp_seconds")
    newest = max(p.stat().st_mtime for p in versions(root))
    assert abs(last - newest) < 3600  # a unix time in seconds, not ms and not 0
    # Every reason label is from the fixed list: no series per drop name or message.
    labels = {
        dict(lbl)["reason"]
        for (n, lbl), _ in samples.items()
        if n == "ingester_watch_drops_rejected_total"
    }
    assert labels == set(REJECT_LABELS)


def test_reject_kinds_are_bounded() -> None:
    assert reject_kind("not JSON: Expecting value: line 1 column 1 (char 0)") == "not_json"
    assert reject_kind("drop is 99999999 bytes, over the limit of 1048576") == "too_large"
    assert reject_kind("lastUpdated: is required", "schema") == "schema"
    assert reject_kind("not JSON: empty (no bytes); a payload is one JSON object") == "not_json"
    assert reject_kind("cannot read: Permission denied") == "unreadable"
    assert reject_kind("something no one wrote yet") == "other"


@pytest.fixture
def can_chattr(tmp_path: Path) -> None:
    if not IS_ROOT:
        pytest.skip("chattr +i needs root")
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    probe = tmp_path / "chattr-probe"
    probe.mkdir()
    if subprocess.run(["chattr", "+i", str(probe)], check=False).returncode != 0:
        pytest.skip("chattr +i does not work on this filesystem")
    subprocess.run(["chattr", "-i", str(probe)], check=True)


def test_store_failures_are_counted_then_the_drop_is_ingested(root: Path, can_chattr: None) -> None:
    spool = root / "spool"
    history = root / "console-usage-history"
    with contextlib.ExitStack() as stack:
        stack.callback(subprocess.run, ["chattr", "-i", str(history)], check=False)
        watcher = stack.enter_context(
            WatchProcess(root, "--metrics", "127.0.0.1:0", "--retry-max", "0.2")
        )
        port = metrics_port(watcher)
        subprocess.run(["chattr", "+i", str(history)], check=True)
        drop(spool, "blocked.json", payload(1))
        wait_for(
            lambda: value(scrape(port), "ingester_watch_store_failures_total") >= 1,
            15,
            "a store failure in /metrics",
        )
        # Whenever the scrape falls, within a retry (every 0.2 s here) or between two,
        # the drop not yet stored is the backlog.
        samples = scrape(port)
        assert value(samples, "ingester_watch_drops_ingested_total") == 0
        assert value(samples, "ingester_watch_backlog_drops") == 1
        subprocess.run(["chattr", "-i", str(history)], check=True)
        wait_for(
            lambda: value(scrape(port), "ingester_watch_drops_ingested_total") == 1,
            15,
            "the drop ingested once the history is writable",
        )
        assert value(scrape(port), "ingester_watch_ingest_duration_seconds_count") == 1
        assert watcher.stop() == 0


@needs_strace_root
def test_a_drop_in_the_group_under_way_is_still_the_backlog(root: Path) -> None:
    """Taken out of the waiting drops, a drop is in the backlog until its version is
    stored: a scrape while its group is under way counts it. The link that names the
    version (the watcher's only ``link`` call) is held up 2 s (strace), so the scrape
    falls between its claim and its version, and the test checks that it did."""
    spool = root / "spool"
    claimed = spool / ".claimed"
    claimed.mkdir(parents=True)
    slow = ("-e", "trace=link,linkat", "-e", "inject=link,linkat:delay_enter=2000000")
    wrapper = (STRACE, "-f", "-o", os.devnull, *slow)
    with WatchProcess(root, "--metrics", "127.0.0.1:0", wrapper=wrapper) as watcher:
        port = metrics_port(watcher)
        watcher.wait_log("watching ", timeout=30)
        drop(spool, "taken.json", payload(1))
        wait_for(lambda: any(claimed.iterdir()), 15, "the drop claimed")
        samples = scrape(port)
        assert any(claimed.iterdir()) and not versions(root), "scraped outside the group"
        assert value(samples, "ingester_watch_drops_ingested_total") == 0
        assert value(samples, "ingester_watch_backlog_drops") == 1
        watcher.wait_log("ingested taken.json", timeout=30)
        assert value(scrape(port), "ingester_watch_backlog_drops") == 0
        os.kill(traced_program(watcher.proc.pid), signal.SIGTERM)
        assert watcher.proc.wait(60) == 0, watcher.log


def test_head_is_answered_as_get_without_the_body(root: Path) -> None:
    # serve's /metrics answers HEAD; the watcher's must too (a monitor's "is it up").
    with WatchProcess(root, "--metrics", "127.0.0.1:0") as watcher:
        port = metrics_port(watcher)
        head = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="HEAD")
        with urllib.request.urlopen(head, timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            assert int(response.headers["Content-Length"]) > 0  # the GET's, not 0
            assert response.read() == b""
        assert scrape(port)  # and GET still answers whole
        assert watcher.stop() == 0


def test_metrics_are_off_by_default(root: Path) -> None:
    with WatchProcess(root) as watcher:
        drop(root / "spool", "one.json", payload(1))
        watcher.wait_log("ingested one.json")
        assert listening_ports(watcher.proc.pid) == set()
        assert "metrics on" not in watcher.log
        assert watcher.stop() == 0


def test_listening_check_sees_the_metrics_port(root: Path) -> None:
    # The check above can fail: with --metrics, the same look finds the port.
    with WatchProcess(root, "--metrics", "127.0.0.1:0") as watcher:
        port = metrics_port(watcher)
        assert listening_ports(watcher.proc.pid) == {port}
        assert watcher.stop() == 0


def test_bad_address_is_one_line_and_exit_2(root: Path) -> None:
    for address in ("nowhere", "127.0.0.1:http", "127.0.0.1:70000"):
        bad = run_cli(root, "watch", "--metrics", address)
        assert bad.returncode == 2, bad.stderr
        assert bad.stderr.startswith("error: --metrics:"), bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert not (root / "spool").exists()  # refused before anything was touched


def test_busy_port_is_one_line_and_exit_1(root: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli(root, "watch", "--metrics", f"127.0.0.1:{port}")
    assert busy.returncode == 1, busy.stderr
    lines = busy.stderr.strip().splitlines()
    assert len(lines) == 1, busy.stderr
    assert lines[0].startswith(f"error: cannot listen on 127.0.0.1:{port} for --metrics")
    assert "Traceback" not in busy.stderr
    assert not (root / "spool").exists()


def test_help_mentions_the_option(root: Path) -> None:
    shown = run_cli(root, "watch", "--help")
    assert shown.returncode == 0
    assert "--metrics HOST:PORT" in shown.stdout


def test_clients_cannot_crash_hold_or_flood_the_metrics_port(root: Path) -> None:
    """Faults from clients are one line each, and silent clients from one address cannot
    keep the scraper out."""
    with WatchProcess(root, "--metrics", "127.0.0.1:0") as watcher:
        port = metrics_port(watcher)
        # A head too long, then an abortive close while the error page is written.
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            try:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        # Silent connections from one address hold no more than its share.
        silent = [
            socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0))
            for _ in range(20)
        ]
        try:
            assert value(scrape(port), "ingester_watch_retention_held") == 0
            wait_for(lambda: "metrics: refused " in watcher.log, 10, "the refusal line")
        finally:
            for sock in silent:
                sock.close()
        assert watcher.stop() == 0
    log = watcher.log
    assert "Traceback" not in log and "----" not in log, log
    assert all(re.match(r"\d{4}-\d\d-\d\d ", line) for line in log.splitlines()), log
    # The first refusal is told at once; the rest are summed up within 10 s.
    assert "WARNING metrics: refused 1 connection (1 from an address with 4 being answered" in log
    assert "from 127.0.0.2 (1)" in log
