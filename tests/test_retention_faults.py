"""Retention past a version it cannot delete: the store, ``cleanup`` and the watcher.

An expired version made immutable (``chattr +i``, which stops an unlink even for root)
must be kept, and every other expired version still deleted: one stuck file may not
keep the newer expired versions with it. Runs only where ``chattr +i`` works.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import run_cli, wait_for
from support.capabilities import fill, tmpfs
from support.watchproc import WatchProcess, drop, payload

from ingester import CleanupIncomplete, HistoryStore, RetentionPolicy

OLD = 6  # expired versions, a month old
POLICY = ("--max-versions", "2", "--retention-days", "1")


def _chattr(flag: str, path: Path) -> None:
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def immutable_files(*paths: Path) -> Iterator[None]:
    try:
        for path in paths:
            _chattr("+i", path)
        yield
    finally:
        for path in paths:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)


def old_history(root: Path) -> list[Path]:
    """``OLD`` expired versions and two recent ones in ``root``'s history, oldest first."""
    history = root / "console-usage-history"
    history.mkdir(parents=True)
    start = datetime.now(UTC) - timedelta(days=30)
    paths = []
    for i in range(OLD):
        name = f"{start + timedelta(minutes=i):%Y-%m-%dT%H-%M-%S}-old{i}.json"
        paths.append(history / name)
    now = datetime.now(UTC)
    for i in range(2):
        name = f"{now - timedelta(minutes=2 - i):%Y-%m-%dT%H-%M-%S}-new{i}.json"
        paths.append(history / name)
    for seq, path in enumerate(paths):
        path.write_bytes(payload(seq))
    return paths


def retention_store(root: Path) -> HistoryStore:
    """The store of ``root``'s history under the policy the CLI gets from ``POLICY``."""
    return HistoryStore(
        root / "console-usage-history",
        root / "console-usage-synced.json",
        RetentionPolicy(max_versions=2, retention_days=1),
        hold=None,
    )


def left(root: Path) -> list[str]:
    history = root / "console-usage-history"
    return sorted(p.name for p in history.iterdir() if p.name[:1].isdigit())


@pytest.mark.parametrize("stuck", [0, 2, OLD - 1], ids=["oldest", "middle", "newest-expired"])
def test_store_deletes_every_other_expired_version(
    root: Path, can_chattr: None, stuck: int
) -> None:
    paths = old_history(root)
    store = retention_store(root)
    store.initialize()
    with immutable_files(paths[stuck]):
        with pytest.raises(CleanupIncomplete) as caught:
            store.cleanup_old_versions()
        assert left(root) == sorted([paths[stuck].name, paths[-2].name, paths[-1].name])
        error = caught.value
        assert [f.path.name for f in error.failures] == [paths[stuck].name]
        assert len(error.result.deleted) == OLD - 1
        assert error.result.retained == 3
        assert str(error).startswith(
            f"could not delete 1 of {OLD} expired versions (the other {OLD - 1} are deleted): "
            f"cannot remove {paths[stuck]}: "
        )
        assert str(error).endswith("[EPERM]")
        meta = json.loads((root / "console-usage-history" / "_metadata.json").read_bytes())
        assert meta["versionCount"] == 3
        assert meta["totalVersionsDeleted"] == OLD - 1
        # The store's own view agrees with the folder: a new version lands after the rest.
        store.save_version(payload(99))
        assert len(store.list_versions()) == 4
    assert store.cleanup_old_versions().deleted == [paths[stuck].name]
    assert paths[stuck].name not in left(root)


def test_store_says_none_deleted_when_none_could_be(root: Path, can_chattr: None) -> None:
    paths = old_history(root)
    store = retention_store(root)
    store.initialize()
    with immutable_files(*paths[:OLD]), pytest.raises(CleanupIncomplete) as caught:
        store.cleanup_old_versions()
    assert str(caught.value).startswith(f"could not delete {OLD} expired versions: cannot remove ")
    assert len(caught.value.failures) == OLD


def test_store_says_one_other_deleted_in_the_singular(root: Path, can_chattr: None) -> None:
    paths = old_history(root)
    store = retention_store(root)
    store.initialize()
    with immutable_files(*paths[1:OLD]), pytest.raises(CleanupIncomplete) as caught:
        store.cleanup_old_versions()
    assert str(caught.value).startswith(
        f"could not delete {OLD - 1} of {OLD} expired versions (the other one is deleted): "
        f"cannot remove {paths[1]}: "
    )


