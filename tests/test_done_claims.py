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
