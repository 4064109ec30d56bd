"""The history lock seen from the CLI: nothing blocks while holding it, status names the
command that holds it, and a lock file made by root stays usable by the service."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import SAMPLES, run_cli, wait_for
from support.capabilities import OTHER_UID, others_folder, run_as_other
from support.watchproc import WatchProcess, drop, payload, versions
from test_cli_errors import WHY_NOT

from ingester.history.lock import HistoryLock

HISTORY = "console-usage-history"
SAMPLE = SAMPLES / "valid" / "full.json"


@pytest.mark.parametrize(
    "command", [("init",), ("verify", "--repair"), ("ingest", str(SAMPLE))], ids=" ".join
)
def test_a_writing_command_on_another_history_is_refused_the_latest_link_a_watcher_keeps(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """A running watcher keeps its history's latest link; a writing command run on
    another history given the same --latest-path is refused (exit 1, one line naming
    the watcher) before it touches anything: it would remove that link (its own history
    has no version to point at) or re-point it at its own versions. The link stays."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    latest = tmp_path / "shared-latest.json"
    shared = ("--latest-path", str(latest))
    with WatchProcess(first, global_args=shared) as w:
        drop(first / "spool", "one.json", payload(1))
        wait_for(lambda: len(versions(first)) == 1 and latest.exists(), 10, "the link")
        target = os.readlink(latest)
        assert run_cli(second, "init").returncode == 0  # with a latest link of its own
        done = run_cli(second, *shared, *command)
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr.strip() == (
            f"error: the latest link {latest} is kept by pid {w.proc.pid} watch, for "
            f"another history ({tmp_path / '.shared-latest.json.lock'}); give each history "
            "its own --latest-path"
        ), done.stderr
        assert os.readlink(latest) == target
        assert versions(second) == []
        assert w.stop() == 0, w.log


