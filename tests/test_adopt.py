"""``ingester adopt``: a history laid out as the original server leaves it becomes ours.

The original's history: version files mode 0644, ``console-usage-synced.json`` a regular
file (a copy of the newest version), ``_metadata.json`` with the six keys and the
milliseconds of each save. After ``adopt``: ``verify`` is clean, ``watch`` continues the
history, a second ``adopt`` changes nothing, and a crash at any step of it (every
durable system call, in process; and a real ``kill -9``) is finished by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import SAMPLES, cli_env, run_cli, wait_for
from support.capabilities import (
    AS_OTHER,
    STRACE,
    immutable,
    needs_strace_root,
    other_user_problem,
    traced_program,
)
from support.process import kill_group
from support.serveproc import ServeProcess
from support.watchproc import WatchProcess
from test_crashpoints import DURABLE_OPS, Plan, SimulatedCrash, inject

from ingester.history.lock import HistoryLock
from ingester.ops.adopt import adopt_history
from ingester.ops.verify import verify_history
from ingester.settings.sources import resolve_settings

HISTORY = "console-usage-history"
LATEST = "console-usage-synced.json"
# Root, setpriv, and an interpreter the other uid can run (one under a home folder closed
# to others, as pyenv's under /root, cannot be): each test run as that uid needs all three.
WHY_NOT = other_user_problem()


@dataclass
class Original:
    """A history as the original server left it, and what must survive adoption."""

    root: Path
    versions: dict[str, bytes]  # name -> bytes, oldest first
    latest: bytes  # the latest file's bytes
    created: int = 2016
    deleted: int = 1916

    @property
    def history(self) -> Path:
        return self.root / HISTORY


def snapshot_bytes(seq: int, at: datetime) -> bytes:
    """A payload as the original wrote it (JSON.stringify with two-space indentation)."""
    body = {
        "currentSession": {"resetsIn": "2 hr 5 min", "percentageUsed": seq % 100},
        "weeklyLimits": {
            "allModels": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 40},
            "sonnetOnly": {"resetsIn": "Mon 8:59 AM", "percentageUsed": 3},
        },
        "lastUpdated": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "isPartial": False,
    }
    return json.dumps(body, indent=2).encode()


def js_iso(stamp: datetime) -> str:
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def original_history(root: Path, count: int = 6, latest: str = "copy") -> Original:
    """``count`` versions five minutes apart, the newest 5 minutes old; ``latest`` is
    ``copy`` (of the newest), ``unique`` (a later snapshot no version holds), ``invalid``."""
    history = root / HISTORY
    history.mkdir(parents=True)
    now = datetime.now(UTC).replace(microsecond=0)
    versions = {}
    for i in range(count):
        at = now - timedelta(minutes=5 * (count - i))
        name = f"{at:%Y-%m-%dT%H-%M-%S}-{hashlib.md5(str(i).encode()).hexdigest()[:8]}.json"
        data = snapshot_bytes(i, at)
        (history / name).write_bytes(data)
        os.chmod(history / name, 0o644)
        versions[name] = data
    newest_at = now - timedelta(minutes=5)
    meta = {
        "versionCount": count,
        "oldestTimestamp": js_iso(now - timedelta(minutes=5 * count)),
        "newestTimestamp": js_iso(newest_at + timedelta(milliseconds=412)),
        "lastCleanup": js_iso(newest_at + timedelta(milliseconds=530)),
        "totalVersionsCreated": 2016,
        "totalVersionsDeleted": 1916,
    }
    (history / "_metadata.json").write_text(json.dumps(meta, indent=2))
    os.chmod(history / "_metadata.json", 0o644)
    if latest == "copy":
        latest_bytes = versions[max(versions)]
    elif latest == "unique":
        latest_bytes = snapshot_bytes(99, now)
    else:
        latest_bytes = b'{"lastUpdated": "not a time"}'
    (root / LATEST).write_bytes(latest_bytes)
    os.chmod(root / LATEST, 0o644)
    return Original(root, versions, latest_bytes)


def version_files(history: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(history.glob("20*.json"))}


def adopted_problems(o: Original) -> list[str]:
    """Everything that must hold once adoption is complete."""
    problems = []
    present = version_files(o.history)
    for name, data in o.versions.items():
        if present.get(name) != data:
            problems.append(f"{name} lost or changed")
    counts = Counter(present.values())
    if o.latest not in counts and b"not a time" not in o.latest:
        problems.append("the latest file's snapshot is not a version")
    if any(n > 1 for n in counts.values()):
        problems.append(f"stored twice: {[d[:40] for d, n in counts.items() if n > 1]}")
    for name in present:
        if os.stat(o.history / name).st_mode & 0o222:
            problems.append(f"{name} is writable")
    link = o.root / LATEST
    if not link.is_symlink():
        problems.append("the latest is not a link")
    elif os.path.isabs(os.readlink(link)) or link.resolve() != (o.history / max(present)):
        problems.append(f"the latest link is {os.readlink(link)}")
    meta = json.loads((o.history / "_metadata.json").read_bytes())
    if meta["versionCount"] != len(present) or meta["latestVersion"] != max(present):
        problems.append(f"metadata disagrees with the files: {meta}")
    if meta["totalVersionsCreated"] < o.created or meta["totalVersionsDeleted"] < o.deleted:
        problems.append(f"a total was lost: {meta}")
    if meta["totalVersionsCreated"] - meta["totalVersionsDeleted"] < len(present):
        problems.append(f"a version stored is not counted: {meta}, {len(present)} present")
    temps = [n for n in os.listdir(o.history) + os.listdir(o.root) if n.startswith(".tmp-")]
    if temps:
        problems.append(f"temp files left: {temps}")
    settings = resolve_settings({"root": str(o.root)}, environ={})
    store = settings.store()
    store.load()
    report = verify_history(store, datetime.now(UTC))
    problems += [f"verify: {f.subject}: {f.message}" for f in report.problems]
    return problems


# -- the command ---------------------------------------------------------------------------


def test_adopt_then_verify_is_clean_and_watch_continues(root: Path, tmp_path: Path) -> None:
    o = original_history(root)
    before = run_cli(root, "verify")
    assert before.returncode == 1
    assert "has write bits" in before.stdout and "_metadata.json" in before.stdout

    done = run_cli(root, "adopt")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"{len(o.versions)} version(s) made read-only" in out
    assert "was a regular file (a copy); now a link to" in out
    assert "metadata: rewritten" in out and "2016 created, 1916 deleted" in out
    assert out.rstrip().endswith("verify:  ok")
    assert adopted_problems(o) == []
    meta = json.loads((o.history / "_metadata.json").read_bytes())
    newest = datetime.strptime(max(o.versions)[:19], "%Y-%m-%dT%H-%M-%S")
    assert meta["newestTimestamp"] == f"{newest:%Y-%m-%dT%H:%M:%S}.000Z"  # no save's ms
    assert meta["lastCleanup"].endswith(".530Z")  # the original's, kept
    assert run_cli(root, "verify").returncode == 0

    # The watcher continues it: a new version, the latest link moves, the totals go on.
    snapshot = tmp_path / "new.json"
    snapshot.write_bytes(snapshot_bytes(7, datetime.now(UTC)))
    assert run_cli(root, "submit", str(snapshot)).returncode == 0
    assert run_cli(root, "watch", "--once").returncode == 0
    present = version_files(o.history)
    assert len(present) == len(o.versions) + 1
    assert (root / LATEST).resolve().read_bytes() == snapshot.read_bytes()
    meta = json.loads((o.history / "_metadata.json").read_bytes())
    assert meta["totalVersionsCreated"] == 2017
    assert run_cli(root, "verify").returncode == 0

    # Idempotent: a second run changes nothing.
    def files() -> dict[str, tuple[bytes, int]]:
        # The lock file's note names its last holder: not part of the history.
        return {
            p.name: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in o.history.iterdir()
            if p.is_file() and p.name != ".lock"
        }

    before_again = files()
    again = run_cli(root, "adopt")
    assert again.returncode == 0
    assert "nothing to change" in again.stdout
    assert files() == before_again


def test_a_snapshot_only_the_latest_file_holds_is_kept(root: Path) -> None:
    o = original_history(root, latest="unique")
    snap = root.parent / "snap"
    for command in (
        ("watch", "--once"),
        ("init",),
        ("verify", "--repair"),
        ("cleanup",),
        # A copy would leave that snapshot out, and still pass for a whole one.
        ("snapshot", str(snap)),
        ("snapshot", "--tar", str(snap) + ".tar"),
    ):
        refused = run_cli(root, *command)
        assert refused.returncode == 1, command
        assert "run 'ingester adopt' first" in refused.stderr, command
        assert (root / LATEST).read_bytes() == o.latest, command
    assert not snap.exists() and not Path(str(snap) + ".tar").exists()
    serve = run_cli(root, "serve", "--watch", "--listen", "127.0.0.1:0")
    assert serve.returncode == 1 and "ingester adopt" in serve.stderr

    done = run_cli(root, "adopt")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kept:    the snapshot in console-usage-synced.json as version" in done.stdout
    assert adopted_problems(o) == []
    # The kept version is counted, in the file and in what reads it.
    meta = json.loads((o.history / "_metadata.json").read_bytes())
    assert (meta["totalVersionsCreated"], meta["versionCount"]) == (2017, len(o.versions) + 1)
    assert meta["totalVersionsDeleted"] == 1916
    status = json.loads(run_cli(root, "status", "--json").stdout)
    assert status["metadata"]["totalVersionsCreated"] == 2017, status
    assert (root / LATEST).read_bytes() == o.latest  # it is the newest: the link shows it


def test_a_running_watcher_keeps_a_latest_file_put_in_by_hand(root: Path) -> None:
    # While it runs, someone puts a file holding a snapshot no version holds in the
    # latest link's place. As every writer refuses to start on it, the watcher never
    # replaces it: drops are still stored, the link waits, and adopt keeps the snapshot.
    assert run_cli(root, "init").returncode == 0
    sample = (SAMPLES / "valid" / "full.json").read_bytes()
    unique = sample.replace(b'"percentageUsed": 23', b'"percentageUsed": 66')
    assert unique != sample
    with WatchProcess(root) as watcher:
        (root / "spool" / "first.json").write_bytes(sample)
        watcher.wait_log("ingested first.json")
        latest = root / LATEST
        # Written beside it, then moved into its place in one step: a rescan between an
        # unlink of the link and the write rightly makes the link again, and the write
        # would then go through it into the version it names.
        staged = root.parent / "latest-by-hand"
        staged.write_bytes(unique)
        os.replace(staged, latest)
        (root / "spool" / "second.json").write_bytes(sample.replace(b"23", b"24", 1))
        watcher.wait_log("ingested second.json")
        watcher.wait_log("holding a snapshot that no version holds, so it is kept")
        assert latest.read_bytes() == unique and not latest.is_symlink()
        assert watcher.stop() == 0
    assert "Traceback" not in watcher.log
    assert latest.read_bytes() == unique
    done = run_cli(root, "adopt")
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(p.read_bytes() == unique for p in (root / "console-usage-history").glob("2*.json"))
    assert run_cli(root, "verify").returncode == 0


def test_a_kept_snapshot_with_an_old_mtime_stays_the_latest_and_survives_cleanup(
    root: Path,
) -> None:
    # The original served the latest file as its newest snapshot: named after an mtime
    # older than the newest version, it would lose the link, and the first cleanup of a
    # full history would delete it.
    o = original_history(root, latest="unique")
    ten_days_ago = (datetime.now(UTC) - timedelta(days=10)).timestamp()
    os.utime(root / LATEST, (ten_days_ago, ten_days_ago))
    done = run_cli(root, "adopt")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / LATEST).read_bytes() == o.latest
    cleanup = run_cli(root, "--max-versions", "1", "--retention-days", "0.0001", "cleanup")
    assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
    assert (root / LATEST).read_bytes() == o.latest
    assert [p.read_bytes() for p in o.history.glob("2*.json")] == [o.latest]


def test_a_kept_snapshot_with_an_mtime_ahead_of_the_clock_is_named_now(root: Path) -> None:
    # Touched with a wrong date, years ahead: named after it, the version would be dated
    # more than a day ahead, no latest at all, and the link would go to an older one.
    o = original_history(root, latest="unique")
    ahead = datetime(2099, 1, 1, tzinfo=UTC).timestamp()
    os.utime(root / LATEST, (ahead, ahead))
    before = datetime.now(UTC).replace(microsecond=0)
    done = run_cli(root, "adopt")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / LATEST).read_bytes() == o.latest  # still the latest
    [kept] = [p for p in o.history.glob("2*.json") if p.read_bytes() == o.latest]
    assert not kept.name.startswith("2099"), kept.name
    stamp = datetime.strptime(kept.name[:19], "%Y-%m-%dT%H-%M-%S").replace(tzinfo=UTC)
    assert before <= stamp <= datetime.now(UTC)
    assert run_cli(root, "verify").returncode == 0


def test_the_kept_version_is_counted_once_when_the_original_s_totals_agree(root: Path) -> None:
    # 5020 created - 3100 deleted = 1920 versions, in small: the totals match the files.
    o = original_history(root, latest="unique")
    meta_path = o.history / "_metadata.json"
    meta = json.loads(meta_path.read_bytes())
    meta.update(totalVersionsCreated=1916 + len(o.versions), totalVersionsDeleted=1916)
    meta_path.write_text(json.dumps(meta))
    assert run_cli(root, "adopt").returncode == 0
    meta = json.loads(meta_path.read_bytes())
    created, deleted = meta["totalVersionsCreated"], meta["totalVersionsDeleted"]
    assert created - deleted == len(o.versions) + 1 == meta["versionCount"]
    status = json.loads(run_cli(root, "status", "--json").stdout)["metadata"]
    assert status["totalVersionsCreated"] == created


def test_an_invalid_snapshot_in_the_latest_file_stops_adopt_untouched(root: Path) -> None:
    o = original_history(root, latest="invalid")
    done = run_cli(root, "adopt")
    assert done.returncode == 1
    assert "not valid" in done.stderr and "move it away" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert (root / LATEST).read_bytes() == o.latest
    assert all(os.stat(o.history / n).st_mode & 0o200 for n in o.versions)


def test_adopt_refuses_while_a_watcher_holds_the_history(root: Path) -> None:
    original_history(root)
    (root / LATEST).unlink()
    with WatchProcess(root):
        done = run_cli(root, "adopt")
    assert done.returncode == 1
    assert "locked by pid" in done.stderr


def test_adopt_reports_a_version_it_must_not_change(root: Path) -> None:
    o = original_history(root)
    odd = f"{datetime.now(UTC) - timedelta(hours=2):%Y-%m-%dT%H-%M-%S}-test5.json"
    (o.history / odd).write_bytes(b'{"lastUpdated":"2026-01-01T00:00:00Z"}')
    done = run_cli(root, "adopt")
    assert done.returncode == 1
    assert odd in done.stdout and "problem(s) left" in done.stdout
    assert (o.history / odd).read_bytes() == b'{"lastUpdated":"2026-01-01T00:00:00Z"}'


# -- the wrong folder -----------------------------------------------------------------------


def _tree(folder: Path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, n), folder)
        for d, ds, fs in os.walk(folder)
        for n in ds + fs
    )


def test_adopt_refuses_a_root_that_does_not_exist_and_creates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "not" / "there"
    done = run_cli(root, "adopt")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"error: nothing to adopt: root folder {root} does not exist; point --root at the "
        "folder that holds the original's console-usage-history/ and "
        "console-usage-synced.json (see docs/migrating.md)"
    )
    assert not (tmp_path / "not").exists()


def test_adopt_names_a_copy_nested_one_level_down_and_creates_nothing(tmp_path: Path) -> None:
    nest = tmp_path / "nest"
    (nest / "claude-scraper").mkdir(parents=True)
    o = original_history(nest / "claude-scraper")
    before = _tree(nest)
    done = run_cli(nest, "adopt")
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert f"but {o.history} does: run 'ingester --root {o.root} adopt'" in done.stderr
    assert _tree(nest) == before
    assert all(os.stat(o.history / n).st_mode & 0o200 for n in o.versions)


def test_adopt_names_a_copy_made_inside_an_existing_history(tmp_path: Path) -> None:
    """``cp -a SRC/console-usage-history ROOT/console-usage-history`` when the target
    exists (here: made by 'init') puts the copy one level inside it."""
    root = tmp_path / "root"
    root.mkdir()
    assert run_cli(root, "init").returncode == 0
    (root / "inside").mkdir()
    o = original_history(root / "inside")
    shutil.move(o.history, root / HISTORY / HISTORY)
    done = run_cli(root, "adopt")
    assert done.returncode == 1
    assert f"{root / HISTORY} holds no version, but {root / HISTORY / HISTORY} does" in done.stderr
    assert "move its contents up" in done.stderr


def test_adopt_refuses_an_empty_folder(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    done = run_cli(root, "adopt")
    assert done.returncode == 1
    assert f"nothing to adopt: no history folder {root / HISTORY}; point --root" in done.stderr
    assert os.listdir(root) == []


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_files_of_another_user_stop_adopt_with_the_chown_advice() -> None:
    """Run as another uid on the original's files (as the service's user on files
    copied by root): the chmod is refused, and the one line says to chown first."""
    work = Path(tempfile.mkdtemp(prefix="adopt-", dir="/tmp"))
    try:
        work.chmod(0o755)
        root = work / "root"
        root.mkdir()
        o = original_history(root)
        for folder in (root, o.history):
            folder.chmod(0o777)  # the lock and spool can be made: only the files refuse
        done = run_cli(
            root,
            "adopt",
            wrapper=tuple(AS_OTHER),
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "[EPERM]" in done.stderr
        assert "chown -R them to the user that runs adopt" in done.stderr
        assert done.stderr.rstrip().endswith("then run adopt again)")
    finally:
        shutil.rmtree(work)


def test_an_immutable_history_stops_adopt_with_its_cause_not_the_chown_advice(
    root: Path, can_chattr: None
) -> None:
    """Root owns every file: the folder refuses because it is immutable, so the line
    names that (and chattr -i), never an owner to chown to."""
    assert run_cli(root, "init").returncode == 0
    assert run_cli(root, "ingest", str(SAMPLES / "valid" / "full.json")).returncode == 0
    history = root / "console-usage-history"
    (history / "_metadata.json").unlink()
    with immutable(history):
        done = run_cli(root, "adopt")
    assert done.returncode == 1, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "[EPERM]" in done.stderr
    assert "chown" not in done.stderr and "another user" not in done.stderr
    assert (
        f"Operation not permitted: its folder {history} is immutable (chattr -i {history} "
        "clears that) [EPERM] (what was done is kept; clear that attribute, then run adopt "
        "again)"
    ) in done.stderr


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_a_history_it_cannot_list_is_named_so_not_called_empty() -> None:
    work = Path(tempfile.mkdtemp(prefix="adopt-", dir="/tmp"))
    try:
        work.chmod(0o755)
        root = work / "root"
        root.mkdir()
        o = original_history(root)
        root.chmod(0o777)
        o.history.chmod(0o700)  # root's, as copied by root
        done = run_cli(
            root,
            "adopt",
            wrapper=tuple(AS_OTHER),
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr == (
            f"error: cannot list {o.history}: Permission denied [EACCES]; its files belong "
            "to another user: chown -R them to the user that runs adopt (the service's), "
            "then run adopt again\n"
        )
    finally:
        shutil.rmtree(work)


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_a_history_copied_as_root_and_not_handed_over_says_to_chown_it() -> None:
    """The migration's chown skipped: the root is the service's, the history copied into
    it root's (readable, not writable by the service). adopt, run as the service's user,
    is refused its lock first: that line says what to do, as the later steps' do."""
    work = Path(tempfile.mkdtemp(prefix="adopt-", dir="/tmp"))
    try:
        work.chmod(0o755)
        root = work / "root"
        root.mkdir()
        o = original_history(root)
        uid = int(AS_OTHER[1].split("=")[1])  # the service's user, as setpriv makes it
        os.chown(root, uid, uid)
        before = sorted(os.listdir(o.history))
        done = run_cli(root, "adopt", wrapper=tuple(AS_OTHER))
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr == (
            f"error: cannot open lock file {o.history}/.lock: Permission denied [EACCES] "
            f"(nothing was done; {o.history} belongs to uid 0 (root), not to this user "
            f"(uid {uid}): chown -R it to the user that runs adopt (the service's), then run "
            "adopt again)\n"
        )
        assert sorted(os.listdir(o.history)) == before
    finally:
        shutil.rmtree(work)


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_a_root_this_user_cannot_write_is_named_with_its_owner_and_no_spool_is_made() -> None:
    """The history and latest file handed over (the guide's chown), the root left root's:
    adopt needs the root only for the latest link (the spool is the watcher's, which
    makes it on start), so the one line names the root, its owner and the chown."""
    work = Path(tempfile.mkdtemp(prefix="adopt-", dir="/tmp"))
    try:
        work.chmod(0o755)
        root = work / "root"
        root.mkdir()
        o = original_history(root)
        uid = int(AS_OTHER[1].split("=")[1])  # the service's user, as setpriv makes it
        for path in (o.history, *o.history.iterdir(), root / LATEST):
            os.chown(path, uid, uid)
        done = run_cli(root, "adopt", wrapper=tuple(AS_OTHER))
        assert done.returncode == 1, done.stdout + done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert f"cannot create symlink {root / LATEST}: Permission denied" in done.stderr
        assert done.stderr.rstrip().endswith(
            f"{root} belongs to uid 0 (root), not to this user (uid {uid}): chown -R it to "
            "the user that runs adopt (the service's), then run adopt again)"
        )
        assert "spool" not in done.stderr and "Traceback" not in done.stderr
        assert sorted(os.listdir(root)) == [HISTORY, LATEST]

        # Handed over as the line says, adopt finishes (and still makes no spool).
        os.chown(root, uid, uid)
        done = run_cli(root, "adopt", wrapper=tuple(AS_OTHER))
        assert done.returncode == 0, done.stdout + done.stderr
        assert adopted_problems(o) == []
        assert not (root / "spool").exists()
    finally:
        shutil.rmtree(work)


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_a_latest_file_it_cannot_read_is_never_replaced() -> None:
    """Run as the service's user on the original's history whose latest file is root's
    and unreadable: it may hold a snapshot no version holds, so nothing may replace it."""
    as_other = tuple(AS_OTHER)
    work = Path(tempfile.mkdtemp(prefix="adopt-", dir="/tmp"))
    try:
        work.chmod(0o755)
        root = work / "root"
        root.mkdir()
        o = original_history(root, latest="unique")
        for path in (root, *root.rglob("*")):
            os.chown(path, 4242, 4242)
        latest = root / LATEST
        os.chown(latest, 0, 0)
        latest.chmod(0o600)
        commands = (("watch", "--once"), ("init",), ("verify", "--repair"), ("cleanup",))
        for command in (*commands, ("serve", "--watch", "--listen", "127.0.0.1:0")):
            refused = run_cli(root, *command, wrapper=as_other)
            assert refused.returncode == 1, (command, refused.stdout + refused.stderr)
            assert (
                f"cannot tell whether {latest} holds a snapshot that no version holds (cannot "
                f"open {latest}: Permission denied [EACCES]), so nothing replaces it: a "
                "permissions problem, not damage; give it to the service's user (chown), "
                "then run 'ingester adopt' as that user"
            ) in refused.stderr, (command, refused.stderr)
            assert "Traceback" not in refused.stderr
            assert latest.read_bytes() == o.latest and not latest.is_symlink(), command
        report = json.loads(run_cli(root, "verify", "--json", wrapper=as_other).stdout)
        (finding,) = [f for f in report["problems"] if f["kind"] == "latest-link"]
        assert "cannot tell whether" in finding["message"]
        assert finding["repairable"] is False
    finally:
        shutil.rmtree(work)


