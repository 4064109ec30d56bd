"""Integrity at the edges: no acknowledged drop lost, no recovery that deletes by name,
no cache or bad drop that stops the line.

Real CLI and watcher processes on a real temp filesystem. Two-user cases run as root:
the scraper is ``setpriv --reuid 4242 --regid 4200 --clear-groups``, and the watcher runs
without CAP_LEASE (``setpriv --bounding-set -lease``), so, as under systemd, it cannot
ask whether the scraper's file is still open for writing. Windows are widened with
``strace -e inject=...:delay_enter=US`` where a race must be made certain. Skipped, with
the reason, where root, chattr, setpriv or strace are missing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import IS_ROOT, cli_env, run_cli, wait_for
from support.capabilities import (
    STRACE,
    immutable,
    needs_strace,
    needs_strace_root,
    strace_attached,
)
from support.process import kill_group
from support.watchproc import WatchProcess, drop, payload, stored_contents, versions

from ingester.history.store import HistoryStore
from ingester.intake.watcher import Watcher, WatchOptions
from ingester.settings.sources import resolve_settings

SCRAPER_UID, SPOOL_GID = 4242, 4200
SETPRIV = shutil.which("setpriv")
TMPFILES = Path(__file__).resolve().parent.parent / "systemd" / "console-usage-ingester.tmpfiles"


def history_of(root: Path) -> Path:
    return root / "console-usage-history"


def ingester_cmd(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ingester", "--root", str(root), *args]


needs_two_users = pytest.mark.skipif(
    not IS_ROOT or SETPRIV is None, reason="needs root and setpriv for the two-user layout"
)


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A root the scraper's uid can reach (pytest's own temp folders are 0700)."""
    work = Path(tempfile.mkdtemp(prefix="integrity-", dir="/tmp"))
    try:
        work.chmod(0o755)
        (work / "root").mkdir(mode=0o755)
        yield work / "root"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def two_user_spool(root: Path) -> Path:
    """The service layout: a setgid, sticky spool the scraper's group may write."""
    spool = root / "spool"
    spool.mkdir()
    os.chown(spool, 0, SPOOL_GID)
    spool.chmod(0o3770)
    return spool


class NoLeaseWatch(WatchProcess):
    """A watcher that cannot take read leases on another user's files (as under systemd)."""

    def __init__(self, root: Path, *args: str) -> None:
        no_lease = ("--bounding-set", "-lease", "--inh-caps", "-lease", "--")
        super().__init__(root, *args, wrapper=(SETPRIV or "setpriv", *no_lease))


# -- submit ---------------------------------------------------------------------------


def test_submit_takes_a_name_as_long_as_the_watcher_does(root: Path) -> None:
    name = "a" * 245 + ".json"
    done = run_cli(root, "submit", "--name", name, "-", input=payload(1))
    assert done.returncode == 0, done.stderr
    assert (root / "spool" / name).read_bytes() == payload(1)
    assert os.listdir(root / "spool" / "tmp") == []