def test_writers_on_a_history_that_refuses_every_write_say_it_in_one_line(
    root: Path, tmp_path: Path, can_chattr: None
) -> None:
    """The history folder immutable, its metadata to be rebuilt: the cache that cannot be
    repaired and the command's failure are one fault, said once (not a warning and then
    the same words as an error)."""
    old_history(root)
    assert run_cli(root, *POLICY, "init").returncode == 0
    (root / "console-usage-history" / "_metadata.json").unlink()
    extra = tmp_path / "extra.json"
    extra.write_bytes(payload(99))
    with immutable_files(root / "console-usage-history"):
        for args in (("cleanup",), ("cleanup", "--json"), ("ingest", str(extra))):
            done = run_cli(root, *POLICY, *args)
            assert done.returncode == 1, done.stderr
            lines = done.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (args, done.stderr)
            assert "[EPERM]" in lines[0], done.stderr


def test_cleanup_command_reports_what_it_did_and_what_it_could_not(
    root: Path, can_chattr: None
) -> None:
    paths = old_history(root)
    assert run_cli(root, *POLICY, "init").returncode == 0
    with immutable_files(paths[1]):
        done = run_cli(root, *POLICY, "cleanup")
        assert done.returncode == 1, done.stderr
        assert done.stdout.splitlines()[0] == f"cleanup deleted {OLD - 1}, retained 3"
        errors = done.stderr.strip().splitlines()
        assert len(errors) == 1, done.stderr
        assert errors[0].startswith(
            f"error: could not delete 1 of {OLD} expired versions "
            f"(the other {OLD - 1} are deleted): cannot remove {paths[1]}: "
        )
        assert "Traceback" not in done.stderr
        again = run_cli(root, *POLICY, "cleanup", "--json")
        assert again.returncode == 1, again.stderr
        answer = json.loads(again.stdout)
        assert answer["deleted"] == []
        assert answer["notDeleted"] == [paths[1].name]
        assert answer["retained"] == 3
        assert again.stderr.startswith("error: could not delete 1 expired version: ")
    done = run_cli(root, *POLICY, "cleanup", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["deleted"] == [paths[1].name]
    assert json.loads(done.stdout)["notDeleted"] == []


def test_watcher_applies_retention_past_a_stuck_version(root: Path, can_chattr: None) -> None:
    paths = old_history(root)
    stuck = paths[0]
    with contextlib.ExitStack() as stack:
        stack.enter_context(immutable_files(stuck))
        watcher = stack.enter_context(WatchProcess(root, "--retry-max", "0.5", global_args=POLICY))
        # The other expired versions go although the oldest cannot: the two recent
        # ones are kept (within the days), with the stuck one.
        wait_for(lambda: len(left(root)) == 3, 30, f"retention past {stuck.name}: {left(root)}")
        assert left(root) == sorted([stuck.name, paths[-2].name, paths[-1].name])
        said = "could not delete 1 of"
        wait_for(lambda: said in watcher.log, 30, "the watcher names the stuck one")
        # Each drop tries it again; the same stuck version is said once, not at each try
        # (nor on a retry timer: --retry-max 0.5 would say it twice a second).
        for n in range(3):
            drop(root / "spool", f"fresh{n}.json", payload(1000 + n))
            wait_for(lambda n=n: f"ingested fresh{n}.json" in watcher.log, 30, "stored")
        lines = [ln for ln in watcher.log.splitlines() if "could not delete" in ln]
        assert len(lines) == 1, lines
        assert lines[0].split(" ERROR ", 1)[1] == (
            f"retention: could not delete 1 of {OLD} expired versions (the other {OLD - 1} "
            f"are deleted): cannot remove {stuck}: Operation not permitted: it is immutable "
            f"(chattr -i {stuck} clears that) [EPERM]; tried again with the next drops (said "
            "again when it changes, or in an hour)"
        )
        _chattr("-i", stuck)
        # Healed: the next drop's retention deletes it.
        drop(root / "spool", "after.json", payload(2000))
        wait_for(lambda: stuck.name not in left(root), 30, "the stuck version deleted once healed")
        assert watcher.stop() == 0, watcher.log
    assert stuck.name not in left(root)


@contextlib.contextmanager
def attribute(flag: str, path: Path) -> Iterator[None]:
    """``chattr +FLAG path`` for the block (undone however it ends)."""
    _chattr(f"+{flag}", path)
    try:
        yield
    finally:
        subprocess.run(["chattr", f"-{flag}", str(path)], capture_output=True, check=False)


# What is given the attribute, which one, the command run, and the write refused: its
# action and the file it names. The holder is that file itself, or else its folder.
REFUSALS = {
    "version-immutable": ("old1", "i", "cleanup", "remove", "old1"),
    "version-append-only": ("old1", "a", "cleanup", "remove", "old1"),
    "history-immutable": ("history", "i", "cleanup", "create", "meta"),
    "metadata-immutable": ("meta", "i", "cleanup", "replace", "meta"),
    "root-immutable": ("root", "i", "ingest", "create", "latest"),
}
WORDS = {"i": "immutable", "a": "append-only"}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_history_write_refused_by_an_attribute_names_it_and_the_chattr_that_clears_it(
    root: Path, tmp_path: Path, can_chattr: None, case: str
) -> None:
    """An immutable or append-only file or folder refuses every change, root's too
    (EPERM): the one line names which one holds the attribute, and the command that
    clears it, whichever write of the history it stops (retention's delete, the
    metadata, the latest link)."""
    paths = old_history(root)
    assert run_cli(root, *POLICY, "init").returncode == 0
    history = root / "console-usage-history"
    meta = history / "_metadata.json"
    places = {
        "old1": paths[1],
        "history": history,
        "meta": meta,
        "root": root,
        "latest": root / "console-usage-synced.json",
    }
    target, flag, command, action, named = REFUSALS[case]
    if target == "history":
        meta.unlink()  # rebuilt by the next writer: a write into the folder
    extra = tmp_path / "extra.json"
    extra.write_bytes(payload(99))
    args = ("ingest", str(extra)) if command == "ingest" else (command,)
    with attribute(flag, places[target]):
        done = run_cli(root, *POLICY, *args)
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith(("error:", "warning:"))]
    assert len(lines) == 1, done.stderr
    holder = places[target]
    subject = "it" if target == named else f"its folder {holder}"
    assert lines[0].endswith(
        f"cannot {action} {places[named]}: Operation not permitted: {subject} is "
        f"{WORDS[flag]} (chattr -{flag} {holder} clears that) [EPERM]"
    ), done.stderr


