"""Never a traceback: every command, against folders it cannot read or that are missing,
and with odd standard streams, ends in one line on stderr and an exit code.

The permission cases run the real CLI as another user (``setpriv``), since root reads
everything. They need the interpreter and the package reachable by that user; where
they are not, the tests say so and skip.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import IS_ROOT, SAMPLES, cli_env, run_cli
from support.capabilities import OTHER_UID, other_user_problem, run_as_other, tmpfs
from support.plugin_output import perfdata_problems

HISTORY = "console-usage-history"
SAMPLE = SAMPLES / "valid" / "full.json"

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
]


WHY_NOT = other_user_problem()
needs_other_user = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


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


# Every command form that must not create a history, on a root that does not exist.
# init, watch and serve --watch create a new history (documented); restore rebuilds one
# where it is told to, on a new machine too.
NOT_CREATING: list[tuple[str, ...]] = [
    *(args for args in COMMANDS if args[0] not in ("init", "watch")),
    ("cleanup", "--json"),
    ("ingest", str(SAMPLE), str(SAMPLE)),
    ("snapshot", "DEST"),
    ("snapshot", "--tar", "-"),
    ("export",),
    ("export", "--format", "jsonl", "-o", "DEST"),
    ("mirror", "--once", "s3://bucket-name/prefix", "--endpoint-url", "http://127.0.0.1:9"),
    ("adopt",),
    ("check",),
]


@pytest.mark.parametrize("args", NOT_CREATING, ids=" ".join)
def test_a_missing_root_is_refused_in_one_line_and_nothing_is_created(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    root = tmp_path / "gone"
    args = tuple(str(tmp_path / "dest") if a == "DEST" else a for a in args)
    result = run_cli(root, *args)
    what = " ".join(args) + " (missing root)"
    line = f"root folder {root} does not exist"
    assert "Traceback" not in result.stderr, what
    if args[0] == "check":  # a monitoring plugin: the line is its CRITICAL summary
        assert result.returncode == 2, what
        assert line in result.stdout, what
    elif args[0] == "adopt":  # the same line, with where to point --root instead
        assert result.returncode == 1, what
        assert f"error: nothing to adopt: {line};" in result.stderr, what
    else:
        assert result.returncode == 1, what
        assert result.stderr == f"error: {line}\n", what
    assert not root.exists(), what
    assert not (tmp_path / "dest").exists(), what


def test_cleanup_in_a_root_with_no_history_creates_none(tmp_path: Path) -> None:
    for args in (("cleanup",), ("cleanup", "--json"), ("verify", "--repair")):
        result = run_cli(tmp_path, *args)
        assert result.returncode == 1
        assert result.stderr.startswith(f"error: no history at {tmp_path / HISTORY}")
        assert list(tmp_path.iterdir()) == []


def test_ingest_creates_the_history_in_a_root_that_exists(tmp_path: Path) -> None:
    assert run_cli(tmp_path, "ingest", str(SAMPLE)).returncode == 0
    assert (tmp_path / HISTORY / "_metadata.json").is_file()


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


@pytest.mark.parametrize(
    ("tail", "what"), [("export", "the export"), ("snapshot --tar -", "the tar stream")]
)
def test_a_result_for_a_closed_stdout_is_refused_not_lost(root: Path, tail: str, what: str) -> None:
    # The output is the command's result: exit 0 with it written into nothing would
    # pass for an export or a backup that was never made.
    make_history(root / "r")
    result = _shell_cli(root / "r", f"{tail} >&-")
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"error: standard output is closed: {what} would go nowhere; redirect it or give a file\n"
    )


@pytest.mark.parametrize(
    ("tail", "what"),
    [
        ("show", "the version"),
        ("list", "the list"),
        ("status --json", "the status"),
        ("forecast", "the forecast"),
    ],
)
def test_a_report_for_a_closed_stdout_is_refused(root: Path, tail: str, what: str) -> None:
    """These commands are their output: exit 0 with it written into nothing would pass
    for a version saved or a report read by a wrapper (``show > "$f"`` gone wrong)."""
    make_history(root / "r")
    result = _shell_cli(root / "r", f"{tail} >&-")
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"error: standard output is closed: {what} would go nowhere; redirect it\n"
    )


def test_ingest_with_a_closed_stdout_stores_nothing(root: Path) -> None:
    """``ingest``'s lines are the one record of which versions it made: with nowhere to
    say them it stores nothing, rather than versions no output names."""
    assert run_cli(root, "init").returncode == 0
    result = _shell_cli(root, f'ingest "{SAMPLE}" >&-')
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        "error: standard output is closed: the lines saying what is stored would go "
        "nowhere; redirect it\n"
    )
    assert [p.name for p in (root / HISTORY).iterdir() if p.name[:1].isdigit()] == []


def _tree(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every entry under ``root``: its mode, and its bytes (a file) or target (a link)."""
    tree: dict[str, tuple[int, bytes | str | None]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            tree[str(path)] = (st.st_mode, os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            tree[str(path)] = (st.st_mode, path.read_bytes())
        else:
            tree[str(path)] = (st.st_mode, None)
    return tree


@pytest.mark.parametrize(
    ("tail", "what"),
    [
        ("verify", "the report"),
        ("verify --json", "the report"),
        ("verify --repair", "the report"),
        ("cleanup", "the lines saying what was deleted"),
        ("cleanup --json", "the lines saying what was deleted"),
        ("cleanup --dry-run", "the plan"),
        ("snapshot DEST", "the line saying what the snapshot holds"),
        ("export -o DEST", "the line saying what was exported"),
        ("adopt", "the report of what was adopted"),
        ("schema", "the schema"),
        (f'submit --dry-run "{SAMPLE}"', "the verdict"),
        ("restore s3://bucket/prefix --root DEST", "the lines saying what was restored"),
    ],
)
def test_a_command_whose_output_is_its_record_refuses_a_closed_stdout_before_acting(
    tmp_path: Path, tail: str, what: str
) -> None:
    """Started with stdout closed (given /dev/null, which takes every line without an
    error), a command that reports, or whose lines are the one record of what it
    changed, refuses in one line before it does anything: never a silent exit 0, and
    never a deletion, repair or copy no output names. Where it would have written,
    nothing was written: a repair it would have made is still to be made."""
    root = tmp_path / "r"
    make_history(root)
    (root / "console-usage-synced.json").unlink()  # what verify --repair would put back
    dest = tmp_path / "dest"
    before = _tree(tmp_path)
    result = _shell_cli(root, f"{tail.replace('DEST', str(dest))} >&-")
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"error: standard output is closed: {what} would go nowhere; redirect it\n"
    )
    assert _tree(tmp_path) == before


def test_init_with_a_closed_stdout_makes_nothing(tmp_path: Path) -> None:
    result = _shell_cli(tmp_path / "new", "init >&-")
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        "error: standard output is closed: the lines saying what was made would go "
        "nowhere; redirect it\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_broken_pipe_on_stdout_is_quiet(root: Path) -> None:
    assert run_cli(root, "init").returncode == 0
    for _ in range(3):
        assert run_cli(root, "ingest", str(SAMPLE)).returncode == 0
    for args in (("list", "--json"), ("status",), ("show",), ("verify", "--json")):
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before anything is written
        try:
            result = run_cli(root, *args, stdout=write_end)
        finally:
            os.close(write_end)
        assert "Traceback" not in result.stderr, result.stderr
        assert "Exception ignored" not in result.stderr, result.stderr
        assert result.returncode == 1, result.stderr


def _large_version(root: Path, tmp_path: Path) -> None:
    """One version whose ``show`` text is far larger than a pipe holds (64 KiB)."""
    payload = json.loads(SAMPLE.read_text())
    payload["padding"] = "x" * 300_000
    big = tmp_path / "big.json"
    big.write_text(json.dumps(payload))
    assert run_cli(root, "init").returncode == 0
    assert run_cli(root, "ingest", str(big)).returncode == 0


# With PYTHONUNBUFFERED, Python's stdout writes through to the raw file, which would take
# a short write as complete: both settings must end the same way.
UNBUFFERED = pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "unbuffered"])


