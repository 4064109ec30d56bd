"""A drop that is a stored version's own file under a second name is never stored again.

The claim of a drop is a rename out of the spool, and the spool folder is not fsynced:
on a filesystem without a journal a power cut can lose the spool's side of that rename
while the version's name, fsynced, survives. The drop is then back in the spool, as a
second name of the version's inode (stored without a copy) or of its claim's (stored as
a copy, the claim not yet removed). A power cut cannot be made here, so each test builds
the state one leaves on disk, with hard links, and runs the real CLI or a real watcher.
"""

from __future__ import annotations

import errno
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import run_cli, wait_for
from support.capabilities import STRACE, needs_strace, needs_strace_root
from support.watchproc import WatchProcess, drop, payload, stored_contents, versions
from test_intake import started_intake
from test_integrity import syscall_delayed

from ingester.history import durable
from ingester.intake.arrivals import How
from ingester.intake.outcomes import Stored

SECOND_NAME = "(the same file under a second name, as a power cut can leave it)"


def _one_version(root: Path, data: bytes) -> Path:
    drop(root / "spool", "first.json", data)
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    [version] = versions(root)
    return version


def _copy_as_version(history: Path, name: str, data: bytes) -> None:
    """``data`` stored as version ``name`` by a copy (another inode), read-only."""
    copy = history / name
    copy.write_bytes(data)
    copy.chmod(0o444)


def _drops(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root / "spool") if n.endswith(".json"))


def test_a_drop_that_is_a_versions_own_file_is_removed_not_stored_twice(root: Path) -> None:
    data = payload(1)
    version = _one_version(root, data)
    # A power cut after the version was made durable, before the spool's side of its
    # claim was written: the drop is back, and it is the version's own inode.
    os.link(version, root / "spool" / "first.json")
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert stored_contents(root) == {data: 1}
    assert _drops(root) == []
    assert os.stat(version).st_nlink == 1  # the version keeps its bytes and its name
    warned = [ln for ln in done.stderr.splitlines() if SECOND_NAME in ln]
    assert len(warned) == 1, done.stderr
    assert f"first.json is version {version.name} itself" in warned[0]
    assert " WARNING " in warned[0]
    assert "stopped: 0 ingested, 0 rejected" in done.stderr


def test_the_claimed_drop_back_beside_its_stored_copy_is_removed_with_its_claim(
    root: Path,
) -> None:
    # Stored as a copy (another user's drop): the version is another inode. A power cut
    # before the claim was removed, the spool's side of the claim's rename lost: the
    # drop is in the spool and in .claimed/ (one inode), and its copy is the version.
    data = payload(2)
    stored = _one_version(root, payload(1))
    spool = root / "spool"
    name = "2026-12-06T10-00-00-0000abcd.json"
    back = drop(spool, "again.json", data)
    os.link(back, spool / ".claimed" / name)
    _copy_as_version(stored.parent, name, data)
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert stored_contents(root) == {payload(1): 1, data: 1}
    assert _drops(root) == []
    assert os.listdir(spool / ".claimed") == []
    assert (
        f"again.json is the drop claimed as {name}, stored already (a power cut can leave "
        "it in the spool): removed it from the spool"
    ) in done.stderr


def test_setting_a_stored_drop_aside_never_replaces_another_claim_waiting(root: Path) -> None:
    """Two claims left by a crash: the first stored already, its drop back in the spool;
    the second not stored yet. Their names run just ahead of the clock (names go up by
    one within a second, or the clock was set back), so the fresh name the first's drop
    is set aside under is the second claim's: renamed onto it, it would destroy the
    second drop. Both must be stored once, nothing else."""
    first, second = payload(5), payload(6)
    stored = _one_version(root, payload(1))
    spool = root / "spool"
    ahead = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H-%M-%S")
    one, two = f"{ahead}-00000010.json", f"{ahead}-00000011.json"
    _copy_as_version(stored.parent, one, first)
    back = drop(spool, "again.json", first)
    os.link(back, spool / ".claimed" / one)
    (spool / ".claimed" / two).write_bytes(second)
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert stored_contents(root) == {payload(1): 1, first: 1, second: 1}
    assert _drops(root) == []
    assert os.listdir(spool / ".claimed") == []


