"""Review probes for the operator-command change (cbef3ad..498143c): each fails on the
current code. Real CLI subprocesses, real filesystem, faults by real means."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import IS_ROOT, VALID_SAMPLES, cli_env, run_cli
from support.capabilities import run_tool

HISTORY = "console-usage-history"


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def history(root: Path) -> Path:
    ok(run_cli(root, "ingest", *map(str, VALID_SAMPLES)))
    return root / HISTORY


def _versions(history: Path) -> list[str]:
    return sorted(p.name for p in history.iterdir() if p.name.startswith("2"))


@pytest.mark.skipif(not IS_ROOT, reason="a bind mount needs root")
def test_export_output_refusal_is_bypassed_through_a_bind_mount_of_the_history(
    history: Path, tmp_path: Path
) -> None:
    """``export -o`` is refused inside the history, but the check is by path only
    (``refuse_live_destination``: abspath/realpath, ingester/ops/snapshot.py ~266-282).
    The same folder reached through a bind mount is not seen: the export is written into
    the live history (observed: exit 0, ``out.csv`` among the versions). The refusal
    should compare the folder itself (st_dev/st_ino of DEST's parent and its ancestors
    against the history's, spool's and rejected folder's), and refuse (exit 1, one line,
    nothing written into the history)."""
    view = tmp_path / "view"
    view.mkdir()
    done = run_tool("mount", "--bind", str(history), str(view))
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    try:
        result = run_cli(history.parent, "export", "-o", str(view / "out.csv"))
    finally:
        run_tool("umount", str(view))
    written = (history / "out.csv").exists()
    (history / "out.csv").unlink(missing_ok=True)
    assert result.returncode == 1 and "inside the history" in result.stderr, (
        result.stdout + result.stderr
    )
    assert not written, "the export was written into the live history"


def test_check_with_a_bad_global_choice_option_prints_no_plugin_line(root: Path) -> None:
    """docs/monitoring.md: a usage error from 'a bad global setting: an option before
    ``check``' gives the plugin line ``INGESTER CRITICAL - usage error: ...`` on stdout.
    A bad value for a global option that click itself converts (``--log-format xml``; an
    unknown global option ``--bogus`` the same) fails in the group's parsing, before
    ``main`` (ingester/cli/group.py ~258-268, the only place that calls
    ``plugin_usage_line`` for global settings) runs: stdout is empty, so a monitoring
    agent shows an alert with no cause. Expected: the plugin line on stdout, exit 2."""
    result = run_cli(root, "--log-format", "xml", "check")
    assert result.returncode == 2
    assert result.stdout.startswith("INGESTER CRITICAL - usage error:"), (
        f"stdout={result.stdout!r} stderr={result.stderr!r}"
    )


def test_check_json_with_a_bad_global_choice_option_prints_no_object(root: Path) -> None:
    """As above with ``check --json``: the documented object
    ``{"status": "CRITICAL", "code": 2, "summary": "usage error: ..."}`` is missing from
    stdout (observed: empty stdout, exit 2)."""
    result = run_cli(root, "--log-format", "xml", "check", "--json")
    assert result.returncode == 2
    assert result.stdout.strip(), f"stdout empty; stderr={result.stderr!r}"
    assert json.loads(result.stdout)["status"] == "CRITICAL"


def _strace() -> str:
    path = shutil.which("strace")
    if path is None:
        pytest.skip("strace is not installed")
    return path


def _count_fsyncs(args: list[str], cwd: Path, syscall: str = "fsync") -> list[str]:
    trace = cwd / "trace.txt"
    subprocess.run(
        [_strace(), "-f", "-qq", "-o", str(trace), "-e", f"trace={syscall}", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        check=False,
    )
    return [line for line in trace.read_text().splitlines() if f"{syscall}(" in line]


@pytest.mark.skipif(not IS_ROOT, reason="strace fault injection is run as root here")
def test_failed_tar_snapshot_leaves_the_folders_it_made(history: Path, tmp_path: Path) -> None:
    """``snapshot --tar FILE`` now makes FILE's missing folders (ingester/cli/ops.py ~141,
    ``durable.make_folders``) before anything can fail, and never removes them: a run
    that fails (here: EIO on the fsync of the archive) leaves ``out/a/b`` behind, while
    docs/backup.md says a failure leaves 'nothing left behind' ('a failure or a stop
    removes it as the folder form removes DEST'). Expected: exit 1, one line, and no
    new folder (or the docs saying the folders stay)."""
    root = history.parent
    base = [sys.executable, "-m", "ingester", "--root", str(root), "snapshot", "--tar"]
    probe = tmp_path / "probe"
    probe.mkdir()
    fsyncs = _count_fsyncs([*base, str(probe / "x" / "y" / "f.tar")], probe)
    # The archive's own fsync is the one before the last (the last is its folder's).
    n = len(fsyncs) - 1
    out = tmp_path / "out"
    out.mkdir()
    target = out / "a" / "b" / "f.tar"
    done = subprocess.run(
        [_strace(), "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync",
         "-e", f"inject=fsync:error=EIO:when={n}", *base, str(target)],
        env=cli_env(), capture_output=True, text=True, check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "EIO" in done.stderr
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert left == [], f"left behind after a failed snapshot: {left}"


@pytest.mark.skipif(not IS_ROOT, reason="strace fault injection is run as root here")
def test_failed_tar_snapshot_removes_another_jobs_file_by_a_recycled_inode(
    history: Path, tmp_path: Path
) -> None:
    """``durable.streamed_file(replace=False)`` (ingester/history/durable/copies.py
    ~463-473) on failure first unlinks its temp file, freeing its inode, and only then
    calls ``take_back(final, ident)``, which trusts (st_dev, st_ino) alone
    (ingester/history/durable/steps.py ~413-449). A file another process makes at FILE
    in between is given the freed inode number (ext4 reuses it at once), matches the
    stale ident, and is renamed aside and deleted.

    Made real here: EIO on the archive's fsync (the write fails before FILE was ever
    published), the ``unlink`` of the temp delayed 2 s by strace, and another backup job
    writing FILE meanwhile. Observed: the other job's FILE is deleted by the failed
    snapshot. Expected: a snapshot that never published FILE never touches it (take the
    name back before the temp's inode is freed, or only after publishing, keeping the
    descriptor open so the inode cannot be reused)."""
    root = history.parent
    base = [sys.executable, "-m", "ingester", "--root", str(root), "snapshot", "--tar"]
    probe = tmp_path / "probe"
    probe.mkdir()
    n = len(_count_fsyncs([*base, str(probe / "f.tar")], probe)) - 1
    # The temp's unlink on the failure path: the unlinks before it (tempfile's probe of
    # $TMPDIR) are counted on a run that fails the same way.
    failing = ["-e", f"inject=fsync:error=EIO:when={n}"]
    unlinks = _count_fsyncs([*failing, *base, str(probe / "g.tar")], probe, "unlink")
    k = 1 + next(i for i, line in enumerate(unlinks) if ".tmp-out-" in line)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "f.tar"
    seen: dict[str, object] = {}

    def other_job() -> None:
        deadline = time.monotonic() + 30
        while not any(p.name.startswith(".tmp-out-") for p in out.iterdir()):
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)
        seen["temp_ino"] = next(
            p.lstat().st_ino for p in out.iterdir() if p.name.startswith(".tmp-out-")
        )
        while any(p.name.startswith(".tmp-out-") for p in out.iterdir()):
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)
        # The other job writes its archive under a temp name of its own, then renames it
        # to FILE; its scratch files take the lowest free inodes first.
        scratch = []
        t0 = time.monotonic()
        for i in range(5000):
            part = out / f"other-{i}.part"
            part.write_text("another job's archive\n")
            if part.lstat().st_ino == seen["temp_ino"]:
                part.rename(target)
                break
            scratch.append(part)
        seen["tries"] = i
        seen["t"] = time.monotonic() - t0
        for part in scratch:
            part.unlink()
        if target.exists():
            seen["other_ino"] = target.lstat().st_ino

    job = threading.Thread(target=other_job)
    job.start()
    done = subprocess.run(
        [_strace(), "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync,unlink",
         "-e", f"inject=fsync:error=EIO:when={n}",
         "-e", f"inject=unlink:delay_exit=3000000:when={k}",
         *base, str(target)],
        env=cli_env(), capture_output=True, text=True, check=False,
    )
    job.join()
    assert done.returncode == 1, done.stdout + done.stderr
    if seen.get("other_ino") != seen.get("temp_ino"):
        pytest.skip(f"the filesystem gave the other file a new inode here: {seen}")
    assert target.exists(), (
        f"the failed snapshot deleted another job's {target.name} (inode {seen}); "
        f"stderr: {done.stderr.strip()}"
    )


@pytest.mark.skipif(not IS_ROOT, reason="chattr +i needs root")
def test_verify_repair_that_failed_still_advises_verify_repair(history: Path) -> None:
    """``verify --repair`` with one writable version made immutable (``chattr +i``): the
    others are repaired and the error line says ``cannot chmod ...: Operation not
    permitted [EPERM]``, but the report printed just before still ends with ``1 can be
    fixed with 'ingester verify --repair'`` (and ``--json`` keeps ``"repairable": true``):
    the advice is the very command that just failed on it, so an operator (or a script
    that follows the advice) loops. The report comes from the second ``verify_history``
    in ``_repair`` (ingester/cli/verify.py ~66-75), which knows nothing of ``failures``.
    Expected: after a failed repair, the summary does not offer ``verify --repair`` for
    that version (it names the cause instead, as docs/operations.md's 'fix it by hand'
    implies)."""
    names = _versions(history)
    for name in names:
        os.chmod(history / name, 0o644)
    stuck = history / names[0]
    done = run_tool("chattr", "+i", str(stuck))
    if done.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {done.stderr.strip()}")
    try:
        result = run_cli(history.parent, "verify", "--repair")
    finally:
        run_tool("chattr", "-i", str(stuck))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot chmod" in result.stderr and "[EPERM]" in result.stderr
    assert "fixed with 'ingester verify --repair'" not in result.stdout, result.stdout


def test_check_bad_global_setting_with_a_failing_stderr_exits_1_under_a_critical_line(
    root: Path,
) -> None:
    """``check`` with a bad global setting (``INGESTER_RETENTION_DAYS=abc``) and stderr
    on a full device: stdout says ``INGESTER CRITICAL - usage error: ...`` (printed by the
    new ``plugin_usage_line`` call, ingester/cli/group.py ~261-268), then click's usage
    text fails on stderr (ENOSPC), and the top-level ``except OSError`` (group.py
    ~163-172) exits 1. Observed: exit 1, which Nagios reads as WARNING, under a line that
    says CRITICAL. Expected: exit 2 (CRITICAL), as the line and docs/monitoring.md say."""
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "ingester", "--root", str(root), "check"],
            env=cli_env(INGESTER_RETENTION_DAYS="abc"),
            stdout=subprocess.PIPE,
            stderr=full,
            text=True,
            check=False,
        )
    assert result.stdout.startswith("INGESTER CRITICAL - usage error:"), result.stdout
    assert result.returncode == 2, f"exit {result.returncode} under {result.stdout!r}"


@pytest.mark.skipif(not IS_ROOT, reason="chattr +i needs root")
def test_one_immutable_version_makes_the_snapshot_copy_every_version(
    history: Path, tmp_path: Path
) -> None:
    """One version made immutable (``chattr +i``, an operator protecting it) cannot be
    hard-linked (EPERM). ``build_snapshot_tree`` (ingester/ops/snapshot.py ~212-228)
    takes any EPERM as "this user may not link here" (``_COPY_INSTEAD``, line ~68) and
    sets ``link = False`` for every version after it: observed ``0 linked, 4 copied``
    on the history's own filesystem, where three links would do (docs/backup.md: copies
    only on another filesystem, for a user who may not link, or with ``--copy``; 57 s
    instead of 1 s for 20,000 versions). Pre-existing, but it is the cost the read-only
    copy path was to avoid. Expected: only the version that cannot be linked is copied
    (``3 linked, 1 copied``), or a second EPERM before giving up on links."""
    names = _versions(history)
    oldest = history / names[0]
    done = run_tool("chattr", "+i", str(oldest))
    if done.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {done.stderr.strip()}")
    try:
        result = run_cli(history.parent, "snapshot", str(tmp_path / "snap"))
    finally:
        run_tool("chattr", "-i", str(oldest))
    assert result.returncode == 0, result.stdout + result.stderr
    n = len(names)
    assert f"({n - 1} linked, 1 copied)" in result.stdout, result.stdout
