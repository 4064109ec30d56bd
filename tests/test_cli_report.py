"""The operator commands through the real CLI: status, list, show, verify (--repair)."""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import IS_ROOT, VALID_SAMPLES, run_cli
from support.capabilities import STRACE, immutable, needs_strace_root, run_tool, tmpfs

from ingester.history.lock import HistoryLock
from ingester.mirror.state import write_mirror_state
from ingester.mirror.state_model import MirrorState

HISTORY = "console-usage-history"
LATEST = "console-usage-synced.json"


def payload(last_updated: str, **extra: Any) -> bytes:
    """A valid payload with the given ``lastUpdated``."""
    body = {
        "currentSession": {"resetsIn": "1 hr", "percentageUsed": 12},
        "lastUpdated": last_updated,
        **extra,
    }
    return json.dumps(body).encode()


def put_version(root: Path, name: str, data: bytes, mode: int = 0o444) -> Path:
    """Write a version file directly (old or future dates, damaged content)."""
    path = root / HISTORY / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


def ok(result: Any) -> Any:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def one_line_error(result: Any, code: int, *words: str) -> None:
    """A clear ``error: ...`` (click's usage text allowed for code 2), never a traceback."""
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0], result.stderr


@pytest.fixture
def ingested(root: Path) -> list[str]:
    """A history of the valid samples, ingested by the CLI; the version names, oldest first."""
    ok(run_cli(root, "ingest", *map(str, VALID_SAMPLES)))
    return sorted(p.name for p in (root / HISTORY).glob("2*.json"))