@needs_strace_root
def test_a_new_drop_renamed_onto_a_second_name_recovery_sets_aside_without_renameat2_is_kept(
    root: Path,
) -> None:
    """Where there is no no-replace rename (strace answers ``renameat2`` with ENOSYS, as
    NFS does), setting a stored drop's second name aside must still move the name
    whole: a hard link then an unlink of the spool's name would remove a new drop a
    writer renamed onto that name in between (held open here by holding up the unlink).
    The new drop is stored or still waits: never lost."""
    first, new = payload(13), payload(14)
    stored = _one_version(root, payload(1))
    spool, claimed = root / "spool", root / "spool" / ".claimed"
    one = _version_name(timedelta(minutes=5))
    _copy_as_version(stored.parent, one, first)
    back = drop(spool, "again.json", first)
    os.link(back, claimed / one)
    inject = (
        "-f", "-qq", "-o", "/dev/null", "-P", str(back),
        "-e", "inject=renameat2:error=ENOSYS",
        "-e", "inject=unlink,unlinkat:delay_enter=5000000",
    )  # fmt: skip
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_cli, root, "watch", "--once", wrapper=(STRACE, *inject))
        # Setting aside has begun: the name is linked as a fresh claim (its unlink held
        # up), or moved there whole.
        wait_for(
            lambda: len(os.listdir(claimed)) > 1 or not os.path.lexists(back) or run.done(),
            what="the second name being set aside",
        )
        drop(spool, "again.json", new)  # the writer's: onto the name being taken away
        done = run.result()
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    waiting = [(spool / n).read_bytes() for n in _drops(root)]
    assert waiting in ([], [new]), done.stderr
    assert stored_contents(root) == {payload(1): 1, first: 1, **({} if waiting else {new: 1})}
    assert os.listdir(claimed) == []


@needs_strace_root
def test_a_claim_stored_anew_and_kept_under_its_new_name_is_stored_once_after_a_kill_there(
    root: Path,
) -> None:
    """A claim whose name is taken by another version's bytes is stored under a new name;
    when the spool cannot be fsynced (EIO) it is kept for a later round under that new
    name. Where there is no no-replace rename (``renameat2`` ENOSYS) that must still be
    one rename: a link then an unlink, killed between (SIGKILL at the unlink), leaves the
    claim under both names, and the next start, keeping the first, stores it again."""
    held, data = payload(15), payload(16)
    _one_version(root, payload(1))
    history, claimed = root / "console-usage-history", root / "spool" / ".claimed"
    name = _version_name(timedelta(minutes=5))
    _copy_as_version(history, name, held)
    (claimed / name).write_bytes(data)
    inject = (
        "-f", "-qq", "-o", "/dev/null", "-P", str(root / "spool"), "-P", str(claimed / name),
        "-e", "inject=fsync:error=EIO:when=1",
        "-e", "inject=renameat2:error=ENOSYS",
        "-e", "inject=unlink,unlinkat:signal=SIGKILL",
    )  # fmt: skip
    first = run_cli(root, "watch", "--once", wrapper=(STRACE, *inject))
    assert "Traceback" not in first.stderr
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert stored_contents(root) == {payload(1): 1, held: 1, data: 1}, first.stderr + done.stderr
    assert os.listdir(claimed) == []


def test_a_running_watcher_removes_a_versions_second_name_dropped_in(root: Path) -> None:
    data = payload(3)
    version = _one_version(root, data)
    spool = root / "spool"
    with WatchProcess(root) as watcher:
        (spool / "tmp").mkdir(exist_ok=True)
        os.link(version, spool / "tmp" / "linked.json")
        os.rename(spool / "tmp" / "linked.json", spool / "linked.json")
        drop(spool, "next.json", payload(4))
        watcher.wait_log("ingested next.json")
        wait_for(lambda: _drops(root) == [], what="the second name removed")
        assert watcher.log.count(SECOND_NAME) == 1, watcher.log
    assert stored_contents(root) == {data: 1, payload(4): 1}