# -- verify and status before adopt ---------------------------------------------------------


def test_verify_and_status_on_the_original_s_history_point_to_adopt(root: Path) -> None:
    o = original_history(root, count=8)
    done = run_cli(root, "verify")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    # Eight identical mode problems: one line with an example and the count.
    (modes,) = [line for line in lines if "has write bits" in line]
    assert f"{min(o.versions)} and 7 more" in modes
    assert "run 'ingester adopt'" in lines[-1] and "verify --repair" not in done.stdout
    # --json keeps each finding.
    report = json.loads(run_cli(root, "verify", "--json").stdout)
    assert sum(f["kind"] == "writable-version" for f in report["problems"]) == 8
    assert report["adoptAdvised"] is True

    status = run_cli(root, "status")
    assert status.returncode == 0
    assert "verify --repair" not in status.stdout
    assert "incomplete: no latestVersion (run 'ingester adopt')" in status.stdout
    assert "a file, not a link (run 'ingester adopt')" in status.stdout
    assert json.loads(run_cli(root, "status", "--json").stdout)["adoptAdvised"] is True

    assert run_cli(root, "adopt").returncode == 0
    assert "adopt" not in run_cli(root, "status").stdout.split("settings:")[0]
    assert json.loads(run_cli(root, "verify", "--json").stdout)["adoptAdvised"] is False


