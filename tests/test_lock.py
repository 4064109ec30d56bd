"""The one-writer lock of a history, through the API (the CLI's side: test_cli_lock.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ingester import HistoryLock, IngesterError, LockHeld
from ingester.history.lock import lock_holder, lock_owner


def test_a_second_holder_is_refused_at_once_naming_the_first(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from ingester import HistoryLock\n"
            "with HistoryLock(Path(sys.argv[1]), 'watch'):\n"
            "    print('held', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert lock_owner(path) == (holder.pid, "watch")
        with pytest.raises(LockHeld, match=f"pid {holder.pid} watch") as caught:
            HistoryLock(path, "ingest").acquire()
        assert isinstance(caught.value, IngesterError)
    finally:
        holder.communicate("")
    assert lock_holder(path) is None
    with HistoryLock(path, "ingest"):
        assert lock_owner(path) is not None


def test_releasing_twice_is_harmless(tmp_path: Path) -> None:
    lock = HistoryLock(tmp_path / ".lock", "test")
    lock.acquire()
    lock.release()
    lock.release()
    assert lock_holder(tmp_path / ".lock") is None
