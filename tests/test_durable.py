"""The one write recipe: temp file in the target folder, fsync, link or rename, fsync."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.capabilities import STRACE, needs_strace_root

from ingester.errors import StorageError
from ingester.history import durable
from ingester.history.durable import fsyncs


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(durable.TEMP_PREFIX))


def test_write_file_leaves_only_the_final_name_with_the_mode(tmp_path: Path) -> None:
    final = durable.write_file(tmp_path, "v.json", b"{}", mode=0o444)
    assert final.read_bytes() == b"{}"
    assert final.stat().st_mode & 0o777 == 0o444 & ~durable.current_umask()
    assert temps(tmp_path) == []


def test_a_new_name_is_never_clobbered(tmp_path: Path) -> None:
    durable.write_file(tmp_path, "v.json", b"first")
    with pytest.raises(StorageError) as caught:
        durable.write_file(tmp_path, "v.json", b"second")
    assert isinstance(caught.value.cause, FileExistsError)
    assert (tmp_path / "v.json").read_bytes() == b"first"
    assert temps(tmp_path) == []


def test_a_staged_file_is_discarded_when_its_block_ends_uncommitted(tmp_path: Path) -> None:
    with durable.StagedFile(tmp_path, b"x", 0o444) as staged:
        assert staged.temp is not None and staged.temp.name.startswith(durable.WRITE_TEMP_PREFIX)
        assert temps(tmp_path) != []
    assert temps(tmp_path) == []


def test_a_staged_file_committed_in_its_block_stays(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), durable.StagedFile(tmp_path, b"x", 0o444) as staged:
        staged.commit("v.json")
        raise RuntimeError("after the commit point")
    assert (tmp_path / "v.json").read_bytes() == b"x"
    assert temps(tmp_path) == []


def test_a_spare_file_becomes_the_next_staged_file(tmp_path: Path) -> None:
    spare = durable.SpareFile(tmp_path)
    with durable.StagedFile(tmp_path, b"data", 0o444, spare=spare) as staged:
        assert staged.temp == spare.path
        staged.commit("v.json")
    assert (tmp_path / "v.json").read_bytes() == b"data"


def test_stale_temps_are_swept_by_prefix_only(tmp_path: Path) -> None:
    (tmp_path / f"{durable.WRITE_TEMP_PREFIX}abc").write_bytes(b"")
    (tmp_path / f"{durable.LINK_TEMP_PREFIX}abc").symlink_to("nowhere")
    (tmp_path / ".notes").write_bytes(b"mine")
    (tmp_path / f"{durable.TEMP_PREFIX}dir").mkdir()
    removed = durable.remove_stale_temps(tmp_path, durable.WRITE_TEMP_PREFIX)
    assert removed == [f"{durable.WRITE_TEMP_PREFIX}abc"]
    assert sorted(durable.remove_stale_temps(tmp_path)) == [f"{durable.LINK_TEMP_PREFIX}abc"]
    assert (tmp_path / ".notes").exists() and (tmp_path / f"{durable.TEMP_PREFIX}dir").is_dir()


def test_replace_symlink_swaps_atomically(tmp_path: Path) -> None:
    link = tmp_path / "latest.json"
    durable.replace_symlink(link, "a.json", fallback=lambda: b"a")
    durable.replace_symlink(link, "b.json", fallback=lambda: b"b")
    assert os.readlink(link) == "b.json"
    assert temps(tmp_path) == []


def test_every_temp_prefix_starts_with_the_one_prefix() -> None:
    for prefix in (
        durable.WRITE_TEMP_PREFIX,
        durable.LINK_TEMP_PREFIX,
        durable.SNAPSHOT_TEMP_PREFIX,
    ):
        assert prefix.startswith(durable.TEMP_PREFIX)


@pytest.mark.parametrize(("count", "failing"), [(5, 2), (21, 13), (40, 0), (40, 39)])
def test_fsync_each_gives_each_descriptor_its_own_result(
    tmp_path: Path, count: int, failing: int
) -> None:
    """Several fsyncs at once (shares on worker threads): one failing is that file's alone.

    Groups larger than the worker count are dealt out in shares; each result must still
    come back in the place of its own descriptor.
    """
    fds = []
    for n in range(count):
        fds.append(os.open(tmp_path / f"f{n}", os.O_WRONLY | os.O_CREAT, 0o644))
        os.write(fds[-1], b"x")
    closed = fds[failing]
    os.close(closed)  # its fsync fails (EBADF); the others must not
    try:
        results = durable.fsync_each(fds)
    finally:
        for fd in fds:
            if fd != closed:
                os.close(fd)
    assert [r is None for r in results] == [n != failing for n in range(count)]
    assert isinstance(results[failing], OSError)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 8, 9, 40])
def test_each_at_once_gives_each_item_its_own_result_in_order(count: int) -> None:
    """Items dealt into shares on worker threads come back in the order given; a few items
    (up to three) are done where they are asked for, one after the other."""
    threads: set[str] = set()

    def step(n: int) -> int:
        threads.add(threading.current_thread().name)
        return n * n

    assert durable.each_at_once(step, list(range(count))) == [n * n for n in range(count)]
    workers = {name for name in threads if name.startswith(durable.FSYNC_THREAD_PREFIX)}
    assert bool(workers) == (count > 3)


@pytest.mark.parametrize("where", ["the caller's share", "a worker's share"])
def test_each_at_once_lets_every_step_end_before_it_raises(where: str) -> None:
    """A step that raises leaves no other running once the exception comes out.

    Every share has started when one step raises; the others wait, up to a deadline, for
    the exception to have been caught (the shares after the raising one longest): had
    it come out before they ended, some would still be running when it is.
    """
    pool = fsyncs._fsync_pool()
    if pool is None or pool.workers < 4:
        pytest.skip("needs durable's worker threads (a limit on threads here)")
    workers = pool.workers
    raising = 0 if where == "the caller's share" else workers - 3
    all_started = threading.Barrier(workers)
    caught = threading.Event()
    started: list[int] = []
    ended: list[int] = []

    def step(n: int) -> None:
        started.append(n)
        if n < workers:  # the first step of each share
            all_started.wait(10)
        if n == raising:
            raise ValueError(n)
        caught.wait(0.5 if n % workers > raising else 0.1)
        ended.append(n)

    with pytest.raises(ValueError):
        durable.each_at_once(step, list(range(2 * workers)))
    still_running = len(started) - 1 - len(ended)
    caught.set()
    assert still_running == 0


def test_fsync_dirs_fsyncs_a_folder_named_twice_once_and_reports_each(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    results = durable.fsync_dirs([tmp_path, gone, tmp_path])
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StorageError) and "gone" in str(results[1])


def test_a_staged_file_whose_fsync_failed_is_discarded(tmp_path: Path) -> None:
    staged = durable.StagedFile(tmp_path, b"x", 0o444, sync=False, name="v.json")
    assert staged.unsynced() is not None
    with pytest.raises(StorageError) as caught:
        staged.synced(OSError(5, "Input/output error"))
    assert "fsync" in str(caught.value) and "v.json" in str(caught.value)
    assert staged.unsynced() is None
    assert temps(tmp_path) == []


@needs_strace_root
def test_make_folders_records_each_new_folder_in_its_parent(tmp_path: Path) -> None:
    """Each folder made is followed by an fsync of its parent, outermost first."""
    target = tmp_path / "a" / "b" / "c"
    script = (
        "import sys; from pathlib import Path; from ingester.history import durable; "
        "print(*durable.make_folders(Path(sys.argv[1])), sep='\\n')"
    )
    trace = tmp_path / "trace"
    tracer = [STRACE, "-f", "-qq", "-o", str(trace), "-e", "trace=mkdir,openat,fsync"]
    done = subprocess.run(
        [*tracer, sys.executable, "-c", script, str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "a"), str(tmp_path / "a" / "b"), str(target)]
    # mkdir(X) ... openat(parent of X) = fd ... fsync(fd), for each X in turn.
    calls = trace.read_text().splitlines()
    fds: dict[str, str] = {}
    seen: list[str] = []
    for line in calls:
        if made := re.search(r'mkdir\("([^"]+)"', line):
            seen.append(f"mkdir {made.group(1)}")
        elif opened := re.search(r'openat\(AT_FDCWD, "([^"]+)", .*O_DIRECTORY.*\) = (\d+)', line):
            fds[opened.group(2)] = opened.group(1)
        elif (synced := re.search(r"fsync\((\d+)\)\s+= 0", line)) and synced.group(1) in fds:
            seen.append(f"fsync {fds[synced.group(1)]}")
    expected = []
    for folder in (tmp_path / "a", tmp_path / "a" / "b", target):
        expected += [f"mkdir {folder}", f"fsync {folder.parent}"]
    assert [s for s in seen if str(tmp_path) in s] == expected
    assert durable.make_folders(target) == []  # all there: nothing made, nothing fsynced


def test_make_folders_names_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("not a folder")
    with pytest.raises(StorageError) as caught:
        durable.make_folders(tmp_path / "a" / "b")
    assert str(caught.value).startswith(f"cannot create folder {tmp_path / 'a'}")
