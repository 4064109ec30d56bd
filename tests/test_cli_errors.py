"""Never a traceback: every command, against folders it cannot read or that are missing,
and with odd standard streams, ends in one line on stderr and an exit code.

The permission cases run the real CLI as another user (``setpriv``), since root reads
everything. They need the interpreter and the package reachable by that user; where
they are not, the tests say so and skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import IS_ROOT, SAMPLES, cli_env, run_cli

OTHER_UID = 4242
HISTORY = "console-usage-history"
SAMPLE = SAMPLES / "valid" / "full.json"
AS_OTHER = [
    "setpriv",
    f"--reuid={OTHER_UID}",
    f"--regid={OTHER_UID}",
    "--clear-groups",
]

# Every command, with arguments that would succeed on a healthy history.
COMMANDS: list[tuple[str, ...]] = [
    ("init",),
    ("ingest", str(SAMPLE)),
    ("submit", str(SAMPLE)),
    ("watch", "--once"),
    ("status",),
    ("status", "--json"),
    ("list",),
    ("list", "--json"),
    ("show",),
    ("show", "--at", "2099-01-01T00:00:00Z"),
    ("cleanup",),
    ("cleanup", "--dry-run"),
    ("cleanup", "--dry-run", "--json"),
    ("verify",),
    ("verify", "--json"),
    ("verify", "--repair"),
    ("forecast",),
    ("forecast", "--json"),
    ("export",),
]


def _why_not_other_user() -> str | None:
    if not IS_ROOT:
        return "needs root to switch to another uid"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    probe = subprocess.run(
        [*AS_OTHER, sys.executable, "-c", "import ingester.cli"],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd="/",
        check=False,
    )
    if probe.returncode != 0:
        return (
            f"uid {OTHER_UID} cannot run {sys.executable} with the package "
            f"(the venv or checkout is not world-readable): {probe.stderr.strip()[-200:]}"
        )
    return None


WHY_NOT = _why_not_other_user()
needs_other_user = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


def run_as_other(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``ingester --root ROOT ARGS`` as uid/gid 4242 with no supplementary groups."""
    return subprocess.run(
        [*AS_OTHER, sys.executable, "-m", "ingester", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        cwd="/",
        check=False,
    )


def assert_one_line_or_fine(result: subprocess.CompletedProcess[str], what: str) -> None:
    """Exit 0, or exit 1 with exactly one ``error:`` line; never a traceback or a bug exit."""
    context = f"{what}: exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr, context
    assert result.returncode in (0, 1), context
    if result.returncode == 1 and what.split()[0] != "watch":
        lines = [
            line
            for line in result.stderr.splitlines()
            if line.strip() and not line.startswith("warning:")
        ]
        assert len(lines) == 1, context
        assert lines[0].startswith("error:"), context


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A temp folder every user can enter (pytest's own tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="ingester-uid-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def make_history(root: Path) -> None:
    root.mkdir()
    for args in (("init",), ("ingest", str(SAMPLE))):
        result = run_cli(root, *args)
        assert result.returncode == 0, result.stderr


def layout_missing_root(base: Path) -> Path:
    return base / "no-such-root"


def layout_unreadable_root(base: Path) -> Path:
    root = base / "root"
    make_history(root)
    root.chmod(0o700)
    return root


def layout_unreadable_history(base: Path) -> Path:
    root = base / "root"
    make_history(root)
    (root / HISTORY).chmod(0o750)  # the service's history, seen by someone outside its group
    return root


def layout_missing_history(base: Path) -> Path:
    root = base / "root"
    make_history(root)
    shutil.rmtree(root / HISTORY)
    return root


LAYOUTS = {
    "missing root": layout_missing_root,
    "unreadable root": layout_unreadable_root,
    "unreadable history": layout_unreadable_history,
    "missing history": layout_missing_history,
}


@needs_other_user
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_command_as_another_user_gives_one_line(shared_base: Path, layout: str) -> None:
    root = LAYOUTS[layout](shared_base)
    for args in COMMANDS:
        result = run_as_other(root, *args)
        assert_one_line_or_fine(result, " ".join(args) + f" ({layout})")


def test_every_command_on_a_symlink_loop_gives_one_line(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / HISTORY).symlink_to(HISTORY)  # ELOOP on every path through it
    for args in COMMANDS:
        result = run_cli(root, *args)
        assert_one_line_or_fine(result, " ".join(args) + " (history is a symlink loop)")


def test_every_command_with_a_missing_root_gives_one_line(tmp_path: Path) -> None:
    root = tmp_path / "gone"
    for args in COMMANDS:
        if args[0] in ("init", "ingest", "submit", "watch", "cleanup") and "--dry-run" not in args:
            continue  # these create the root: fine as root
        result = run_cli(root, *args)
        assert_one_line_or_fine(result, " ".join(args) + " (missing root)")
        assert result.returncode == 1
        assert not root.exists()


def _shell_cli(root: Path, tail: str) -> subprocess.CompletedProcess[str]:
    cmd = f'exec "{sys.executable}" -m ingester --root "{root}" {tail}'
    return subprocess.run(
        ["sh", "-c", cmd], capture_output=True, text=True, timeout=60, env=cli_env(), check=False
    )


def test_submit_from_a_closed_stdin(root: Path) -> None:
    result = _shell_cli(root, "submit - <&-")
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert result.stderr.strip() == "error: cannot read standard input: it is closed"


def test_closed_stdout_is_not_a_traceback(root: Path) -> None:
    assert run_cli(root, "init").returncode == 0
    result = _shell_cli(root, f'submit "{SAMPLE}" >&-')
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 1)
    # Nothing was written into a file that took descriptor 1 for stdout's place.
    for path in (root / HISTORY).iterdir():
        if path.is_file():
            assert b"spool" not in path.read_bytes()


def test_broken_pipe_on_stdout_is_quiet(root: Path) -> None:
    assert run_cli(root, "init").returncode == 0
    for _ in range(3):
        assert run_cli(root, "ingest", str(SAMPLE)).returncode == 0
    for args in (("list", "--json"), ("status",), ("show",), ("verify", "--json")):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before anything is written
        try:
            result = subprocess.run(
                [sys.executable, "-m", "ingester", "--root", str(root), *args],
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                env=cli_env(),
                check=False,
            )
        finally:
            os.close(write_end)
        assert "Traceback" not in result.stderr, result.stderr
        assert "Exception ignored" not in result.stderr, result.stderr
        assert result.returncode == 1, result.stderr


def test_an_unexpected_error_is_one_line_and_exit_70(root: Path, tmp_path: Path) -> None:
    # A module that fails in a way no command expects stands in for a bug.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import ingester.queries as r\n"
        "def boom(*a, **k):\n"
        "    raise ZeroDivisionError('boom')\n"
        "r.list_report = boom\n"
        "import ingester.cli_report as c\n"
        "c.list_report = boom\n"
    )
    assert run_cli(root, "init").returncode == 0
    result = run_cli(root, "list", PYTHONPATH=str(shim))
    assert "Traceback" not in result.stderr
    assert result.returncode == 70
    assert result.stderr.strip() == (
        "error: internal error: ZeroDivisionError: boom (please report)"
    )