def test_metadata_times_off_only_by_the_milliseconds_of_a_save_are_no_disagreement(
    root: Path,
) -> None:
    """The original wrote each save's milliseconds (``newestTimestamp`` ``…:00.412Z`` for
    the version named ``…-00-…``): no reader calls that out of date. What its metadata
    lacks (this project's ``latestVersion``) is said as that; a time a second off is
    still out of date."""
    o = original_history(root)
    verify = run_cli(root, "verify").stdout
    (line,) = [x for x in verify.splitlines() if x.startswith("PROBLEM  _metadata.json")]
    assert "Timestamp" not in line and "latestVersion is missing" in line, line
    status = run_cli(root, "status").stdout
    assert "metadata     incomplete: no latestVersion (run 'ingester adopt')" in status
    done = run_cli(root, "adopt")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "metadata: rewritten (it was incomplete: no latestVersion); totals kept" in done.stdout
    assert "out of date" not in done.stdout

    meta_path = o.history / "_metadata.json"
    meta = json.loads(meta_path.read_bytes())
    newest = meta["newestTimestamp"]
    assert newest.endswith(".000Z")
    for stamp in (newest[:-5] + ".999Z", newest[:-5] + "+00:00"):
        meta_path.write_text(json.dumps({**meta, "newestTimestamp": stamp}))
        assert "metadata     ok\n" in run_cli(root, "status").stdout, stamp
        assert run_cli(root, "verify").returncode == 0, stamp
    a_second_off = (datetime.fromisoformat(newest) + timedelta(seconds=1)).isoformat()
    meta_path.write_text(json.dumps({**meta, "newestTimestamp": a_second_off}))
    assert "metadata     out of date (run 'ingester verify --repair')" in (
        run_cli(root, "status").stdout
    )
    verify = run_cli(root, "verify")
    assert verify.returncode == 1 and f"newestTimestamp is '{a_second_off}'" in verify.stdout