@pytest.fixture
def dated(root: Path) -> list[str]:
    """Three versions written by hand on known dates, then made consistent by ``init``."""
    names = [
        "2026-01-01T00-00-00-aaaaaaaa.json",
        "2026-01-02T00-00-00-bbbbbbbb.json",
        "2026-01-03T12-30-00-test5.json",
    ]
    (root / HISTORY).mkdir()
    for i, name in enumerate(names):
        put_version(root, name, payload(f"2026-01-0{i + 1}T00:00:00Z", n=i))
    ok(run_cli(root, "init"))
    return names


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``: kind, content or link target, mode and mtime."""
    found: dict[str, tuple[Any, ...]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            found[str(path.relative_to(root))] = ("link", os.readlink(path), st.st_mtime_ns)
        elif path.is_file():
            found[str(path.relative_to(root))] = ("file", path.read_bytes(), st.st_mode)
        else:
            found[str(path.relative_to(root))] = ("dir", st.st_mode, st.st_mtime_ns)
    return found


# -- status ------------------------------------------------------------------------------


def test_status_human(root: Path, ingested: list[str]) -> None:
    out = ok(run_cli(root, "status")).stdout
    assert f"latest       {ingested[-1]} (ingested" in out
    assert "STALE (older than 10 min)" in out  # the samples are from days before
    assert "watcher      not running" in out
    assert "versions     4 (oldest" in out
    assert "metadata     ok" in out
    # The settings in effect and where each came from.
    assert re.search(rf"^  root +{re.escape(str(root))} ", out, re.M), out
    assert "option" in out and "default" in out


def test_status_json(root: Path, ingested: list[str]) -> None:
    report = json.loads(ok(run_cli(root, "status", "--json")).stdout)
    assert set(report) == {
        "now",
        "history",
        "metadata",
        "metadataProblem",
        "futureVersions",
        "latest",
        "latestLink",
        "adoptAdvised",
        "staleAfterSeconds",
        "spool",
        "rejected",
        "watcher",
        "lock",
        "mirror",
        "settings",
    }
    assert report["mirror"] is None  # no mirror configured
    meta = report["metadata"]
    assert meta["versionCount"] == 4
    assert meta["totalVersionsCreated"] == 4
    assert meta["latestVersion"] == ingested[-1]
    assert report["metadataProblem"] is None
    latest = report["latest"]
    assert latest["name"] == ingested[-1]
    assert latest["stale"] is True
    assert latest["lastUpdatedAgeSeconds"] > 600
    assert latest["error"] is None
    assert report["latestLink"]["problem"] is None
    assert report["watcher"] == {
        "running": False,
        "pid": None,
        "otherSpool": False,
        "problem": None,
    }
    assert report["settings"]["root"] == {"value": str(root), "source": "option"}
    assert report["settings"]["max_versions"] == {"value": 100, "source": "default"}
    assert report["staleAfterSeconds"] == 600


def test_status_fresh_payload_is_not_stale(root: Path) -> None:
    fresh = root / "fresh.json"
    fresh.write_bytes(payload(datetime.now(UTC).isoformat(), isPartial=True))
    ok(run_cli(root, "ingest", str(fresh)))
    report = json.loads(ok(run_cli(root, "status", "--json")).stdout)
    assert report["latest"]["stale"] is False
    assert report["latest"]["isPartial"] is True
    assert "STALE" not in ok(run_cli(root, "status")).stdout


def test_a_scraper_clock_a_little_ahead_reads_just_now(root: Path) -> None:
    ahead = root / "ahead.json"
    # 90 s ahead: beyond any run time of this test, within the tolerated slack (2 min).
    ahead.write_bytes(payload((datetime.now(UTC) + timedelta(seconds=90)).isoformat()))
    ok(run_cli(root, "ingest", str(ahead)))
    for command in ("status", "list"):
        out = ok(run_cli(root, command)).stdout
        assert "just now" in out, (command, out)
        assert "(in " not in out and " in 1 min" not in out and "ahead" not in out, out


def test_status_spool_backlog_rejected_and_env_source(root: Path, ingested: list[str]) -> None:
    spool = root / "spool"
    for sub in (".claimed", "tmp", "rejected"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
    old = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    for name in ("a.json", "b.json"):
        (spool / name).write_bytes(b"{}")
    os.utime(spool / "a.json", (old, old))
    (spool / ".claimed" / "2026-01-01T00-00-00-00000000.json").write_bytes(b"{}")
    # Not drops: dot-files, other suffixes, folders, symlinks, writers' scratch space.
    (spool / ".hidden.json").write_bytes(b"{}")
    (spool / "c.json.tmp").write_bytes(b"{}")
    (spool / "folder.json").mkdir()
    (spool / "link.json").symlink_to(spool / "b.json")
    (spool / "tmp" / "d.json").write_bytes(b"{}")
    (spool / "rejected" / "r.json").write_bytes(b"x")
    (spool / "rejected" / "r.json.reason.json").write_bytes(b"{}")

    result = ok(run_cli(root, "status", "--json", INGESTER_MAX_VERSIONS="50"))
    report = json.loads(result.stdout)
    assert report["spool"]["waiting"] == 2
    assert report["spool"]["claimed"] == 1
    assert report["spool"]["backlog"] == 3
    assert report["spool"]["oldestDropAt"] == "2026-01-01T00:00:00.000Z"
    assert report["spool"]["oldestDropAgeSeconds"] > 0
    assert report["rejected"]["count"] == 1
    assert report["settings"]["max_versions"] == {
        "value": 50,
        "source": "env INGESTER_MAX_VERSIONS",
    }
    out = ok(run_cli(root, "status")).stdout
    assert "spool        3 waiting (1 in flight), oldest" in out
    assert "rejected     1 in" in out


@needs_strace_root
def test_a_drop_cut_off_between_rejected_and_its_claims_removal_is_counted_once(
    root: Path,
) -> None:
    """Where no rename refuses to replace (NFS: strace answers ``renameat2`` with
    ENOSYS), a drop set aside is linked from its claim into ``rejected/``, then the
    claim is unlinked; a watcher killed between leaves both names. ``status`` and
    ``check`` count that drop once, as set aside (it is in ``rejected/``), never also as
    in flight; and neither finishes the claim (that is the next watcher's)."""
    ok(run_cli(root, "init"))
    spool = root / "spool"
    claim = spool / ".claimed" / "rejecting.bad.json"
    (spool / "bad.json").write_bytes(b"{not json")
    inject = (
        "-f", "-qq", "-o", os.devnull, "-P", str(claim),
        "-e", "inject=renameat2:error=ENOSYS",
        "-e", "inject=unlink,unlinkat:signal=SIGKILL",
    )  # fmt: skip
    killed = run_cli(root, "watch", "--once", wrapper=(STRACE, *inject))
    assert killed.returncode != 0, killed.stderr
    assert os.path.samefile(claim, spool / "rejected" / "bad.json"), killed.stderr

    status = json.loads(ok(run_cli(root, "status", "--json")).stdout)
    assert (status["spool"]["waiting"], status["spool"]["claimed"]) == (0, 0)
    assert status["spool"]["backlog"] == 0
    assert status["rejected"]["count"] == 1
    out = ok(run_cli(root, "status")).stdout
    assert "in flight" not in out, out
    check = json.loads(run_cli(root, "check", "--json").stdout)
    assert (check["backlog"], check["rejectedLastHour"]) == (0, 1), check
    assert claim.exists()


def test_a_drop_stored_before_its_claims_removal_was_cut_off_is_not_counted_in_flight(
    root: Path, ingested: list[str]
) -> None:
    """A drop is stored by linking its claim into the history, then unlinking the
    claim; a watcher killed between leaves the version's file under both names.
    ``status`` and ``check`` count that drop once, as the version it is, never also as
    in flight; a claim whose version holds other bytes is still in flight."""
    claimed = root / "spool" / ".claimed"
    claimed.mkdir(parents=True, exist_ok=True)
    os.link(root / HISTORY / ingested[-1], claimed / ingested[-1])
    status = json.loads(ok(run_cli(root, "status", "--json")).stdout)
    assert (status["spool"]["claimed"], status["spool"]["backlog"]) == (0, 0)
    assert status["metadata"]["versionCount"] == len(ingested)
    assert "in flight" not in ok(run_cli(root, "status")).stdout
    assert json.loads(run_cli(root, "check", "--json").stdout)["backlog"] == 0
    (claimed / ingested[0]).write_bytes(payload("2026-01-01T00:00:00Z"))
    status = json.loads(ok(run_cli(root, "status", "--json")).stdout)
    assert (status["spool"]["claimed"], status["spool"]["backlog"]) == (1, 1)
    assert sorted(os.listdir(claimed)) == sorted([ingested[0], ingested[-1]])


def test_a_claim_set_aside_is_counted_as_the_next_watcher_finishes_it(
    root: Path, tmp_path: Path, can_mount: None
) -> None:
    """A claim on its way to a quarantine on another filesystem, whose copy is there:
    ``status`` and ``check`` count it as the next watcher will finish it. Beside a
    reason file naming it, the move had reached its last step: set aside, not in
    flight, and the watcher only removes the claim. Without one, the copy is not its
    drop's (the reason file comes first and goes last): in flight, and the watcher
    puts it back in the spool and sets it aside anew."""
    ok(run_cli(root, "init"))
    claimed = root / "spool" / ".claimed"
    claimed.mkdir(parents=True, exist_ok=True)
    bad = b"{not json"
    with tmpfs(tmp_path / "other-fs") as fs:
        rejected = fs / "rejected"
        rejected.mkdir()
        where = ("--rejected-dir", str(rejected))

        def counts(*, with_check: bool = True) -> tuple[int, int, int]:
            spool = json.loads(ok(run_cli(root, *where, "status", "--json")).stdout)
            if with_check:
                check = json.loads(run_cli(root, *where, "check", "--json").stdout)
                assert check["backlog"] == spool["spool"]["backlog"], check
            return spool["spool"]["claimed"], spool["spool"]["backlog"], spool["rejected"]["count"]

        (claimed / "rejecting.bad.json").write_bytes(bad)
        (rejected / "bad.json").write_bytes(bad)
        reason = {"file": "bad.json", "reason": "invalid JSON", "errors": []}
        (rejected / "bad.json.reason.json").write_text(json.dumps(reason))
        (claimed / "rejecting.odd.json").write_bytes(bad)
        (rejected / "odd.json").write_bytes(bad)
        assert counts() == (1, 1, 2)  # odd.json in flight, bad.json set aside
        ok(run_cli(root, *where, "watch", "--once"))
        assert os.listdir(claimed) == []
        assert counts(with_check=False) == (0, 0, 3)
        assert sorted(
            p.name for p in rejected.iterdir() if not p.name.endswith(".reason.json")
        ) == [
            "bad.json",
            "odd-1.json",
            "odd.json",
        ]
        assert (rejected / "odd-1.json").read_bytes() == bad


def test_status_says_a_file_in_the_spools_place_is_not_a_folder(root: Path) -> None:
    """A file where the spool should be is there: not "missing", and its backlog is
    unknown rather than 0."""
    ok(run_cli(root, "init"))
    shutil.rmtree(root / "spool")
    (root / "spool").write_bytes(b"not a folder")
    out = ok(run_cli(root, "status")).stdout
    [line] = [line for line in out.splitlines() if line.startswith("spool ")]
    assert line == (
        f"spool        {root / 'spool'} (not a folder (Not a directory [ENOTDIR])); backlog unknown"
    )
    spool = json.loads(ok(run_cli(root, "status", "--json")).stdout)["spool"]
    assert spool["exists"] is True
    assert spool["problem"] == "not a folder (Not a directory [ENOTDIR])"
    assert (spool["backlog"], spool["waiting"], spool["claimed"]) == (None, None, None)
    rejected = json.loads(ok(run_cli(root, "status", "--json")).stdout)["rejected"]
    # The quarantine below it cannot be there at all: the file in its way is named.
    assert rejected == {
        "path": str(root / "spool" / "rejected"),
        "count": 0,
        "problem": f"{root / 'spool'} is not a folder [ENOTDIR]",
        "retentionDays": 30.0,
    }
    # Nothing at all there is what "missing" means.
    (root / "spool").unlink()
    assert f"spool        {root / 'spool'} (missing)" in ok(run_cli(root, "status")).stdout
    spool = json.loads(ok(run_cli(root, "status", "--json")).stdout)["spool"]
    assert (spool["exists"], spool["backlog"], spool["problem"]) == (False, 0, None)


def test_status_names_a_file_further_up_the_spools_path(root: Path, tmp_path: Path) -> None:
    """A file two folders above the spool: the spool is missing (nothing can be there, so
    nothing waits), and the line names the file in the way, not the spool."""
    ok(run_cli(root, "init"))
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"in the way")
    spool_dir = blocker / "deeper" / "spool"
    out = ok(run_cli(root, "--spool-dir", str(spool_dir), "status")).stdout
    [line] = [line for line in out.splitlines() if line.startswith("spool ")]
    assert line == f"spool        {spool_dir} (missing: {blocker} is not a folder [ENOTDIR])"
    report = json.loads(ok(run_cli(root, "--spool-dir", str(spool_dir), "status", "--json")).stdout)
    problem = f"{blocker} is not a folder [ENOTDIR]"
    spool = report["spool"]
    assert (spool["exists"], spool["backlog"], spool["problem"]) == (False, 0, problem)
    assert (report["rejected"]["count"], report["rejected"]["problem"]) == (0, problem)


