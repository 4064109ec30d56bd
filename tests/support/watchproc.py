"""A real ``ingester watch`` in a subprocess, for tests: start, read its log, stop, kill."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

from support.process import LoggedProcess


def payload(seq: int, **extra: object) -> bytes:
    """A valid, unique payload (``seq`` is an extra field, kept as is)."""
    body = {
        "currentSession": {"resetsIn": "4 hr", "percentageUsed": seq % 101},
        "lastUpdated": "2026-11-27T14:05:00Z",
        "seq": seq,
        **extra,
    }
    return json.dumps(body).encode()


def drop(spool: Path, name: str, data: bytes, *, owner: tuple[int, int] | None = None) -> Path:
    """Write ``data`` in ``<spool>/tmp/`` and rename it into the spool (the drop protocol).

    ``owner`` (uid, gid) is given to the file before it appears, as another user's
    writer would have made it.
    """
    tmp = spool / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    staged = tmp / f".{name}.part"
    staged.write_bytes(data)
    if owner is not None:
        os.chown(staged, *owner)
    final = spool / name
    os.rename(staged, final)
    return final


def versions(root: Path) -> list[Path]:
    """Version files in the default history, oldest first."""
    history = root / "console-usage-history"
    if not history.is_dir():
        return []
    return sorted(p for p in history.iterdir() if p.name[:1].isdigit() and p.suffix == ".json")


def stored_contents(root: Path) -> Counter[bytes]:
    """The multiset of stored payloads."""
    return Counter(p.read_bytes() for p in versions(root))


def latest_bytes(root: Path) -> bytes | None:
    """What the latest link shows, or None."""
    try:
        return (root / "console-usage-synced.json").read_bytes()
    except OSError:
        return None


class WatchProcess(LoggedProcess):
    """``python -m ingester --root ROOT [global...] watch ARGS`` with its stderr in a file
    (run through ``wrapper``, e.g. ``setpriv`` for another user, when one is given)."""

    tag = "watch"

    def __init__(
        self,
        root: Path,
        *args: str,
        global_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        wrapper: tuple[str, ...] = (),
    ) -> None:
        command = [*wrapper, sys.executable, "-m", "ingester", "--root", str(root), *global_args]
        command.append("watch")
        super().__init__(root, "watch", [*command, *args], env)

    def wait_started(self) -> WatchProcess:
        """Wait until the observer is running; if it does not, it is ended (see
        :meth:`LoggedProcess.ended_on_failure`) and this fails."""
        with self.ended_on_failure():
            self.wait_log("watching ")
        return self

    def __enter__(self) -> WatchProcess:
        return self.wait_started()
