"""Arrival events from the spool folder: inotify (read on the loop's own thread) or polling.

Both sources turn what they see into typed events that the service loop takes with
:meth:`Arrivals.wait`: :class:`DropSeen` (with how sure we are that the drop is
complete), :class:`FolderSeen`, :class:`RescanNeeded` and :class:`SpoolGone`. Only names
a writer publishes are reported: ``*.json``, not hidden.

The inotify source calls the kernel through watchdog's bindings (``inotify_init``,
``inotify_add_watch`` and its ``InotifyConstants``) and reads the descriptor itself, on
the thread that waits: watchdog's reader hands each event from its reading thread to a
dispatching one, and a queue would hand it once more to the loop, and those hand-offs
cost about 0.3 ms of every drop here (``bench/arrival.py``). ``tests/test_arrivals.py``
checks the kernel's facts we rely on, under the lowest watchdog ``pyproject.toml``
allows and the one ``constraints.txt`` pins: a rename into the folder reports
IN_MOVED_TO, a write in place IN_CREATE then IN_CLOSE_WRITE, an overflowing queue one
rescan, a removed spool its own event. IN_MOVED_FROM is left out of the mask: every drop
we claim makes one, and none says anything new.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import select
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.inotify_c import InotifyConstants, inotify_add_watch, inotify_init
from watchdog.observers.polling import PollingObserver

from ..errors import os_cause
from ..threads import THREAD_LIMIT, is_thread_limit

__all__ = [
    "Arrival",
    "Arrivals",
    "DropSeen",
    "FolderSeen",
    "How",
    "RescanNeeded",
    "SpoolGone",
    "arrival_queue",
    "start_arrivals",
    "watch_problem",
]


class How(Enum):
    """How sure we are that a spool entry is complete."""

    COMPLETE = "complete"  # renamed in, or closed after writing: take it now
    CREATED = "created"  # just created: take it only if it cannot be written in place
    SETTLE = "settle"  # found by a scan or polling: take once its mtime is settle-old


@dataclass(frozen=True)
class DropSeen:
    """A drop named ``name`` appeared or changed."""

    name: str
    how: How


@dataclass(frozen=True)
class FolderSeen:
    """A folder with a drop's name: never taken, reported once."""

    name: str


@dataclass(frozen=True)
class RescanNeeded:
    """Events were lost (``why``): only a full scan of the spool can tell what is there."""

    why: str


@dataclass(frozen=True)
class SpoolGone:
    """The spool folder itself was removed or moved away."""


Arrival = DropSeen | FolderSeen | RescanNeeded | SpoolGone
_Sink = Callable[[Arrival], None]


def _is_drop_name(name: str) -> bool:
    return name.endswith(".json") and not name.startswith(".")


class Arrivals:
    """A source of arrival events; ``is_alive()`` is False once it went deaf."""

    failure: str | None = None  # why it went deaf, when an error made it so

    def wait(self, timeout: float) -> list[Arrival]:
        """Wait up to ``timeout`` seconds for arrivals; every one ready, oldest first.

        Returns an empty list when none came in time. A signal handled meanwhile does not
        end the wait early, nor lengthen it.
        """
        raise NotImplementedError

    def stop(self) -> None:
        """Stop watching and let go of what the source holds (its thread, descriptor)."""
        raise NotImplementedError

    def is_alive(self) -> bool:
        raise NotImplementedError


# struct inotify_event (inotify(7)): wd, mask, cookie, len; then len bytes of name,
# padded with NULs.
_EVENT = struct.Struct("iIII")
# Room for at least one event with the longest name (NAME_MAX is 255), and for many:
# a read returns only whole events, as many as fit.
_READ_SIZE = 64 * 1024
# At most this many reads per wait (1 MiB of events, 4,000 or more): a writer that keeps
# the kernel's queue full must not keep the loop from its stop checks and pings.
_READS_PER_WAIT = 16


# watchdog binds inotify_init only. inotify_init1 (Linux 2.6.27, glibc 2.9) makes the
# descriptor close-on-exec in the same call: a program that another thread starts at
# that moment (a hook, a backup tool) can never inherit the spool's watch.
_INOTIFY_INIT1: Callable[[int], int] | None = None
with contextlib.suppress(AttributeError):
    _INOTIFY_INIT1 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, use_errno=True)(
        ("inotify_init1", ctypes.CDLL(None))
    )