def test_a_fifo_at_the_latest_path_is_named_and_replaced_never_waited_on(
    root: Path, ingested: list[str]
) -> None:
    # Opening a FIFO waits for a writer: every command that looks at the latest path
    # would hang (the watcher past SIGTERM). Each answers, and a repair replaces it.
    latest = root / LATEST
    latest.unlink()
    os.mkfifo(latest)
    words = "a special file (not a link, not a regular file)"
    for command in (("status",), ("verify",), ("status", "--json")):
        done = run_cli(root, *command, timeout=30)
        assert words in done.stdout, (command, done.stdout + done.stderr)
    report = json.loads(run_cli(root, "verify", "--json", timeout=30).stdout)
    [finding] = [p for p in report["problems"] if p["kind"] == "latest-link"]
    assert finding["repairable"] is True
    ok(run_cli(root, "verify", "--repair", timeout=30))
    assert os.readlink(latest) == f"{HISTORY}/{ingested[-1]}"
    ok(run_cli(root, "verify", timeout=30))


def test_status_reports_problems_without_fixing_them(root: Path, ingested: list[str]) -> None:
    (root / HISTORY / "_metadata.json").write_text("{not json")
    (root / LATEST).unlink()
    before = snapshot(root)
    report = json.loads(ok(run_cli(root, "status", "--json")).stdout)
    assert report["metadataProblem"] == "corrupt"
    assert report["latestLink"]["problem"] == "missing"
    assert report["metadata"]["versionCount"] == 4  # from the scan
    assert snapshot(root) == before


def test_status_with_a_damaged_latest_version(root: Path, dated: list[str]) -> None:
    put_version(root, "2026-01-05T00-00-00-dddddddd.json", b"[1, 2")
    result = ok(run_cli(root, "status"))
    assert "DAMAGED: not JSON" in result.stdout
    report = json.loads(ok(run_cli(root, "status", "--json")).stdout)
    assert report["latest"]["name"] == "2026-01-05T00-00-00-dddddddd.json"
    assert report["latest"]["error"].startswith("not JSON")
    assert report["latest"]["stale"] is None
    assert report["metadataProblem"] == "out of date"


def test_status_empty_history(root: Path) -> None:
    ok(run_cli(root, "init"))
    report = json.loads(ok(run_cli(root, "status", "--json")).stdout)
    assert report["latest"] is None
    assert report["metadata"]["versionCount"] == 0
    assert "latest       none yet" in ok(run_cli(root, "status")).stdout


def test_status_without_history_suggests_init(root: Path) -> None:
    result = run_cli(root, "status")
    one_line_error(result, 1, "no history at", "ingester init")
    assert not (root / HISTORY).exists()  # a read command creates nothing


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    for args in (["status"], ["list"], ["show"], ["verify"], ["verify", "--repair"]):
        result = run_cli(tmp_path / "nowhere", *args)
        one_line_error(result, 1, "does not exist")
    assert not (tmp_path / "nowhere").exists()


def test_history_dir_option_that_does_not_exist(root: Path) -> None:
    result = run_cli(root, "--history-dir", str(root / "elsewhere"), "list")
    one_line_error(result, 1, "no history at", "elsewhere")


# -- the lock: read commands never take it ------------------------------------------------


def test_read_commands_work_while_the_lock_is_held(root: Path, ingested: list[str]) -> None:
    (root / "spool").mkdir(exist_ok=True)
    with (
        HistoryLock(root / HISTORY / ".lock", "watch"),
        HistoryLock(root / "spool" / ".lock", "watch", what="spool"),
    ):
        report = json.loads(ok(run_cli(root, "status", "--json")).stdout)
        assert report["watcher"] == {
            "running": True,
            "pid": os.getpid(),
            "otherSpool": False,
            "problem": None,
        }
        assert f"running (pid {os.getpid()}, watch)" in ok(run_cli(root, "status")).stdout
        assert len(json.loads(ok(run_cli(root, "list", "--json")).stdout)) == 4
        assert ok(run_cli(root, "show")).stdout.encode() == VALID_SAMPLES[-1].read_bytes()
        verified = json.loads(ok(run_cli(root, "verify", "--json")).stdout)
        assert verified["ok"] is True
        assert verified["writerPid"] == os.getpid()

        refused = run_cli(root, "verify", "--repair")
        one_line_error(refused, 1, f"pid {os.getpid()}")
    # And once the holder is gone, --repair runs.
    ok(run_cli(root, "verify", "--repair"))


def test_verify_while_locked_reports_temps_as_warnings(root: Path, ingested: list[str]) -> None:
    (root / HISTORY / ".tmp-w-inflight").write_bytes(b"partial")
    with HistoryLock(root / HISTORY / ".lock", "watch"):
        report = json.loads(ok(run_cli(root, "verify", "--json")).stdout)
    assert report["problems"] == []
    assert [w["kind"] for w in report["warnings"]] == ["stale-temp"]
    assert "may be in flight" in report["warnings"][0]["message"]
    # Without a writer the same file is a problem.
    assert run_cli(root, "verify").returncode == 1