@needs_strace
def test_submit_never_replaces_a_waiting_drop_of_the_same_name(root: Path) -> None:
    """The first writer is held between its check and its publish; the second wins."""
    (root / "spool" / "tmp").mkdir(parents=True)
    # As a context manager, Popen closes its pipes however the block ends; in a group of
    # its own, strace and the submit it runs are ended together.
    with subprocess.Popen(
        [
            STRACE,
            "-f",
            "-o",
            os.devnull,
            "-e",
            "inject=fsync:delay_enter=1500000",
            *ingester_cmd(root, "submit", "--name", "same.json", "-"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=cli_env(),
        start_new_session=True,
    ) as first:
        try:
            assert first.stdin is not None
            first.stdin.write(payload(1))
            first.stdin.close()
            # Its staged copy exists: it has checked the name and is writing.
            wait_for(lambda: os.listdir(root / "spool" / "tmp"), timeout=30, what="first staged")
            second = run_cli(root, "submit", "--name", "same.json", "-", input=payload(2))
            assert second.returncode == 0, second.stderr
            first.wait(timeout=60)
            assert first.stderr is not None
            err = first.stderr.read()
        finally:
            kill_group(first)
    assert first.returncode == 1, err
    assert b"a drop of that name is still waiting" in err
    assert (root / "spool" / "same.json").read_bytes() == payload(2)
    assert os.listdir(root / "spool" / "tmp") == []


def test_a_submitted_drop_is_taken_at_once_not_after_the_settle_time(root: Path) -> None:
    """submit publishes by a no-clobber rename, which the watcher sees as a finished file.

    A hard link would show only as a creation, which the watcher must wait out: with an
    hour's settle time the drop would sit in the spool for that hour.
    """
    with WatchProcess(root, "--settle", "3600") as w:
        done = run_cli(root, "submit", "-", input=payload(1))
        assert done.returncode == 0, done.stderr
        wait_for(lambda: len(versions(root)) == 1, timeout=30, what="submitted drop stored")
        assert stored_contents(root) == Counter([payload(1)])
        assert w.proc.poll() is None


def test_concurrent_submits_of_one_name_store_one_and_refuse_the_other(root: Path) -> None:
    pairs = 8
    (root / "spool").mkdir()
    results: dict[int, list[tuple[int, int, bytes]]] = {}
    # Each Popen a context manager: every pipe is closed, and every submit waited for,
    # however the block ends.
    with contextlib.ExitStack() as running:
        procs = []
        for i in range(pairs):
            for j in (0, 1):
                p = subprocess.Popen(
                    ingester_cmd(root, "submit", "--name", f"p{i}.json", "-"),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env=cli_env(),
                )
                procs.append((i, j, running.enter_context(p)))
        for i, j, p in procs:
            assert p.stdin is not None
            p.stdin.write(payload(100 * i + j))
            p.stdin.close()
        for i, j, p in procs:
            p.wait(timeout=60)
            assert p.stderr is not None
            results.setdefault(i, []).append((j, p.returncode, p.stderr.read()))
    for i, outcomes in results.items():
        winners = [j for j, code, _ in outcomes if code == 0]
        losers = [err for _, code, err in outcomes if code != 0]
        assert len(winners) == 1, outcomes
        assert all(b"still waiting" in err for err in losers), outcomes
        assert (root / "spool" / f"p{i}.json").read_bytes() == payload(100 * i + winners[0])


# -- .claimed/ and recovery -----------------------------------------------------------


def store_some(root: Path, count: int) -> None:
    for i in range(count):
        src = root.parent / f"in{i}.json"
        src.write_bytes(payload(i))
        done = run_cli(root, "ingest", str(src))
        assert done.returncode == 0, done.stderr


def test_a_claimed_folder_that_links_to_the_history_is_refused(root: Path) -> None:
    store_some(root, 3)
    before = stored_contents(root)
    spool = root / "spool"
    spool.mkdir(exist_ok=True)
    shutil.rmtree(spool / ".claimed", ignore_errors=True)
    (spool / ".claimed").symlink_to(history_of(root))
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 1
    assert ".claimed" in done.stderr and "symlink" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert stored_contents(root) == before and len(versions(root)) == 3


@pytest.mark.skipif(not IS_ROOT, reason="needs root to make a folder another user owns")
def test_a_claimed_folder_made_by_another_user_is_named_with_its_owner(root: Path) -> None:
    claimed = root / "spool" / ".claimed"
    claimed.mkdir(parents=True)
    os.chown(claimed, SCRAPER_UID, SPOOL_GID)
    drop(root / "spool", "a.json", payload(1))
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 1
    assert str(claimed) in done.stderr and f"uid {SCRAPER_UID}" in done.stderr, done.stderr
    assert (root / "spool" / "a.json").exists()


def test_tmpfiles_snippet_makes_the_claimed_folder_for_the_service() -> None:
    rows = [line.split() for line in TMPFILES.read_text().splitlines() if line[:1] == "d"]
    claimed = [r for r in rows if r[1].endswith("/spool/.claimed")]
    assert claimed, "tmpfiles.d does not make spool/.claimed/"
    assert claimed[0][2] == "0700" and claimed[0][3] == "console-usage-ingester"


def test_a_claim_whose_version_name_holds_other_bytes_is_stored_not_deleted(root: Path) -> None:
    store_some(root, 1)
    (name,) = [p.name for p in versions(root)]
    claimed = root / "spool" / ".claimed"
    claimed.mkdir(parents=True)
    (claimed / name).write_bytes(payload(99))
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    assert stored_contents(root) == {payload(0): 1, payload(99): 1}
    assert os.listdir(claimed) == []


def test_claims_recovered_before_one_that_cannot_be_are_said_and_counted(
    root: Path, can_chattr: None
) -> None:
    """Recovery finishes the claims a crash left one by one: the ones finished before a
    claim that cannot be finished (its removal refused: immutable) are stored, and so
    said ("ingested") and counted, as they are finished, not lost with the failure."""
    from ingester.history.names import generate_version_filename

    claimed = root / "spool" / ".claimed"
    claimed.mkdir(parents=True)
    first = generate_version_filename(datetime.now(UTC) - timedelta(seconds=2))
    second = generate_version_filename(datetime.now(UTC), after=first)
    (claimed / first).write_bytes(payload(1))
    (claimed / second).write_bytes(payload(2))
    with immutable(claimed / second):
        done = run_cli(root, "watch", "--once")
    assert done.returncode == 1, done.stderr
    assert f"ingested {first} -> " in done.stderr, done.stderr
    assert "stopped: 1 ingested, 0 rejected" in done.stderr.splitlines()[-1], done.stderr
    assert "Traceback" not in done.stderr
    assert stored_contents(root) == {payload(1): 1, payload(2): 1}


def test_temp_sweeps_never_follow_a_symlinked_folder(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".tmp-precious").write_bytes(b"not ours")
    (root / "spool").mkdir()
    (root / "spool" / "rejected").symlink_to(elsewhere)
    run_cli(root, "watch", "--once")
    assert (elsewhere / ".tmp-precious").read_bytes() == b"not ours"


# -- identity of what is claimed --------------------------------------------------------


@contextlib.contextmanager
def syscall_delayed(
    pid: int, syscall: str, microseconds: int, *, every_thread: bool = False
) -> Iterator[None]:
    """Hold up every ``syscall`` of process ``pid`` (strace attached) while inside: of
    its main thread, or with ``every_thread`` of all its threads (a server's workers)."""
    tracer = subprocess.Popen(
        [
            STRACE,
            *(["-f"] if every_thread else []),
            "-p",
            str(pid),
            "-o",
            os.devnull,
            "-e",
            f"trace={syscall}",
            "-e",
            f"inject={syscall}:delay_enter={microseconds}",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        # Attaching to every thread of a busy server takes longer.
        wait_for(
            lambda: strace_attached(tracer, pid), 20 if every_thread else 10, "strace attached"
        )
        yield
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=10)


def in_syscall(pid: int, number: int) -> bool:
    """Whether process ``pid`` is inside system call ``number`` now (held up by strace)."""
    try:
        return (Path(f"/proc/{pid}/syscall").read_text().split() or [""])[0] == str(number)
    except OSError:
        return False


def wait_in_syscall(pid: int, number: int, timeout: float = 20.0) -> None:
    wait_for(lambda: in_syscall(pid, number), timeout, f"pid {pid} inside syscall {number}")


@needs_strace_root
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the syscall numbers are x86_64's")
@pytest.mark.parametrize("owner", ["watcher", "scraper"])
def test_what_is_claimed_is_what_is_stored(root: Path, owner: str) -> None:
    """The drop's bytes change under the same inode while its claim is held up: the
    claimed bytes are stored (judged again), never the stale bytes read earlier."""
    with WatchProcess(root, global_args=("-v",)) as w:
        w.wait_log("cleanup deleted 0")  # idle: its start-up writes are done
        with syscall_delayed(w.proc.pid, "rename", 2_000_000):
            old, new = payload(1, pad="a" * 10), payload(2, pad="b" * 10)
            assert len(old) == len(new)
            scraper = (SCRAPER_UID, SPOOL_GID) if owner == "scraper" else None
            path = drop(root / "spool", "a.json", old, owner=scraper)
            wait_in_syscall(w.proc.pid, 82)  # rename: the claim, held up
            # Same inode, other bytes (as a reused inode number would look).
            with open(path, "r+b") as f:
                f.write(new)
            wait_for(lambda: stored_contents(root), timeout=20, what="a version")
        claimed = root / "spool" / ".claimed"
        wait_for(lambda: not os.listdir(claimed), what="claims released")
        assert w.stop() == 0
    assert stored_contents(root) == {new: 1}, w.log


@needs_strace_root
def test_bytes_written_after_a_copy_was_stored_are_never_deleted(root: Path) -> None:
    """A writer adds to another user's drop after its copy is linked, before its claim
    is released (every fsync held up 1 s): the claim is not deleted with those bytes."""
    with WatchProcess(root, global_args=("-v",)) as w:
        w.wait_log("cleanup deleted 0")  # idle: its start-up writes are done
        claimed = root / "spool" / ".claimed"
        with syscall_delayed(w.proc.pid, "fsync", 1_000_000):
            # The window (version linked, claim not yet released) lasts about a second;
            # on a loaded machine a look can miss it: a missed drop is simply stored, and
            # the next one tries again.
            for attempt in range(1, 4):
                # Another user's drop: copied, never made a version itself.
                drop(
                    root / "spool",
                    f"a{attempt}.json",
                    payload(attempt),
                    owner=(SCRAPER_UID, SPOOL_GID),
                )
                wait_for(
                    lambda n=attempt: len(versions(root)) == n,
                    timeout=20,
                    what="the copy linked",
                )
                if _append_to_the_claim(claimed, b" and more"):
                    break
            else:
                pytest.fail("the claim was released before it could be written to, 3 times")
        rejected = root / "spool" / "rejected" / f"a{attempt}.json"
        wait_for(rejected.exists, timeout=20, what="the grown file judged again")
        assert w.stop() == 0
    assert rejected.read_bytes() == payload(attempt) + b" and more"
    assert stored_contents(root) == {payload(n): 1 for n in range(1, attempt + 1)}


def _append_to_the_claim(claimed: Path, data: bytes) -> bool:
    """Append to the one claim in ``claimed``; False if it was released before the write."""
    for claim in claimed.iterdir():
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_APPEND)  # never creates a stray claim
        except FileNotFoundError:
            return False
        try:
            os.write(fd, data)
            # Released between our open and our write: the bytes went to a file no
            # longer linked anywhere, which no watcher can see. That look missed.
            return os.fstat(fd).st_nlink > 0
        finally:
            os.close(fd)
    return False


# -- ingest after the commit point; caches never gate ingest -----------------------------


def test_ingest_reports_a_committed_version_as_stored(
    root: Path, tmp_path: Path, can_chattr: None
) -> None:
    links = tmp_path / "links"
    links.mkdir()
    src = tmp_path / "in.json"
    src.write_bytes(payload(1))
    args = ("--latest-path", str(links / "latest.json"))
    assert run_cli(root, *args, "init").returncode == 0
    with immutable(links):
        done = run_cli(root, *args, "ingest", str(src))
    assert done.returncode == 0, done.stderr
    assert "stored" in done.stdout and "not stored" not in done.stdout + done.stderr
    assert "cache not refreshed" in done.stderr
    assert len(versions(root)) == 1


def test_ingest_whose_retention_fails_after_storing_still_reports_it_stored(
    root: Path, tmp_path: Path, can_chattr: None
) -> None:
    """Retention runs after the versions are stored: its failure (the metadata cannot be
    replaced, an expired version cannot be deleted) must not turn "stored" into exit 1,
    which a script retries, storing the payload twice."""
    src = tmp_path / "in.json"
    src.write_bytes(payload(1))
    assert run_cli(root, "ingest", str(src)).returncode == 0
    src.write_bytes(payload(2))
    with immutable(root / "console-usage-history" / "_metadata.json"):
        done = run_cli(root, "ingest", str(src))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"stored {src} -> "), done.stdout
    assert "error" not in done.stderr, done.stderr
    assert "warning: stored, retention not applied: " in done.stderr, done.stderr
    assert len(versions(root)) == 2


def test_ingest_whose_retention_deletes_some_expired_versions_says_it_applied_in_part(
    root: Path, tmp_path: Path, can_chattr: None
) -> None:
    """An expired version that will not go (immutable) must not make the warning say
    that retention did nothing, when it deleted the others."""
    history = root / "console-usage-history"
    assert run_cli(root, "init").returncode == 0
    old = [history / f"2020-01-0{day}T00-00-00-0000000{day}.json" for day in (1, 2, 3)]
    for n, path in enumerate(old):
        path.write_bytes(payload(n))
    src = tmp_path / "in.json"
    src.write_bytes(payload(9))
    with immutable(old[0]):
        done = run_cli(root, "--max-versions", "1", "ingest", str(src))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"stored {src} -> "), done.stdout
    said = "warning: stored, retention applied in part: could not delete 1 of 3 expired"
    assert said in done.stderr, done.stderr
    assert [p.exists() for p in old] == [True, False, False]


