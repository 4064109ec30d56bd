"""The optional read-only group: the readers snippets applied to a temporary root only.

A member of ``console-usage-readers`` reads the history and the latest link (and takes
a snapshot of it), and cannot drop anything into the spool; a user without the group
reads nothing. Real permission checks: the reader runs as another uid (``setpriv``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import IS_ROOT, VALID_SAMPLES, cli_env
from support.watchproc import WatchProcess

UNITS = Path(__file__).resolve().parent.parent / "systemd"
NAME = "console-usage-ingester"
READERS = "console-usage-readers"
SYSUSERS_BIN = shutil.which("systemd-sysusers")
TMPFILES_BIN = shutil.which("systemd-tmpfiles")
SETPRIV = shutil.which("setpriv")
READER_UID = 54321

pytestmark = pytest.mark.skipif(
    not (IS_ROOT and SYSUSERS_BIN and TMPFILES_BIN and SETPRIV),
    reason="needs root, systemd-sysusers, systemd-tmpfiles and setpriv",
)


@dataclass
class Tree:
    work: Path
    state: Path
    service_uid: int
    service_gid: int
    readers_gid: int


def _group_id(root: Path, name: str) -> int:
    for line in (root / "etc" / "group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"{name} not created")


def _tool(*args: str) -> None:
    assert any(a.startswith("--root=") for a in args), "never run these against the host"
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def tree() -> Iterator[Tree]:
    # Under /tmp with 0755, so that another uid can reach it (pytest's tmp_path is 0700).
    work = Path(tempfile.mkdtemp(prefix="readers-", dir="/tmp"))
    try:
        work.chmod(0o755)
        (work / "etc").mkdir()
        assert SYSUSERS_BIN and TMPFILES_BIN
        # In the documented order: the service's snippets, then the readers'.
        _tool(SYSUSERS_BIN, f"--root={work}", str(UNITS / f"{NAME}.sysusers"))
        _tool(SYSUSERS_BIN, f"--root={work}", str(UNITS / f"{NAME}-readers.sysusers"))
        readers = _group_id(work, READERS)
        service = _group_id(work, NAME)
        # systemd-tmpfiles resolves ACL group names through the host's NSS, where this
        # group does not exist: the copy names it by number, and nothing else changes.
        text = (UNITS / f"{NAME}-readers.tmpfiles").read_text()
        numbered = text.replace(f"group:{READERS}:", f"group:{readers}:")
        assert numbered.count(f"group:{readers}:") == 3
        (work / "readers.conf").write_text(numbered)
        _tool(TMPFILES_BIN, f"--root={work}", "--create", str(UNITS / f"{NAME}.tmpfiles"))
        _tool(TMPFILES_BIN, f"--root={work}", "--create", str(work / "readers.conf"))
        state = work / "var" / "lib" / NAME
        yield Tree(work, state, service, service, readers)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _service_writes(tree: Tree) -> Path:
    """A history as the service leaves it: versions 0444 less its umask 0027, its owner."""
    history = tree.state / "console-usage-history"
    old = os.umask(0o027)
    try:
        for i, sample in enumerate(VALID_SAMPLES):
            path = history / f"2026-11-30T10-00-0{i}-0000000{i}.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            os.write(fd, sample.read_bytes())
            os.close(fd)
            os.chown(path, tree.service_uid, tree.service_gid)
    finally:
        os.umask(old)
    newest = sorted(history.glob("2*.json"))[-1]
    os.symlink(f"console-usage-history/{newest.name}", tree.state / "console-usage-synced.json")
    return newest


def _as(uid: int, groups: list[int], *argv: str) -> subprocess.CompletedProcess[str]:
    assert SETPRIV is not None
    group_args = ["--groups=" + ",".join(map(str, groups))] if groups else ["--clear-groups"]
    return subprocess.run(
        [SETPRIV, f"--reuid={uid}", f"--regid={uid}", *group_args, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        check=False,
    )


def test_a_reader_reads_the_history_and_cannot_drop(tree: Tree) -> None:
    newest = _service_writes(tree)
    reader = [tree.readers_gid]
    latest = _as(READER_UID, reader, "cat", str(tree.state / "console-usage-synced.json"))
    assert latest.returncode == 0, latest.stderr
    assert latest.stdout.encode() == newest.read_bytes()
    listing = _as(READER_UID, reader, "ls", str(tree.state / "console-usage-history"))
    assert listing.returncode == 0 and newest.name in listing.stdout
    drop = _as(READER_UID, reader, "touch", str(tree.state / "spool" / "x.json"))
    assert drop.returncode != 0 and "Permission denied" in drop.stderr
    version = _as(READER_UID, reader, "sh", "-c", f"echo x >> {newest}")
    assert version.returncode != 0 and "Permission denied" in version.stderr
    # Control: without the group, nothing can be read.
    stranger = _as(READER_UID, [], "cat", str(newest))
    assert stranger.returncode != 0 and "Permission denied" in stranger.stderr


def test_a_reader_takes_a_snapshot_by_copying(tree: Tree) -> None:
    _service_writes(tree)
    dest = tree.work / "reader-backups"
    dest.mkdir()
    os.chown(dest, READER_UID, READER_UID)
    ingester = [sys.executable, "-m", "ingester", "--root", str(tree.state)]
    reach = _as(READER_UID, [tree.readers_gid], sys.executable, "-c", "import ingester")
    if reach.returncode != 0:
        last = (reach.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"this interpreter or the package is not reachable by another uid: {last}")
    # fs.protected_hardlinks forbids linking another user's files: every version is copied.
    snap = _as(READER_UID, [tree.readers_gid], *ingester, "snapshot", str(dest / "snap"))
    assert snap.returncode == 0, snap.stderr
    assert f"(0 linked, {len(VALID_SAMPLES)} copied)" in snap.stdout
    verify = _as(
        READER_UID,
        [tree.readers_gid],
        sys.executable,
        "-m",
        "ingester",
        "--root",
        str(dest / "snap"),
        "verify",
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_reader_runs_every_read_command(tree: Tree) -> None:
    """docs/service.md: a member reads with status, list, show, verify, check, export and
    cleanup --dry-run; the spool and its quarantine, closed to it, block none of them."""
    _service_writes(tree)
    reader = [tree.readers_gid]
    ingester = [sys.executable, "-m", "ingester", "--root", str(tree.state)]
    reach = _as(READER_UID, reader, sys.executable, "-c", "import ingester")
    if reach.returncode != 0:
        last = (reach.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"this interpreter or the package is not reachable by another uid: {last}")
    # No _metadata.json was written: verify finds it missing (exit 1), as it should.
    expected = {
        ("status",): 0,
        ("list",): 0,
        ("show",): 0,
        ("verify",): 1,
        ("check",): 2,  # the samples' lastUpdated is long past
        ("export",): 0,
        ("cleanup", "--dry-run"): 0,
        ("cleanup", "--dry-run", "--json"): 0,
    }
    for args, code in expected.items():
        result = _as(READER_UID, reader, *ingester, *args)
        assert result.returncode == code, f"{args}: {result.stdout}{result.stderr}"
        assert "Traceback" not in result.stderr and "error:" not in result.stderr, result.stderr
    # The spool is closed to the group: check says it could not count it, never "0".
    check = _as(READER_UID, reader, *ingester, "check").stdout
    assert "backlog unknown (cannot list " in check and "backlog 0" not in check, check
    assert "rejections in the last hour unknown (" in check, check
    assert "backlog=" not in check and "rejected=" not in check, check
    dry = _as(READER_UID, reader, *ingester, "cleanup", "--dry-run")
    assert f"would delete 0, retain {len(VALID_SAMPLES)}" in dry.stdout
    rejected = tree.state / "spool" / "rejected"
    assert dry.stderr == (
        f"warning: rejected drops not counted: cannot open folder {rejected}: "
        "Permission denied [EACCES]\n"
    )


def test_a_reader_is_told_what_it_cannot_tell_of_the_watcher(tree: Tree) -> None:
    # The spool is closed to the group, and so is its lock file: a reader cannot tell
    # whether the service's watcher reads it, and must not be told "another spool".
    _service_writes(tree)
    reader = [tree.readers_gid]
    ingester = [sys.executable, "-m", "ingester", "--root", str(tree.state)]
    reach = _as(READER_UID, reader, sys.executable, "-c", "import ingester")
    if reach.returncode != 0:
        last = (reach.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"this interpreter or the package is not reachable by another uid: {last}")
    assert SETPRIV is not None
    service = (SETPRIV, f"--reuid={tree.service_uid}", f"--regid={tree.service_gid}")
    with WatchProcess(tree.state, wrapper=(*service, "--clear-groups")) as watcher:
        lock = tree.state / "spool" / ".lock"
        status = _as(READER_UID, reader, *ingester, "status")
        assert status.returncode == 0, status.stderr
        (line,) = [x for x in status.stdout.splitlines() if x.startswith("watcher")]
        assert line.endswith(
            f"pid {watcher.proc.pid}, watch holds the history; whether it reads this spool "
            f"cannot be told ({lock}: Permission denied [EACCES])"
        ), line
        as_json = json.loads(_as(READER_UID, reader, *ingester, "status", "--json").stdout)
        assert as_json["watcher"] == {
            "running": None,
            "pid": None,
            "otherSpool": False,
            "problem": f"{lock}: Permission denied [EACCES]",
        }
        # Its own user tells it, and says so.
        owner = _as(tree.service_uid, [], *ingester, "status")
        assert f"running (pid {watcher.proc.pid}, watch)" in owner.stdout, owner.stdout
        assert watcher.stop() == 0
