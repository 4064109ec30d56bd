"""What this machine lets a test make real, asked in one place.

Root ignores file permissions, so "permission denied" is made real with ``chattr +i``
(EPERM even for root), a small tmpfs (ENOSPC) remounted read-only (EROFS), or the real
CLI run as another uid through ``setpriv``. Each probe tries the fault once and returns
why it cannot be made here (``None`` when it can), so a test skips saying why.
The fixtures ``can_chattr`` and ``can_mount`` wrap the first two for a test module
(import them into it). Where no real fault can be made at the right instant, strace
injects one (a delay or an error in one system call): the ``needs_strace`` marks skip
a test where it cannot run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from . import IS_ROOT, cli_env, run_cli, wait_for
from .process import kill_group, program_of_strace

__all__ = [
    "AS_OTHER",
    "OTHER_UID",
    "STRACE",
    "bind_mount",
    "can_chattr",
    "can_mount",
    "chattr_problem",
    "fill",
    "has_ipv6_loopback",
    "immutable",
    "limited_threads",
    "loop_ext4",
    "mount_problem",
    "needs_strace",
    "needs_strace_root",
    "other_user_problem",
    "others_folder",
    "quarantine_fsyncs",
    "run_as_other",
    "run_held_after",
    "run_tool",
    "strace_attached",
    "strace_problem",
    "tmpfs",
    "traced_program",
    "umount_all",
]

OTHER_UID = 4242
"""The uid (and gid) a test runs the CLI as, to be refused what root would be allowed."""

AS_OTHER = ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups"]


STRACE = shutil.which("strace") or "strace"
"""The strace a test runs its commands under: a delay or a fault injected into one
system call, or a trace of them. The bare name where it is missing (the test skips)."""


def strace_problem(*, root: bool = True) -> str | None:
    """Why a test cannot run a command under strace here. ``root``: the test also needs
    root, to attach to a process it did not start or to trace another user's command."""
    if shutil.which("strace") is None:
        return "strace is not installed"
    if root and not IS_ROOT:
        return "tracing here needs root (strace attaches, or traces another user's command)"
    return None


def traced_program(tracer: int, timeout: float = 10.0) -> int:
    """The pid of the program strace (pid ``tracer``) runs, waited for up to ``timeout``
    seconds (see :func:`.process.program_of_strace`). A signal meant for the program goes
    there; strace then exits with its code."""

    def program() -> int | None:
        try:
            return program_of_strace(tracer)
        except FileNotFoundError:  # gone, or a zombie: its exe is no longer readable
            raise AssertionError(f"strace {tracer} has exited") from None

    found = wait_for(program, timeout, f"the program strace {tracer} runs")
    assert isinstance(found, int)
    return found


def strace_attached(tracer: subprocess.Popen[Any], pid: int) -> bool:
    """Whether strace (``tracer``, started with ``-p PID``) is attached to process
    ``pid`` yet: a condition for :func:`wait_for`. Fails at once, saying which, when
    strace or the process has ended, since it never will be then."""
    if tracer.poll() is not None:
        raise AssertionError(f"strace exited {tracer.returncode} before it attached to {pid}")
    try:
        return "TracerPid:\t0\n" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise AssertionError(f"process {pid} ended before strace attached to it") from None


def run_held_after(
    root: Path,
    args: tuple[str, ...],
    path: Path,
    syscall: str,
    meanwhile: Callable[[], object],
    *,
    when: int = 1,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """Run ``ingester --root ROOT ARGS`` under strace, stopped (SIGSTOP, every thread)
    as the ``when``-th ``syscall`` naming ``path`` (the first by default) returns; call
    ``meanwhile`` while it is stopped, then let it go on; return it completed, its
    output captured.

    The stop is seen in strace's own trace (``stopped by SIGSTOP``), never guessed from
    time: what ``meanwhile`` does (a deletion) falls exactly between that call and the
    command's next one.
    """
    trace = root.parent / f"held-{os.urandom(3).hex()}.trace"
    command = [
        *(STRACE, "-f", "-qq", "-o", str(trace), "-P", str(path), "-e", f"trace={syscall}"),
        *("-e", f"inject={syscall}:signal=SIGSTOP:when={when}"),
        *(sys.executable, "-m", "ingester", "--root", str(root), *args),
    ]
    # As a context manager, Popen closes the pipes however this ends: left to the
    # garbage collector, they would warn in whichever test runs then. In a group of
    # their own, strace and the program it holds are ended together.
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(**env),
        start_new_session=True,
    ) as tracer:
        try:

            def stopped() -> bool:
                return trace.exists() and "stopped by SIGSTOP" in trace.read_text()

            wait_for(lambda: stopped() or tracer.poll() is not None, 30, f"{syscall} {path}")
            if tracer.poll() is not None:
                _out, err = tracer.communicate()
                raise AssertionError(f"{args} ended before its {syscall} of {path}: {err}")
            # Found while it is held: what ``meanwhile`` does may end it (kill -9), and
            # strace with it, and then there is no strace left to ask.
            program = traced_program(tracer.pid)
            meanwhile()
            with contextlib.suppress(ProcessLookupError):  # ended by ``meanwhile``
                os.kill(program, signal.SIGCONT)
            out, err = tracer.communicate(timeout=60)
        finally:
            # strace killed alone would let the program go, stopped for ever.
            kill_group(tracer)
    return subprocess.CompletedProcess(command, tracer.returncode, out, err)


