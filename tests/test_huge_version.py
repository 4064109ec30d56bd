"""A file in the history far larger than any drop (a sparse 3 GiB file put there by hand)
is never read whole: every reader names it damaged, as it names a version that is no
valid JSON, and goes on with the rest. Each command runs under a limit on memory that
reading the file whole would break (real CLI, real server, real files).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import run_cli
from support.serveproc import ServeProcess, fresh_payload, put_version, version_name
from support.watchproc import WatchProcess

from ingester.serve.routes import API_PATH, FORECAST_PATH, SERIES_PATH, VERSIONS_PATH
from ingester.settings.bounds import MAX_BYTES

pytestmark = pytest.mark.skipif(
    shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed"
)

HISTORY = "console-usage-history"
HUGE = 3 << 30
# Room for the interpreter and the server, not for the huge file.
LIMITED = ("prlimit", f"--as={1 << 30}", "--")
LIMIT = int(MAX_BYTES.high)  # the largest --max-bytes: no drop, so no version, is larger
REASON = f"larger than any drop: {HUGE} bytes, the limit is {LIMIT}"


@pytest.fixture
def history(root: Path) -> tuple[list[str], str]:
    """Three valid versions, half an hour apart, and the huge file as the newest:
    (the valid names oldest first, the huge one's name)."""
    assert run_cli(root, "init").returncode == 0
    now = datetime.now(UTC)
    valid = []
    for i, minutes in enumerate((90, 60, 30)):
        age = timedelta(minutes=minutes)
        name = version_name(now - age, i)
        put_version(root, name, fresh_payload(age)).chmod(0o444)
        valid.append(name)
    huge = version_name(now, 0xDEADBEEF)
    path = root / HISTORY / huge
    with path.open("wb") as handle:
        handle.truncate(HUGE)  # sparse: no disk space taken
    path.chmod(0o444)
    return valid, huge


def limited(root: Path, *args: str) -> tuple[int, str, str]:
    result = run_cli(root, *args, wrapper=LIMITED)
    assert "Traceback" not in result.stderr, result.stderr
    assert "MemoryError" not in result.stdout + result.stderr, result.stderr
    return result.returncode, result.stdout, result.stderr


def test_list_marks_it_and_lists_the_rest(root: Path, history: tuple[list[str], str]) -> None:
    valid, huge = history
    code, out, err = limited(root, "list")
    assert code == 0, err
    assert err == "warning: 1 damaged version(s) listed; run 'ingester verify'\n"
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert sorted(rows) == sorted([*valid, huge])
    assert rows[huge].endswith(f"ERROR: {REASON}"), rows[huge]
    assert all("ERROR" not in rows[name] for name in valid), out
    code, out, err = limited(root, "list", "--json")
    assert code == 0, err
    listed = {entry["name"]: entry for entry in json.loads(out)}
    assert listed[huge]["error"] == REASON and listed[huge]["size"] == HUGE
    assert all(listed[name]["error"] is None for name in valid), out


def test_show_says_it_is_damaged_in_one_line(root: Path, history: tuple[list[str], str]) -> None:
    valid, huge = history
    for args in (("show",), ("show", huge), ("show", "latest")):
        code, out, err = limited(root, *args)
        assert code == 1, err
        assert out == ""
        assert err == f"error: version {huge} is damaged: {REASON}; run 'ingester verify'\n"
    code, out, err = limited(root, "show", valid[-1])
    assert code == 0, err
    assert out.encode() == (root / HISTORY / valid[-1]).read_bytes()


def test_export_skips_it_as_a_damaged_version(root: Path, history: tuple[list[str], str]) -> None:
    valid, huge = history
    code, out, err = limited(root, "export")
    assert code == 0, err
    assert err == f"warning: skipped damaged version {huge}: {REASON}\n"
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["version"] for row in rows] == valid


def test_forecast_leaves_it_out(root: Path, history: tuple[list[str], str]) -> None:
    _valid, huge = history
    code, out, err = limited(root, "forecast", "--json")
    assert code == 0, err
    assert json.loads(out)["asOf"] is not None
    said = [line for line in err.splitlines() if huge in line]
    assert len(said) == 1 and REASON in said[0] and "leaves it out" in said[0], err