def test_read_commands_write_nothing(root: Path, ingested: list[str]) -> None:
    (root / HISTORY / ".tmp-w-stale").write_bytes(b"x")
    (root / HISTORY / "_metadata.json").write_text("{}")
    before = snapshot(root)
    ok(run_cli(root, "status"))
    ok(run_cli(root, "status", "--json"))
    ok(run_cli(root, "list"))
    ok(run_cli(root, "show", ingested[0]))
    ok(run_cli(root, "show", "--at", "2099-01-01"))
    assert run_cli(root, "verify").returncode == 1
    # Including .lock: taking the lock would have written another pid into it.
    assert snapshot(root) == before


# -- list --------------------------------------------------------------------------------


def test_list_human(root: Path, ingested: list[str]) -> None:
    lines = ok(run_cli(root, "list")).stdout.splitlines()
    assert lines[0].split() == ["VERSION", "INGESTED", "(UTC)", "AGE", "SIZE", "LAST", "UPDATED",
                                "PARTIAL"]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == ingested[::-1]
    # Aligned: every row's size column ends at the same place.
    ends = {line.index(" B ") for line in lines[1:]}
    assert len(ends) == 1
    partial = next(line for line in lines if line.startswith(ingested[2]))
    assert partial.rstrip().endswith("yes")  # partial-with-errors.json


def test_list_json_and_limit(root: Path, ingested: list[str]) -> None:
    items = json.loads(ok(run_cli(root, "list", "--json")).stdout)
    assert [i["name"] for i in items] == ingested[::-1]
    sizes = {p.name: p.stat().st_size for p in VALID_SAMPLES}
    by_sample = dict(zip(ingested, (p.name for p in VALID_SAMPLES), strict=True))
    for item in items:
        assert set(item) == {
            "name",
            "ingestedAt",
            "size",
            "lastUpdated",
            "isPartial",
            "future",
            "error",
        }
        assert item["size"] == sizes[by_sample[item["name"]]]
        assert item["error"] is None
        assert item["ingestedAt"].endswith("Z")
    partial = next(i for i in items if by_sample[i["name"]] == "partial-with-errors.json")
    assert partial["isPartial"] is True
    assert partial["lastUpdated"] == "2026-11-27T14:10:00.123Z"

    limited = json.loads(ok(run_cli(root, "list", "--limit", "2", "--json")).stdout)
    assert [i["name"] for i in limited] == ingested[::-1][:2]
    assert len(ok(run_cli(root, "list", "--limit", "1")).stdout.splitlines()) == 2


def test_list_limit_must_be_positive(root: Path, ingested: list[str]) -> None:
    for bad in ("0", "-1", "many"):
        result = run_cli(root, "list", "--limit", bad)
        one_line_error(result, 2, "--limit")


def test_list_empty(root: Path) -> None:
    ok(run_cli(root, "init"))
    assert ok(run_cli(root, "list")).stdout.strip() == "no versions yet"
    assert json.loads(ok(run_cli(root, "list", "--json")).stdout) == []


def test_list_marks_a_damaged_version(root: Path, dated: list[str]) -> None:
    put_version(root, "2026-01-01T12-00-00-cccccccc.json", b'{"lastUpdated": ')
    result = ok(run_cli(root, "list"))
    damaged = next(line for line in result.stdout.splitlines() if "cccccccc" in line)
    assert "ERROR: not JSON" in damaged
    assert "1 damaged version" in result.stderr
    assert "Traceback" not in result.stderr
    items = json.loads(ok(run_cli(root, "list", "--json")).stdout)
    marked = next(i for i in items if "cccccccc" in i["name"])
    assert marked["error"].startswith("not JSON")
    assert marked["lastUpdated"] is None


def test_a_warning_that_stderr_cannot_take_never_fails_the_list(
    root: Path, dated: list[str]
) -> None:
    """Standard error on a full disk (``2>/dev/full``): the damaged-version warning is
    lost, but the list is whole and exits 0, as when it could be said."""
    put_version(root, "2026-01-01T12-00-00-cccccccc.json", b'{"lastUpdated": ')
    full_stderr = ("sh", "-c", 'exec "$@" 2>/dev/full', "sh")
    for args in (("list",), ("list", "--json")):
        said = ok(run_cli(root, *args))
        result = ok(run_cli(root, *args, wrapper=full_stderr))
        assert len(result.stdout.splitlines()) == len(said.stdout.splitlines())
        assert "cccccccc" in result.stdout


def test_list_shows_future_versions(root: Path, dated: list[str]) -> None:
    put_version(root, "2099-01-01T00-00-00-ffffffff.json", payload("2099-01-01T00:00:00Z"))
    items = json.loads(ok(run_cli(root, "list", "--json")).stdout)
    assert items[0]["name"] == "2099-01-01T00-00-00-ffffffff.json"
    assert items[0]["future"] is True
    assert all(not i["future"] for i in items[1:])
    assert "(future)" in ok(run_cli(root, "list", "--limit", "1")).stdout


# -- show --------------------------------------------------------------------------------


def test_show_latest_is_the_raw_bytes(root: Path, ingested: list[str]) -> None:
    newest_bytes = VALID_SAMPLES[-1].read_bytes()
    assert ok(run_cli(root, "show")).stdout.encode() == newest_bytes
    assert ok(run_cli(root, "show", "latest")).stdout.encode() == newest_bytes


def test_show_by_name_with_or_without_json(root: Path, ingested: list[str]) -> None:
    expected = VALID_SAMPLES[0].read_bytes()
    assert ok(run_cli(root, "show", ingested[0])).stdout.encode() == expected
    assert ok(run_cli(root, "show", ingested[0].removesuffix(".json"))).stdout.encode() == expected


def test_show_at_time(root: Path, dated: list[str]) -> None:
    data = {name: (root / HISTORY / name).read_bytes() for name in dated}
    cases = {
        "2026-01-01T12:00:00": dated[0],  # no offset: UTC
        "2026-01-01T00:00:00Z": dated[0],  # at the very second: included
        "2026-01-02T01:00:00+02:00": dated[0],  # = 2026-01-01T23:00Z
        "2026-01-02T00:00:00Z": dated[1],
        "2026-01-03T12:30:00Z": dated[2],
        "2026-01-03": dated[1],
        "2030-01-01T00:00:00.5Z": dated[2],
    }
    for when, name in cases.items():
        result = ok(run_cli(root, "show", "--at", when))
        assert result.stdout.encode() == data[name], when


def test_show_at_before_every_version(root: Path, dated: list[str]) -> None:
    result = run_cli(root, "show", "--at", "2025-12-31T23:59:59Z")
    one_line_error(result, 1, "no version at or before")
    assert result.stdout == ""


