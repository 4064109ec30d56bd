"""The one-process unit (``serve --watch``): it verifies, scores <= 1.5, stands in for the
split units, and the service it starts runs under the kernel's MDWE.

As in tests/test_systemd_units.py nothing boots systemd: ``systemd-analyze`` reads a copy
of the unit whose ExecStart points at this environment's ``ingester``.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support import cli_env
from support.sdnotify import NotifyListener
from support.serveproc import KEY, fresh_payload
from test_systemd_units import (
    MDWE,
    NAME,
    SERVICE,
    analyze,
    assert_exposure_within_limit,
    installed_copy,
    needs_analyze,
    needs_mdwe,
    one,
    parse_unit,
)

SINGLE = SERVICE.parent / f"{NAME}-single.service"
EXEC_START = f"/usr/local/bin/ingester --root /var/lib/{NAME} serve --watch"
API = "/api/claude/console-usage"


@pytest.fixture
def installed_single(tmp_path: Path) -> Path:
    return installed_copy(SINGLE, EXEC_START, tmp_path)


def test_single_unit_replaces_the_split_units_as_the_same_user() -> None:
    single, watcher = parse_unit(SINGLE), parse_unit(SERVICE)
    assert one(single, "Service.ExecStart") == EXEC_START
    for key in ("User", "Group", "StateDirectory", "UMask", "ProtectSystem", "WatchdogSec"):
        assert one(single, f"Service.{key}") == one(watcher, f"Service.{key}"), key
    assert one(single, "Service.Type") == "notify"
    assert one(single, "Service.NotifyAccess") == "main"
    assert one(single, "Service.Restart") == "on-failure"
    # Never beside the split units on the same history: one watcher per history.
    conflicts = one(single, "Unit.Conflicts").split()
    assert sorted(conflicts) == sorted(
        [f"{NAME}.service", f"{NAME}-serve.service", f"{NAME}-serve.socket"]
    )
    # The original's PORT by default; settings and the key from an optional file, never
    # written in the unit.
    assert single["Service.Environment"] == ["PORT=4000"]
    assert one(single, "Service.EnvironmentFile").startswith("-/etc/")
    code = "\n".join(line for line in SINGLE.read_text().splitlines() if not line.startswith("#"))
    assert not re.search(r"API_KEY=\S", code)
    # The watcher's hardening, less what listening on the network needs.
    network = {"PrivateNetwork", "IPAddressDeny", "RestrictAddressFamilies"}
    own = {"Type", "ExecStart", "Environment", "EnvironmentFile", "TimeoutStopSec"}
    for key, values in watcher.items():
        name = key.split(".", 1)[1]
        if key.startswith("Service.") and name not in network | own:
            assert single.get(key) == values, key


@needs_analyze
def test_single_unit_verifies(installed_single: Path) -> None:
    result = analyze("verify", str(installed_single))
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == "", result.stdout + result.stderr


@needs_analyze
def test_single_unit_exposure_is_at_most_1_5(installed_single: Path) -> None:
    assert_exposure_within_limit(installed_single)


@needs_mdwe
def test_serve_watch_runs_under_mdwe_as_the_unit_starts_it(root: Path) -> None:
    """The unit's process: PORT from the environment, the key from the original's
    variable, READY after both halves, a POST stored, SIGTERM then exit 0."""
    with NotifyListener() as listener:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = cli_env(
            NOTIFY_SOCKET=listener.address,
            WATCHDOG_USEC="1000000",
            PORT=str(port),
            CLAUDE_SYNC_API_KEY=KEY,
        )
        env.pop("WATCHDOG_PID", None)
        log_path = root.parent / "single.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [*MDWE, sys.executable, "-m", "ingester", "--root", str(root), "serve", "--watch"],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            alive = lambda: proc.poll() is None  # noqa: E731
            listener.wait_for(lambda m: "READY" in m.fields, 60, "READY=1", alive)
            base = f"http://127.0.0.1:{port}"
            r = httpx.post(
                base + API,
                content=fresh_payload(seq=1),
                headers={"Content-Type": "application/json", "X-API-Key": KEY},
                timeout=10,
            )
            assert r.status_code == 202, r.text
            listener.wait_for(
                lambda m: "ingested 1," in m.fields.get("STATUS", ""), 30, "the ingest", alive
            )
            assert httpx.get(base + API, timeout=10).json()["seq"] == 1
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert "Traceback" not in log_path.read_text()
