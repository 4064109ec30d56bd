"""One rule for a claim left in ``.claimed/`` that is done already (intake/done_claims.py):
``status`` and ``check`` count as in flight exactly the claims the next watcher stores
or sets aside anew, and none that it only removes. Real CLI runs, claims of every kind
a stopped watcher can leave, side by side."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from support import run_cli
from support.watchproc import drop, payload, versions

HISTORY = "console-usage-history"


def _counts(root: Path) -> tuple[int, int, int]:
    """(claimed, backlog) as ``status`` says them, and ``check``'s backlog."""
    status = run_cli(root, "status", "--json")
    assert status.returncode == 0, status.stderr
    spool = json.loads(status.stdout)["spool"]
    check = json.loads(run_cli(root, "check", "--json").stdout)
    return spool["claimed"], spool["backlog"], check["backlog"]


def test_status_check_and_the_watcher_agree_on_which_claims_are_done(tmp_path: Path) -> None:
    root = tmp_path / "root"
    spool = root / "spool"
    for n in range(3):
        drop(spool, f"d{n}.json", payload(n))
    ran = run_cli(root, "watch", "--once")
    assert ran.returncode == 0, ran.stderr
    stored = versions(root)
    claimed = spool / ".claimed"
    # Done: the version's own file (a hard link), and a copy of the same bytes.
    os.link(stored[0], claimed / stored[0].name)
    shutil.copyfile(stored[1], claimed / stored[1].name)
    # In flight: a version's name holding other bytes, and a name not in the history.
    (claimed / stored[2].name).write_bytes(payload(20))
    unknown = "2026-01-01T00-00-00-0badc0de.json"
    (claimed / unknown).write_bytes(payload(21))
    # Done: set aside already (its own inode in rejected/); in flight: not yet there.
    rejected = spool / "rejected"
    rejected.mkdir(exist_ok=True)
    (claimed / "rejecting.bad.json").write_bytes(b"{not json")
    os.link(claimed / "rejecting.bad.json", rejected / "bad.json")
    (claimed / "rejecting.worse.json").write_bytes(b"{nor this")

    assert _counts(root) == (3, 3, 3)
    ran = run_cli(root, "watch", "--once")
    assert ran.returncode == 0, ran.stderr
    assert os.listdir(claimed) == []
    new = [p for p in versions(root) if p not in stored]
    assert sorted(p.read_bytes() for p in new) == sorted([payload(20), payload(21)])
    assert stored[2].read_bytes() == payload(2)
    aside = sorted(p.name for p in rejected.iterdir() if not p.name.endswith(".reason.json"))
    assert aside == ["bad.json", "worse.json"]
    assert _counts(root) == (0, 0, 0)


def test_a_file_put_in_claimed_by_hand_is_named_apart_not_counted_as_backlog(
    tmp_path: Path,
) -> None:
    """A name the watcher never gives a claim (``junk.json`` put there by hand): the
    watcher leaves it for good, with a warning, so ``status`` and ``check`` do not count
    it as a drop to come; they name it apart, and ``check`` warns (nothing clears it)."""
    root = tmp_path / "root"
    spool = root / "spool"
    drop(spool, "d0.json", payload(0))
    assert run_cli(root, "watch", "--once").returncode == 0
    claimed = spool / ".claimed"
    (claimed / "junk.json").write_bytes(payload(30))
    (claimed / "notes.txt").write_bytes(b"by hand")
    ran = run_cli(root, "watch", "--once")
    assert ran.returncode == 0, ran.stderr
    assert "ignoring" in ran.stderr and "junk.json" in ran.stderr
    assert sorted(os.listdir(claimed)) == ["junk.json", "notes.txt"]  # left, for good
    # Nor does the watcher's own stop line count them as drops its next start will take.
    assert " stopped: 0 ingested, 0 rejected, 0 waiting" in ran.stderr, ran.stderr

    assert _counts(root) == (0, 0, 0)
    state = json.loads(run_cli(root, "status", "--json").stdout)["spool"]
    assert state["strays"] == ["junk.json", "notes.txt"]
    words = (
        f"2 file(s) in {claimed} the watcher will not take: junk.json, notes.txt "
        "(not drops it gave a claim; remove or move them)"
    )
    status = run_cli(root, "status").stdout
    assert "spool        0 waiting\n" in status
    assert f"claimed      {words}\n" in status

    check = run_cli(root, "check", "--max-age", "1000d")
    assert check.returncode == 1, check.stdout
    assert check.stdout.startswith(f"INGESTER WARNING - {words}; "), check.stdout
    assert "backlog 0;" in check.stdout and " claimed_strays=2" in check.stdout
    report = json.loads(run_cli(root, "check", "--json", "--max-age", "1000d").stdout)
    assert report["backlog"] == 0 and report["strays"] == ["junk.json", "notes.txt"]
    (item,) = [c for c in report["checks"] if c["name"] == "claimed_strays"]
    assert (item["status"], item["message"]) == ("WARNING", words)

    # Moved away, as the line says: nothing is named, and check is OK again.
    for name in ("junk.json", "notes.txt"):
        (claimed / name).rename(tmp_path / name)
    assert json.loads(run_cli(root, "status", "--json").stdout)["spool"]["strays"] == []
    assert run_cli(root, "check", "--max-age", "1000d").returncode == 0