def test_a_broken_latest_link_folder_does_not_stop_ingest(
    root: Path, tmp_path: Path, can_chattr: None
) -> None:
    links = tmp_path / "links"
    links.mkdir()
    args = ("--latest-path", str(links / "latest.json"))
    with WatchProcess(root, "--rescan-interval", "0.5", global_args=args) as w:
        with immutable(links):
            for i in range(10):
                drop(root / "spool", f"d{i}.json", payload(i))
                wait_for(lambda i=i: len(versions(root)) == i + 1, what=f"drop {i} stored")
            assert "cannot refresh the latest link" in w.log
        wait_for(
            lambda: (
                (links / "latest.json").exists()
                and (links / "latest.json").read_bytes() == payload(9)
            ),
            what="latest link repaired",
        )
        assert w.stop() == 0


def test_a_latest_path_that_is_a_folder_does_not_stop_ingest(root: Path) -> None:
    (root / "console-usage-synced.json").mkdir()
    (root / "console-usage-synced.json" / "keep").write_bytes(b"x")
    with WatchProcess(root) as w:
        for i in range(5):
            drop(root / "spool", f"d{i}.json", payload(i))
        wait_for(lambda: len(versions(root)) == 5, what="5 drops stored")
        assert "cannot refresh the latest link" in w.log
        assert "latest link repaired" not in w.log  # never claimed while it failed
        assert w.stop() == 0
    meta = json.loads((history_of(root) / "_metadata.json").read_bytes())
    assert meta["versionCount"] == 5
    verify = run_cli(root, "verify")
    assert "latest link a folder, not a link" in verify.stdout