def test_verify_status_and_check_name_it(root: Path, history: tuple[list[str], str]) -> None:
    valid, huge = history
    code, out, err = limited(root, "verify", "--json")
    assert code == 1, err
    problems = json.loads(out)["problems"]
    assert {"subject": huge, "kind": "invalid-version"}.items() <= next(
        p for p in problems if p["subject"] == huge
    ).items(), problems
    assert not any(p["subject"] in valid for p in problems), problems
    code, out, err = limited(root, "status")
    assert REASON in out + err, out + err
    code, out, err = limited(root, "check")
    assert code == 2, out + err
    assert out.startswith("INGESTER CRITICAL - "), out
    assert f"newest version {huge} is damaged: {REASON}" in out, out


def test_serve_answers_it_as_a_damaged_version(root: Path, history: tuple[list[str], str]) -> None:
    valid, huge = history
    said = f"version {huge} is damaged: {REASON}"
    with ServeProcess(root, wrapper=LIMITED) as server:
        latest = server.get(API_PATH)
        assert latest.status_code == 502, latest.text
        assert latest.json()["error"] == "CorruptVersion"
        assert latest.json()["message"] == said
        # The raw route refuses it: never a truncated body under a 200.
        raw = server.get(f"{VERSIONS_PATH}/{huge}")
        assert raw.status_code == 502, raw.text
        assert raw.json() == {"error": "CorruptVersion", "message": said}
        assert (
            server.get(f"{VERSIONS_PATH}/{valid[0]}").content
            == (root / HISTORY / valid[0]).read_bytes()
        )
        older = server.get(API_PATH, params={"version": "3"})
        assert older.status_code == 200, older.text
        assert older.json()["versionInfo"]["filename"] == valid[-1]
        series = server.get(SERIES_PATH)
        assert series.status_code == 200, series.text
        assert series.json()["skipped"] == [{"version": huge, "reason": REASON}]
        assert series.json()["count"] == len(valid)
        forecast = server.get(FORECAST_PATH)
        assert forecast.status_code == 200, forecast.text
        assert forecast.json()["asOf"] is not None
        assert server.stop() == 0
    assert "Traceback" not in server.log and "MemoryError" not in server.log, server.log


def test_a_huge_file_in_the_latest_links_place_is_kept_not_read_whole(root: Path) -> None:
    # No version holds more than any drop, so such a file is nobody's copy: the watcher
    # keeps it and names adopt, and adopt refuses it as over the limit.
    assert run_cli(root, "init").returncode == 0
    latest = root / "console-usage-synced.json"
    latest.unlink(missing_ok=True)
    with latest.open("wb") as handle:
        handle.truncate(HUGE)
    code, _out, err = limited(root, "watch", "--once")
    assert code == 1, err
    assert "holding a snapshot that no version holds" in err, err
    assert "run 'ingester adopt' first" in err, err
    code, _out, err = limited(root, "adopt")
    assert code == 1, err
    assert "holds a snapshot no version holds, and it is not valid (drop is" in err, err
    assert latest.stat().st_size == HUGE


def test_a_huge_file_put_in_the_latest_links_place_while_it_runs(root: Path) -> None:
    # Found by a rescan of the running watcher, and by status: never read whole.
    assert run_cli(root, "init").returncode == 0
    sample = root.parent / "one.json"
    sample.write_bytes(fresh_payload(timedelta(minutes=5)))
    assert run_cli(root, "ingest", str(sample)).returncode == 0
    latest = root / "console-usage-synced.json"
    with WatchProcess(root, "--rescan-interval", "0.3", wrapper=LIMITED) as watcher:
        # Made beside it, then moved into its place in one step: a rescan between an
        # unlink of the link and the file's creation rightly makes the link again, and
        # opening the path would then follow it and truncate the version it names.
        staged = root.parent / "huge-latest"
        with staged.open("wb") as handle:
            handle.truncate(HUGE)
        os.replace(staged, latest)
        watcher.wait_log("holding a snapshot that no version holds")
        _code, out, err = limited(root, "status")
        assert "out of memory" not in err, err
        assert "a file larger than any drop" in out + err, out + err
        assert watcher.proc.poll() is None, watcher.log
        assert watcher.stop() == 0, watcher.log
    assert "out of memory" not in watcher.log
    assert latest.stat().st_size == HUGE
