"""Adversarial probes of the watcher (``watch``, ``watch --once``, ``submit``).

Each test here failed on the code it was written against and shows a fault (or, where
its docstring says so, doubtful behaviour) of the promise: nothing lost, nothing
ingested twice, nothing half-written ever visible, one clear line per error, the
watcher going on for other drops. Real CLI and watcher processes on a real filesystem;
waits are on conditions with deadlines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import IS_ROOT, cli_env

SETPRIV = shutil.which("setpriv")
SCRAPER_UID = 4242

needs_two_users = pytest.mark.skipif(
    not IS_ROOT or SETPRIV is None, reason="needs root and setpriv for the two-user layout"
)

# The watcher as under systemd: root's files are its own, but no CAP_LEASE, so it cannot
# ask whether the scraper's file is still open for writing (tests/test_integrity.py).
NO_LEASE = ("--bounding-set", "-lease", "--inh-caps", "-lease", "--")


def ingester_cmd(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ingester", "--root", str(root), *args]


def run_no_lease(root: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SETPRIV or "setpriv", *NO_LEASE, *ingester_cmd(root, *args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        check=False,
    )


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A root another uid can reach (pytest's own temp folders are 0700)."""
    work = Path(tempfile.mkdtemp(prefix="probe-core-", dir="/tmp"))
    try:
        work.chmod(0o755)
        (work / "root").mkdir(mode=0o755)
        yield work / "root"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def renamed_in(spool: Path, name: str, data: bytes, *, uid: int, age_s: float = 0) -> Path:
    """A drop written in ``<spool>/tmp/`` by ``uid`` and renamed in (the drop protocol),
    its mtime ``age_s`` seconds in the past."""
    tmp = spool / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    staged = tmp / f".{name}.part"
    staged.write_bytes(data)
    os.chown(staged, uid, uid)
    if age_s:
        then = time.time() - age_s
        os.utime(staged, (then, then))
    final = spool / name
    os.rename(staged, final)
    return final


# -- watch --once and the scraper's invalid drops ----------------------------------------


@needs_two_users
def test_once_sets_aside_an_old_invalid_drop_of_the_scraper(open_root: Path) -> None:
    """DOUBTFUL (contract of ``--once``): ``watch --once`` never quarantines an invalid
    drop of another user when it cannot take a read lease (as under systemd).

    The drop was renamed in by the protocol two days ago and nobody holds it open. Every
    drop ``--once`` sees is found by a scan, judged by stability alone, and an invalid
    one "may still be written": it waits 300 s *from when this process first saw it*.
    ``--once`` exits at once with the drop "waiting", and exit 0, so no number of runs
    ever sets it aside. SPEC: "``--once`` drains the backlog and exits"; README/--help:
    "0, or 1 when anything is left for the next start (a drop that cannot be ... set
    aside ...)"; SPEC section 4: an invalid drop "is rejected: moved to <rejected>/".
    """
    spool = open_root / "spool"
    spool.mkdir()
    renamed_in(spool, "bad.json", b'{"bad": 1}', uid=SCRAPER_UID, age_s=2 * 86400)
    for _ in range(2):
        done = run_no_lease(open_root, "watch", "--once", "--settle", "0")
        assert "Traceback" not in done.stderr, done.stderr
        left = (spool / "bad.json").exists()
        assert not (left and done.returncode == 0), (
            "an invalid two-day-old drop stays in the spool and --once exits 0:\n" + done.stderr
        )
    assert (spool / "rejected" / "bad.json").read_bytes() == b'{"bad": 1}'