@UNBUFFERED
def test_a_reader_gone_mid_write_is_exit_1(root: Path, tmp_path: Path, unbuffered: str) -> None:
    _large_version(root, tmp_path)
    env = cli_env(PYTHONUNBUFFERED=unbuffered)
    if not unbuffered:
        env.pop("PYTHONUNBUFFERED")
    read_end, write_end = os.pipe()
    # As a context manager, Popen closes its pipe and waits however the block ends.
    with subprocess.Popen(
        [sys.executable, "-m", "ingester", "--root", str(root), "show"],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        os.close(write_end)
        try:
            # The payload is printed in one write, which is under way once its first
            # bytes arrive; the reader leaves while it waits for room, so the write
            # ends short.
            assert os.read(read_end, 100)
        finally:
            os.close(read_end)
        _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr
    assert proc.returncode == 1, stderr


@UNBUFFERED
def test_a_full_disk_under_stdout_is_an_error(
    root: Path, tmp_path: Path, can_mount: None, unbuffered: str
) -> None:
    _large_version(root, tmp_path)
    env = cli_env(PYTHONUNBUFFERED=unbuffered)
    if not unbuffered:
        env.pop("PYTHONUNBUFFERED")
    with tmpfs(tmp_path / "small", size="128k") as small, (small / "out").open("wb") as out:
        result = subprocess.run(
            [sys.executable, "-m", "ingester", "--root", str(root), "show"],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
    assert result.returncode == 1, result.stderr
    assert (
        result.stderr.strip()
        == "error: cannot write to standard output: No space left on device [ENOSPC]"
    )


def test_an_unexpected_error_is_one_line_and_exit_70(root: Path, tmp_path: Path) -> None:
    # A module that fails in a way no command expects stands in for a bug.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import ingester.ops.queries as r\n"
        "def boom(*a, **k):\n"
        "    raise ZeroDivisionError('boom')\n"
        "r.list_report = boom\n"
        "import ingester.cli.versions as c\n"
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
    # Counts of what could not be listed are unknown, never a reassuring 0.
    assert report["spool"]["backlog"] is None and report["rejected"]["count"] is None
    text = run_as_other(root, "status").stdout
    assert f"{root / 'spool'} (unreadable (Permission denied)); backlog unknown" in text


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


def test_a_name_holding_a_control_character_stays_one_line(root: Path, tmp_path: Path) -> None:
    # A newline or an escape in a name must not split a result or an error in two, nor
    # reach the terminal raw: it is written as the log writes it.
    odd = "snap\n\x1b[2Jname"
    valid = tmp_path / f"{odd}.json"
    valid.write_bytes(SAMPLE.read_bytes())
    invalid = tmp_path / f"{odd}-bad.json"
    invalid.write_bytes((SAMPLES / "invalid" / "no-sections.json").read_bytes())
    escaped = "snap\\n\\x1b[2Jname"
    cases: list[tuple[tuple[str, ...], int, str]] = [
        (("submit", str(invalid)), 1, "stderr"),
        (("submit", "--dry-run", str(invalid)), 1, "stderr"),
        (("submit", "--dry-run", str(valid)), 0, "stdout"),
        (("submit", str(tmp_path / f"{odd}-missing.json")), 1, "stderr"),
        (("ingest", str(invalid)), 1, "stdout"),
        (("ingest", str(valid)), 0, "stdout"),
    ]
    for args, code, stream in cases:
        result = run_cli(root, *args)
        said = {"stdout": result.stdout, "stderr": result.stderr}
        context = f"{args}: exit {result.returncode}\n{said}"
        assert result.returncode == code, context
        assert said[stream].count("\n") == 1 and escaped in said[stream], context
        assert "\x1b" not in result.stdout + result.stderr, context
    # A usage error quoting the name keeps it on its one "Error:" line.
    usage = run_cli(root, "--config", str(tmp_path / f"{odd}.toml"), "status")
    assert usage.returncode == 2, usage.stderr
    (error,) = [line for line in usage.stderr.splitlines() if "toml" in line]
    assert error.startswith("Error: --config: ") and escaped in error, usage.stderr


def test_a_submit_name_holding_a_control_character_is_refused_as_a_usage_error(
    root: Path, tmp_path: Path
) -> None:
    # The name is the caller's to choose, and the path printed is what a script keeps:
    # printed escaped, it would not be the drop's path. Names a writer gave its drops in
    # the spool are still said escaped, on one line (the test above).
    valid = tmp_path / "valid.json"
    valid.write_bytes(SAMPLE.read_bytes())
    spool = root / "spool"
    for odd, code in (
        ("a\nb.json", "U+000A"),
        ("a\x1b[2Jb.json", "U+001B"),
        ("a\x85.json", "U+0085"),
        ("a\u202eb.json", "U+202E"),
    ):
        result = run_cli(root, "submit", "--name", odd, str(valid))
        assert result.returncode == 2, result
        assert result.stdout == "", result
        (line,) = result.stderr.strip().splitlines()[-1:]
        assert "--name" in line and code in line and "control character" in line, result.stderr
        assert "\x1b" not in result.stderr, result.stderr
        assert not spool.exists() or not [p for p in spool.iterdir() if p.suffix == ".json"]
    kept = run_cli(root, "submit", "--name", "café\tné.json", str(valid))
    assert (kept.returncode, kept.stdout) == (2, ""), kept.stderr
    plain = run_cli(root, "submit", "--name", "café.json", str(valid))
    assert (plain.returncode, plain.stdout) == (0, f"{spool / 'café.json'}\n"), plain.stderr


def test_a_full_stdout_is_one_line_that_names_it(root: Path) -> None:
    """A full disk under ``> file`` is said to be standard output's, not left to be
    taken for the history's."""
    assert run_cli(root, "ingest", str(SAMPLE)).returncode == 0
    for command in ("status", "show", "list --json", "forecast", "verify", "init"):
        result = _shell_cli(root, f"{command} > /dev/full")
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode == 1, command
        assert result.stderr == (
            "error: cannot write to standard output: No space left on device [ENOSPC]\n"
        ), command


def test_submit_to_a_root_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    """A mistyped root never becomes a spool that no watcher reads."""
    missing = tmp_path / "no-such-root"
    done = run_cli(missing, "submit", str(SAMPLES / "valid" / "full.json"))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr == f"error: root folder {missing} does not exist\n"
    assert not missing.exists()


def test_watch_on_a_root_that_is_a_file_says_so_in_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "a-file"
    afile.write_bytes(b"")
    done = run_cli(afile, "watch", "--once")
    assert done.returncode == 1
    assert "cannot start" in done.stderr and "[ENOTDIR]" in done.stderr
    assert "[Errno" not in done.stderr and "Traceback" not in done.stderr
    # The kernel's "Not a directory" names no path: the line names the file in the way.
    assert f"{afile} is not a folder [ENOTDIR]" in done.stderr, done.stderr


@pytest.mark.parametrize("command", ["watch", "submit"])
def test_a_file_above_a_folder_to_make_is_named(tmp_path: Path, command: str) -> None:
    # A spool two levels below a file: mkdir fails on the path the user gave, and only
    # the name of the file in the way tells what to fix.
    in_the_way = tmp_path / "spool-parent"
    in_the_way.write_bytes(b"")
    spool = in_the_way / "deeper" / "spool"
    args = ("--once",) if command == "watch" else (str(SAMPLES / "valid" / "full.json"),)
    done = run_cli(tmp_path, "--spool-dir", str(spool), command, *args)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"cannot create folder {spool}: {in_the_way} is not a folder [ENOTDIR]" in done.stderr


@pytest.mark.parametrize("name", ["console-usage-history", "spool"])
@pytest.mark.parametrize(
    "args",
    [
        ("watch", "--once"),
        ("init",),
        ("ingest", str(SAMPLES / "valid" / "full.json")),
        ("submit", str(SAMPLES / "valid" / "full.json")),
    ],
    ids=lambda args: args[0],
)
def test_a_file_where_a_folder_belongs_is_named_as_such(
    tmp_path: Path, name: str, args: tuple[str, ...]
) -> None:
    """mkdir's "File exists" would read as if the folder were there: every command that
    makes the folder says instead that the name is not one, in the same words."""
    (tmp_path / name).write_bytes(b"")
    done = run_cli(tmp_path, *args)
    if (args[0], name == "spool") in (("submit", False), ("ingest", True)):
        assert done.returncode == 0, done.stderr  # the folder in the way is not its own
        return
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    wording = f"cannot create folder {tmp_path / name}: exists and is not a folder [ENOTDIR]"
    assert done.stderr.rstrip("\n").endswith(wording), done.stderr
    assert "EEXIST" not in done.stderr


# -- one condition, one wording; advice that fits the cause -------------------------------

# Every command that reads a root without creating it, with arguments that would succeed.
READERS_OF_A_ROOT: list[tuple[str, ...]] = [
    *(
        args
        for args in COMMANDS
        if args[0] not in ("init", "ingest", "watch")
        and args not in [("cleanup",)]
        and "--repair" not in args
    ),
    ("export",),
    ("export", "--format", "jsonl"),
    ("export", "-o", "{out}/usage.csv"),
    ("snapshot", "{out}/snap"),
    ("snapshot", "--tar", "{out}/snap.tar"),
    ("mirror", "s3://some-bucket/usage"),
]


def test_a_missing_root_has_one_wording_in_every_command(tmp_path: Path) -> None:
    root = tmp_path / "no-such-root"
    out = tmp_path / "out"
    out.mkdir()
    expected = f"error: root folder {root} does not exist\n"
    for args in READERS_OF_A_ROOT:
        result = run_cli(root, *(a.format(out=out) for a in args))
        assert (result.returncode, result.stderr) == (1, expected), f"{args}: {result.stderr}"
        assert result.stdout == ""
    check = run_cli(root, "check")
    assert check.returncode == 2
    assert check.stdout.startswith(f"INGESTER CRITICAL - root folder {root} does not exist;")
    assert not root.exists() and not any(out.iterdir())


def layout_unreadable_newest(base: Path) -> Path:
    root = base / "root"
    make_history(root)
    for version in (root / HISTORY).glob("2*.json"):
        version.chmod(0o400)
    return root


def layout_state_folder(base: Path) -> Path:
    """The service's layout: a 0750 state folder; the user is in neither group."""
    root = base / "root"
    make_history(root)
    root.chmod(0o750)
    return root


# Everything `check` needs for its age item that this user may not read, or that is missing.
CHECK_CANNOT_JUDGE = {
    "state folder 0750": (layout_state_folder, "cannot enter {root}: Permission denied"),
    "history 0750": (layout_unreadable_history, "cannot list {root}/" + HISTORY),
    "newest version 0400": (layout_unreadable_newest, "is unreadable (Permission denied)"),
    "missing root": (layout_missing_root, "root folder {root} does not exist"),
    "missing history": (layout_missing_history, "no history at {root}/" + HISTORY),
}


def _other_user() -> str:
    """How the CLI names the other user: by name where the system has one."""
    try:
        return f"user {pwd.getpwuid(OTHER_UID).pw_name}"
    except KeyError:
        return f"uid {OTHER_UID}"


def _spool_layout(base: Path, case: str) -> Path:
    """A root whose spool the other user may not drop into, for the reason ``case``."""
    root = base / "root"
    spool = root / "spool"
    (spool / "tmp").mkdir(parents=True)
    for folder in (root, spool, spool / "tmp"):
        folder.chmod(0o755)
    if case == "not in the group":
        # The service's layout: its group alone enters the state folder.
        os.chown(root, 0, 1)
        root.chmod(0o750)
    elif case == "scratch folder not writable":
        (spool / "tmp").chmod(0o555)
    elif case == "spool not writable":
        (spool / "tmp").chmod(0o777)
    elif case == "no spool, and none can be made":
        shutil.rmtree(spool)
    elif case == "scratch folder of a group not joined":
        os.chown(spool / "tmp", 0, 1)
        (spool / "tmp").chmod(0o775)
    elif case == "spool of a group not joined":
        (spool / "tmp").chmod(0o777)
        os.chown(spool, 0, 1)
        spool.chmod(0o775)
    return root


@needs_other_user
@pytest.mark.parametrize(
    "case",
    [
        "not in the group",
        "scratch folder not writable",
        "spool not writable",
        "no spool, and none can be made",
        "scratch folder of a group not joined",
        "spool of a group not joined",
    ],
)
def test_a_dry_run_says_what_a_submit_by_this_user_would_be_refused_with(
    shared_base: Path, case: str
) -> None:
    """``submit --dry-run`` as a user who may not drop into the spool: the payload's
    verdict stands (``valid``, exit 0: a scraper's CI checks its output with no spool at
    all), and a warning says what a real submit by this user would be refused with, in
    its words and with its advice; nothing is written. The submit is then refused so."""
    root = _spool_layout(shared_base, case)
    source = shared_base / "snapshot.json"
    source.write_bytes(SAMPLE.read_bytes())
    source.chmod(0o644)
    before = _tree(shared_base)
    args = ("submit", "--name", "one.json", str(source))
    dry = run_as_other(root, *args[:3], "--dry-run", str(source))
    assert (dry.returncode, dry.stdout) == (0, f"valid {source}\n"), dry.stderr
    assert _tree(shared_base) == before
    real = run_as_other(root, *args)
    assert real.returncode == 1, real.stderr
    assert real.stderr.startswith("error: ") and len(real.stderr.splitlines()) == 1
    assert dry.stderr == (
        f"warning: {source} is valid, but a submit by {_other_user()} would be refused: "
        f"{real.stderr.removeprefix('error: ')}"
    )
    if case in (
        "not in the group",
        "scratch folder of a group not joined",
        "spool of a group not joined",
    ):
        assert "a writer of drops must be in its group, " in dry.stderr
    if case == "no spool, and none can be made":  # not "cannot enter" what is not there
        assert f"cannot create folder {root / 'spool'}: Permission denied" in dry.stderr
    assert _tree(shared_base) == before


def test_a_dry_run_where_a_submit_would_go_through_says_only_valid(tmp_path: Path) -> None:
    root = _spool_layout(tmp_path, "")
    done = run_cli(root, "submit", "--dry-run", str(SAMPLE))
    assert (done.returncode, done.stdout, done.stderr) == (0, f"valid {SAMPLE}\n", "")
    assert os.listdir(root / "spool" / "tmp") == []


@needs_other_user
@pytest.mark.parametrize("case", list(CHECK_CANNOT_JUDGE))
def test_check_that_cannot_read_is_critical_with_its_plugin_line(
    shared_base: Path, case: str
) -> None:
    """docs/monitoring.md: nothing to judge is CRITICAL (2), in the plugin's own format."""
    layout, words = CHECK_CANNOT_JUDGE[case]
    root = layout(shared_base)
    reason = words.format(root=root)
    line = run_as_other(root, "check")
    assert (line.returncode, line.stderr) == (2, ""), f"{case}: {line.stdout}{line.stderr}"
    assert line.stdout.startswith("INGESTER CRITICAL - "), line.stdout
    assert reason in line.stdout and "damaged" not in line.stdout
    assert len(line.stdout.splitlines()) == 1 and perfdata_problems(line.stdout.strip()) == []
    # The age is unknown: its performance data is left out, never an empty value.
    perf = line.stdout.split(" | ", 1)[1] if " | " in line.stdout else ""
    assert "age=" not in perf
    as_json = run_as_other(root, "check", "--json")
    assert as_json.returncode == 2, as_json.stderr
    report = json.loads(as_json.stdout)
    assert (report["status"], report["code"]) == ("CRITICAL", 2)
    age = report["checks"][0]
    assert (age["name"], age["status"], age["value"]) == ("age", "CRITICAL", None)
    assert reason in age["message"]
    items = {item["name"]: item for item in report["checks"]}
    if case == "state folder 0750":
        # Behind a folder it cannot enter, the spool and the quarantine were not seen
        # either: no count of 0, said so in the line, the perfdata and the JSON.
        assert "backlog=" not in perf and "rejected=" not in perf, line.stdout
        assert "backlog unknown (" in line.stdout and "backlog 0" not in line.stdout
        assert "rejections in the last hour unknown (" in line.stdout
        assert "0 rejected" not in line.stdout
        assert (report["backlog"], report["rejectedLastHour"]) == (None, None)
        assert items["backlog"]["value"] is None and items["rejected"]["value"] is None
        assert "Permission denied" in items["backlog"]["message"]
        assert "Permission denied" in items["rejected"]["message"]
    else:
        assert "backlog=0;" in perf and "rejected=0;" in perf
        assert (report["backlog"], report["rejectedLastHour"]) == (0, 0)


@needs_other_user
def test_advice_for_a_file_this_user_may_not_read_is_about_permissions(
    shared_base: Path,
) -> None:
    """A permission problem is not damage: no repair is advised, nor counted as repairable."""
    root = shared_base / "root"
    make_history(root)
    (root / HISTORY / "_metadata.json").chmod(0o600)
    status = run_as_other(root, "status")
    assert status.returncode == 0, status.stderr
    [metadata] = [line for line in status.stdout.splitlines() if line.startswith("metadata")]
    assert "unreadable (Permission denied)" in metadata and "permissions" in metadata
    assert "verify --repair" not in status.stdout
    verify = run_as_other(root, "verify", "--json")
    [finding] = json.loads(verify.stdout)["problems"]
    assert (finding["kind"], finding["repairable"]) == ("metadata", False)
    assert "verify --repair" not in run_as_other(root, "verify").stdout

    for version in (root / HISTORY).glob("2*.json"):
        version.chmod(0o400)
    for args in (("status",), ("list",), ("verify",), ("check",)):
        result = run_as_other(root, *args)
        text = result.stdout + result.stderr
        assert "unreadable (Permission denied)" in text, f"{args}: {text}"
        assert "damaged" not in text.lower() and "verify --repair" not in text, f"{args}: {text}"


def test_a_damaged_metadata_file_still_advises_the_repair(root: Path) -> None:
    """The control: where a repair is the fix, it is still advised."""
    make_history(root / "r")
    (root / "r" / HISTORY / "_metadata.json").write_bytes(b"{not json")
    status = run_cli(root / "r", "status")
    assert "metadata     corrupt (run 'ingester verify --repair')" in status.stdout
    verify = json.loads(run_cli(root / "r", "verify", "--json").stdout)
    assert [(f["kind"], f["repairable"]) for f in verify["problems"]] == [("metadata", True)]


def test_no_error_names_an_internal_temp_file(root: Path, tmp_path: Path) -> None:
    """A file asked for is written under a temp name first: a failure names the file asked for."""
    make_history(root / "r")
    wanted = tmp_path / "no-such-folder" / "usage.csv"
    result = run_cli(root / "r", "export", "-o", str(wanted))
    assert result.returncode == 1
    assert result.stderr == f"error: cannot create {wanted}: No such file or directory [ENOENT]\n"


def test_an_error_from_the_system_names_its_errno(root: Path, tmp_path: Path) -> None:
    """Each command's line for a file it cannot make or read ends in the errno's name,
    as every other error line does: what to look up is never left to a guess."""
    make_history(root / "r")
    gone = tmp_path / "no-such-folder"
    cases: dict[tuple[str, ...], str] = {
        ("submit", f"{gone}/d.json"): f"error: cannot read {gone}/d.json: ",
        ("--config", f"{gone}/c.toml", "status"): f"cannot read {gone}/c.toml: ",
        ("serve", "--api-key-file", f"{gone}/key"): f"cannot read --api-key-file {gone}/key: ",
    }
    for args, said in cases.items():
        result = run_cli(root / "r", *args)
        # A bad --config is a usage error: click's usage lines, then the one line.
        assert result.returncode == (2 if args[0] == "--config" else 1), result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert said in line, f"{args}: {result.stderr}"
        assert line.endswith("No such file or directory [ENOENT]"), result.stderr
        if args[0] != "--config":
            assert result.stderr.count("\n") == 1, f"{args}: {result.stderr}"
    ingested = run_cli(root / "r", "ingest", f"{gone}/d.json")
    assert f"rejected {gone}/d.json: cannot read: No such file or directory [ENOENT]" in (
        ingested.stdout
    )


@needs_other_user
def test_no_error_as_another_user_names_an_internal_temp_file(shared_base: Path) -> None:
    root = shared_base / "root"
    make_history(root)
    (root / "spool" / "tmp").chmod(0o755)  # others may not write where submit stages
    (root / "spool").chmod(0o777)
    closed = shared_base / "closed"
    closed.mkdir(mode=0o755)  # others may not create anything here
    cases = {
        ("export", "-o", f"{closed}/usage.csv"): f"cannot create {closed}/usage.csv",
        ("snapshot", f"{closed}/snap"): f"cannot create folder {closed}/snap",
        ("submit", "--name", "mine.json", str(SAMPLE)): "cannot stage mine.json in "
        f"{root}/spool/tmp",
    }
    for args, named in cases.items():
        result = run_as_other(root, *args)
        assert result.returncode == 1, f"{args}: {result.stderr}"
        assert named in result.stderr, f"{args}: {result.stderr}"
        assert ".tmp-" not in result.stderr and ".submit-" not in result.stderr, result.stderr
    assert not any(closed.iterdir())


@pytest.mark.skipif(not IS_ROOT, reason="only root can make a device node to export over")
def test_export_never_replaces_what_is_not_a_regular_file(root: Path, tmp_path: Path) -> None:
    make_history(root / "r")
    device = tmp_path / "full"
    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 7))  # like /dev/full
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "elsewhere.csv")
    for target, what in ((device, "a device, not a regular file"), (link, "a symlink")):
        result = run_cli(root / "r", "export", "-o", str(target))
        assert result.returncode == 1, result.stdout
        assert result.stderr.startswith(f"error: {target} is {what}"), result.stderr
    assert stat.S_ISCHR(device.lstat().st_mode) and link.is_symlink()


