"""A store fault that lasts, as the log, the metrics and health tell it.

Real faults against a real ``ingester watch`` (or ``serve --watch``) in a subprocess:
``chattr +i`` on the history or the root (EPERM even for root), the history on a small
tmpfs filled up (ENOSPC). One fault is one ERROR line, not one per step it breaks (the
drop's store, the round that writes the metadata); once its retries wait their longest
it is said again only now and then, while every try is still counted in the metrics;
and one INFO line says when it heals. The latest link's failures are counted too, and
health under ``serve --watch`` says why the stores fail.

Skipped, with the reason, when not root or when chattr/mount do not work here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
from pathlib import Path

import pytest
from support import wait_for
from support.capabilities import fill, immutable, tmpfs
from support.serveproc import KEY
from support.watchproc import WatchProcess, drop, payload, versions
from test_watch_metrics import metrics_port, scrape, value

from ingester.errors import StorageError

API = "/api/claude/console-usage"
HEADERS = {"Content-Type": "application/json", "X-API-Key": KEY}


def metadata_count(history: Path) -> object:
    """The version count ``_metadata.json`` holds (None: none readable)."""
    try:
        return json.loads((history / "_metadata.json").read_bytes()).get("versionCount")
    except (OSError, ValueError):
        return None


def errors(log: str) -> list[str]:
    """The log's ERROR lines, without their time."""
    return [line.split(" ", 3)[3] for line in log.splitlines() if " ERROR " in line]


