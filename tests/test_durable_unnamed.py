"""Unnamed staged files (``O_TMPFILE``): no temp name ever exists, and the named fallback.

Where the folder's filesystem offers ``O_TMPFILE`` a version's bytes are written into
an inode with no name, which gets its one name at the link; a crash before that leaves
nothing. Where it is refused, or /proc is missing, a named ``.tmp-`` file is used.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ingester.errors import StorageError
from ingester.history import durable
from ingester.history.durable import steps


def entries(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def unnamed_offered(folder: Path) -> bool:
    try:
        os.close(os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600))
    except OSError:
        return False
    return True


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    if not unnamed_offered(tmp_path):
        pytest.skip("the test folder's filesystem refuses O_TMPFILE")
    return tmp_path


def test_an_unnamed_staged_file_has_no_name_until_its_commit(folder: Path) -> None:
    staged = durable.StagedFile(folder, b"data", 0o444, sync=False, unnamed=True)
    assert staged.temp is None
    assert entries(folder) == []
    fd = staged.unsynced()
    assert fd is not None
    staged.synced(None)
    assert entries(folder) == []
    final = staged.commit("v.json")
    assert entries(folder) == ["v.json"]
    assert final.read_bytes() == b"data"
    assert final.stat().st_mode & 0o777 == 0o444 & ~durable.current_umask()
    assert final.stat().st_nlink == 1


def test_an_uncommitted_unnamed_file_leaves_nothing(folder: Path) -> None:
    with durable.StagedFile(folder, b"x", 0o444, unnamed=True):
        pass
    assert entries(folder) == []


def test_an_unnamed_file_never_clobbers_a_name(folder: Path) -> None:
    (folder / "v.json").write_bytes(b"first")
    staged = durable.StagedFile(folder, b"second", 0o444, unnamed=True)
    with pytest.raises(StorageError) as caught:
        staged.commit("v.json")
    assert isinstance(caught.value.cause, FileExistsError)
    assert (folder / "v.json").read_bytes() == b"first"
    assert entries(folder) == ["v.json"]


def test_an_unnamed_file_can_replace_a_name(folder: Path) -> None:
    (folder / "m.json").write_bytes(b"old")
    durable.StagedFile(folder, b"new", 0o444, unnamed=True).commit("m.json", replace=True)
    assert (folder / "m.json").read_bytes() == b"new"
    assert entries(folder) == ["m.json"]


def test_an_unnamed_spare_becomes_the_next_staged_file(folder: Path) -> None:
    spare = durable.SpareFile(folder)
    assert spare.path is None and entries(folder) == []
    with durable.StagedFile(folder, b"data", 0o444, spare=spare, unnamed=True) as staged:
        staged.commit("v.json")
    assert entries(folder) == ["v.json"]
    assert (folder / "v.json").read_bytes() == b"data"
    durable.SpareFile(folder).discard()
    assert entries(folder) == ["v.json"]


def test_without_unnamed_temps_a_named_one_is_used(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(steps, "UNNAMED_TEMPS", False)
    with durable.StagedFile(folder, b"data", 0o444, unnamed=True) as staged:
        assert staged.temp is not None
        assert staged.temp.name.startswith(durable.WRITE_TEMP_PREFIX)
        staged.commit("v.json")
    assert entries(folder) == ["v.json"]


_STAGE_AND_WAIT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ingester.history import durable
    staged = durable.StagedFile(Path(sys.argv[1]), b"half" * 1000, 0o444, unnamed=True)
    print("named" if staged.temp is not None else "unnamed", flush=True)
    time.sleep(60)
    """
)


def test_a_kill_before_the_link_leaves_nothing(folder: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _STAGE_AND_WAIT, str(folder)], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "unnamed"
            assert entries(folder) == []
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert entries(folder) == []


_WRITE_WITHOUT_PROC = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from ingester.history import durable
    folder = Path(sys.argv[1])
    staged = durable.StagedFile(folder, b"data", 0o444, unnamed=True)
    print(staged.temp is not None, os.path.isdir("/proc/self/fd"))
    staged.commit("v.json")
    """
)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="hiding /proc needs root and unshare(1) for a private mount namespace",
)
def test_without_proc_a_named_temp_file_is_used(folder: Path) -> None:
    # A system without /proc cannot name an unnamed file (its /proc/self/fd link is the
    # way to linkat without privilege): the process must fall back to a named temp file.
    script = 'mount -t tmpfs -o size=1m none /proc && exec "$0" -c "$1" "$2"'  # /proc hidden
    result = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            sys.executable,
            _WRITE_WITHOUT_PROC,
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0 and "mount" in result.stderr and "/proc" in result.stderr:
        pytest.skip(f"cannot hide /proc here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]
    assert entries(folder) == ["v.json"]
    assert (folder / "v.json").read_bytes() == b"data"
