"""The one-process unit (``serve --watch``): it verifies, scores <= 1.5, stands in for the
split units, and the service it starts runs under the kernel's MDWE.

As in tests/test_systemd_units.py nothing boots systemd: ``systemd-analyze`` reads a copy
of the unit whose ExecStart points at this environment's ``ingester``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support import cli_env
from support.ports import free_port
from support.sdnotify import NotifyListener
from support.serveproc import KEY, ServeProcess, fresh_payload
from test_systemd_units import (
    MDWE,
    NAME,
    SERVICE,
    assert_exposure_within_limit,
    assert_hardened_like_the_watcher,
    assert_verifies,
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
    assert_hardened_like_the_watcher(single, watcher, network | own)


@needs_analyze
def test_single_unit_verifies(installed_single: Path) -> None:
    assert_verifies(installed_single)


@needs_analyze
def test_single_unit_exposure_is_at_most_1_5(installed_single: Path) -> None:
    assert_exposure_within_limit(installed_single)


@needs_mdwe
def test_serve_watch_runs_under_mdwe_as_the_unit_starts_it(root: Path) -> None:
    """The unit's process: PORT from the environment, the key from the original's
    variable, READY after both halves, a POST stored, SIGTERM then exit 0."""
    with NotifyListener() as listener:
        port = free_port()
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


# -- a scraper in a unit of its own: the trigger touches a file, a path unit starts it ------

SCRAPE_PATH = SERVICE.parent / f"{NAME}-scrape.path"
SCRAPER = SERVICE.parent / "console-usage-scraper.service"
REQUESTED = f"/run/{NAME}/scrape-requested"
TRIGGER_COMMAND = f"touch {REQUESTED}"


def test_the_path_unit_watches_what_the_trigger_touches_in_the_servers_runtime_folder() -> None:
    single, path, scraper = parse_unit(SINGLE), parse_unit(SCRAPE_PATH), parse_unit(SCRAPER)
    # The file lies in the one-process unit's own runtime folder, which it may write.
    assert one(single, "Service.RuntimeDirectory") == NAME
    assert REQUESTED.startswith(f"/run/{one(single, 'Service.RuntimeDirectory')}/")
    assert one(path, "Path.PathChanged") == REQUESTED
    assert one(path, "Path.Unit") == SCRAPER.name
    # The documented setting is the command this test runs.
    for text in (
        SCRAPE_PATH.read_text(),
        (SERVICE.parent.parent / "docs" / "serve.md").read_text(),
    ):
        assert f"INGESTER_TRIGGER_COMMAND={TRIGGER_COMMAND}" in text
    # The scraper's own user and a sandbox a browser can run in.
    assert one(scraper, "Service.DynamicUser") == "yes"
    assert one(scraper, "Service.Type") == "oneshot"
    for key in ("MemoryDenyWriteExecute", "PrivateUsers", "User"):
        assert f"Service.{key}" not in scraper, key


@needs_analyze
def test_the_path_unit_and_the_example_scraper_unit_verify(tmp_path: Path) -> None:
    (tmp_path / SCRAPE_PATH.name).write_text(SCRAPE_PATH.read_text())
    text = SCRAPER.read_text()
    assert text.count("ExecStart=/opt/scraper/bin/scrape --once\n") == 1
    # The example's program does not exist here; a real one stands in for it.
    scraper = tmp_path / SCRAPER.name
    scraper.write_text(text.replace("ExecStart=/opt/scraper/bin/scrape", "ExecStart=/bin/true"))
    assert_verifies(tmp_path / SCRAPE_PATH.name, scraper)


@needs_mdwe
def test_the_documented_trigger_command_touches_the_file_under_mdwe(root: Path) -> None:
    """docs/serve.md's scrape-trigger block, as serve runs it in the unit's MDWE: each
    press changes the file the path unit watches."""
    guide = (SERVICE.parent.parent / "docs" / "serve.md").read_text()
    block = re.search(r"<!-- example: scrape-trigger -->\n```sh\n(.*?)```", guide, re.S)
    assert block, "docs/serve.md has no scrape-trigger example"
    variable, _, documented = block.group(1).strip().partition("=")
    assert (variable, documented) == ("INGESTER_TRIGGER_COMMAND", TRIGGER_COMMAND)
    runtime = root.parent / "run"
    runtime.mkdir()
    requested = runtime / "scrape-requested"
    command = documented.replace(f"/run/{NAME}", str(runtime))
    with ServeProcess(root, "--trigger-command", command, wrapper=tuple(MDWE)) as server:
        first = server.post(API + "/trigger", headers={"X-API-Key": KEY})
        assert first.status_code == 200, first.text
        assert requested.is_file()
        os.utime(requested, ns=(0, 0))  # a press later changes the times (what systemd sees)
        second = server.post(API + "/trigger", headers={"X-API-Key": KEY})
        assert second.status_code == 200, second.text
        assert requested.stat().st_mtime_ns > 0
