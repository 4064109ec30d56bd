"""A real ``ingester watch`` in a subprocess, for tests: start, read its log, stop, kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import TracebackType

from support import cli_env, wait_for


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


class WatchProcess:
    """``python -m ingester --root ROOT [global...] watch ARGS`` with its stderr in a file."""

    def __init__(
        self,
        root: Path,
        *args: str,
        global_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.log_path = root.parent / f"watch-{os.urandom(3).hex()}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ingester", "--root", str(root), *global_args, "watch", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=cli_env(**(env or {})),
        )

    @property
    def log(self) -> str:
        """Everything it logged so far."""
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 15.0, count: int = 1) -> None:
        """Wait until ``text`` appears ``count`` times in the log (fails if it exits first)."""

        def seen() -> bool:
            if self.log.count(text) >= count:
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"watcher exited {self.proc.returncode}:\n{self.log}")
            return False

        wait_for(seen, timeout, f"{text!r} in the watcher log")

    def wait_started(self) -> WatchProcess:
        """Wait until the observer is running."""
        self.wait_log("watching ")
        return self

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL: the crash."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> WatchProcess:
        return self.wait_started()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc.poll() is None:
            self.kill()
        else:
            self._log.close()