def test_a_drop_that_cannot_be_claimed_waits_alone(root: Path, can_chattr: None) -> None:
    spool = root / "spool"
    stuck = drop(spool, "stuck.json", payload(0))
    with immutable(stuck), WatchProcess(root, "--retry-max", "1") as w:
        w.wait_log("cannot take drop stuck.json")
        for i in range(1, 11):
            drop(spool, f"d{i}.json", payload(i))
        wait_for(lambda: len(versions(root)) == 10, what="10 drops behind it stored")
        assert stuck.exists()
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
        wait_for(lambda: len(versions(root)) == 11, what="the stuck drop, once free")
        assert w.stop() == 0
    assert sorted(stored_contents(root)) == sorted(payload(i) for i in range(11))


# -- quarantine ---------------------------------------------------------------------------


def test_reason_files_never_replace_a_quarantined_drop(root: Path) -> None:
    spool = root / "spool"
    spool.mkdir()
    drop(spool, "bad.json.reason.json", b"first, not JSON")
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    drop(spool, "bad.json", b"second, not JSON")
    done = run_cli(root, "watch", "--once")
    assert done.returncode == 0, done.stderr
    rejected = spool / "rejected"
    contents = {p.read_bytes() for p in rejected.iterdir() if not p.name.startswith(".")}
    assert b"first, not JSON" in contents and b"second, not JSON" in contents, contents
    for p in rejected.iterdir():
        if p.name.endswith(".reason.json"):
            assert json.loads(p.read_bytes())["file"] in ("bad.json", "bad.json.reason.json")
            target = rejected / p.name.removesuffix(".reason.json")
            assert target.exists(), p.name