def _new_inotify() -> int:
    """A new inotify descriptor, close-on-exec and non-blocking (the wait blocks in
    poll(2) instead, with its deadline). Raises ``OSError`` (EMFILE: the per-user limit
    of instances, ENFILE, ENOMEM) from the kernel."""
    if _INOTIFY_INIT1 is not None:
        fd = _INOTIFY_INIT1(os.O_CLOEXEC | os.O_NONBLOCK)
        if fd < 0:
            raise _kernel_error()
        return fd
    fd = inotify_init()  # a C library without inotify_init1: the flags one by one
    if fd < 0:
        raise _kernel_error()
    os.set_inheritable(fd, False)
    os.set_blocking(fd, False)
    return fd


class _InotifyArrivals(Arrivals):
    """The spool's inotify descriptor, read by whichever thread calls :meth:`wait`.

    No thread of its own: the loop sleeps in ``poll(2)`` on the descriptor and reads
    what woke it, as the least ingester would (``bench/floor.py``).
    """

    MASK = (
        InotifyConstants.IN_MOVED_TO
        | InotifyConstants.IN_CLOSE_WRITE
        | InotifyConstants.IN_CREATE
        | InotifyConstants.IN_DELETE_SELF
        | InotifyConstants.IN_MOVE_SELF
        | InotifyConstants.IN_ONLYDIR
    )

    def __init__(self, spool_dir: Path) -> None:
        fd = _new_inotify()
        self._fd = fd
        self._lost = False
        try:
            if inotify_add_watch(fd, os.fsencode(spool_dir), self.MASK) < 0:
                raise _kernel_error()
            self._poll = select.poll()
            self._poll.register(fd, select.POLLIN)
        except BaseException:
            os.close(fd)
            raise

    def wait(self, timeout: float) -> list[Arrival]:
        if self._fd < 0 or self.failure is not None:
            time.sleep(max(0.0, timeout))  # deaf: the loop's check restarts it
            return []
        found: list[Arrival] = []
        try:
            # poll(2) takes milliseconds; Python resumes it after a signal with the
            # time left, and treats time run out as a timeout.
            if not self._poll.poll(max(0.0, timeout) * 1000.0):
                return found
            for _ in range(_READS_PER_WAIT):
                try:
                    buffer = os.read(self._fd, _READ_SIZE)
                except BlockingIOError:
                    break
                self._parse(buffer, found)
                if len(buffer) <= _READ_SIZE // 2:
                    break  # the kernel had no more than that: no second read
        except OSError as exc:
            # What was read is kept; a new source rescans for what was not.
            self.failure = f"cannot read its inotify events: {os_cause(exc)}"
        return found

    def _parse(self, buffer: bytes, found: list[Arrival]) -> None:
        offset = 0
        while offset + _EVENT.size <= len(buffer):
            _wd, mask, _cookie, length = _EVENT.unpack_from(buffer, offset)
            offset += _EVENT.size
            name = os.fsdecode(buffer[offset : offset + length].rstrip(b"\0"))
            offset += length
            arrival = self._arrival(mask, name)
            if arrival is not None:
                found.append(arrival)

    def _arrival(self, mask: int, name: str) -> Arrival | None:
        c = InotifyConstants
        if mask & c.IN_Q_OVERFLOW:
            return RescanNeeded("inotify queue overflow")
        if mask & (c.IN_DELETE_SELF | c.IN_MOVE_SELF):
            self._lost = True
            return SpoolGone()
        if mask & c.IN_IGNORED:
            self._lost = True  # the watch is gone (the folder removed, or unmounted)
            return None
        if not _is_drop_name(name):
            return None
        if mask & c.IN_ISDIR:
            return FolderSeen(name)
        if mask & (c.IN_CLOSE_WRITE | c.IN_MOVED_TO):
            return DropSeen(name, How.COMPLETE)
        if mask & c.IN_CREATE:
            return DropSeen(name, How.CREATED)
        return None

    def stop(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            with contextlib.suppress(OSError):  # closed already: nothing is left to free
                os.close(fd)

    def is_alive(self) -> bool:
        return self._fd >= 0 and not self._lost and self.failure is None


def _kernel_error() -> OSError:
    """The ``OSError`` of the call through watchdog's bindings that just failed (they
    keep errno)."""
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))


