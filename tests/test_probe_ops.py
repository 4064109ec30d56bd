"""Probes of the operator commands run beside a live history: each case here FAILS on
the current code, because the product breaks a promise of its own docs or ``--help``.

Every case is end to end: the real CLI in a subprocess, real folders, faults made by
real means (a small tmpfs, ``strace`` delaying a system call).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import VALID_SAMPLES, cli_env, run_cli

HISTORY = "console-usage-history"
LATEST = "console-usage-synced.json"


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


def _versions(history: Path) -> list[str]:
    return sorted(p.name for p in history.iterdir() if p.name[:1].isdigit())


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on the new folder ``where`` (unmounted after)."""
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


# -- ingest ------------------------------------------------------------------------------


# -- snapshot ----------------------------------------------------------------------------


# -- cleanup and verify --repair: a failure part-way hides what was done ----------------


def _chattr(path: Path, flag: str) -> None:
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr {flag} does not work here: {done.stderr.decode().strip()}")


# -- export -o into the root: its temp file is taken for a leftover of the history's ----


# -- check: a bad setting gives the monitoring agent no line ------------------------------


# -- snapshot: the last fsync fails ------------------------------------------------------


# -- settings: where a value came from ----------------------------------------------------


# -- --log-format json: an error caught at the top is still plain text --------------------


# -- export -o onto a version -----------------------------------------------------------


# -- cleanup: a lone reason file counted as a drop ---------------------------------------


# -- a closed standard output ------------------------------------------------------------


def _closed_stdout_run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``ingester --root ROOT ARGS`` started with descriptor 1 closed (as ``>&-``)."""
    return subprocess.run(
        [sys.executable, "-m", "ingester", "--root", str(root), *args],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.close(1),
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )


def test_ingest_with_stdout_closed_stores_without_any_record(root: Path) -> None:
    """``ingester ingest A B >&-`` stores both files, exits 0 and says nothing anywhere:
    the one record of which versions were made is lost.

    docs/operations.md (``ingest``): "Output that cannot be written (a closed pipe, a
    full disk) stops it the same way, and the line of the file stored last is said on
    stderr instead"; the lines are "the record of what was stored"
    (ingester/cli/store.py, ``_say_stored``). A stdout closed at start is made
    /dev/null (ingester/cli/group.py, ``_guard_standard_streams``), which takes every
    line without an error, so ``say_recorded`` never sees a failure. ``export`` and
    ``snapshot --tar -`` check ``CLOSED_AT_START`` (``refuse_closed_stdout``: "standard
    output is closed: ... would go nowhere"); ``ingest`` does not. Expected: refused
    before anything is stored, or each ``stored`` line said on stderr.
    """
    done = _closed_stdout_run(root, "ingest", str(VALID_SAMPLES[0]), str(VALID_SAMPLES[1]))
    assert "Traceback" not in done.stderr
    stored = _versions(root / HISTORY) if (root / HISTORY).is_dir() else []
    if stored:
        for name in stored:
            assert name in done.stderr, f"{name} stored, never said (exit {done.returncode})"
    else:
        assert done.returncode == 1 and "standard output is closed" in done.stderr


def test_show_with_stdout_closed_exits_0_having_shown_nothing(root: Path) -> None:
    """``ingester show >&-`` exits 0: the version went to /dev/null, as if shown.

    ``export`` in the same situation exits 1 with ``error: standard output is closed:
    the export would go nowhere; redirect it or give a file`` (ingester/cli/export.py,
    ``_to_stdout``: ``refuse_closed_stdout``), and so does ``snapshot --tar -``;
    ``show``, whose whole point is the bytes on stdout (docs/operations.md: "Prints a
    version's bytes to stdout, exactly as stored"), does not check
    (ingester/cli/versions.py), so ``ingester show > "$f"`` gone wrong in a wrapper
    that closes the descriptor "succeeds". Expected: exit 1 and the same one line.
    """
    ok(run_cli(root, "ingest", str(VALID_SAMPLES[0])))
    done = _closed_stdout_run(root, "show")
    assert "Traceback" not in done.stderr
    assert done.returncode == 1, f"exit {done.returncode}, stderr {done.stderr!r}"
    assert "standard output is closed" in done.stderr