def test_valid_drops_never_depend_on_the_quarantine_folder(root: Path) -> None:
    spool = root / "spool"
    spool.mkdir()
    (spool / "rejected").write_bytes(b"a file where the folder should be")
    for i in range(5):
        drop(spool, f"d{i}.json", payload(i))
    drop(spool, "bad.json", b"not JSON")
    done = run_cli(root, "watch", "--once", "--retry-max", "0.5")
    assert len(versions(root)) == 5, done.stderr
    assert "cannot set aside bad.json" in done.stderr
    assert (spool / "bad.json").read_bytes() == b"not JSON"
    assert done.returncode == 1  # one drop could not be set aside, said so
    assert "ERROR 1 drop(s) could not be set aside" in done.stderr
    assert " INFO stopped: 5 ingested, 0 rejected, 1 waiting" in done.stderr.splitlines()[-1]


def test_a_running_watchers_rescans_never_depend_on_the_quarantine_folder(root: Path) -> None:
    with WatchProcess(root, "--rescan-interval", "0.2", global_args=("-v",)) as w:
        rejected = root / "spool" / "rejected"
        # Replaced as one step, the watcher held: a rescan (every 0.2 s) between the
        # removal and the file's making rightly makes the folder again, and the write
        # then fails (EISDIR).
        with w.held():
            shutil.rmtree(rejected)
            rejected.write_bytes(b"a file where the folder should be")
        mark = w.log.count("rescanned the spool (interval)")
        w.wait_log("rescanned the spool (interval)", count=mark + 2)
        drop(root / "spool", "a.json", payload(1))
        wait_for(lambda: versions(root), what="a valid drop stored")
        assert w.stop() == 0
    assert "cannot scan the spool" not in w.log, w.log