needs_strace = pytest.mark.skipif(
    strace_problem(root=False) is not None, reason=strace_problem(root=False) or ""
)
"""Skip unless strace runs the test's own commands here."""

needs_strace_root = pytest.mark.skipif(strace_problem() is not None, reason=strace_problem() or "")
"""Skip unless strace runs here, as root."""


def limited_threads(threads: int, uid: int) -> tuple[str, ...]:
    """The command prefix that runs a program as ``uid`` (its gid the same), allowed
    ``threads`` threads, its main one included (``prlimit --nproc``).

    The limit counts every process and thread of the real uid, so each test that runs
    under it needs a uid of its own: tests running as another uid meanwhile would use up
    its threads. prlimit comes first: setpriv then runs the program itself, as the other
    uids' tests do (an exec through another program may be refused where the
    interpreter lies under a folder closed to that uid)."""
    return (
        *(shutil.which("prlimit") or "prlimit", f"--nproc={threads}:{threads}", "--"),
        *("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"),
    )


def quarantine_fsyncs(root: Path, trace: Path, junk: bytes) -> list[int]:
    """Where the quarantine folder's fsyncs fall in ``watch --once`` setting one drop of
    ``junk`` aside: their 1-based places among all its ``fsync`` calls (what
    ``inject=fsync:when=N`` needs), traced into ``trace`` by strace. Two such runs are
    made and the second counts: the first one also writes the metadata."""
    spool = root / "spool"
    for n in range(2):
        (spool / f"warm-{n}.json").write_bytes(junk)
        traced = run_cli(
            root,
            *("watch", "--once"),
            wrapper=(STRACE, "-f", "-qq", "-y", "-e", "trace=fsync", "-o", str(trace)),
        )
        assert traced.returncode == 0, traced.stderr
    calls = [line for line in trace.read_text().splitlines() if " fsync(" in line]
    folder = spool / "rejected"
    return [
        n
        for n, line in enumerate(calls, 1)
        if line.rstrip().split("<", 1)[-1].startswith(f"{folder}>")
    ]


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a system tool (chattr, mount, umount), capturing its output; never raises."""
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)


def chattr_problem(probe: Path) -> str | None:
    """Why ``chattr +i`` cannot stop a write into a folder here (``probe``: a new path)."""
    if not IS_ROOT:
        return "chattr +i needs root"
    if shutil.which("chattr") is None:
        return "chattr (e2fsprogs) is not installed"
    probe.mkdir(parents=True, exist_ok=True)
    done = run_tool("chattr", "+i", str(probe))
    if done.returncode != 0:
        return f"chattr +i does not work here: {done.stderr.strip()}"
    try:
        (probe / "x").touch()
    except PermissionError:
        return None
    finally:
        run_tool("chattr", "-i", str(probe))
    return "chattr +i did not stop a write here"


def mount_problem(probe: Path) -> str | None:
    """Why a small tmpfs cannot be mounted and made read-only here (``probe``: a new
    path). Read-only is tried the way the tests make it: a bind mount over the tmpfs,
    remounted ``ro`` (a plain remount fails while a file in it is open for writing)."""
    if not IS_ROOT:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None:
        return "mount is not installed"
    probe.mkdir(parents=True, exist_ok=True)
    done = run_tool("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe))
    if done.returncode != 0:
        return f"cannot mount a tmpfs here: {done.stderr.strip()}"
    try:
        for step in (["--bind", str(probe), str(probe)], ["-o", "remount,bind,ro", str(probe)]):
            result = run_tool("mount", *step)
            if result.returncode != 0:
                return f"cannot make a read-only mount here: {result.stderr.strip()}"
    finally:
        umount_all(probe)
    return None


def has_ipv6_loopback() -> bool:
    """Whether ``[::1]`` can be bound here (containers often have no IPv6 at all)."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def run_as_other(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``ingester --root ROOT ARGS`` as uid/gid :data:`OTHER_UID` with no supplementary
    groups (from ``/``, so no folder of the test's is the working one)."""
    return subprocess.run(
        [*AS_OTHER, sys.executable, "-m", "ingester", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        cwd="/",
        check=False,
    )


@contextlib.contextmanager
def others_folder(prefix: str, name: str = "root") -> Iterator[Path]:
    """A new folder ``name`` owned by :data:`OTHER_UID`, as systemd's StateDirectory
    makes a service's, in a fresh base folder every user may enter (``mkdtemp``'s 0700
    would keep that user out); the base and all in it are removed afterwards.

    Yields the folder; its parent is the base, root's own, for what a test puts beside.
    """
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        base.chmod(0o755)
        folder = base / name
        folder.mkdir()
        os.chown(folder, OTHER_UID, OTHER_UID)
        yield folder
    finally:
        shutil.rmtree(base, ignore_errors=True)


def other_user_problem() -> str | None:
    """Why the CLI cannot be run as :data:`OTHER_UID` here (root, setpriv, and the
    interpreter and package reachable by that user are needed)."""
    if not IS_ROOT:
        return "needs root to switch to another uid"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    probe = subprocess.run(
        [*AS_OTHER, sys.executable, "-c", "import ingester.cli.group"],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd="/",
        check=False,
    )
    if probe.returncode != 0:
        return (
            f"uid {OTHER_UID} cannot run {sys.executable} with the package (the "
            "interpreter, its libraries, the venv or the checkout are closed to that uid): "
            f"{probe.stderr.strip()[-200:]}"
        )
    return None


@pytest.fixture(scope="session")
def can_chattr(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip, saying why, where ``chattr +i`` cannot make "permission denied" real."""
    reason = chattr_problem(tmp_path_factory.mktemp("chattr-probe") / "probe")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def can_mount(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip, saying why, where a tmpfs cannot be mounted and made read-only."""
    reason = mount_problem(tmp_path_factory.mktemp("mount-probe") / "probe")
    if reason:
        pytest.skip(reason)


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i path`` for the block (undone however it ends)."""
    done = run_tool("chattr", "+i", str(path))
    assert done.returncode == 0, done.stderr
    try:
        yield
    finally:
        run_tool("chattr", "-i", str(path))


def _mounted_on(path: Path) -> bool:
    """Whether something is mounted on ``path``: a bind mount of a folder of the same
    filesystem is one too, which ``os.path.ismount`` (a change of device) cannot see."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as table:
            points = [line.split()[4] for line in table]
    except OSError:
        return os.path.ismount(path)
    # mountinfo escapes a space, tab, newline and backslash in octal.
    escaped = "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in target)
    return escaped in points


def umount_all(path: Path) -> None:
    """Undo every mount stacked on ``path`` (lazily where one is busy)."""
    for _ in range(5):
        if not _mounted_on(path):
            return
        if run_tool("umount", str(path)).returncode != 0:
            run_tool("umount", "-l", str(path))


@contextlib.contextmanager
def bind_mount(source: Path, target: Path) -> Iterator[Path]:
    """``source`` also seen at ``target`` (a bind mount) for the block, always unmounted after."""
    target.mkdir(parents=True, exist_ok=True)
    done = run_tool("mount", "--bind", str(source), str(target))
    assert done.returncode == 0, done.stderr
    try:
        yield target
    finally:
        umount_all(target)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "4m", mode: str = "0755") -> Iterator[Path]:
    """A fresh tmpfs of ``size`` on ``path`` for the block, always unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    done = run_tool("mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(path))
    assert done.returncode == 0, done.stderr
    try:
        yield path
    finally:
        umount_all(path)


def fill(folder: Path) -> Path:
    """Write into ``folder`` until its filesystem is full (ENOSPC); return the filler
    file, whose removal gives the room back."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for size in (65536, 4096, 512, 1):  # big chunks first, then fill the last page
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


@contextlib.contextmanager
def loop_ext4(folder: Path, *mkfs_options: str) -> Iterator[Path]:
    """A fresh 16 MiB ext4 made with ``mkfs_options``, loop-mounted on ``folder/mnt`` for
    the block and always unmounted after; skips where it cannot be made or mounted."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 (e2fsprogs) is not installed")
    image = folder / "ext4.img"
    with image.open("wb") as f:
        f.truncate(16 << 20)
    made = run_tool("mkfs.ext4", "-q", "-F", *mkfs_options, str(image))
    assert made.returncode == 0, made.stderr
    point = folder / "mnt"
    point.mkdir()
    mounted = run_tool("mount", "-o", "loop", str(image), str(point))
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount an image here: {mounted.stderr.strip()}")
    try:
        yield point
    finally:
        umount_all(point)