def test_a_refusal_said_again_by_another_step_names_its_attribute_once(
    tmp_path: Path, can_chattr: None
) -> None:
    """A storage error made from one that names the attribute already (a step that
    wraps another's failure) keeps those words, and does not add them a second time."""
    from ingester.errors import StorageError

    stuck = tmp_path / "stuck.json"
    stuck.write_bytes(b"{}")
    with attribute("i", stuck), pytest.raises(OSError) as caught:
        stuck.unlink()
    with attribute("i", stuck):
        first = StorageError("remove", stuck, caught.value)
        again = StorageError("chmod", stuck, first)
    words = f"Operation not permitted: it is immutable (chattr -i {stuck} clears that)"
    assert str(first) == f"cannot remove {stuck}: {words} [EPERM]"
    assert str(again) == f"cannot chmod {stuck}: {words} [EPERM]"
    assert again.refused_by == (stuck, "immutable", "chattr -i")
    # Without the attribute, the kernel's words are all there is to say.
    assert str(StorageError("remove", stuck, caught.value)).endswith(
        ": Operation not permitted [EPERM]"
    )


def test_a_cleanup_whose_metadata_cannot_be_written_says_what_it_deleted(
    tmp_path: Path, can_mount: None
) -> None:
    """A full disk where the deletions free nothing (each expired version has a second
    name: a snapshot on the same filesystem): the versions are deleted, the metadata that
    counts them cannot be written. The one line says both, not the failed write alone,
    which would read as if nothing had been done."""
    with tmpfs(tmp_path / "fs", size="1m") as fs:
        root = fs / "root"
        paths = old_history(root)
        for path in paths:
            path.chmod(0o444)  # as stored: a snapshot then links them, never copies
        assert run_cli(root, *POLICY, "init").returncode == 0
        assert run_cli(root, "snapshot", str(fs / "snap")).returncode == 0
        filler = fill(fs)
        done = run_cli(root, *POLICY, "cleanup")
        filler.unlink()
        assert sorted(left(root)) == sorted(p.name for p in paths[OLD:])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    errors = done.stderr.splitlines()
    assert len(errors) == 1, done.stderr
    meta = root / "console-usage-history" / "_metadata.json"
    assert errors[0].startswith(
        f"error: {OLD} expired versions were deleted, but the metadata that counts them "
        f"could not be written: cannot "
    ), errors[0]
    assert f" {meta}: No space left on device [ENOSPC]" in errors[0], errors[0]
