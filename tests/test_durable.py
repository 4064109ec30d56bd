"""The one write recipe: temp file in the target folder, fsync, link or rename, fsync."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingester.errors import StorageError
from ingester.history import durable


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