def test_the_quarantine_may_not_be_the_history(root: Path, tmp_path: Path) -> None:
    history = history_of(root)
    done = run_cli(root, "--rejected-dir", str(history), "status")
    assert done.returncode == 2 and "--rejected-dir" in done.stderr, done.stderr
    alias = tmp_path / "alias"
    history.mkdir()
    alias.symlink_to(history)
    done = run_cli(root, "--rejected-dir", str(alias), "status")
    assert done.returncode == 2 and "--rejected-dir" in done.stderr, done.stderr
    done = run_cli(root, "--spool-dir", str(alias / "spool"), "status")
    assert done.returncode == 2, done.stderr


# -- in-place writers the watcher cannot ask about -------------------------------------


SLOW_WRITER = 'exec 3>"$DROP"; printf %s "$HEAD" >&3; sleep "$PAUSE"; printf %s "$TAIL" >&3'


@contextlib.contextmanager
def slow_writer(path: Path, data: bytes, pause: float) -> Iterator[subprocess.Popen[bytes]]:
    """The scraper writing ``data`` into ``path`` in place: 60 bytes, ``pause`` seconds,
    the rest. Killed if still writing as the block ends, and waited for either way (a
    Popen never waited for warns in whichever test runs as it is collected)."""
    with subprocess.Popen(
        [
            SETPRIV or "setpriv",
            f"--reuid={SCRAPER_UID}",
            f"--regid={SPOOL_GID}",
            "--clear-groups",
            "--",
            "sh",
            "-c",
            "umask 027; " + SLOW_WRITER,
        ],
        env=cli_env(
            DROP=str(path), HEAD=data[:60].decode(), TAIL=data[60:].decode(), PAUSE=str(pause)
        ),
    ) as writer:
        try:
            yield writer
        finally:
            writer.kill()  # nothing if it has ended


