"""A payload made of thousands of usage windows makes no more than a bounded number of
usage series, forecast rows and ``check`` items, and says so once in the log and in a
gauge (the cap: :data:`ingester.usage.forecast.MAX_LIMITS`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from support import run_cli
from support.serveproc import ServeProcess, put_version, version_name

from ingester.usage.forecast import MAX_LIMIT_NAME, MAX_LIMITS

FORECAST = "/api/claude/console-usage/forecast"
EXTRA = 2000  # windows of each hostile payload


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _payload(at: datetime, extra: dict[str, object]) -> bytes:
    window = {"resetsIn": "3 days", "percentageUsed": 40}
    body = {
        "currentSession": {"resetsIn": "3 hr", "percentageUsed": 20},
        "weeklyLimits": {"allModels": window, "sonnetOnly": window},
        "lastUpdated": _iso(at),
        **extra,
    }
    return json.dumps(body).encode()


def test_a_payload_of_thousands_of_windows_makes_a_bounded_scrape(root: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    assert run_cli(root, "init").returncode == 0
    window = {"resetsIn": "3 days", "percentageUsed": 95}
    # Two hostile snapshots with windows of their own (held, as a partial scrape's
    # would be, while their reset is days away), then one from the console.
    for k in range(2):
        at = now - timedelta(minutes=3 - k)
        extra: dict[str, object] = {f"w{k}x{i:04d}": window for i in range(EXTRA)}
        extra["x" * (MAX_LIMIT_NAME + 1)] = window
        put_version(root, version_name(at), _payload(at, extra))
    at = now - timedelta(minutes=1)
    put_version(root, version_name(at), _payload(at, {"opusOnly": window}))
    with ServeProcess(root) as server:
        limits = server.get(FORECAST).json()["limits"]
        text = server.get("/metrics").text
        assert server.stop() == 0
    names = [limit["limit"] for limit in limits]
    assert len(names) == MAX_LIMITS
    # The console's own first, then the newest snapshot's, then the others by name.
    assert names[:3] == ["currentSession", "weeklyLimits.allModels", "weeklyLimits.sonnetOnly"]
    assert "opusOnly" in names
    series = [
        s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("ingester_usage_") and "limit" in s.labels
    ]
    assert {s.labels["limit"] for s in series} == set(names)
    assert len(series) <= 6 * MAX_LIMITS
    left_out = 2 * EXTRA + 1 + 4 - MAX_LIMITS
    assert f"ingester_usage_limits_left_out {float(left_out)}" in text
    warnings = [line for line in server.log.splitlines() if "left out of the forecast" in line]
    assert len(warnings) == 1, server.log
    assert f" WARNING {left_out} usage window(s) left out of the forecast" in warnings[0]
    # check names each limit it judges: its line stays short enough for a plugin's.
    done = run_cli(root, "check", "--usage-warning", "90")
    line = done.stdout.splitlines()[0]
    assert len(line) < 8192, len(line)