def test_a_drop_with_another_link_outside_the_history_is_stored(root: Path) -> None:
    # A writer that keeps a hard link to each drop (an archive of its own) makes drops
    # with two links that are no version: they are stored (as copies), and the
    # writer's link is left alone.
    _one_version(root, payload(1))
    archive = root / "archive"
    archive.mkdir()
    (archive / "kept.json").write_bytes(payload(5))
    (root / "spool" / "tmp").mkdir(exist_ok=True)
    os.link(archive / "kept.json", root / "spool" / "tmp" / "kept.json")
    os.rename(root / "spool" / "tmp" / "kept.json", root / "spool" / "kept.json")
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    assert stored_contents(root) == {payload(1): 1, payload(5): 1}
    assert SECOND_NAME not in done.stderr
    assert (archive / "kept.json").read_bytes() == payload(5)
    assert os.stat(archive / "kept.json").st_nlink == 1


@needs_strace_root
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the syscall numbers are x86_64's")
def test_a_new_drop_renamed_onto_a_second_name_as_it_is_removed_is_stored(root: Path) -> None:
    # The second name is looked up, then taken away: a writer may rename a new drop onto
    # that name in between (held open here by holding up the watcher's renames and
    # unlinks). The new drop must be stored, never removed in the second name's place.
    first, new = payload(10), payload(11)
    version = _one_version(root, first)
    spool = root / "spool"
    with WatchProcess(root, global_args=("-v",)) as watcher:
        watcher.wait_log("cleanup deleted 0")  # idle: its start-up writes are done
        with syscall_delayed(watcher.proc.pid, "rename,unlink", 1_000_000):
            os.link(version, spool / "tmp" / "linked.json")
            os.rename(spool / "tmp" / "linked.json", spool / "second.json")
            wait_in_one_of(watcher.proc.pid, {RENAME, UNLINK})
            drop(spool, "second.json", new)  # onto the name being taken away
            wait_for(lambda: stored_contents(root) == {first: 1, new: 1}, 30, "the new drop")
        wait_for(lambda: _drops(root) == [], what="the spool emptied")
        assert watcher.stop() == 0
    assert stored_contents(root) == {first: 1, new: 1}


def test_two_names_of_one_claimed_drop_left_by_a_crash_are_stored_once(root: Path) -> None:
    # A crash while a second name of a claimed drop was being set aside leaves the drop
    # claimed under two names (its claim, and the fresh name it was moved to): it is
    # finished once, under its first name.
    _stored_claim_under_two_names_is_stored_once(
        root, payload(12), "2026-12-06T10-00-00-0000abcd.json", "2026-12-06T10-00-01-0000abce.json"
    )


