"""A watcher refused its files at start says whose they are and what to run.

``adopt`` run as root without the ``chown`` the migration guide gives leaves the history
root's: the service's own user then cannot even open the lock file. The start must
fail in one line that says to ``chown -R`` the folder to the service's user, as adopt's
own refusal of the same fault does. Real permission checks: the watcher runs as
another uid (``setpriv``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import VALID_SAMPLES, run_cli
from support.capabilities import AS_OTHER, OTHER_UID, other_user_problem, others_folder

pytestmark = pytest.mark.skipif(other_user_problem() is not None, reason=str(other_user_problem()))


@pytest.fixture
def root() -> Iterator[Path]:
    with others_folder("start-owner-") as folder:
        yield folder


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    [line] = [x for x in stderr.splitlines() if "ERROR" in x]
    return line


def test_a_history_adopted_as_root_names_the_chown(root: Path) -> None:
    history = root / "console-usage-history"
    history.mkdir()
    (history / "2026-11-30T10-00-00-00000000.json").write_bytes(VALID_SAMPLES[0].read_bytes())
    adopted = run_cli(root, "adopt")  # as root, the chown skipped
    assert adopted.returncode == 0, adopted.stderr
    result = run_cli(root, "watch", "--once", wrapper=tuple(AS_OTHER))
    assert result.returncode == 1
    line = _error_line(result.stderr)
    assert f"cannot open lock file {history}/.lock: Permission denied [EACCES]" in line
    assert f"{history} belongs to uid 0 (root), not to this service's user (uid {OTHER_UID}" in line
    assert "chown -R it to that user" in line and line.endswith("then start again")


def test_a_spool_made_by_root_names_the_chown(root: Path) -> None:
    spool = root / "spool"
    spool.mkdir(mode=0o755)  # root's, as a command run as root before the first start
    result = run_cli(root, "watch", "--once", wrapper=tuple(AS_OTHER))
    assert result.returncode == 1
    line = _error_line(result.stderr)
    assert "Permission denied [EACCES]" in line
    assert f"{spool} belongs to uid 0 (root), not to this service's user (uid {OTHER_UID}" in line
    assert line.endswith("then start again")
