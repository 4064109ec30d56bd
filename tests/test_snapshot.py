"""``ingester snapshot``: a consistent point-in-time copy, as a folder or a tar stream."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import IS_ROOT, VALID_SAMPLES, cli_env, run_cli, run_command, wait_for
from support.capabilities import (
    STRACE,
    needs_strace,
    other_user_problem,
    others_folder,
    run_as_other,
    run_held_after,
    traced_program,
)
from support.process import kill_group

from ingester.ops.snapshot import build_snapshot_tree, list_versions_once

HISTORY = "console-usage-history"
LATEST = "console-usage-synced.json"


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def history(root: Path) -> list[str]:
    """The valid samples ingested; the version names, oldest first."""
    ok(run_cli(root, "ingest", *map(str, VALID_SAMPLES)))
    return list_versions_once(root / HISTORY)


def _one_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0]


def test_snapshot_is_a_root_that_verifies_and_shares_the_version_inodes(
    root: Path, history: list[str], tmp_path: Path
) -> None:
    dest = tmp_path / "backups" / "snap"
    out = ok(run_cli(root, "snapshot", str(dest))).stdout
    assert f"{len(history)} version(s) ({len(history)} linked, 0 copied)" in out
    ok(run_cli(dest, "verify"))
    assert sorted(p.name for p in (dest / HISTORY).glob("2*.json")) == history
    for name in history:
        assert (dest / HISTORY / name).stat().st_ino == (root / HISTORY / name).stat().st_ino
    assert os.readlink(dest / LATEST) == f"{HISTORY}/{history[-1]}"
    meta = json.loads((dest / HISTORY / "_metadata.json").read_bytes())
    live = json.loads((root / HISTORY / "_metadata.json").read_bytes())
    assert meta["versionCount"] == len(history)
    assert meta["latestVersion"] == history[-1]
    assert meta["totalVersionsCreated"] == live["totalVersionsCreated"]
    assert meta["lastCleanup"] == live["lastCleanup"]
    # Nothing of the live history came along: no lock, no temp files; no temp folder left.
    assert not (dest / HISTORY / ".lock").exists()
    assert [p.name for p in dest.parent.iterdir()] == ["snap"]


def test_snapshot_never_replaces_anything(root: Path, history: list[str], tmp_path: Path) -> None:
    dest = tmp_path / "snap"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    _one_error(run_cli(root, "snapshot", str(dest)), "already exists")
    assert [p.name for p in dest.iterdir()] == ["keep"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_snapshot_refuses_a_destination_inside_the_history_or_spool(
    root: Path, history: list[str]
) -> None:
    _one_error(run_cli(root, "snapshot", str(root / HISTORY / "snap")), "inside the history")
    _one_error(run_cli(root, "snapshot", str(root / "spool" / "snap")), "inside the spool")


@pytest.mark.parametrize(
    "where",
    [f"{HISTORY}/x.tar", "spool/x.json", "spool/rejected/x.tar", "to-spool/x.json"],
)
def test_a_tar_file_is_refused_where_the_folder_form_is(
    root: Path, history: list[str], where: str
) -> None:
    """A tar in the spool would be taken for a drop (and rejected as not JSON), one in
    the history would sit among the versions: the stream form is held to the folder
    form's rule, also through a symlink."""
    (root / "spool" / "rejected").mkdir(parents=True, exist_ok=True)
    (root / "to-spool").symlink_to("spool")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    folder = "history" if where.startswith(HISTORY) else "spool"
    _one_error(run_cli(root, "snapshot", "--tar", str(root / where)), f"inside the {folder}")
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_snapshot_without_a_history_says_so(root: Path, tmp_path: Path) -> None:
    _one_error(run_cli(root, "snapshot", str(tmp_path / "snap")), "no history", "ingester init")
    assert not (tmp_path / "snap").exists()


