"""A real ``ingester serve`` in a subprocess on 127.0.0.1, and ways to fill a history fast."""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from support import wait_for
from support.process import LoggedProcess

HISTORY = "console-usage-history"
KEY = "s3cret-key-for-tests"


def fresh_payload(age: timedelta = timedelta(0), **extra: object) -> bytes:
    """A valid payload whose ``lastUpdated`` is ``age`` ago."""
    stamp = datetime.now(UTC) - age
    body = {
        "currentSession": {"resetsIn": "4 hr", "percentageUsed": 12.5},
        "lastUpdated": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        **extra,
    }
    return json.dumps(body).encode()


def version_name(at: datetime, seq: int = 0) -> str:
    """A version name for ingest time ``at`` (to the second), ``seq`` making it unique."""
    return f"{at.astimezone(UTC).strftime('%Y-%m-%dT%H-%M-%S')}-{seq:08x}.json"


def put_version(root: Path, name: str, data: bytes) -> Path:
    """Place a version file straight into the history (as the watcher would leave it)."""
    history = root / HISTORY
    history.mkdir(parents=True, exist_ok=True)
    path = history / name
    path.write_bytes(data)
    return path


def fill_history(
    root: Path, count: int, start: datetime, step: timedelta, data: bytes
) -> list[str]:
    """``count`` versions ingested ``step`` apart from ``start``, all holding ``data``.

    Each is a hard link to one file: creating inodes is the slow part of writing many
    files, and the server only cares about names and bytes. Returns the names, oldest first.
    """
    history = root / HISTORY
    history.mkdir(parents=True, exist_ok=True)
    source = root.parent / f"payload-{os.urandom(3).hex()}.json"
    source.write_bytes(data)
    names = [version_name(start + step * i, i) for i in range(count)]
    fd = os.open(history, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.link(source, name, dst_dir_fd=fd)
    finally:
        os.close(fd)
    return names


class ServeProcess(LoggedProcess):
    """``python -m ingester --root ROOT serve --listen 127.0.0.1:0 ARGS`` and a client.

    ``key`` goes into ``key_variable``'s environment variable (``None``: no key);
    ``listen=None`` gives no ``--listen`` (the address then comes from the environment).
    """

    tag = "serve"

    def __init__(
        self,
        root: Path,
        *args: str,
        key: str | None = KEY,
        env: dict[str, str] | None = None,
        global_args: tuple[str, ...] = (),
        wrapper: tuple[str, ...] = (),
        listen: str | None = "127.0.0.1:0",
        key_variable: str = "INGESTER_API_KEY",
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        extra = dict(env or {})
        if key is not None:
            extra[key_variable] = key
        command = [*wrapper, sys.executable, "-m", "ingester", "--root", str(root), *global_args]
        address = ["--listen", listen] if listen is not None else []
        super().__init__(root, "serve", [*command, "serve", *address, *args], extra, pass_fds)
        self.port = 0
        self.client: httpx.Client | None = None

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServeProcess:
        """Wait until it listens; open a client. If it does not listen, it is ended
        (see :meth:`LoggedProcess.ended_on_failure`) and this fails."""

        def listening() -> re.Match[str] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.log}")
            return re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log)

        with self.ended_on_failure():
            match = wait_for(listening, 15, "serve to listen")
        assert isinstance(match, re.Match)
        self.port = int(match[1])
        self.client = httpx.Client(base_url=self.base, timeout=10)
        return self

    def get(self, path: str, **kw: object) -> httpx.Response:
        """GET through the client."""
        assert self.client is not None
        return self.client.get(path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, **kw: object) -> httpx.Response:
        """POST through the client."""
        assert self.client is not None
        return self.client.post(path, **kw)  # type: ignore[arg-type]

    def _release(self) -> None:
        if self.client is not None:
            self.client.close()

    def __enter__(self) -> ServeProcess:
        return self.start()