def test_a_snapshot_only_the_latest_file_holds_is_a_problem_only_adopt_fixes(root: Path) -> None:
    original_history(root, latest="unique")
    done = run_cli(root, "verify")
    (line,) = [x for x in done.stdout.splitlines() if LATEST in x and x.startswith("PROBLEM")]
    assert "a snapshot that no version holds" in line and "run 'ingester adopt' first" in line
    report = json.loads(run_cli(root, "verify", "--json").stdout)
    (finding,) = [f for f in report["problems"] if f["kind"] == "latest-link"]
    assert finding["repairable"] is False  # verify --repair refuses: it would lose it
    status = run_cli(root, "status").stdout
    assert "verify --repair" not in status and "(run 'ingester adopt')" in status


@pytest.mark.parametrize("latest", ["unique", "copy"])
def test_serve_alone_over_the_original_s_history_says_to_adopt_it(
    tmp_path: Path, latest: str
) -> None:
    """``serve --watch``, ``watch`` and ``init`` refuse a history as the original left
    it; ``serve`` alone only reads, so it starts, and says at start what ``status`` and
    ``verify`` say: a latest file holding a snapshot no version holds is answered from
    the versions alone until ``ingester adopt`` keeps it. Once adopted, not a word."""
    root = tmp_path / latest
    root.mkdir()
    o = original_history(root, latest=latest)
    marker = "WARNING serve: the history is laid out as the original server left it: "
    with ServeProcess(root) as server:
        server.wait_log("ingester adopt")
        served = server.get("/api/claude/console-usage").json()
    (line,) = [x for x in server.log.splitlines() if "ingester adopt" in x]
    assert marker in line and str(root / LATEST) in line, line
    if latest == "unique":
        assert "holding a snapshot that no version holds" in line, line
        assert line.endswith("until then GET answers from the versions alone"), line
        assert served["versionInfo"]["filename"] == max(o.versions)
    else:
        assert line.endswith(
            "is a file, not a link: run 'ingester adopt', which makes it this tool's "
            "(see docs/migrating.md); until then GET answers from the versions alone"
        ), line
    assert run_cli(root, "adopt").returncode == 0
    with ServeProcess(root) as server:
        assert server.get("/api/health").status_code in (200, 503)
        server.stop()
    assert "adopt" not in server.log and "original server" not in server.log, server.log