def test_a_version_deleted_after_the_listing_is_left_out_and_the_rest_agrees(
    root: Path, history: list[str], tmp_path: Path
) -> None:
    # The listing holds a version that retention removes before it is linked (here: the
    # newest, the worst case for the latest link).
    gone = history[-1]
    listing = list(history)
    (root / HISTORY / gone).unlink()
    tree = tmp_path / "tree"
    tree.mkdir()
    result = build_snapshot_tree(root / HISTORY, tree, listing)
    assert result.vanished == 1
    assert result.versions == history[:-1]
    assert result.latest == history[-2]
    assert os.readlink(tree / LATEST) == f"{HISTORY}/{history[-2]}"
    meta = json.loads((tree / HISTORY / "_metadata.json").read_bytes())
    assert meta["versionCount"] == len(history) - 1
    assert meta["latestVersion"] == history[-2]
    ok(run_cli(tree, "verify"))


@pytest.mark.skipif(not IS_ROOT, reason="chattr +i needs root")
def test_a_version_that_cannot_be_linked_is_copied_alone(
    root: Path, history: list[str], tmp_path: Path
) -> None:
    """A version made immutable (``chattr +i``) cannot be hard-linked (EPERM): it alone
    is copied, and every other version is still linked, sharing its inode."""
    live = root / HISTORY
    oldest = live / history[0]
    done = subprocess.run(["chattr", "+i", str(oldest)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {done.stderr.decode().strip()}")
    try:
        result = run_cli(root, "snapshot", str(tmp_path / "snap"))
    finally:
        subprocess.run(["chattr", "-i", str(oldest)], check=True)
    assert f"({len(history) - 1} linked, 1 copied)" in ok(result).stdout, result.stdout
    taken = tmp_path / "snap" / HISTORY
    assert not (taken / history[0]).samefile(oldest)
    assert all((taken / name).samefile(live / name) for name in history[1:])
    ok(run_cli(tmp_path / "snap", "verify"))


def test_copy_mode_copies_bytes_and_modes(root: Path, history: list[str], tmp_path: Path) -> None:
    dest = tmp_path / "snap"
    out = ok(run_cli(root, "snapshot", "--copy", str(dest))).stdout
    assert f"(0 linked, {len(history)} copied)" in out
    for name in history:
        copy, live = dest / HISTORY / name, root / HISTORY / name
        assert copy.stat().st_ino != live.stat().st_ino
        assert copy.read_bytes() == live.read_bytes()
        assert copy.stat().st_mode == live.stat().st_mode
    ok(run_cli(dest, "verify"))


@pytest.mark.parametrize("form", ["link", "copy", "tar"])
def test_a_writable_live_version_is_taken_read_only_and_the_snapshot_verifies(
    root: Path, history: list[str], tmp_path: Path, form: str
) -> None:
    """A live version left writable (copied or restored without its mode) is taken as a
    read-only copy, by every form (a hard link would share its writable inode): the
    snapshot, or the extracted tar, passes ``verify`` as the help promises, and the
    live file is not touched."""
    live = root / HISTORY / history[0]
    live.chmod(0o644)
    dest = tmp_path / "snap"
    if form == "tar":
        archive = tmp_path / "snap.tar"
        ok(run_cli(root, "snapshot", "--tar", str(archive)))
        dest.mkdir()
        subprocess.run(["tar", "-xf", str(archive), "-C", str(dest)], check=True)
    else:
        ok(run_cli(root, "snapshot", *(["--copy"] if form == "copy" else []), str(dest)))
    taken = dest / HISTORY / history[0]
    assert taken.stat().st_mode & 0o222 == 0
    assert taken.read_bytes() == live.read_bytes()
    assert taken.stat().st_ino != live.stat().st_ino
    assert live.stat().st_mode & 0o777 == 0o644
    ok(run_cli(dest, "verify"))
    if form == "link":  # the others, read-only already, are still linked
        second = dest / HISTORY / history[1]
        assert second.stat().st_ino == (root / HISTORY / history[1]).stat().st_ino


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")
def test_copy_mode_streams_a_file_larger_than_the_memory_it_may_use(
    root: Path, history: list[str], tmp_path: Path
) -> None:
    # A file under a version's name far larger than any drop (put there by hand): a
    # backup takes the history as it is, a chunk at a time, as a hard link would.
    size = 768 << 20
    huge = root / HISTORY / "2026-01-01T00-00-00-deadbeef.json"
    with huge.open("wb") as handle:
        handle.truncate(size)  # sparse here; the copy is not
    huge.chmod(0o444)
    dest = tmp_path / "snap"
    result = run_cli(
        root, "snapshot", "--copy", str(dest), wrapper=("prlimit", f"--as={1 << 30}", "--")
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert f"(0 linked, {len(history) + 1} copied)" in ok(result).stdout
    assert (dest / HISTORY / huge.name).stat().st_size == size
    for name in history:
        assert (dest / HISTORY / name).read_bytes() == (root / HISTORY / name).read_bytes()


def test_tar_stream_extracts_to_a_root_that_verifies(
    root: Path, history: list[str], tmp_path: Path
) -> None:
    archive = tmp_path / "snap.tar"
    with archive.open("wb") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "ingester", "--root", str(root), "snapshot", "--tar", "-"],
            stdout=out,
            stderr=subprocess.PIPE,
            env=cli_env(),
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    names = subprocess.run(
        ["tar", "-tf", str(archive)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert names == [
        f"{HISTORY}/",
        *(f"{HISTORY}/{n}" for n in history),
        f"{HISTORY}/_metadata.json",
        LATEST,
    ]
    restored = tmp_path / "restored"
    restored.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(restored)], check=True)
    ok(run_cli(restored, "verify"))
    assert os.readlink(restored / LATEST) == f"{HISTORY}/{history[-1]}"


def test_tar_to_a_file_refuses_an_existing_file(
    root: Path, history: list[str], tmp_path: Path
) -> None:
    target = tmp_path / "exists.tar"
    target.write_text("mine")
    _one_error(run_cli(root, "snapshot", "--tar", str(target)), "already exists")
    assert target.read_text() == "mine"


def test_tar_to_a_file_under_a_file_names_the_file_in_the_way(
    root: Path, history: list[str], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    target = blocker / "deeper" / "snap.tar"
    _one_error(
        run_cli(root, "snapshot", "--tar", str(target)),
        f"cannot create folder {blocker}: exists and is not a folder [ENOTDIR]",
    )
    assert blocker.read_text() == "mine"


def test_tar_to_a_file_makes_the_missing_folders_above_it(
    root: Path, history: list[str], tmp_path: Path
) -> None:
    """As for the folder form, missing folders above ``--tar FILE`` are made (as
    ``mkdir -p``), and the archive extracts to a root that verifies."""
    target = tmp_path / "backups" / "new" / "usage.tar"
    ok(run_cli(root, "snapshot", "--tar", str(target)))
    assert target.is_file()
    assert [p.name for p in target.parent.iterdir()] == ["usage.tar"]
    restored = tmp_path / "restored"
    restored.mkdir()
    subprocess.run(["tar", "-xf", str(target), "-C", str(restored)], check=True)
    ok(run_cli(restored, "verify"))


def test_a_tar_snapshot_stopped_midway_leaves_nothing_under_its_name(
    root: Path, tmp_path: Path
) -> None:
    # Enough versions that the run is still building when it is stopped.
    history_dir = root / HISTORY
    history_dir.mkdir()
    data = VALID_SAMPLES[0].read_bytes()
    for i in range(3000):
        (history_dir / f"2026-01-01T00-{i // 60:02d}-{i % 60:02d}-{i:08x}.json").write_bytes(data)
    ok(run_cli(root, "init"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    target = out / "snap.tar"
    # As a context manager, Popen closes its pipe however the block ends.
    with subprocess.Popen(
        [sys.executable, "-m", "ingester", "--root", str(root), "snapshot", "--tar", str(target)],
        env={**cli_env(), "TMPDIR": str(scratch)},
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            wait_for(lambda: any(out.iterdir()), 30, "the archive begun under a temp name")
            assert not target.exists()  # never its own name while it is written
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    # Stopped, it removed what it made: no archive, no temp name, no scratch tree.
    assert list(out.iterdir()) == [] and list(scratch.iterdir()) == []


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("form", ["folder", "tar"])
def test_a_snapshot_killed_midway_leaves_only_its_temp_names_and_the_next_one_is_whole(
    root: Path, history: list[str], tmp_path: Path, form: str
) -> None:
    """What docs/backup.md says a ``kill -9`` leaves: nothing under DEST's name; the
    ``.tmp-snapshot-*`` folder beside DEST (folder form), or the ``.tmp-out-*`` file
    beside FILE and the scratch folder in $TMPDIR (``--tar FILE``). The next run never
    takes them for its own: it removes them (no process holds them), says so, and its
    snapshot is whole. The kill lands on the second version's hard link (strace
    ``signal=SIGKILL``)."""
    out = tmp_path / "out"
    out.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    dest = out / ("snap.tar" if form == "tar" else "snap")
    args = ["snapshot", *(["--tar"] if form == "tar" else []), str(dest)]
    kill = ("-e", "trace=link", "-e", "inject=link:signal=SIGKILL:when=2")
    killed = run_cli(
        root, *args, wrapper=("strace", "-f", "-qq", "-o", os.devnull, *kill), TMPDIR=str(scratch)
    )
    assert killed.returncode != 0, killed.stdout + killed.stderr
    assert not dest.exists()
    left = sorted(p.name for p in out.iterdir())
    if form == "tar":
        assert [n[:9] for n in left] == [".tmp-out-"], left
        assert [p.name[:14] for p in scratch.iterdir()] == [".tmp-snapshot-"]
    else:
        assert [n[:14] for n in left] == [".tmp-snapshot-"], left
    stale = [p.name for p in (scratch if form == "tar" else out).iterdir() if p.is_dir()]
    again = ok(run_cli(root, *args, TMPDIR=str(scratch)))
    assert sorted(p.name for p in out.iterdir()) == [dest.name]
    assert list(scratch.iterdir()) == []
    if form == "tar":
        assert f"removed 1 temp file(s) left in {out} " in again.stdout
    swept = scratch if form == "tar" else out
    assert (
        f"INFO removed 1 temp folder(s) left in {swept} by a snapshot stopped before its "
        f"end: {stale[0]}"
    ) in again.stderr, again.stderr
    if form == "tar":
        (tmp_path / "x").mkdir()
        subprocess.run(["tar", "-xf", str(dest), "-C", str(tmp_path / "x")], check=True)
        dest = tmp_path / "x"
    ok(run_cli(dest, "verify"))
    assert list_versions_once(dest / HISTORY) == history


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("to", ["file", "stdout"])
def test_a_tar_snapshot_whose_scratch_copy_cannot_be_read_says_so_not_the_output(
    root: Path, history: list[str], tmp_path: Path, to: str
) -> None:
    """Reading a version's scratch copy into the archive fails (EIO): the one error line
    names the scratch copy in $TMPDIR, where the fault is, never the archive's output
    (a FILE or standard output, whose disk is fine), and nothing is left at FILE.

    strace counts the reads of a run that succeeds (the second of two: the first may
    compile bytecode), up to the first of a scratch version, then fails that one."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    trace = tmp_path / "reads.txt"
    for n in range(2):
        counted = run_cli(
            root,
            *("snapshot", "--tar", str(tmp_path / f"counted-{n}.tar")),
            wrapper=("strace", "-f", "-qq", "-y", "-o", str(trace), "-e", "trace=read"),
            TMPDIR=str(scratch),
        )
        ok(counted)
    reads = [line for line in trace.read_text().splitlines() if " read(" in line]
    place = next(
        i
        for i, line in enumerate(reads, 1)
        if f"<{scratch}/.tmp-snapshot-" in line and f"/{HISTORY}/{history[0]}>" in line
    )
    inject = ("-e", "trace=read", "-e", f"inject=read:error=EIO:when={place}")
    target = out / "snap.tar"
    with open(tmp_path / "stream.tar", "wb") as stream:
        done = run_cli(
            root,
            *("snapshot", "--tar", str(target) if to == "file" else "-"),
            wrapper=("strace", "-f", "-qq", "-o", os.devnull, *inject),
            stdout=stream.fileno() if to == "stdout" else None,
            TMPDIR=str(scratch),
        )
    _one_error(done, f"scratch copy in {scratch} ($TMPDIR)", "EIO")
    assert "standard output" not in done.stderr and str(target) not in done.stderr
    assert list(out.iterdir()) == [] and list(scratch.iterdir()) == []


@pytest.mark.skipif(not IS_ROOT, reason="mounting a small tmpfs needs root")
def test_a_snapshot_that_fails_midway_leaves_nothing(root: Path, tmp_path: Path) -> None:
    big = json.loads(VALID_SAMPLES[0].read_bytes())
    big["padding"] = "x" * 200_000
    sample = tmp_path / "big.json"
    sample.write_text(json.dumps(big))
    ok(run_cli(root, "ingest", str(sample), *map(str, VALID_SAMPLES)))
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(small)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        # Another filesystem: every version is copied, and the big one does not fit.
        _one_error(run_cli(root, "snapshot", str(small / "snap")), "ENOSPC")
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("form", ["folder", "tar"])
@pytest.mark.parametrize("fault", ["error=EIO", "signal=SIGTERM"], ids=["eio", "sigterm"])
def test_a_snapshot_that_fails_or_is_stopped_at_its_last_fsync_takes_back_all_it_made(
    root: Path, history: list[str], tmp_path: Path, form: str, fault: str
) -> None:
    """The fsync of DEST's folder right after DEST was put in place fails (EIO), or a
    stop (SIGTERM) lands on it: the run does not end 0, and then nothing is at DEST, nor
    the folders above DEST that the run made.

    A non-zero exit next to a complete DEST would tell a backup job the snapshot failed
    while the next plain run says "already exists"; DEST is still the one this run made,
    so it is taken back, for the folder and for ``--tar FILE`` alike. ``strace`` counts
    the fsyncs of a run that succeeds, then makes the last one of another run fail.
    """
    trace = tmp_path / "fsyncs.txt"
    base = [sys.executable, "-m", "ingester", "--root", str(root), "snapshot"]
    if form == "tar":
        base.append("--tar")
    (tmp_path / "probe").mkdir()
    probe = run_command(
        ["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=fsync", *base,
         str(tmp_path / "probe" / "x" / "y" / "snap")],
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    fsyncs = sum(1 for line in trace.read_text().splitlines() if "fsync(" in line)
    assert fsyncs > 0
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "a" / "b" / "snap"
    done = run_command(
        ["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=fsync",
         "-e", f"inject=fsync:{fault}:when={fsyncs}", *base, str(dest)],
    )  # fmt: skip
    assert "Traceback" not in done.stderr
    expected = 1 if fault == "error=EIO" else 128 + signal.SIGTERM
    assert done.returncode == expected, done.stdout + done.stderr
    assert list(out.iterdir()) == [], f"left behind: {list(out.iterdir())}; {done.stderr}"


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("form", ["folder", "tar"])
def test_a_snapshot_whose_latest_link_cannot_be_made_fails_and_leaves_nothing(
    root: Path, history: list[str], tmp_path: Path, form: str
) -> None:
    """The latest link is part of the root a snapshot promises: when its temp symlink
    cannot be made (EIO, the run's one ``symlink``), the run exits 1 with one line
    naming the link (for ``--tar``, the scratch folder), and nothing is at DEST.
    Ending 0 without it would hand a backup job a root that fails ``verify``; the next
    run then takes a whole snapshot."""
    out = tmp_path / "out"
    out.mkdir()
    dest = out / ("snap.tar" if form == "tar" else "snap")
    args = ["snapshot", *(["--tar"] if form == "tar" else []), str(dest)]
    wrapper = ("strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=symlink")
    done = run_cli(root, *args, wrapper=(*wrapper, "-e", "inject=symlink:error=EIO:when=1"))
    # A tar's tree is scratch in $TMPDIR: its error names that, the place to fix.
    _one_error(done, "$TMPDIR" if form == "tar" else LATEST, "EIO")
    assert list(out.iterdir()) == [], f"left behind: {list(out.iterdir())}"
    ok(run_cli(root, *args))
    if form == "tar":
        (out / "x").mkdir()
        subprocess.run(["tar", "-xf", str(dest), "-C", str(out / "x")], check=True)
        dest = out / "x"
    ok(run_cli(dest, "verify"))


def _traced(args: list[str], cwd: Path, syscalls: str, name: str) -> list[str]:
    """The lines of ``strace -e trace=SYSCALLS`` for a run of ``args`` naming ``name(``."""
    trace = cwd / "trace.txt"
    run_command(
        ["strace", "-f", "-qq", "-o", str(trace), "-e", f"trace={syscalls}", *args], cwd=cwd
    )
    return [line for line in trace.read_text().splitlines() if f"{name}(" in line]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_a_tar_snapshot_that_failed_before_publishing_never_removes_a_file_made_at_file(
    root: Path, history: list[str], tmp_path: Path
) -> None:
    """``snapshot --tar FILE`` whose write fails (EIO on the archive's fsync) never gave
    FILE its name, so a file another job puts at FILE meanwhile stays, even where the
    filesystem hands out the inode number of the failed archive's temp file again.

    ``strace`` holds the unlink of the temp file for 3 s; the other job writes scratch
    files, hunting for that inode number, and renames one of them to FILE.
    """
    base = [sys.executable, "-m", "ingester", "--root", str(root), "snapshot", "--tar"]
    probe = tmp_path / "probe"
    probe.mkdir()
    # The archive's own fsync is the one before the last (the last is its folder's).
    n = len(_traced([*base, str(probe / "f.tar")], probe, "fsync", "fsync")) - 1
    failing = ["-e", f"inject=fsync:error=EIO:when={n}"]
    unlinks = _traced([*failing, *base, str(probe / "g.tar")], probe, "fsync,unlink", "unlink")
    k = 1 + next(i for i, line in enumerate(unlinks) if ".tmp-out-" in line)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "f.tar"
    seen: dict[str, object] = {}

    def temps() -> list[Path]:
        return [p for p in out.iterdir() if p.name.startswith(".tmp-out-")]

    def other_job() -> None:
        deadline = time.monotonic() + 30
        while not temps():
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)
        seen["temp_ino"] = temps()[0].lstat().st_ino
        while temps():
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)
        # Scratch files take the lowest free inode numbers first: the freed one, if
        # it is free, goes to one of these. The other job's archive is the one that
        # got it, else the last.
        scratch = []
        for i in range(5000):
            part = out / f"other-{i}.part"
            part.write_text("another job's archive\n")
            scratch.append(part)
            if part.lstat().st_ino == seen["temp_ino"]:
                break
        part = scratch.pop()
        part.rename(target)
        seen["other_ino"] = target.lstat().st_ino
        for part in scratch:
            part.unlink()

    job = threading.Thread(target=other_job)
    job.start()
    done = run_command(
        ["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=fsync,unlink", *failing,
         "-e", f"inject=unlink:delay_exit=3000000:when={k}", *base, str(target)],
    )  # fmt: skip
    job.join()
    assert done.returncode == 1 and "EIO" in done.stderr, done.stdout + done.stderr
    assert "other_ino" in seen, f"the temp file was never seen: {seen}"
    assert target.exists(), f"another job's {target.name} was removed ({seen}); {done.stderr}"
    assert target.read_text() == "another job's archive\n"


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_a_folder_made_at_dest_while_the_snapshot_ran_is_left_alone(
    root: Path, history: list[str], tmp_path: Path
) -> None:
    """An empty folder made at DEST while the snapshot is built (another job, an
    operator's ``mkdir``) is never replaced: the rename into place is a no-replace one,
    so the run exits 1 saying DEST appeared, and that folder keeps its inode and mode.

    ``strace`` holds the rename into place (the run's one ``renameat2``) for 3 s, once
    the temp folder is complete, and the folder is made at DEST meanwhile.
    """
    dest = tmp_path / "out" / "snap"
    dest.parent.mkdir()
    command = [
        "strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=renameat2",
        "-e", "inject=renameat2:delay_enter=3000000:when=1",
        sys.executable, "-m", "ingester", "--root", str(root), "snapshot", str(dest),
    ]  # fmt: skip
    # Its own group: strace killed alone would let the snapshot run on after the test.
    with subprocess.Popen(
        command,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            wait_for(
                lambda: any(dest.parent.glob(f".tmp-snapshot-*/{LATEST}")),
                30,
                "the snapshot built under its temp name",
            )
            time.sleep(0.5)
            dest.mkdir()
            dest.chmod(0o700)
            theirs = os.stat(dest)
            out, err = proc.communicate(timeout=60)
        finally:
            kill_group(proc)
    now = os.stat(dest)
    assert (now.st_ino, stat.S_IMODE(now.st_mode)) == (theirs.st_ino, 0o700), out + err
    assert list(dest.iterdir()) == []
    assert proc.returncode == 1, out + err
    assert "appeared while the snapshot was taken; left alone" in err
    assert [p.name for p in dest.parent.iterdir()] == ["snap"]  # no temp folder left


def test_verify_says_when_the_latest_link_names_a_missing_version(
    root: Path, history: list[str]
) -> None:
    # What a live copy by a tool that reads the link after listing the folder restores.
    link = root / LATEST
    link.unlink()
    missing = "2099-01-01T00-00-00-00000000.json"
    os.symlink(f"{HISTORY}/{missing}", link)
    result = run_cli(root, "verify")
    assert result.returncode == 1
    assert f"latest link points at {HISTORY}/{missing}, which is missing" in result.stdout
    assert f"(the newest is {history[-1]})" in result.stdout


WHY_NOT = other_user_problem()


@pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
def test_a_drop_box_parent_it_may_not_read_is_no_failure() -> None:
    """Missing folders are made under a parent this user may write but not read (-wx):
    as with mkdir -p; the folders it makes itself are fsynced into their parents."""
    with others_folder("ingester-snap-") as root:
        box = root.parent / "box"
        box.mkdir()
        box.chmod(0o733)  # root's: others may add names, not list them

        ok(run_as_other(root, "ingest", str(VALID_SAMPLES[0])))
        dest = box / "new" / "snap"
        done = run_as_other(root, "snapshot", str(dest))
        assert done.returncode == 0, done.stderr
        assert (dest / HISTORY).is_dir()


@needs_strace
def test_a_snapshot_under_way_is_never_taken_for_one_a_kill_left(
    root: Path, history: list[str], tmp_path: Path
) -> None:
    """Two snapshots into one folder: the second removes what killed snapshots left
    there, never the first one's temp folder while it is being built (it holds a lock
    on it). The first, stopped (SIGSTOP, by strace) at its second version's link while
    the second runs, then finishes whole."""
    out = tmp_path / "out"
    out.mkdir()
    seen: dict[str, object] = {}

    def meanwhile() -> None:
        [temp] = [p for p in out.iterdir() if p.name.startswith(".tmp-snapshot-")]
        seen["second"] = run_cli(root, "snapshot", str(out / "two"))
        seen["kept"] = temp.is_dir()

    first = run_held_after(
        root, ("snapshot", str(out / "one")), root / HISTORY / history[1], "link", meanwhile
    )
    second = seen["second"]
    assert isinstance(second, subprocess.CompletedProcess)
    ok(second)
    assert seen["kept"] is True, second.stderr
    assert "removed" not in second.stderr, second.stderr
    ok(first)
    assert first.stdout.startswith(f"snapshot {out / 'one'}: {len(history)} version(s)")
    assert sorted(p.name for p in out.iterdir()) == ["one", "two"]
    ok(run_cli(out / "one", "verify"))


@needs_strace
def test_a_stop_that_comes_as_the_tar_scratch_folder_is_made_leaves_nothing(
    root: Path, tmp_path: Path
) -> None:
    """SIGTERM while the scratch folder is being made (held there by strace): the stop
    waits until the folder is made and locked, and is delivered as the signals are let
    go, before the archive's own clean-up has begun. The folder goes all the same."""
    ok(run_cli(root, "init"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    trace = tmp_path / "held.trace"
    command = [
        *(STRACE, "-f", "-qq", "-o", str(trace), "-e", "trace=mkdir,mkdirat"),
        # The command's first mkdir is its scratch folder's, in $TMPDIR.
        *("-e", "inject=mkdir,mkdirat:signal=SIGSTOP:when=1"),
        *(sys.executable, "-m", "ingester", "--root", str(root)),
        *("snapshot", "--tar", str(tmp_path / "snap.tar")),
    ]
    with subprocess.Popen(
        command,
        env={**cli_env(), "TMPDIR": str(scratch)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # strace and the command end together (kill_group)
    ) as proc:
        try:
            wait_for(
                lambda: trace.exists() and "stopped by SIGSTOP" in trace.read_text(),
                30,
                "the scratch folder's mkdir, held",
            )
            assert ".tmp-snapshot-" in trace.read_text(), trace.read_text()
            program = traced_program(proc.pid)
            os.kill(program, signal.SIGTERM)
            os.kill(program, signal.SIGCONT)
            _, err = proc.communicate(timeout=30)
        finally:
            kill_group(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert list(scratch.iterdir()) == []
    assert not (tmp_path / "snap.tar").exists()
