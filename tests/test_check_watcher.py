"""``check`` and ``status`` against a real ``ingester watch``: what the watcher's log and
``/api/health`` already know (it runs but cannot store, it does not run, the latest link
is stuck) is said by the plugin line and by ``status`` too, without waiting for the data
to grow old.

Storage faults are made with ``chattr +i`` (root only; skipped otherwise). Times are
never waited for: a drop or the lock file is dated back with ``os.utime``, as a drop that
came, or a watcher that started, that long ago.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from support import run_cli, wait_for
from support.serveproc import ServeProcess
from support.watchproc import WatchProcess
from test_check import HISTORY, check, ingest, old_version, snapshot_at

# A failing store is tried again twice a second, and a missed drop found within a second.
WATCH_ARGS = ("--retry-max", "0.5", "--rescan-interval", "1")


def _chattr(flag: str, path: Path) -> None:
    result = subprocess.run(
        ["chattr", flag, str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def immutable(can_chattr: None) -> Iterator[list[Path]]:
    """Folders to make immutable (``chattr +i``); made mutable again in any case."""
    made: list[Path] = []
    yield made
    for path in made:
        _chattr("-i", path)


def _make_immutable(made: list[Path], path: Path) -> None:
    made.append(path)
    _chattr("+i", path)


def _backdate(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _drop_from_the_past(root: Path, tmp_path: Path, seconds: float) -> Path:
    """A drop moved into the spool (a rename keeps its mtime) that came ``seconds`` ago."""
    source = tmp_path / f"drop-{time.monotonic_ns()}.json"
    source.write_bytes(snapshot_at(timedelta(0)))
    _backdate(source, seconds)
    (root / "spool").mkdir(exist_ok=True)
    target = root / "spool" / source.name
    source.rename(target)
    return target


def _status(root: Path) -> str:
    result = run_cli(root, "status")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_watcher_that_runs_but_cannot_store_is_seen_long_before_max_age(
    root: Path, tmp_path: Path, immutable: list[Path]
) -> None:
    ingest(root, tmp_path, timedelta(0))
    history = root / HISTORY
    with WatchProcess(root, *WATCH_ARGS) as watcher:
        _make_immutable(immutable, history)
        # Came 5 min ago, to a watcher that has run for 10: well past the bound, far
        # short of --max-age (15 min), which was the only judge before.
        _drop_from_the_past(root, tmp_path, 300)
        watcher.wait_log("cannot store drop")
        _backdate(history / ".lock", 600)
        code, line = check(root)
        assert code == 1, line
        who = f"the watcher (pid {watcher.proc.pid})"
        assert f"{who} runs but has not stored the oldest drop for" in line
        assert "its log says why" in line
        status_line = next(ln for ln in _status(root).splitlines() if ln.startswith("watcher"))
        assert f"running (pid {watcher.proc.pid}" in status_line
        assert "but has not stored the oldest drop for" in status_line
        # Past --max-age it is as CRITICAL as before, and still said as what it is.
        code, line = check(root, "--max-age", "4m")
        assert code == 2 and "runs but has not stored" in line, line


def test_a_watcher_that_starts_on_an_old_backlog_is_given_its_time(
    root: Path, tmp_path: Path, immutable: list[Path]
) -> None:
    ingest(root, tmp_path, timedelta(0))
    history = root / HISTORY
    # 20 min old drops, older than --max-age, waiting for a watcher that starts now.
    _drop_from_the_past(root, tmp_path, 1200)
    _make_immutable(immutable, history)
    with WatchProcess(root, *WATCH_ARGS) as watcher:
        watcher.wait_log("cannot store drop")
        code, line = check(root)
        # Counted from the watcher's start, the wait is seconds long: nothing to say yet.
        assert code == 0, line
        assert "nothing takes the drops" not in line
        status_line = next(ln for ln in _status(root).splitlines() if ln.startswith("watcher"))
        assert "has not stored" not in status_line


def test_drops_waiting_with_no_watcher_warn_at_once(root: Path, tmp_path: Path) -> None:
    ingest(root, tmp_path, timedelta(0))
    # None waits, no watcher: OK (a 'watch --once' run from cron is no watcher between
    # its runs), and the line says nothing of it.
    code, line = check(root)
    assert code == 0, line
    with WatchProcess(root, *WATCH_ARGS) as watcher:
        watcher.kill()
    result = run_cli(root, "submit", "-", input=snapshot_at(timedelta(0)))
    assert result.returncode == 0, result.stderr
    code, line = check(root)
    assert code == 1, line
    assert "1 drop(s) waiting and no watcher runs" in line
    # As long as before, it is CRITICAL: nothing takes them.
    (drop,) = [p for p in (root / "spool").iterdir() if p.is_file() and p.suffix == ".json"]
    _backdate(drop, 20 * 60)
    code, line = check(root)
    assert code == 2 and "no watcher runs" in line, line


def test_a_latest_link_stuck_behind_the_newest_version_warns(
    root: Path, tmp_path: Path, immutable: list[Path]
) -> None:
    ingest(root, tmp_path, timedelta(0))  # makes the link and its lock file beside it
    link = root / "console-usage-synced.json"
    assert link.is_symlink()
    (root / os.readlink(link)).unlink()
    (root / "spool").mkdir(exist_ok=True)
    older = old_version(root, timedelta(minutes=9), 1)
    newest = old_version(root, timedelta(minutes=8), 2)
    for name in (older, newest):
        _backdate(root / HISTORY / name, 8 * 60)
    # Point the link at the older one and keep anyone from re-pointing it (the root,
    # where the link lives, immutable).
    tmp_link = root / "tmp-link"
    tmp_link.symlink_to(os.path.join(HISTORY, older))
    tmp_link.rename(link)
    _make_immutable(immutable, root)
    code, line = check(root)
    assert code == 1, line
    assert f"the latest link points at {HISTORY}/{older}, not {newest}" in line
    with WatchProcess(root, *WATCH_ARGS) as watcher:
        wait_for(lambda: "latest link" in watcher.log, 15, "the link's failure logged")
        code, line = check(root)
        # A writer holds the lock, but the newest is older than any update in flight.
        assert code == 1, line
        assert "the latest link points at" in line and "no update in flight" in line
        verify = run_cli(root, "verify")
        assert verify.returncode != 0, verify.stdout + verify.stderr


def test_check_and_health_call_data_just_past_30_minutes_an_outage_alike(
    root: Path, tmp_path: Path
) -> None:
    ingest(root, tmp_path, timedelta(0))
    with ServeProcess(root) as server:
        # 30 min and 5 s: 30 whole minutes rounded, which health alone used to judge.
        ingest(root, tmp_path, timedelta(minutes=30, seconds=5))
        health = server.get("/api/health")
        code, line = check(root)
    assert code == 2 and "newest data 30 min old (more than 30 min)" in line, line
    assert (health.status_code, health.json()["status"]) == (503, "unhealthy"), health.text
    assert "older than 30 minutes" in health.json()["reason"]
    assert health.json()["ageMinutes"] == 30  # the original's field keeps its rounding


def _health(server: ServeProcess) -> dict[str, object]:
    answer = server.get("/api/health")
    body = answer.json()
    assert isinstance(body, dict)
    return body


def test_health_sees_a_watcher_that_cannot_store_by_the_same_bound_as_check(
    root: Path, tmp_path: Path, immutable: list[Path]
) -> None:
    """Beside a watcher of its own process, ``serve`` (the two-process layout) judges its
    drops as ``check`` does: degraded once the oldest has waited past the bound while the
    watcher ran, long before ten minutes, and not at all while a watcher that has just
    started on an old backlog has had seconds."""
    ingest(root, tmp_path, timedelta(0))
    history = root / HISTORY
    with ServeProcess(root) as server, WatchProcess(root, *WATCH_ARGS) as watcher:
        _make_immutable(immutable, history)
        _drop_from_the_past(root, tmp_path, 1200)  # older than ten minutes
        watcher.wait_log("cannot store drop")
        # Counted from the watcher's start, seconds ago: nothing to say yet.
        body = _health(server)
        assert "has not" not in str(body["reason"]), body
        _backdate(history / ".lock", 600)
        body = _health(server)
        assert body["status"] == "degraded", body
        assert "runs but has not stored the oldest drop for" in str(body["reason"]), body