def test_a_link_into_the_history_of_a_running_watcher_is_not_removed_as_gone(
    tmp_path: Path,
) -> None:
    """A latest link that points into another history whose watcher runs (made by hand,
    or by a version of this tool without the latest link's lock) is that watcher's, not
    a link to a version that is gone: a repair of an empty history given it leaves it."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    with WatchProcess(first) as w:
        drop(first / "spool", "one.json", payload(1))
        wait_for(lambda: (first / "console-usage-synced.json").exists(), 10, "the link")
        shared = second / "elsewhere.json"
        shared.symlink_to(
            os.readlink(first / "console-usage-synced.json").replace(
                "console-usage-history", str(first / "console-usage-history"), 1
            )
        )
        assert run_cli(second, "init").returncode == 0
        done = run_cli(second, "--latest-path", str(shared), "verify", "--repair")
        assert done.returncode == 0, done.stdout + done.stderr
        assert shared.is_symlink() and shared.read_bytes() == payload(1)
        assert w.stop() == 0, w.log


def test_ingest_refuses_a_fifo_without_blocking(root: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "some.fifo"
    os.mkfifo(fifo)
    # No writer ever opens the FIFO: a blocking read would hang here, holding the lock.
    result = run_cli(root, "ingest", str(fifo), str(SAMPLE), timeout=30)
    assert result.returncode == 1, result.stderr
    assert f"rejected {fifo}: a FIFO, not a regular file" in result.stdout
    assert f"stored {SAMPLE}" in result.stdout
    assert "Traceback" not in result.stderr


def test_ingest_refuses_a_folder_and_a_device(root: Path, tmp_path: Path) -> None:
    result = run_cli(root, "ingest", str(tmp_path), "/dev/zero", timeout=30)
    assert result.returncode == 1
    assert f"rejected {tmp_path}: a folder, not a regular file" in result.stdout
    assert "rejected /dev/zero: a character device, not a regular file" in result.stdout


@pytest.mark.parametrize(
    ("command", "advice"),
    [
        (("ingest", str(SAMPLE)), "; use 'ingester submit' to hand a watcher drops"),
        (("cleanup",), "; nothing was done; a running watcher applies retention itself"),
        (("verify", "--repair"), "; nothing was done; run verify --repair again once that"),
        (("adopt",), "; nothing was done; run adopt again once that process has stopped"),
    ],
    ids=lambda v: v[0] if isinstance(v, tuple) else "",
)
def test_a_writing_command_refused_by_the_lock_says_what_to_do(
    root: Path, command: tuple[str, ...], advice: str
) -> None:
    assert run_cli(root, "ingest", str(SAMPLE)).returncode == 0  # adopt wants a version
    with HistoryLock(root / HISTORY / ".lock", "serve --watch"):
        done = run_cli(root, *command)
    assert done.returncode == 1, done.stderr
    line = f"error: the history is locked by pid {os.getpid()} serve --watch"
    assert done.stderr.startswith(line) and advice in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize("command", ["ingest", "cleanup", "verify --repair"])
def test_status_names_the_command_that_holds_the_lock(root: Path, command: str) -> None:
    assert run_cli(root, "init").returncode == 0
    with HistoryLock(root / HISTORY / ".lock", command):
        report = json.loads(run_cli(root, "status", "--json").stdout)
        assert report["watcher"] == {
            "running": False,
            "pid": None,
            "otherSpool": False,
            "problem": None,
        }
        assert report["lock"] == {"held": True, "pid": os.getpid(), "command": command}
        text = run_cli(root, "status").stdout
        assert f"not running; history locked by '{command}' (pid {os.getpid()})" in text
        refused = run_cli(root, "watch", "--once")
        assert refused.returncode == 1
        assert f"pid {os.getpid()} {command}" in refused.stderr
    with (
        HistoryLock(root / HISTORY / ".lock", "watch"),
        HistoryLock(root / "spool" / ".lock", "watch", what="spool"),
    ):
        report = json.loads(run_cli(root, "status", "--json").stdout)
        assert report["watcher"] == {
            "running": True,
            "pid": os.getpid(),
            "otherSpool": False,
            "problem": None,
        }
        assert report["lock"]["command"] == "watch"
    # A watcher of the history that reads another spool: drops here wait.
    with HistoryLock(root / HISTORY / ".lock", "watch"):
        report = json.loads(run_cli(root, "status", "--json").stdout)
        assert report["watcher"] == {
            "running": False,
            "pid": None,
            "otherSpool": True,
            "problem": None,
        }
        text = run_cli(root, "status").stdout
        assert (
            f"not running on this spool; pid {os.getpid()} (watch) holds the history but "
            "reads another spool"
        ) in text
    # A holder that left no note: nothing says it is a watcher, nor of which spool.
    (root / HISTORY / ".lock").write_text("")
    with open(root / HISTORY / ".lock", "rb") as bare:
        fcntl.flock(bare, fcntl.LOCK_EX)
        text = run_cli(root, "status").stdout
        assert (
            f"not running on this spool; pid {os.getpid()} holds the history (it left no "
            "note saying what it is) but not this spool's lock"
        ) in text
    report = json.loads(run_cli(root, "status", "--json").stdout)
    assert report["lock"] == {"held": False, "pid": None, "command": None}


@pytest.fixture
def service_state() -> Iterator[Path]:
    """A state folder owned by the service's user, as systemd's StateDirectory makes it."""
    with others_folder("ingester-state-", "state") as state:
        yield state


def owner(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_init_as_root_keeps_the_state_folder_usable_by_the_service(service_state: Path) -> None:
    result = run_cli(service_state, "init")
    assert result.returncode == 0, result.stderr
    for path in ("spool", "spool/tmp", "spool/rejected", HISTORY, f"{HISTORY}/.lock"):
        assert owner(service_state / path) == (OTHER_UID, OTHER_UID), path

    # The service, as its own user, starts and ingests.
    shutil.copy(SAMPLE, service_state / "spool" / "drop.json")
    os.chown(service_state / "spool" / "drop.json", OTHER_UID, OTHER_UID)
    served = run_as_other(service_state, "watch", "--once")
    assert served.returncode == 0, served.stderr
    assert "ingested drop.json" in served.stderr


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_a_writing_command_as_root_leaves_the_lock_to_the_history_owner(
    service_state: Path,
) -> None:
    history = service_state / HISTORY
    history.mkdir()
    os.chown(history, OTHER_UID, OTHER_UID)
    result = run_cli(service_state, "ingest", str(SAMPLE))
    assert result.returncode == 0, result.stderr
    assert owner(history / ".lock") == (OTHER_UID, OTHER_UID)


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
@pytest.mark.parametrize("command", [("cleanup",), ("verify", "--repair")], ids=" ".join)
def test_a_writing_command_run_by_another_user_is_told_whose_history_it_is(
    command: tuple[str, ...],
) -> None:
    """A reader (or a login user beside the service) runs a writing command: the lock
    refuses it, and the fix is to run it as the history's owner, not to change modes."""
    with others_folder("ingester-lock-") as theirs:
        base = theirs.parent  # root's own, and every user may enter it
        _refused_as_other(base / "mine", command)


def _refused_as_other(root: Path, command: tuple[str, ...]) -> None:
    assert run_cli(root, "init").returncode == 0
    assert run_cli(root, "ingest", str(SAMPLE)).returncode == 0
    done = run_as_other(root, *command)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("error: cannot open lock file"), done.stderr
    assert (
        "(nothing was done; the history belongs to root (uid 0): run this command as that "
        "user (runuser -u root -- ingester ...))" in done.stderr
    ), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