EMPTY_PATHS = {
    "snapshot": ("snapshot", ""),
    "snapshot --tar": ("snapshot", "--tar", ""),
    "export -o": ("export", "-o", ""),
    "submit": ("submit", ""),
    "submit --dry-run": ("submit", "--dry-run", ""),
    "ingest": ("ingest", str(SAMPLE), ""),
    "--config": ("--config", "", "status"),
    "serve --api-key-file": ("serve", "--api-key-file", "", "--listen", "127.0.0.1:0"),
    "restore --root": ("restore", "--root", "", "s3://bucket/prefix"),
    "--spool-dir": ("--spool-dir", "", "status"),
}


@pytest.mark.parametrize("case", list(EMPTY_PATHS))
def test_an_empty_path_is_a_usage_error_saying_so(tmp_path: Path, case: str) -> None:
    """An empty path is the current folder to some calls and "no such file" to others:
    each command refuses it as such (exit 2), before it reads or writes anything."""
    root = tmp_path / "r"
    make_history(root)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = subprocess.run(
        [sys.executable, "-m", "ingester", "--root", str(root), *EMPTY_PATHS[case]],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].endswith("the path is empty"), result.stderr
    assert result.stdout == ""
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def _number_options() -> list[tuple[tuple[str, ...], str]]:
    """Every command's option that takes a number within bounds: (command path, option).

    The group's own settings (``--retention-days``...) are strings its settings table
    reads; their own tests refuse nan there."""
    import click

    from ingester.cli import main
    from ingester.cli.common import BoundedFloat

    found: list[tuple[tuple[str, ...], str]] = []

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(
                param.type, (click.FloatRange, BoundedFloat)
            ):
                found.append((path, param.opts[0]))
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                walk(sub, (*path, name))

    walk(main, ())
    return found