@needs_two_users
@pytest.mark.parametrize("restart", [False, True])
def test_an_in_place_write_under_way_at_start_is_never_quarantined(
    open_root: Path, restart: bool
) -> None:
    root = open_root
    spool = two_user_spool(root)
    if restart:
        with NoLeaseWatch(root) as first:
            assert first.stop() == 0
    data = payload(1, pad="x" * 200)
    with slow_writer(spool / "slow.json", data, 4) as writer:
        head = spool / "slow.json"
        wait_for(lambda: head.exists() and head.stat().st_size == 60, what="first 60 bytes")
        with NoLeaseWatch(root) as w:
            assert writer.wait(timeout=30) == 0
            wait_for(lambda: stored_contents(root), timeout=20, what="the finished drop")
            assert w.stop() == 0
    assert stored_contents(root) == {data: 1}, w.log
    rejected = spool / "rejected"
    assert not rejected.exists() or os.listdir(rejected) == [], w.log


@needs_two_users
def test_a_slow_in_place_writer_is_not_taken_for_a_bad_drop(open_root: Path) -> None:
    """Its pause outlasts the stability window (here 10 x 0.1 s settle, 1 s rescan)."""
    root = open_root
    spool = two_user_spool(root)
    data = payload(2, pad="y" * 200)
    with NoLeaseWatch(root, "--settle", "0.1", "--rescan-interval", "1") as w:
        with slow_writer(spool / "slow.json", data, 4) as writer:
            assert writer.wait(timeout=30) == 0
        wait_for(lambda: stored_contents(root), timeout=20, what="the finished drop")
        assert w.stop() == 0
    assert stored_contents(root) == {data: 1}, w.log
    assert "rejected slow.json" not in w.log


def watch_once_without_lease(root: Path) -> subprocess.CompletedProcess[str]:
    """``watch --once`` as root without CAP_LEASE (as under systemd)."""
    cmd = ["--bounding-set", "-lease", "--inh-caps", "-lease", "--"]
    return subprocess.run(
        [SETPRIV or "setpriv", *cmd, *ingester_cmd(root, "watch", "--once", "--settle", "0")],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        check=False,
    )


def scrapers_drop(spool: Path, name: str, data: bytes, *, age_s: float) -> Path:
    """A drop of the scraper's, renamed in from ``tmp/``, last written ``age_s`` ago."""
    staged = spool / "tmp" / f".{name}.part"
    staged.parent.mkdir(exist_ok=True)
    staged.write_bytes(data)
    os.chown(staged, SCRAPER_UID, SPOOL_GID)
    then = time.time() - age_s
    os.utime(staged, (then, then))
    return staged.rename(spool / name)


@needs_two_users
def test_a_paused_writer_whose_mtimes_lag_our_clock_is_not_set_aside(open_root: Path) -> None:
    """No lease (the scraper's file, as under systemd): a writer pauses mid-file on a
    filesystem whose clock is 10 minutes behind the watcher's, so its mtime says 10
    minutes ago. Judged by stability alone it may be a writer's pause: it waits 5
    minutes from when the watcher first saw it, not from that mtime, and is stored
    whole once finished."""
    root = open_root
    spool = two_user_spool(root)
    data = payload(1, pad="x" * 200)
    with slow_writer(spool / "slow.json", data, 8) as writer:
        head = spool / "slow.json"
        wait_for(lambda: head.exists() and head.stat().st_size == 60, what="first 60 bytes")
        behind = time.time() - 600  # as the filesystem's clock stamps it
        os.utime(head, (behind, behind))
        with NoLeaseWatch(root, "--settle", "0.2") as w:
            assert writer.wait(timeout=30) == 0
            wait_for(
                lambda: stored_contents(root) or "rejected slow.json" in w.log,
                timeout=20,
                what="the finished drop stored (or set aside)",
            )
            assert w.stop() == 0
    assert "rejected slow.json" not in w.log, w.log
    assert stored_contents(root) == {data: 1}, w.log