@pytest.mark.parametrize("when", ["yesterday", "2026-13-01", "2026-01-01T25:00", ""])
def test_show_at_malformed_time(root: Path, dated: list[str], when: str) -> None:
    one_line_error(run_cli(root, "show", "--at", when), 2, "--at")


def test_show_missing_and_bad_versions(root: Path, ingested: list[str]) -> None:
    one_line_error(run_cli(root, "show", "2020-01-01T00-00-00-00000000"), 1, "no version")
    one_line_error(run_cli(root, "show", "../console-usage-synced.json"), 2, "path")
    one_line_error(run_cli(root, "show", f"{root}/{HISTORY}/{ingested[0]}"), 2, "path")
    one_line_error(run_cli(root, "show", "_metadata.json"), 2, "not a version name")
    one_line_error(run_cli(root, "show", "nonsense"), 2, "not a version name")
    one_line_error(run_cli(root, "show", ingested[0], "--at", "2026-01-01"), 2, "not both")


def test_show_with_no_versions(root: Path) -> None:
    ok(run_cli(root, "init"))
    one_line_error(run_cli(root, "show"), 1, "no versions yet")


def test_show_damaged_version(root: Path, dated: list[str]) -> None:
    put_version(root, "2026-01-05T00-00-00-dddddddd.json", b"\xff\xfe garbage")
    result = run_cli(root, "show", "2026-01-05T00-00-00-dddddddd")
    one_line_error(result, 1, "damaged", "verify")
    assert result.stdout == ""
    # latest names it too, being the newest: same refusal.
    one_line_error(run_cli(root, "show"), 1, "damaged")


def test_show_skips_future_versions_for_latest(root: Path, dated: list[str]) -> None:
    put_version(root, "2099-01-01T00-00-00-ffffffff.json", payload("2099-01-01T00:00:00Z"))
    latest = ok(run_cli(root, "show")).stdout.encode()
    assert latest == (root / HISTORY / dated[-1]).read_bytes()


# -- verify ------------------------------------------------------------------------------


def test_verify_clean(root: Path, ingested: list[str]) -> None:
    result = ok(run_cli(root, "verify"))
    assert result.stdout.splitlines()[-1] == "ok"
    report = json.loads(ok(run_cli(root, "verify", "--json")).stdout)
    assert report == {
        "ok": True,
        "history": str(root / HISTORY),
        "latestPath": str(root / LATEST),
        "checkedVersions": 4,
        "problems": [],
        "warnings": [],
        "repaired": [],
        "writerPid": None,
        "adoptAdvised": False,
    }


def _corrupt(root: Path, names: list[str]) -> str:
    path = root / HISTORY / names[1]
    path.chmod(0o644)
    path.write_bytes(b'{"lastUpdated": "not a time", "currentSession": {}}')
    path.chmod(0o444)
    return names[1]


def _writable(root: Path, names: list[str]) -> str:
    (root / HISTORY / names[0]).chmod(0o644)
    return names[0]


def _stale_temp(root: Path, names: list[str]) -> str:
    (root / HISTORY / ".tmp-w-0123456789ab").write_bytes(b"half a ver")
    return ".tmp-w-0123456789ab"


def _stale_link_temp(root: Path, names: list[str]) -> str:
    (root / ".tmp-link-0123456789ab").symlink_to(f"{HISTORY}/{names[0]}")
    return str(root / ".tmp-link-0123456789ab")


def _wrong_metadata(root: Path, names: list[str]) -> str:
    path = root / HISTORY / "_metadata.json"
    meta = json.loads(path.read_text())
    meta["versionCount"] = 99
    path.write_text(json.dumps(meta))
    return "_metadata.json"


def _missing_metadata(root: Path, names: list[str]) -> str:
    (root / HISTORY / "_metadata.json").unlink()
    return "_metadata.json"


def _missing_link(root: Path, names: list[str]) -> str:
    (root / LATEST).unlink()
    return str(root / LATEST)


def _wrong_link(root: Path, names: list[str]) -> str:
    (root / LATEST).unlink()
    (root / LATEST).symlink_to(f"{HISTORY}/{names[0]}")
    return str(root / LATEST)


def _absolute_link(root: Path, names: list[str]) -> str:
    (root / LATEST).unlink()
    (root / LATEST).symlink_to(root / HISTORY / names[-1])
    return str(root / LATEST)