@needs_other_user
def test_status_says_when_the_spool_cannot_be_read(shared_base: Path) -> None:
    root = shared_base / "root"
    make_history(root)
    (root / "spool" / "rejected").chmod(0o700)
    (root / "spool").chmod(0o711)  # enterable, not listable: the counts would be guesses
    result = run_as_other(root, "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["spool"]["problem"] == "unreadable (Permission denied)"
    assert report["rejected"]["problem"] == "unreadable (Permission denied)"
    text = run_as_other(root, "status").stdout
    assert f"{root / 'spool'} (unreadable (Permission denied))" in text


def test_file_names_that_are_not_utf8_are_printed_as_their_bytes(
    root: Path, tmp_path: Path
) -> None:
    # A strict stdout (any UTF-8 locale but C) must not fail after the work is done.
    odd = os.fsencode(tmp_path) + b"/snap\xff.json"
    with open(odd, "wb") as handle:
        handle.write(SAMPLE.read_bytes())
    cases = ((b"ingest", odd), (b"submit", b"--name", b"snap\xff.json", odd))
    for args in (*cases, (b"ingest", odd + b".missing")):
        result = subprocess.run(
            [os.fsencode(sys.executable), b"-m", b"ingester", b"--root", os.fsencode(root), *args],
            capture_output=True,
            timeout=60,
            env=cli_env(PYTHONIOENCODING="utf-8:strict"),
            check=False,
        )
        assert b"Traceback" not in result.stderr
        assert b"internal error" not in result.stderr, result.stderr
        assert result.returncode == (1 if args[-1].endswith(b".missing") else 0), result.stderr
        assert b"snap\xff.json" in result.stdout


def test_a_full_stdout_is_one_line(root: Path) -> None:
    assert run_cli(root, "ingest", str(SAMPLE)).returncode == 0
    for tail in ("status > /dev/full", "show > /dev/full", "list --json > /dev/full"):
        result = _shell_cli(root, tail)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode == 1
        assert result.stderr.strip() == "error: No space left on device [ENOSPC]", result.stderr


def test_submit_to_a_root_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    """A mistyped root never becomes a spool that no watcher reads."""
    missing = tmp_path / "no-such-root"
    done = run_cli(missing, "submit", str(SAMPLES / "valid" / "full.json"))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "its parent folder does not exist" in done.stderr
    assert not missing.exists()


def test_watch_on_a_root_that_is_a_file_says_so_in_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "a-file"
    afile.write_bytes(b"")
    done = run_cli(afile, "watch", "--once")
    assert done.returncode == 1
    assert "cannot start" in done.stderr and "[ENOTDIR]" in done.stderr
    assert "[Errno" not in done.stderr and "Traceback" not in done.stderr