NUMBER_OPTIONS = _number_options()


def test_the_number_options_are_found() -> None:
    # The walk must see the options this test is about, or the next one tests nothing.
    assert (("check",), "--usage-critical") in NUMBER_OPTIONS
    assert (("serve",), "--body-timeout") in NUMBER_OPTIONS


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(("command", "option"), NUMBER_OPTIONS)
def test_a_number_option_refuses_what_is_not_a_finite_number(
    tmp_path: Path, command: tuple[str, ...], option: str, value: str
) -> None:
    """``nan`` compares false with every bound, so a range alone lets it through (a
    threshold of nan is never reached); ``inf`` passes a range open at the top."""
    done = run_cli(tmp_path, *command, f"{option}={value}")
    assert done.returncode == 2, (command, option, done.stdout + done.stderr)
    assert "Traceback" not in done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert error.startswith(f"Error: Invalid value for '{option}'"), error


@pytest.mark.parametrize(
    ("args", "what"),
    [(("watch", "--metrics"), " for --metrics"), (("serve", "--listen"), "")],
    ids=["watch-metrics", "serve"],
)
def test_an_address_in_use_is_said_with_its_errno_name(
    root: Path, args: tuple[str, ...], what: str
) -> None:
    """The watcher's metrics address and the server's are refused in the same words: the
    cause and its errno's name, as every error says it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli(root, *args, f"127.0.0.1:{port}")
    assert busy.returncode == 1, busy.stderr
    assert busy.stderr == (
        f"error: cannot listen on 127.0.0.1:{port}{what}: Address already in use [EADDRINUSE]\n"
    )


@pytest.mark.parametrize(
    ("args", "advice"),
    [
        (("watch", "--once", "--root", "{root}"), "'ingester --root ... watch'"),
        (("status", "--max-versions=5"), "'ingester --max-versions ... status'"),
        (("list", "-v"), "'ingester -v ... list'"),
        (("--once", "watch"), "'ingester watch --once ...'"),
        (("--dry-run", "cleanup"), "'ingester cleanup --dry-run ...'"),
    ],
)
def test_an_option_given_on_the_wrong_side_of_the_command_says_where_it_belongs(
    tmp_path: Path, args: tuple[str, ...], advice: str
) -> None:
    """A global option after the command (``ingester watch --root DIR``, the order most
    tools take) or a command's option before it is refused as click refuses any unknown
    option (exit 2, nothing touched), and its one ``Error:`` line says on which side of
    the command it belongs: the option does exist, so "No such option" alone misleads."""
    root = tmp_path / "root"
    root.mkdir()
    given = [a.format(root=root) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "ingester", *given],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and advice in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert list(root.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_an_option_no_command_has_is_refused_without_advice(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "watch", "--no-such-option")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == "Error: No such option '--no-such-option'."