BREAKAGES = {
    "corrupt-version": (_corrupt, "invalid-version", False),
    "writable-version": (_writable, "writable-version", True),
    "stale-temp": (_stale_temp, "stale-temp", True),
    "stale-link-temp": (_stale_link_temp, "stale-temp", True),
    "wrong-metadata": (_wrong_metadata, "metadata", True),
    "missing-metadata": (_missing_metadata, "metadata", True),
    "missing-link": (_missing_link, "latest-link", True),
    "wrong-link": (_wrong_link, "latest-link", True),
    "absolute-link": (_absolute_link, "latest-link", True),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_verify_finds_and_repair_fixes(root: Path, ingested: list[str], breakage: str) -> None:
    breaker, kind, repairable = BREAKAGES[breakage]
    subject = breaker(root, ingested)
    versions_before = {n: (root / HISTORY / n).read_bytes() for n in ingested}

    found = run_cli(root, "verify", "--json")
    assert found.returncode == 1, found.stdout + found.stderr
    report = json.loads(found.stdout)
    assert report["ok"] is False
    assert [(p["kind"], p["subject"], p["repairable"]) for p in report["problems"]] == [
        (kind, subject, repairable)
    ]
    human = run_cli(root, "verify")
    assert human.returncode == 1
    assert f"PROBLEM  {subject}" in human.stdout

    repaired = run_cli(root, "verify", "--repair", "--json")
    after = json.loads(repaired.stdout)
    if repairable:
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert after["ok"] is True
        assert [(r["kind"], r["subject"]) for r in after["repaired"]] == [(kind, subject)]
        ok(run_cli(root, "verify"))
    else:
        assert repaired.returncode == 1
        assert [p["kind"] for p in after["problems"]] == [kind]
        assert after["repaired"] == []
    # A version is never deleted or rewritten, and every one is read-only again.
    assert {n: (root / HISTORY / n).read_bytes() for n in ingested} == versions_before
    assert all((root / HISTORY / n).stat().st_mode & 0o222 == 0 for n in ingested)
    assert os.readlink(root / LATEST) == f"{HISTORY}/{ingested[-1]}"


@pytest.mark.parametrize("versions", [True, False], ids=["versions", "empty"])
def test_verify_promises_no_repair_of_a_folder_in_the_latest_links_place(
    root: Path, versions: bool
) -> None:
    """No rename puts a link where a folder is: verify says to move it away by hand,
    counts nothing as fixable, and --repair leaves the folder and what is in it."""
    ok(run_cli(root, "ingest", str(VALID_SAMPLES[0])) if versions else run_cli(root, "init"))
    (root / LATEST).unlink(missing_ok=True)
    (root / LATEST).mkdir()
    (root / LATEST / "kept.txt").write_text("an operator's file")
    for args in (["verify"], ["verify", "--repair"]):
        result = run_cli(root, *args)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert result.stdout.splitlines()[-1] == "1 problem(s)", result.stdout
        assert f"PROBLEM  {root / LATEST}  latest link a folder, not a link: " in result.stdout
        assert "move it away by hand" in result.stdout
        report = json.loads(run_cli(root, *args, "--json").stdout)
        assert [(p["kind"], p["repairable"]) for p in report["problems"]] == [
            ("latest-link", False)
        ]
        assert report["repaired"] == []
    assert (root / LATEST / "kept.txt").read_text() == "an operator's file"
    status = ok(run_cli(root, "status")).stdout
    assert f"latest link  {root / LATEST}: a folder, not a link" in status


@pytest.mark.parametrize("below", ["", "sub"], ids=["its folder", "a folder above"])
def test_verify_promises_no_repair_where_the_latest_links_folder_is_a_file(
    root: Path, tmp_path: Path, below: str
) -> None:
    ok(run_cli(root, "ingest", str(VALID_SAMPLES[0])))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    latest = ["--latest-path", str(blocker / below / LATEST)]
    result = run_cli(root, *latest, "verify", "--repair", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    [problem] = json.loads(result.stdout)["problems"]
    assert problem["kind"] == "latest-link" and problem["repairable"] is False
    assert f"{blocker} is not a folder" in problem["message"]
    assert blocker.read_text() == "a file"


def test_status_promises_no_repair_of_metadata_it_cannot_read(
    root: Path, ingested: list[str]
) -> None:
    """Totals in a file that cannot be read cannot be rebuilt: status must not send the
    operator to verify --repair, which refuses it."""
    (root / HISTORY / "_metadata.json").unlink()
    (root / HISTORY / "_metadata.json").mkdir()
    status = ok(run_cli(root, "status")).stdout
    [line] = [line for line in status.splitlines() if line.startswith("metadata")]
    assert "unreadable (Is a directory)" in line
    assert "verify --repair" not in line and "fix the cause" in line


def test_verify_many_problems_at_once(root: Path, ingested: list[str]) -> None:
    for breaker, _kind, _repairable in BREAKAGES.values():
        if breaker not in (_missing_link, _absolute_link, _missing_metadata):
            breaker(root, ingested)
    result = run_cli(root, "verify")
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (
        "6 problem(s); 5 can be fixed with 'ingester verify --repair'"
    )
    repaired = run_cli(root, "verify", "--repair")
    assert repaired.returncode == 1
    assert repaired.stdout.count("repaired  ") == 5
    assert repaired.stdout.splitlines()[-1] == "1 problem(s)"
    assert (root / HISTORY / ingested[1]).exists()  # the corrupt version stays


def test_verify_says_null_for_a_metadata_value_that_is_null(
    root: Path, ingested: list[str]
) -> None:
    path = root / HISTORY / "_metadata.json"
    meta = json.loads(path.read_text())
    meta["latestVersion"] = None
    path.chmod(0o644)
    path.write_text(json.dumps(meta))
    result = run_cli(root, "verify")
    assert result.returncode == 1
    assert f"latestVersion is null, the files say '{ingested[-1]}'" in result.stdout, result.stdout
    assert "None" not in result.stdout and "missing" not in result.stdout


def test_verify_says_missing_for_a_metadata_key_the_file_does_not_hold(
    root: Path, ingested: list[str]
) -> None:
    path = root / HISTORY / "_metadata.json"
    meta = json.loads(path.read_text())
    del meta["latestVersion"], meta["futureVersions"]  # as the original server wrote it
    meta["versionCount"] = 0
    path.chmod(0o644)
    path.write_text(json.dumps(meta))
    result = run_cli(root, "verify")
    assert result.returncode == 1
    said = f"versionCount is 0, the files say {len(ingested)}; latestVersion is missing, "
    assert f"{said}the files say '{ingested[-1]}'" in result.stdout, result.stdout
    assert "futureVersions" not in result.stdout  # absent, and 0 is right


def test_verify_future_version_is_a_warning(root: Path, dated: list[str]) -> None:
    future = "2099-01-01T00-00-00-ffffffff.json"
    put_version(root, future, payload("2099-01-01T00:00:00Z"))
    ok(run_cli(root, "verify", "--repair"))  # the metadata learns about it
    report = json.loads(ok(run_cli(root, "verify", "--json")).stdout)
    assert report["ok"] is True
    assert [(w["kind"], w["subject"]) for w in report["warnings"]] == [("future-version", future)]
    assert f"warning  {future}" in ok(run_cli(root, "verify")).stdout
    status = json.loads(ok(run_cli(root, "status", "--json")).stdout)
    assert status["futureVersions"] == 1
    assert status["latest"]["name"] == dated[-1]
    assert os.readlink(root / LATEST) == f"{HISTORY}/{dated[-1]}"


def test_verify_other_files_are_left_alone(root: Path, dated: list[str]) -> None:
    (root / HISTORY / "notes.txt").write_text("operator notes")
    (root / HISTORY / "2026-01-09T00-00-00-dir.json").mkdir()
    (root / HISTORY / "2026-13-01T00-00-00-aaaaaaaa.json").write_bytes(b"{}")
    report = json.loads(ok(run_cli(root, "verify", "--repair", "--json")).stdout)
    assert [(w["kind"], w["subject"]) for w in report["warnings"]] == [
        ("not-a-version", "2026-01-09T00-00-00-dir.json"),
        ("not-a-version", "2026-13-01T00-00-00-aaaaaaaa.json"),
    ]
    assert report["checkedVersions"] == 3
    assert (root / HISTORY / "notes.txt").read_text() == "operator notes"
    assert (root / HISTORY / "2026-01-09T00-00-00-dir.json").is_dir()
    assert (root / HISTORY / "2026-13-01T00-00-00-aaaaaaaa.json").read_bytes() == b"{}"


def test_verify_takes_a_version_stored_since_its_listing_for_no_odd_entry(
    root: Path, dated: list[str]
) -> None:
    # A watcher stores versions while verify reads: one stored after the listing is a
    # regular file the listing lacks, and no "not a regular file" to warn of.
    from ingester.history.store import HistoryStore
    from ingester.ops.verify import _odd_entries

    (root / HISTORY / "2026-01-09T00-00-00-dir.json").mkdir()
    store = HistoryStore(root / HISTORY, root / LATEST)
    found = _odd_entries(store, set(dated[:-1]))  # the newest stored since the listing
    assert [(f.kind, f.subject) for f in found] == [
        ("not-a-version", "2026-01-09T00-00-00-dir.json")
    ]


def test_verify_a_restored_copy_of_the_history_alone(root: Path, tmp_path: Path) -> None:
    ok(run_cli(root, "ingest", *map(str, VALID_SAMPLES)))
    restored = tmp_path / "restored"
    restored.mkdir()
    # What a backup copies: the history (without .lock and temps) and the latest link.
    shutil.copytree(
        root / HISTORY, restored / HISTORY, symlinks=True, ignore=shutil.ignore_patterns(".*")
    )
    shutil.copy2(root / LATEST, restored / LATEST, follow_symlinks=False)
    assert not (restored / "spool").exists()
    result = ok(run_cli(restored, "verify"))
    assert result.stdout.splitlines()[-1] == "ok"
    assert not (restored / "spool").exists()
    assert not (restored / HISTORY / ".lock").exists()
    # The latest link was copied as a relative link, so it is right in the copy too.
    assert (restored / LATEST).read_bytes() == VALID_SAMPLES[-1].read_bytes()


def test_verify_repair_of_a_copy_without_latest_link(root: Path, tmp_path: Path) -> None:
    ok(run_cli(root, "ingest", *map(str, VALID_SAMPLES[:2])))
    restored = tmp_path / "restored"
    shutil.copytree(root / HISTORY, restored / HISTORY, symlinks=True)
    assert run_cli(restored, "verify").returncode == 1
    ok(run_cli(restored, "verify", "--repair"))
    assert (restored / LATEST).read_bytes() == VALID_SAMPLES[1].read_bytes()
    assert not (restored / "spool").exists()  # repair does not create the spool


@pytest.mark.skipif(not IS_ROOT, reason="chattr +i needs root")
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_verify_repair_makes_every_other_version_read_only_past_one_it_cannot(
    root: Path, as_json: bool, can_chattr: None
) -> None:
    """A writable version ``--repair`` cannot chmod (immutable) does not stop it: the
    other writable versions are made read-only and reported repaired, the stuck one is
    the one problem left, and one error line on stderr says why (exit 1). The report
    (``--json``: the object) is printed all the same, and no longer offers ``--repair``
    for the version it just failed on (``repairable`` false): it needs a hand."""
    ok(run_cli(root, "ingest", *map(str, VALID_SAMPLES[:3])))
    history = root / HISTORY
    names = sorted(p.name for p in history.iterdir() if p.name[:1].isdigit())
    for name in names:
        (history / name).chmod(0o644)
    stuck = history / names[0]
    with immutable(stuck):
        done = run_cli(root, "verify", "--repair", *(["--json"] if as_json else []))
    assert "Traceback" not in done.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    still_writable = [n for n in names[1:] if (history / n).stat().st_mode & 0o222]
    assert still_writable == [], f"left writable: {still_writable}; stderr: {done.stderr}"
    assert done.stderr == (
        f"error: cannot chmod {stuck}: Operation not permitted: it is immutable (chattr -i "
        f"{stuck} clears that) [EPERM]\n"
    )
    if as_json:
        report = json.loads(done.stdout)
        assert [p["subject"] for p in report["problems"]] == [names[0]]
        assert [p["repairable"] for p in report["problems"]] == [False]
        assert sorted(p["subject"] for p in report["repaired"]) == names[1:]
    else:
        lines = done.stdout.splitlines()
        assert [line.split()[1] for line in lines if line.startswith("repaired")] == names[1:]
        assert [line.split()[1] for line in lines if line.startswith("PROBLEM")] == [names[0]]
        assert lines[-1] == "1 problem(s)", done.stdout


@pytest.mark.skipif(not IS_ROOT, reason="chattr +i needs root")
def test_verify_repair_that_cannot_write_the_metadata_does_not_offer_itself_again(
    root: Path, can_chattr: None
) -> None:
    """The history folder immutable, its metadata missing: ``--repair`` fails to write
    it, says why in one line, and its report does not then advise ``verify --repair``
    (the command that just failed) for it: it needs a hand."""
    ok(run_cli(root, "ingest", str(VALID_SAMPLES[0])))
    history = root / HISTORY
    (history / "_metadata.json").unlink()
    with immutable(history):
        done = run_cli(root, "verify", "--repair")
        as_json = run_cli(root, "verify", "--repair", "--json")
    metadata = history / "_metadata.json"
    for run in (done, as_json):
        assert run.returncode == 1, run.stdout + run.stderr
        assert run.stderr == (
            f"error: cannot create {metadata}: Operation not permitted: its folder {history} "
            f"is immutable (chattr -i {history} clears that) [EPERM]\n"
        ), run.stderr
    assert done.stdout.splitlines()[-1] == "1 problem(s)", done.stdout
    [problem] = json.loads(as_json.stdout)["problems"]
    assert (problem["kind"], problem["repairable"]) == ("metadata", False), problem
    # Once the folder takes writes again, it is repaired as ever.
    assert "can be fixed with 'ingester verify --repair'" in run_cli(root, "verify").stdout
    ok(run_cli(root, "verify", "--repair"))


def test_verify_without_history(root: Path) -> None:
    one_line_error(run_cli(root, "verify"), 1, "no history at")
    one_line_error(run_cli(root, "verify", "--repair"), 1, "no history at")
    assert not (root / HISTORY).exists()


@pytest.mark.parametrize("command", ["status", "list", "show", "verify"])
def test_help(root: Path, command: str) -> None:
    assert "Usage:" in ok(run_cli(root, command, "--help")).stdout


def test_relative_ages() -> None:
    from ingester.cli.common import relative_age

    assert relative_age(timedelta(seconds=0.2)) == "just now"
    assert relative_age(timedelta(seconds=4)) == "just now"  # the page's rule
    assert relative_age(timedelta(seconds=5)) == "5 s ago"
    # A scraper's clock a little ahead: just now, as on the page; further, said as it is.
    assert relative_age(-timedelta(seconds=18)) == "just now"
    assert relative_age(-timedelta(minutes=2)) == "just now"
    assert relative_age(-timedelta(minutes=3)) == "3 min ahead of the clock"
    assert relative_age(timedelta(seconds=42)) == "42 s ago"
    assert relative_age(timedelta(minutes=3, seconds=59)) == "3 min ago"
    assert relative_age(timedelta(hours=2)) == "2 h ago"
    assert relative_age(timedelta(hours=5, minutes=7)) == "5 h 7 min ago"
    assert relative_age(timedelta(days=3, hours=1)) == "3 days ago"
    assert relative_age(-timedelta(days=2)) == "2 days ahead of the clock"


def test_verify_repair_does_not_count_itself_as_the_writer(root: Path) -> None:
    assert run_cli(root, "init").returncode == 0
    (root / "console-usage-history" / "_metadata.json").write_text("{broken")
    result = run_cli(root, "verify", "--repair", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["writerPid"] is None and report["ok"] is True


def test_verify_passes_over_a_running_watchers_spare_file(root: Path) -> None:
    from ingester.history.lock import HistoryLock

    assert run_cli(root, "init").returncode == 0
    history = root / "console-usage-history"
    (history / ".tmp-w-0123456789ab").write_bytes(b"")  # the spare: empty
    (history / ".tmp-w-ba9876543210").write_bytes(b"partial")  # a real leftover
    with HistoryLock(history / ".lock", "watch"):
        result = run_cli(root, "verify", "--json")
    report = json.loads(result.stdout)
    subjects = [f["subject"] for f in report["warnings"] + report["problems"]]
    assert not any("0123456789ab" in s for s in subjects)
    assert any("ba9876543210" in s for s in subjects)


def test_read_commands_never_follow_a_symlink_in_a_versions_place(
    root: Path, tmp_path: Path, dated: list[str]
) -> None:
    """A symlink named like a version is no version: ``list``, ``show``, ``export`` and
    ``check`` neither list it nor read the file it points to."""
    secret = tmp_path / "elsewhere.json"
    secret.write_bytes(payload("2026-01-05T00:00:00Z", secret="outside the history"))
    planted = "2026-01-04T00-00-00-00000000.json"
    os.symlink(secret, root / HISTORY / planted)
    listed = json.loads(ok(run_cli(root, "list", "--json")).stdout)
    assert [v["name"] for v in listed] == dated[::-1]
    shown = run_cli(root, "show", planted)
    one_line_error(shown, 1, "no version")
    assert "outside" not in shown.stdout
    assert ok(run_cli(root, "show")).stdout.encode() == (root / HISTORY / dated[-1]).read_bytes()
    exported = ok(run_cli(root, "export", "--format", "jsonl")).stdout
    assert len(exported.splitlines()) == len(dated)
    assert "outside" not in exported
    checked = json.loads(run_cli(root, "check", "--max-age", "36500d", "--json").stdout)
    assert checked["latest"] == dated[-1]


def test_status_with_a_corrupt_mirror_state_file_names_no_python_none(
    root: Path, ingested: list[str]
) -> None:
    (root / HISTORY / "_mirror.json").write_text("{not json")
    out = ok(run_cli(root, "status")).stdout
    [line] = [x for x in out.splitlines() if x.startswith("mirror ")]
    assert line.startswith("mirror       target unknown: ") and "None" not in line, line
    assert "(state file corrupt)" in line


@pytest.mark.usefixtures("can_mount")
def test_status_on_a_read_only_filesystem_says_so_instead_of_advising_a_repair(
    tmp_path: Path,
) -> None:
    """A history on a filesystem mounted read-only, its metadata gone and its latest a
    plain file (as the original server left it): ``verify --repair`` and ``adopt`` can
    only fail there with EROFS, so status does not advise them but names the read-only
    filesystem; once it is read-write again, both are advised again."""
    with tmpfs(tmp_path / "ro") as root:
        ok(run_cli(root, "init"))
        history = root / HISTORY
        put_version(root, "2026-01-02T03-04-05-000000Z.json", payload("2026-01-02T03:04:00Z"))
        (history / "_metadata.json").unlink()
        read_only = f"{history} is on a read-only filesystem, so no repair can be made there"
        words: dict[str, str] = {}
        for link in ("a link", "a file"):
            if link == "a file":
                latest = root / "console-usage-synced.json"
                latest.unlink(missing_ok=True)
                latest.write_bytes(payload("2026-01-02T03:04:00Z"))
            assert run_tool("mount", "-o", "remount,ro", str(root)).returncode == 0
            try:
                words[link] = ok(run_cli(root, "status")).stdout
            finally:
                assert run_tool("mount", "-o", "remount,rw", str(root)).returncode == 0
        writable = ok(run_cli(root, "status")).stdout
    for out in words.values():
        assert "verify --repair" not in out and "ingester adopt" not in out, out
        [meta] = [x for x in out.splitlines() if x.startswith("metadata ")]
        assert read_only in meta, out
    [link_line] = [x for x in words["a file"].splitlines() if x.startswith("latest link ")]
    assert f"{root} is on a read-only filesystem" in link_line, link_line
    assert "ingester adopt" in writable, writable


def test_status_says_each_refusal_as_what_it_is_credentials_access_rules_or_account(
    root: Path, ingested: list[str]
) -> None:
    """A ``denied`` the mirror recorded is said for what refused it: credentials that are
    wrong or expired, an access rule (a bucket or IAM policy) without the action, or the
    account. A policy refusal said as refused credentials sends the operator to rotate
    keys that are fine."""
    history = root / HISTORY
    for detail, said, not_said in (
        ("AccessDenied: Access Denied", "access rules", "credentials"),
        ("403", "access rules", "credentials"),
        ("ExpiredToken: The provided token has expired.", "refused the credentials", "rules"),
        ("SignatureDoesNotMatch: The signature", "refused the credentials", "rules"),
        ("AllAccessDisabled: All access disabled", "refused the account", "credentials"),
    ):
        state = MirrorState(target="s3://bucket/usage", state="denied", detail=detail)
        write_mirror_state(history, state)
        out = ok(run_cli(root, "status")).stdout
        [line] = [x for x in out.splitlines() if x.startswith("mirror ")]
        assert said in line and detail in line and not_said not in line, line


def test_status_says_a_request_refused_for_its_time_is_the_clock_not_the_credentials(
    root: Path, ingested: list[str]
) -> None:
    """The mirror records a store that refused its requests' time as ``denied`` (someone
    has to act), with the store's ``RequestTimeTooSkewed`` in its detail: status says the
    clock is off, as the mirror's own line does, not that the credentials were refused,
    which would send the operator to rotate keys that are fine. A refusal of the
    credentials is still said as that."""
    history = root / HISTORY
    skewed = (
        "RequestTimeTooSkewed: The difference between the request time and the current time "
        "is too large."
    )
    for detail, said, not_said in (
        (skewed, "clock is off from the store's", "credentials"),
        ("InvalidAccessKeyId: The key does not exist.", "refused the credentials", "clock"),
    ):
        state = MirrorState(target="s3://bucket/usage", state="denied", detail=detail)
        write_mirror_state(history, state)
        out = ok(run_cli(root, "status")).stdout
        [line] = [x for x in out.splitlines() if x.startswith("mirror ")]
        assert said in line and detail in line and not_said not in line, line