class _PollingHandler(FileSystemEventHandler):
    """Runs on the polling observer's thread: every change is a drop to let settle."""

    def __init__(self, spool_dir: Path, sink: _Sink) -> None:
        self._spool_dir = os.fspath(spool_dir)
        self._sink = sink

    def dispatch(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path)
        if event.event_type == "deleted" and src == self._spool_dir:
            self._sink(SpoolGone())
            return
        path = dest if event.event_type == "moved" else src
        parent, name = os.path.split(path)
        if parent != self._spool_dir or not _is_drop_name(name):
            return
        if event.is_directory:
            self._sink(FolderSeen(name))
        elif event.event_type in ("created", "modified", "moved"):
            self._sink(DropSeen(name, How.SETTLE))


class _PollingArrivals(Arrivals):
    """watchdog's PollingObserver: for filesystems without inotify (NFS, some FUSE).

    Its thread hands what it sees to the waiting loop through a queue.
    """

    def __init__(self, spool_dir: Path, interval: float) -> None:
        self._events = arrival_queue()
        self._observer = PollingObserver(timeout=interval)
        self._observer.schedule(
            _PollingHandler(spool_dir, self._events.put), os.fspath(spool_dir), recursive=False
        )
        self._observer.start()

    def wait(self, timeout: float) -> list[Arrival]:
        try:
            found = [self._events.get(timeout=max(0.0, timeout))]
        except queue.Empty:
            return []
        while True:
            try:
                found.append(self._events.get_nowait())
            except queue.Empty:
                return found

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(2)

    def is_alive(self) -> bool:
        return self._observer.is_alive() and all(e.is_alive() for e in self._observer.emitters)


def arrival_queue() -> queue.Queue[Arrival]:
    """A new, empty queue for the polling observer's thread to hand arrivals over on.

    ``queue.Queue``, not the faster ``queue.SimpleQueue``: a signal that interrupts
    ``SimpleQueue.get(timeout=...)`` just after its deadline makes CPython (3.11 to 3.13)
    wait again with the time left, which is then negative, and a negative wait has no
    end. The loop then sleeps until the next arrival, deaf to the SIGTERM it was just
    sent. ``Queue.get`` waits on a lock whose timed acquire treats time run out as a
    timeout.
    """
    return queue.Queue()


def start_arrivals(spool_dir: Path, *, polling: bool, poll_interval: float) -> Arrivals:
    """Watch ``spool_dir``; its arrivals are taken with :meth:`Arrivals.wait`.

    ``poll_interval`` (seconds) is how often polling looks. Raises ``OSError`` when the
    folder cannot be watched (gone, or out of inotify instances or watches), and
    ``RuntimeError`` when polling cannot start its thread.
    """
    if polling:
        return _PollingArrivals(spool_dir, poll_interval)
    return _InotifyArrivals(spool_dir)


def watch_problem(exc: OSError | RuntimeError) -> str:
    """Why :func:`start_arrivals` could not watch the spool: one line that says what to do.

    Two of the kernel's limits are met here, and neither is said well by its errno alone
    (inotify(7), "/proc interfaces"): EMFILE when the user has as many inotify instances
    as ``fs.inotify.max_user_instances`` allows (128 by default; or the process is out
    of descriptors), ENOSPC when the user has as many watches as
    ``fs.inotify.max_user_watches`` allows. Polling needs neither, but needs threads:
    a ``RuntimeError`` is its observer's thread that could not start.
    """
    if isinstance(exc, RuntimeError):
        return THREAD_LIMIT if is_thread_limit(exc) else str(exc)
    if exc.errno == errno.EMFILE:
        return (
            "out of inotify instances or open files [EMFILE]: raise the sysctl "
            "fs.inotify.max_user_instances (or the open-files limit), or use --polling"
        )
    if exc.errno == errno.ENOSPC:
        return (
            "out of inotify watches [ENOSPC]: raise the sysctl fs.inotify.max_user_watches, "
            "or use --polling"
        )
    return os_cause(exc)