@pytest.mark.parametrize("fault", ["immutable", "full"])
def test_a_store_fault_is_one_line_while_every_try_is_counted_then_one_line_heals(
    root: Path, tmp_path: Path, fault: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("can_chattr" if fault == "immutable" else "can_mount")
    with contextlib.ExitStack() as stack:
        if fault == "full":
            fs = stack.enter_context(tmpfs(tmp_path / "fs"))
            history = fs / "history"
            where = ("--history-dir", str(history), "--latest-path", str(fs / "latest.json"))
        else:
            history = root / "console-usage-history"
            where = ()
        watcher = stack.enter_context(
            WatchProcess(root, "--metrics", "127.0.0.1:0", "--retry-max", "0.5", global_args=where)
        )
        port = metrics_port(watcher)
        drop(root / "spool", "first.json", payload(0))
        watcher.wait_log("ingested first.json")
        # Its round done too: a round that met the fault first would say it first.
        wait_for(lambda: metadata_count(history) == 1, 10, "the metadata written")
        if fault == "full":
            filler = fs / "filler"
            with contextlib.suppress(OSError):  # its close may fail too: it is there
                fill(fs)
        else:
            stack.enter_context(immutable(history))
        drop(root / "spool", "blocked.json", payload(1))
        # Many tries, each of the drop's store and of the round after it (the metadata).
        wait_for(
            lambda: value(scrape(port), "ingester_watch_store_failures_total") >= 6,
            20,
            "six failed tries",
        )
        said = errors(watcher.log)
        assert len(said) == 1, watcher.log
        cause = "EPERM" if fault == "immutable" else "ENOSPC"
        assert re.fullmatch(
            rf"cannot store drop blocked\.json: .*{re.escape(str(history))}.*\[{cause}\]; "
            r"retrying in 0\.5 s",
            said[0],
        ), said[0]
        wait_for(
            lambda: (
                value(scrape(port), "ingester_watch_upkeep_failures_total", step="metadata") >= 2
            ),
            20,
            "the round's failures counted",
        )
        if fault == "full":
            filler.unlink()
        else:
            subprocess.run(["chattr", "-i", str(history)], check=True)
        healed = re.compile(r"INFO storing drops again after \d+ s \((\d+) failed tries\)")
        wait_for(lambda: healed.search(watcher.log), 20, "the heal said")
        watcher.wait_log("ingested blocked.json")
        tries = int(healed.findall(watcher.log)[0])
        assert tries == value(scrape(port), "ingester_watch_store_failures_total"), watcher.log
        assert len(healed.findall(watcher.log)) == 1
        assert len(errors(watcher.log)) == 1, watcher.log
        assert watcher.stop() == 0, watcher.log
    assert "Traceback" not in watcher.log


def test_claims_refused_for_every_drop_are_one_line_then_one_line_heals(
    root: Path, can_chattr: None
) -> None:
    claimed = root / "spool" / ".claimed"
    with contextlib.ExitStack() as stack:
        watcher = stack.enter_context(
            WatchProcess(root, "--metrics", "127.0.0.1:0", "--retry-max", "0.5")
        )
        port = metrics_port(watcher)
        frozen = contextlib.ExitStack()
        stack.enter_context(frozen)
        frozen.enter_context(immutable(claimed))
        names = [f"refused-{i}.json" for i in range(3)]
        for i, name in enumerate(names):
            drop(root / "spool", name, payload(i))
        wait_for(
            lambda: value(scrape(port), "ingester_watch_store_failures_total") >= 9,
            20,
            "three tries of each drop",
        )
        said = errors(watcher.log)
        assert len(said) == 1, watcher.log
        assert re.fullmatch(
            r"cannot take drop refused-\d\.json: .*\[EPERM\]; retrying it in 0\.5 s", said[0]
        ), said[0]
        frozen.close()  # chattr -i
        for name in names:
            watcher.wait_log(f"ingested {name}")
        wait_for(lambda: "INFO storing drops again after " in watcher.log, 10, "the heal said")
        assert watcher.stop() == 0, watcher.log
    assert len(errors(watcher.log)) == 1, watcher.log
    assert sorted(p.read_bytes() for p in versions(root)) == sorted(payload(i) for i in range(3))


def test_a_stuck_latest_link_is_counted_said_once_and_its_repair_said(
    root: Path, can_chattr: None
) -> None:
    latest = root / "console-usage-synced.json"
    with contextlib.ExitStack() as stack:
        watcher = stack.enter_context(
            WatchProcess(root, "--metrics", "127.0.0.1:0", "--retry-max", "0.5")
        )
        port = metrics_port(watcher)
        drop(root / "spool", "first.json", payload(0))
        watcher.wait_log("ingested first.json")
        frozen = contextlib.ExitStack()
        stack.enter_context(frozen)
        frozen.enter_context(immutable(root))  # no new link can be made in its folder
        for seq in (1, 2):
            drop(root / "spool", f"then-{seq}.json", payload(seq))
            watcher.wait_log(f"ingested then-{seq}.json")
        wait_for(
            lambda: (
                value(scrape(port), "ingester_watch_upkeep_failures_total", step="latest_link") >= 4
            ),
            20,
            "the link's failures counted",
        )
        assert value(scrape(port), "ingester_watch_store_failures_total") == 0
        said = errors(watcher.log)
        assert len(said) == 1, watcher.log
        assert said[0].startswith(
            f"cannot refresh the latest link (drops are still stored): cannot create {latest}"
        ), said[0]
        frozen.close()  # chattr -i
        healed = re.compile(
            r"INFO refreshing the latest link again after \d+ s \(\d+ failed tries\)"
        )
        wait_for(lambda: healed.search(watcher.log), 20, f"the repair said:\n{watcher.log}")
        wait_for(lambda: latest.is_symlink(), 10, "the link made")
        assert latest.read_bytes() == payload(2)
        assert os.readlink(latest).endswith(versions(root)[-1].name)
        assert watcher.stop() == 0, watcher.log
    assert len(errors(watcher.log)) == 1, watcher.log


def test_a_fault_that_stands_is_said_again_only_now_and_then_with_its_count(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The rule of the lines, on the clock given: a fault's repeats once its waits are
    the longest are DEBUG, with an ERROR every SAY_AGAIN_EVERY seconds that counts them;
    another cause is said at once; the heal is one INFO line."""
    from ingester.intake.maintenance import SAY_AGAIN_EVERY, FaultLines, fault_cause

    lines = FaultLines("storing drops", longest=30.0)
    full = fault_cause(
        StorageError("write", tmp_path / "a.tmp", OSError(28, "No space left on device"))
    )
    gone = fault_cause(StorageError("write", tmp_path / "b.tmp", OSError(5, "I/O error")))
    caplog.set_level(logging.DEBUG, logger="ingester.watcher")
    now = 1000.0
    for wait in (0.5, 1.0, 30.0, 30.0, 30.0):
        lines.failed("cannot store drop a.json: full", f"retrying in {wait} s", full, wait, now)
        now += wait
    lines.failed("cannot store drop a.json: full", "retrying in 30 s", full, 30.0, 1000.0 + 700)
    lines.failed("cannot store drop a.json: eio", "retrying in 30 s", gone, 30.0, 1000.0 + 730)
    lines.healed(1000.0 + 760)
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in said] == [
        "ERROR",
        "ERROR",
        "ERROR",
        "DEBUG",
        "DEBUG",
        "ERROR",
        "ERROR",
        "INFO",
    ], said
    assert said[5][1] == (
        "cannot store drop a.json: full (failing for 700 s, 6 tries; the 2 since it was "
        "last said are logged at DEBUG); retrying in 30 s"
    )
    assert said[6][1] == "cannot store drop a.json: eio; retrying in 30 s"
    assert said[7][1] == "storing drops again after 760 s (7 failed tries)"
    assert SAY_AGAIN_EVERY <= 700


def test_the_cause_health_carries_is_one_bounded_line() -> None:
    from ingester.intake.metrics import NO_METRICS
    from ingester.serve.watch_thread import CAUSE_MAX, StoreFaults

    faults = StoreFaults(NO_METRICS)
    faults.failed("cannot link /srv/a\nb.json: No space left on device [ENOSPC] " * 100)
    assert faults.failures == 1 and faults.since is not None
    assert "\n" not in faults.cause and len(faults.cause) == CAUSE_MAX
    assert faults.cause.startswith("cannot link /srv/a\\nb.json: No space left on device")
    assert faults.cause.endswith("...")
