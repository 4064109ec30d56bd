"""The floor ingester: the least a spool watcher can do, for ``bench_watch.py`` to beat.

Run as ``python bench/floor.py ROOT``. It uses the same layout as ``ingester watch
--root ROOT`` (``ROOT/spool/``, ``ROOT/console-usage-history/``,
``ROOT/console-usage-synced.json``) and does, per drop, exactly this and nothing more:

    raw inotify -> open -> read -> json.loads -> rename into the history
    -> fsync the folder -> temp symlink + rename over latest -> fsync

and nothing else: no validation beyond ``json.loads``, no metadata, no retention, no
claim, no fsync of the file's data (a rename moves the drop's own inode), no logging.
Drops already in the spool at start are taken first (oldest mtime, then name), like
``ingester watch`` does, so a benchmark can start either the same way; an inotify queue
overflow triggers a rescan. SIGTERM or SIGINT stops it (exit 0).

Raw inotify is ``inotify_init1``/``inotify_add_watch`` from libc through ctypes and
``os.read`` on the descriptor, parsed with ``struct``: no watchdog, no threads.
This lives in ``bench/`` only; the product uses watchdog.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import struct
import sys
import time
from collections.abc import Iterator

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_init1.restype = ctypes.c_int
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_add_watch.restype = ctypes.c_int


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


class Inotify:
    """One inotify descriptor watching one folder (the part of inotify the bench needs)."""

    def __init__(self, path: str, mask: int, *, nonblock: bool = False) -> None:
        flags = IN_CLOEXEC | (IN_NONBLOCK if nonblock else 0)
        self.fd = _check(_libc.inotify_init1(flags), "inotify_init1")
        try:
            _check(_libc.inotify_add_watch(self.fd, os.fsencode(path), mask), "inotify_add_watch")
        except OSError:
            os.close(self.fd)
            raise

    def read(self) -> Iterator[tuple[int, str]]:
        """Block for at least one event; yield ``(mask, name)`` for each one read."""
        buf = os.read(self.fd, 64 * 1024)
        offset = 0
        while offset < len(buf):
            _wd, mask, _cookie, length = _EVENT.unpack_from(buf, offset)
            offset += _EVENT.size
            name = buf[offset : offset + length].rstrip(b"\0")
            offset += length
            yield mask, os.fsdecode(name)

    def drain(self) -> None:
        """Discard whatever is queued (needs ``nonblock=True``)."""
        try:
            while os.read(self.fd, 64 * 1024):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Close the descriptor (once; later calls do nothing)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _is_drop(name: str) -> bool:
    return name.endswith(".json") and not name.startswith(".")


class Floor:
    """The floor's state: paths, two open folder descriptors, a version counter."""

    def __init__(self, root: str) -> None:
        self.spool = os.path.join(root, "spool")
        self.history = os.path.join(root, "console-usage-history")
        self.latest = os.path.join(root, "console-usage-synced.json")
        self.link_dir = os.path.dirname(self.latest)
        for folder in (self.spool, os.path.join(self.spool, "tmp"), self.history):
            os.makedirs(folder, exist_ok=True)
        self.history_fd = os.open(self.history, os.O_RDONLY | os.O_DIRECTORY)
        self.link_dir_fd = os.open(self.link_dir, os.O_RDONLY | os.O_DIRECTORY)
        self.count = 0

    def ingest(self, name: str) -> None:
        """One drop, the floor's way. A drop that is gone or not JSON is skipped."""
        src = os.path.join(self.spool, name)
        try:
            with open(src, "rb") as handle:
                data = handle.read()
        except (FileNotFoundError, IsADirectoryError):
            return
        try:
            json.loads(data)
        except ValueError:
            return
        self.count += 1
        now = time.time()
        version = f"{time.strftime('%Y-%m-%dT%H-%M-%S', time.gmtime(now))}-{self.count:08x}.json"
        try:
            os.rename(src, os.path.join(self.history, version))
        except FileNotFoundError:
            return
        os.fsync(self.history_fd)
        tmp = os.path.join(self.link_dir, f".tmp-link-{self.count:08x}")
        os.symlink(os.path.relpath(os.path.join(self.history, version), self.link_dir), tmp)
        os.replace(tmp, self.latest)
        os.fsync(self.link_dir_fd)

    def rescan(self) -> None:
        """Take every drop already in the spool, oldest mtime first, then by name."""
        found = []
        with os.scandir(self.spool) as entries:
            for entry in entries:
                if _is_drop(entry.name) and entry.is_file(follow_symlinks=False):
                    found.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.name))
        for _mtime, name in sorted(found):
            self.ingest(name)

    def run(self) -> None:
        """Watch first, then take the backlog, then events until a signal stops us."""
        inotify = Inotify(self.spool, IN_MOVED_TO | IN_CLOSE_WRITE)
        self.rescan()
        while True:
            for mask, name in inotify.read():
                if mask & IN_Q_OVERFLOW:
                    self.rescan()
                elif not mask & IN_ISDIR and _is_drop(name):
                    self.ingest(name)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str]) -> int:
    """``floor.py ROOT``."""
    if len(argv) != 1:
        print("usage: floor.py ROOT", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    Floor(argv[0]).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