@needs_two_users
def test_once_sets_aside_an_invalid_drop_of_the_scraper_last_written_long_ago(
    open_root: Path,
) -> None:
    """Without a lease, an invalid drop judged by stability alone may be a writer's
    pause, so it waits 300 s unchanged. One last written more than a day ago is no
    pause whatever the clocks: one written two days ago is set aside by ``watch
    --once`` (which never waits that long); one written just now is left, and the run
    says so and exits 1."""
    root = open_root
    spool = two_user_spool(root)
    scrapers_drop(spool, "old.json", b'{"bad": 1}', age_s=2 * 86400)
    done = watch_once_without_lease(root)
    assert done.returncode == 0, done.stderr
    assert (spool / "rejected" / "old.json").read_bytes() == b'{"bad": 1}'
    scrapers_drop(spool, "new.json", b'{"bad": 2}', age_s=0)
    done = watch_once_without_lease(root)
    assert done.returncode == 1, done.stderr
    assert (spool / "new.json").exists()
    assert (
        "1 drop(s) may still be written (open for writing, changing, or not valid yet): "
        "left in the spool for the next start" in done.stderr
    ), done.stderr
    assert "Traceback" not in done.stderr


# -- caches repaired while running; logs -----------------------------------------------


def test_a_running_watcher_repairs_deleted_caches(root: Path) -> None:
    with WatchProcess(root, "--rescan-interval", "0.3") as w:
        drop(root / "spool", "a.json", payload(1))
        wait_for(lambda: versions(root), what="stored")
        meta = history_of(root) / "_metadata.json"
        latest = root / "console-usage-synced.json"
        wait_for(lambda: meta.exists() and latest.exists(), what="caches written")
        meta.unlink()
        latest.unlink()
        wait_for(lambda: meta.exists() and os.path.lexists(latest), what="caches repaired")
        assert latest.read_bytes() == payload(1)
        assert json.loads(meta.read_bytes())["versionCount"] == 1
        assert w.stop() == 0


def test_a_fresh_idle_watcher_logs_no_repair_and_no_empty_cleanups(root: Path) -> None:
    with WatchProcess(root) as w:
        for i in range(3):
            drop(root / "spool", f"d{i}.json", payload(i))
            w.wait_log(f"ingested d{i}.json")
        assert w.stop() == 0
    assert "metadata rebuilt" not in w.log and "new history" in w.log, w.log
    assert "cleanup deleted 0" not in w.log, w.log


# -- retention under a wall-clock jump ------------------------------------------------------


def test_a_forward_clock_jump_holds_automatic_deletions_back(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The watcher in this process, its wall clock injected: stepped 10 days forward."""
    caplog.set_level(logging.INFO, logger="ingester")
    settings = resolve_settings({"root": str(root)}, environ={}, cwd=root)
    start = datetime.now(UTC)
    shift = {"s": 0.0}

    def wall() -> float:
        return time.time() + shift["s"]

    def utc() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=shift["s"])

    store = HistoryStore(settings.history_dir, settings.latest_path, clock=lambda: start)
    store.initialize()
    for i in range(105):
        store.save_version(payload(i))
    meta_path = settings.history_dir / "_metadata.json"

    def meta() -> dict[str, object]:
        try:
            loaded: dict[str, object] = json.loads(meta_path.read_bytes())
        except (OSError, ValueError):
            return {}
        return loaded

    assert meta()["lastCleanup"] is None
    watcher = Watcher(settings, WatchOptions(rescan_interval=0.2))
    watcher.store.clock = utc
    watcher.clock_jump.wall = wall
    runner = threading.Thread(target=watcher.run)
    runner.start()
    try:
        # Its first cleanup (nothing to delete yet) is its first look at the clock.
        wait_for(lambda: meta().get("lastCleanup"), what="the first cleanup")
        shift["s"] = 10 * 86400.0
        drop(settings.spool_dir, "new.json", payload(1000))
        wait_for(lambda: meta().get("totalVersionsCreated") == 106, what="a cleanup after it")
    finally:
        watcher.request_stop()
        runner.join(timeout=10)
    assert meta()["versionCount"] == 106 and len(versions(root)) == 106
    assert "wall clock jumped" in caplog.text
    # An operator's explicit cleanup applies the rule as written.
    later = HistoryStore(settings.history_dir, settings.latest_path, clock=utc)
    assert len(later.cleanup_old_versions().deleted) == 6