def test_two_names_of_one_stored_claim_are_stored_once_when_the_fresh_one_sorts_first(
    root: Path,
) -> None:
    """The same crash, the claim's version dated more than a day ahead (the clock set
    back since): the fresh name, drawn from the clock, sorts below the claim's. The
    drop is stored as that version already, so it is the name kept: keeping the fresh
    one would store the drop a second time under it."""
    ahead = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dT%H-%M-%S")
    fresh = (datetime.now(UTC) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H-%M-%S-0000abce.json")
    _stored_claim_under_two_names_is_stored_once(root, payload(13), f"{ahead}-0000abcd.json", fresh)


def _stored_claim_under_two_names_is_stored_once(
    root: Path, data: bytes, name: str, second: str
) -> None:
    """A claim ``name`` holding ``data``, already stored as that version, with a second
    name ``second`` in ``.claimed/`` (a set-aside cut short): one ``watch --once``
    stores nothing more and leaves ``.claimed/`` empty."""
    stored = _one_version(root, payload(1))
    claimed = root / "spool" / ".claimed"
    (claimed / name).write_bytes(data)
    os.link(claimed / name, claimed / second)
    _copy_as_version(stored.parent, name, data)
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert stored_contents(root) == {payload(1): 1, data: 1}
    assert os.listdir(claimed) == []


RENAME, UNLINK = 82, 87  # x86_64


def wait_in_one_of(pid: int, numbers: set[int], timeout: float = 20.0) -> None:
    def inside() -> bool:
        try:
            first = (Path(f"/proc/{pid}/syscall").read_text().split() or [""])[0]
        except OSError:
            return False
        return first in {str(n) for n in numbers}

    wait_for(inside, timeout, f"pid {pid} inside one of the syscalls {sorted(numbers)}")


# -- a copy's claim written to since, put back beside its version -----------------------


def _version_name(ago: timedelta) -> str:
    return (datetime.now(UTC) - ago).strftime("%Y-%m-%dT%H-%M-%S-") + "0000abcd.json"


def test_a_written_claim_put_back_beside_its_stored_copy_is_stored_once(
    root: Path,
) -> None:
    """What a kill -9 inside release's put-back leaves (or a failed spool fsync or claim
    removal there): the copy of the drop's first bytes is version V; the drop, written
    to since, is claimed as V and linked back into the spool. Its new bytes are stored
    once, from the spool's name, and never from the claim as well."""
    assert run_cli(root, "init").returncode == 0
    spool, history = root / "spool", root / "console-usage-history"
    old = payload(1)
    new = old + b"\n"  # the writer's later bytes: still a valid payload
    name = _version_name(timedelta(minutes=5))
    (history / name).write_bytes(old)
    (history / name).chmod(0o444)
    claimed = spool / ".claimed"
    claimed.mkdir(mode=0o700, exist_ok=True)
    claim = claimed / name
    claim.write_bytes(new)
    os.link(claim, spool / "b.json")  # put back: linked into the spool, claim not removed
    then = time.time() - 60
    os.utime(spool / "b.json", (then, then))
    done = run_cli(root, "watch", "--once")
    assert "Traceback" not in done.stderr
    stored = stored_contents(root)
    assert stored[old] == 1, done.stderr
    assert stored[new] == 1, f"stored {stored[new]} times:\n{done.stderr}"
    assert not claim.exists() and not (spool / "b.json").exists(), done.stderr


def test_a_put_back_whose_spool_fsync_fails_is_stored_once(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, made by ``unclaim``: the release of a copy finds its claim written to
    since, and the spool's fsync fails as the drop is put back (EIO), so both names
    stay. The next run stores the new bytes once."""
    store, spool, intake = started_intake(root)
    old = payload(2)
    new = old + b"\n"
    real = durable.fsync_dir
    calls = [0]

    def fsync_dir(folder: Any) -> None:
        if Path(folder) == spool.dir:
            calls[0] += 1
            if calls[0] == 2:  # release's own fsync passes; the put-back's fails
                raise durable.StorageError("fsync folder", folder, OSError(errno.EIO, "I/O error"))
        real(folder)

    part = spool.tmp_dir / ".b.json.part"
    with part.open("wb") as handle:
        handle.write(old)
        handle.flush()
        os.rename(part, spool.dir / "b.json")  # renamed in, still open: stored as a copy
        with store.batch() as batch:
            assert isinstance(intake.take("b.json", How.COMPLETE, batch), Stored)
            stored, failure = intake.commit_group(batch)
        assert failure is None and len(stored) == 1
        handle.write(b"\n")  # after its copy was stored
        handle.flush()
        with monkeypatch.context() as patched:
            patched.setattr(durable, "fsync_dir", fsync_dir)
            intake.release(stored)
    assert calls[0] == 2
    assert (spool.dir / "b.json").exists() and os.listdir(spool.claimed_dir)
    then = time.time() - 60
    os.utime(spool.dir / "b.json", (then, then))
    store.close()
    done = run_cli(root, "watch", "--once")
    assert "Traceback" not in done.stderr
    contents = stored_contents(root)
    assert contents[old] == 1, done.stderr
    assert contents[new] == 1, f"stored {contents[new]} times:\n{done.stderr}"


def _spool_listings(root: Path, claims: int) -> int:
    """How many ``getdents64`` calls on the spool folder a restart makes that finds
    ``claims`` claims that are their versions' own files (a kill -9 between a group's
    links and its releases leaves them), with a few drops waiting."""
    first = [payload(100 + n) for n in range(claims)]
    for n, data in enumerate(first):
        drop(root / "spool", f"first-{n}.json", data)
    assert run_cli(root, "watch", "--once").returncode == 0
    for version in versions(root):
        os.link(version, root / "spool" / ".claimed" / version.name)
    waiting = [payload(200 + n) for n in range(3)]
    for n, data in enumerate(waiting):
        drop(root / "spool", f"next-{n}.json", data)
    trace = root.parent / f"listings-{claims}.trace"
    listed = ("-f", "-qq", "-o", str(trace), "-P", str(root / "spool"), "-e", "trace=getdents64")
    done = run_cli(root, "watch", "--once", wrapper=(STRACE, *listed))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert stored_contents(root) == dict.fromkeys(first + waiting, 1), done.stderr
    assert os.listdir(root / "spool" / ".claimed") == []
    return sum(1 for line in trace.read_text().splitlines() if " getdents64(" in line)


@needs_strace
def test_a_restart_lists_the_spool_as_often_with_many_stored_claims_as_with_one(
    tmp_path: Path,
) -> None:
    """Each claim that is its version's own file has two links, so recovery looks for a
    second name of it in the spool; with a large backlog, one listing of the spool per
    claim made a restart after kill -9 take half a minute (50 claims, 100,000 drops).
    The spool is listed as often for eight such claims as for one, and every claim is
    finished as before: nothing stored twice, the drops waiting stored."""
    roots = [tmp_path / "one", tmp_path / "eight"]
    for root in roots:
        assert run_cli(root, "init").returncode == 0
    assert _spool_listings(roots[0], 1) == _spool_listings(roots[1], 8)


def _history_listings(root: Path, drops: int) -> int:
    """How many ``getdents64`` calls on the history a restart makes that finds ``drops``
    drops in the spool that are stored versions' own files (a power cut on a filesystem
    without a journal can lose the spool's side of their claims), with a few drops
    waiting."""
    first = [payload(300 + n) for n in range(drops)]
    for n, data in enumerate(first):
        drop(root / "spool", f"first-{n}.json", data)
    assert run_cli(root, "watch", "--once").returncode == 0
    for n, version in enumerate(versions(root)):
        os.link(version, root / "spool" / f"again-{n}.json")
    waiting = [payload(400 + n) for n in range(3)]
    for n, data in enumerate(waiting):
        drop(root / "spool", f"next-{n}.json", data)
    history = root / "console-usage-history"
    trace = root.parent / f"history-listings-{drops}.trace"
    listed = ("-f", "-qq", "-o", str(trace), "-P", str(history), "-e", "trace=getdents64")
    done = run_cli(root, "watch", "--once", wrapper=(STRACE, *listed))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert stored_contents(root) == dict.fromkeys(first + waiting, 1), done.stderr
    assert not [n for n in os.listdir(root / "spool") if n.endswith(".json")], done.stderr
    return sum(1 for line in trace.read_text().splitlines() if " getdents64(" in line)


@needs_strace
def test_a_restart_lists_the_history_as_often_with_many_drops_that_are_versions_as_with_one(
    tmp_path: Path,
) -> None:
    """A drop in the spool with two links may be a stored version's own file, so the
    history is looked in for it; after a power cut that left many such drops, one
    listing of a large history per drop made a restart take minutes. The history is
    listed as often for eight such drops as for one, and each is still removed from the
    spool, never stored twice, the drops waiting stored."""
    roots = [tmp_path / "one", tmp_path / "eight"]
    for root in roots:
        assert run_cli(root, "init").returncode == 0
    assert _history_listings(roots[0], 1) == _history_listings(roots[1], 8)
