"""Versions are readable as a new file made in the history would be: its default ACL.

docs/service.md, "Read-only access": the history carries a default POSIX ACL, so that a
read-only group reads every version. A drop of the watcher's own user on the history's
filesystem becomes its version without a copy (its own inode), which no default ACL
reached; it must be readable by that group all the same. Real ACLs (``setfacl``), a
real watcher with the service's umask, and the reader another uid (``setpriv``).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import IS_ROOT, run_cli
from support.capabilities import STRACE, needs_strace
from support.watchproc import WatchProcess, drop, payload, versions

SETFACL = shutil.which("setfacl")
SETPRIV = shutil.which("setpriv")
READER_UID = 54322
READERS_GID = 54323
# The service's umask (UMask=0027 in its unit): versions 0440, closed to others.
SERVICE_UMASK = ("sh", "-c", 'umask 027 && exec "$@"', "sh")

pytestmark = pytest.mark.skipif(
    not (IS_ROOT and SETFACL and SETPRIV),
    reason="needs root, setfacl (Debian package acl) and setpriv",
)


@pytest.fixture
def base() -> Iterator[Path]:
    # Under /tmp with 0755, so that another uid can reach it (pytest's tmp_path is 0700).
    folder = Path(tempfile.mkdtemp(prefix="readers-acl-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _history_for_readers(root: Path, *, acl: bool = True) -> Path:
    """The history as the readers snippet leaves it: closed to others, open to the group
    by an ACL, with a default ACL for every file made in it (``acl``: else closed to
    the group too, as before the snippet is applied)."""
    history = root / "console-usage-history"
    history.mkdir(parents=True, mode=0o750)
    history.chmod(0o750)
    if acl:
        _readers_acl(history)
    return history


def _readers_acl(history: Path) -> None:
    acl = f"group:{READERS_GID}:r-x,default:group:{READERS_GID}:r-x"
    result = subprocess.run(
        [str(SETFACL), "-m", acl, str(history)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"this filesystem takes no POSIX ACL: {result.stderr.strip()}")


def _reader_reads(
    path: Path, groups: str = f"--groups={READERS_GID}"
) -> subprocess.CompletedProcess[bytes]:
    """``cat PATH`` as the reader's uid, in the readers' group (``groups``: setpriv's)."""
    assert SETPRIV is not None
    reader = [SETPRIV, f"--reuid={READER_UID}", f"--regid={READER_UID}", groups]
    return subprocess.run([*reader, "cat", str(path)], capture_output=True, timeout=30, check=False)


def test_every_version_is_readable_by_the_readers_group(base: Path) -> None:
    root = base / "root"
    _history_for_readers(root)
    spool = root / "spool"
    own = payload(1)
    others = payload(2)
    # The watcher's own drop (the same uid: serve's POSTs, a same-user submit), and
    # another user's, which is copied.
    drop(spool, "a-own.json", own)
    drop(spool, "b-others.json", others, owner=(4242, 4242))
    result = run_cli(root, "watch", "--once", wrapper=SERVICE_UMASK)
    assert result.returncode == 0, result.stderr
    stored = versions(root)
    assert sorted(p.read_bytes() for p in stored) == sorted([own, others])
    for version in stored:
        assert version.stat().st_mode & 0o777 == 0o440  # nothing open to others
        read = _reader_reads(version)
        assert read.returncode == 0, f"{version.name}: {read.stderr.decode().strip()}"
        assert read.stdout == version.read_bytes()
    # Control: a uid without the group reads nothing.
    assert _reader_reads(stored[0], "--clear-groups").returncode != 0


def test_without_a_default_acl_the_own_drop_is_stored_without_a_copy(base: Path) -> None:
    """The zero-copy path stays where nothing is inherited: the version is the drop's
    own inode."""
    root = base / "root"
    (root / "console-usage-history").mkdir(parents=True)
    dropped = drop(root / "spool", "a.json", payload(1))
    inode = os.stat(dropped).st_ino
    result = run_cli(root, "watch", "--once", wrapper=SERVICE_UMASK)
    assert result.returncode == 0, result.stderr
    [version] = versions(root)
    assert version.stat().st_ino == inode


def test_a_drop_with_an_acl_of_its_own_is_stored_as_a_new_file(base: Path) -> None:
    """A drop that brings an ACL from where it was written (the spool's own default ACL)
    is copied: its version has no ACL, as a new file in a history without one."""
    root = base / "root"
    (root / "console-usage-history").mkdir(parents=True)
    tmp = root / "spool" / "tmp"
    tmp.mkdir(parents=True)
    assert SETFACL is not None
    subprocess.run([SETFACL, "-m", f"default:group:{READERS_GID}:rw-", str(tmp)], check=True)
    dropped = drop(root / "spool", "a.json", payload(1))
    assert os.getxattr(dropped, "system.posix_acl_access")  # handed down by tmp/
    result = run_cli(root, "watch", "--once", wrapper=SERVICE_UMASK)
    assert result.returncode == 0, result.stderr
    [version] = versions(root)
    with pytest.raises(OSError) as no_acl:
        os.getxattr(version, "system.posix_acl_access")
    assert no_acl.value.errno == errno.ENODATA
    assert version.stat().st_mode & 0o777 == 0o440


def test_a_drop_of_another_group_is_stored_with_the_history_group(base: Path) -> None:
    """The group a reader may read through is the one a new file in the history gets
    (the setgid history's own): a drop of the watcher's user but another group is
    copied, never its version under that group."""
    root = base / "root"
    history = root / "console-usage-history"
    history.mkdir(parents=True)
    os.chown(history, 0, READERS_GID)
    history.chmod(0o2750)
    drop(root / "spool", "a.json", payload(1), owner=(0, 4242))
    result = run_cli(root, "watch", "--once", wrapper=SERVICE_UMASK)
    assert result.returncode == 0, result.stderr
    [version] = versions(root)
    assert version.stat().st_gid == READERS_GID
    read = _reader_reads(version)
    assert read.returncode == 0, read.stderr.decode()


def test_a_default_acl_applied_while_the_watcher_runs_reaches_the_next_version(
    base: Path,
) -> None:
    """The readers snippet applied to a running service: the next version is readable
    by the group, though a temp file for it was made ahead, before the ACL."""
    root = base / "root"
    history = _history_for_readers(root, acl=False)
    _readers_acl_applied_midway(root, history)


def _readers_acl_applied_midway(root: Path, history: Path) -> None:
    """A watcher as the service stores a copied drop (a temp file made ahead for the
    next), then the readers' ACL is applied to ``history``: the next version, stored from
    that temp file or not, must be readable by the group."""
    spool = root / "spool"
    with WatchProcess(root, wrapper=SERVICE_UMASK) as watcher:
        watcher.wait_log("watching ")
        drop(spool, "a.json", payload(1), owner=(4242, 4242))  # copied: a temp made ahead
        watcher.wait_log("ingested a.json")
        _readers_acl(history)
        drop(spool, "b.json", payload(2), owner=(4242, 4242))
        watcher.wait_log("ingested b.json")
        assert watcher.stop() == 0
    newest = versions(root)[-1]
    assert newest.read_bytes() == payload(2)
    read = _reader_reads(newest)
    assert read.returncode == 0, read.stderr.decode()


def test_a_default_acl_changed_while_the_watcher_runs_reaches_the_next_version(
    base: Path,
) -> None:
    """A history with a default ACL already (another group's) gets the readers' entry
    while the service runs: the temp file made ahead under the old default ACL must not
    become the next version, which the readers could not read."""
    root = base / "root"
    history = _history_for_readers(root, acl=False)
    acl = "group:54324:r-x,default:group:54324:r-x"
    result = subprocess.run(
        [str(SETFACL), "-m", acl, str(history)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"this filesystem takes no POSIX ACL: {result.stderr.strip()}")
    _readers_acl_applied_midway(root, history)


def test_a_claim_recovered_after_a_default_acl_was_applied_is_readable_by_the_readers(
    base: Path,
) -> None:
    """The readers snippet applied to a running service, then a claim left in
    ``.claimed/`` (as a stopped watcher leaves one) stored by the service's recovery,
    in a round of its own (the metadata file removed by hand): its version is readable
    by the group, though a temp file was made ahead before the ACL, as for a drop."""
    root = base / "root"
    history = _history_for_readers(root, acl=False)
    spool = root / "spool"
    with WatchProcess(root, "--rescan-interval", "1", wrapper=SERVICE_UMASK) as watcher:
        watcher.wait_log("watching ")
        drop(spool, "a.json", payload(1), owner=(4242, 4242))  # copied: a temp made ahead
        watcher.wait_log("ingested a.json")
        _readers_acl(history)
        claim = spool / ".claimed" / "2026-01-01T00-00-00-0badc0de.json"
        claim.write_bytes(payload(2))
        (history / "_metadata.json").unlink()
        watcher.wait_log("ingested 2026-01-01T00-00-00-0badc0de.json")
        assert watcher.stop() == 0
    recovered = history / "2026-01-01T00-00-00-0badc0de.json"
    assert recovered.read_bytes() == payload(2)
    read = _reader_reads(recovered)
    assert read.returncode == 0, read.stderr.decode()


@needs_strace
def test_each_drop_costs_one_getxattr_at_most(base: Path) -> None:
    """The ACL rule's cost: one ``getxattr`` per drop at most (its own ACL, on the inode
    that becomes the version), and one stat and one ``getxattr`` of the history per
    group; none per drop for the history."""
    root = base / "root"
    _history_for_readers(root, acl=False)
    spool = root / "spool"
    count = 20
    for n in range(count):
        drop(spool, f"d{n:02d}.json", payload(n))
    trace = base / "trace"
    strace = (STRACE, "-f", "-qq", "-o", str(trace), "-e", "trace=getxattr,lgetxattr,fgetxattr")
    result = run_cli(root, "watch", "--once", wrapper=strace)
    assert result.returncode == 0, result.stderr
    assert len(versions(root)) == count
    calls = [line for line in trace.read_text().splitlines() if "getxattr(" in line]
    on_drops = [c for c in calls if "fgetxattr(" in c]
    on_history = [c for c in calls if "fgetxattr(" not in c]
    assert len(on_drops) <= count, "\n".join(on_drops)
    # Once per group, never per drop (a group ends after a second, which the trace
    # may stretch into a few groups).
    assert len(on_history) < count / 2, "\n".join(on_history)