def test_a_few_identical_problems_are_listed_one_by_one(root: Path) -> None:
    o = original_history(root, count=3)
    (root / LATEST).unlink()  # not the original's layout: verify --repair fixes it
    done = run_cli(root, "verify")
    assert sum("has write bits" in line for line in done.stdout.splitlines()) == 3
    assert all(name in done.stdout for name in o.versions)
    assert "can be fixed with 'ingester verify --repair'" in done.stdout.splitlines()[-1]
    assert "adopt" not in done.stdout


def test_the_guide_quotes_the_line_adopt_prints_for_a_test_file(root: Path) -> None:
    o = original_history(root)
    (o.history / "2026-01-05T00-00-00-test5.json").write_bytes(b'{"test": 5}')
    done = run_cli(root, "adopt")
    assert done.returncode == 1
    guide = (Path(__file__).parent.parent / "docs" / "migrating.md").read_text()
    quoted = re.search(r"`(PROBLEM  2026-01-05T00-00-00-test5\.json  [^`]+)`", guide)
    assert quoted is not None
    assert quoted[1] in done.stdout.splitlines()


# -- crashes -------------------------------------------------------------------------------


def _adopt_in_process(root: Path) -> None:
    settings = resolve_settings({"root": str(root)}, environ={})
    store = settings.store()
    with HistoryLock(store.lock_path, "adopt"):
        adopt_history(store, settings.max_bytes)


@pytest.mark.parametrize("latest", ["copy", "unique"])
def test_a_crash_at_every_durable_step_is_finished_by_the_next_adopt(
    tmp_path: Path, latest: str
) -> None:
    failures = []
    k = 0
    while True:
        k += 1
        root = tmp_path / f"{latest}-k{k:03d}"
        root.mkdir()
        o = original_history(root, latest=latest)
        plan = Plan(at=k)
        with inject(plan, (*DURABLE_OPS, "fchmod")):
            try:
                _adopt_in_process(root)
            except SimulatedCrash:
                pass
        if not plan.reached:
            assert adopted_problems(o) == []
            break
        # Whatever the crash left, nothing the original held is gone or changed yet.
        for name, data in o.versions.items():
            assert (o.history / name).read_bytes() == data, f"step {k} {plan.fired}"
        if latest == "unique" and (root / LATEST).is_symlink():
            assert o.latest in version_files(o.history).values(), f"step {k} {plan.fired}"
        _adopt_in_process(root)
        problems = adopted_problems(o)
        if problems:
            failures.append(f"crash at step {k} {plan.fired}: " + "; ".join(problems))
    assert not failures, "\n".join(failures)
    assert k > len(o.versions) * 2  # an fchmod and an fsync per version, at least


@needs_strace_root
def test_kill_9_during_adopt_then_adopt_again(root: Path) -> None:
    o = original_history(root, count=40, latest="unique")
    # Each fchmod held up 50 ms: the run takes seconds, and is killed in the middle.
    proc = subprocess.Popen(
        [
            STRACE,
            "-f",
            "-qq",
            "-o",
            os.devnull,
            "-e",
            "trace=fchmod",
            "-e",
            "inject=fchmod:delay_enter=50000",
            sys.executable,
            "-m",
            "ingester",
            "--root",
            str(root),
            "adopt",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
        start_new_session=True,  # strace and adopt end together, however the test ends
    )
    try:

        def read_only() -> int:
            return sum(
                1 for n in o.versions if not stat.S_IMODE(os.stat(o.history / n).st_mode) & 0o222
            )

        wait_for(lambda: read_only() >= 3, 60, "adopt to be under way")
        os.kill(traced_program(proc.pid), signal.SIGKILL)
        proc.wait(20)
    finally:
        kill_group(proc)
    assert 3 <= read_only() < len(o.versions), "the kill did not land mid-way"
    done = run_cli(root, "adopt")
    assert done.returncode == 0, done.stdout + done.stderr
    assert adopted_problems(o) == []


@needs_strace_root
def test_a_failed_write_of_the_kept_snapshot_is_said_as_itself(root: Path) -> None:
    """The write of the latest file's snapshot as a version of its own fails (its fsync,
    the run's first: EIO). The one error line is that failure, naming the folder and
    EIO, not a missing file looked for afterwards; no version of it is left, the latest
    file is as it was, and the next adopt keeps it."""
    o = original_history(root, latest="unique")
    inject = ("-e", "trace=fsync", "-e", "inject=fsync:error=EIO:when=1")
    done = run_cli(root, "adopt", wrapper=(STRACE, "-f", "-qq", "-o", os.devnull, *inject))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot "), done.stderr
    assert "Input/output error [EIO]" in lines[0] and str(o.history) in lines[0], lines[0]
    assert "ENOENT" not in lines[0]
    assert version_files(o.history) == o.versions
    assert (root / LATEST).read_bytes() == o.latest and not (root / LATEST).is_symlink()
    again = run_cli(root, "adopt")
    assert again.returncode == 0, again.stdout + again.stderr
    assert adopted_problems(o) == []
