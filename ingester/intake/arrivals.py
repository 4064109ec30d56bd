"""Arrival events from the spool folder: inotify (watchdog's reader, fenced here) or polling.

Both sources turn what they see into typed events on one sink (a queue the service loop
reads): :class:`DropSeen` (with how sure we are that the drop is complete),
:class:`FolderSeen`, :class:`RescanNeeded` and :class:`SpoolGone`. Only names a writer
publishes are reported: ``*.json``, not hidden.

The inotify source uses watchdog's ``InotifyFD`` reader directly, with our own callback
and event mask. That surface is not documented and changed within watchdog 7.x, so it is
used in this module only, and ``tests/test_arrivals.py`` checks the facts we rely on,
under the lowest watchdog ``pyproject.toml`` allows and the one ``constraints.txt`` pins:
a rename into the folder reports IN_MOVED_TO, a write in place reports IN_CREATE then
IN_CLOSE_WRITE, and an overflowing queue calls ``on_queue_overflow`` (7.1.1 and later
then also ``on_events_lost``): one overflow, one rescan.
Leaving IN_MOVED_FROM out of the mask matters: watchdog's full observer holds each one
0.5 s waiting for its pair, and every drop we claim makes one.
"""

from __future__ import annotations

import errno
import os
import queue
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyConstants,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchDescriptor,
)
from watchdog.observers.polling import PollingObserver

from ..errors import os_cause

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
Sink = Callable[[Arrival], None]


def _is_drop_name(name: str) -> bool:
    return name.endswith(".json") and not name.startswith(".")


class Arrivals:
    """A running source of arrival events; ``is_alive()`` is False once it went deaf."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def join(self, timeout: float | None = None) -> None:
        raise NotImplementedError

    def is_alive(self) -> bool:
        raise NotImplementedError


class _InotifyArrivals(Arrivals):
    """watchdog's inotify reader thread (``InotifyFD``) with our callback on the spool.

    One thread between the kernel and the sink. watchdog's full observer adds two more
    (emitter and dispatcher, about 0.3 ms per drop here) and an event grouper that
    holds every IN_MOVED_FROM for 0.5 s; we do not even ask for IN_MOVED_FROM.
    """

    MASK = Mask(
        InotifyConstants.IN_MOVED_TO
        | InotifyConstants.IN_CLOSE_WRITE
        | InotifyConstants.IN_CREATE
        | InotifyConstants.IN_DELETE_SELF
        | InotifyConstants.IN_MOVE_SELF
        | InotifyConstants.IN_ONLYDIR
    )

    def __init__(self, spool_dir: Path, sink: Sink) -> None:
        self._sink = sink
        self._lost = False
        self._overflow_reported = False  # by on_queue_overflow, for on_events_lost to skip
        self._fd = InotifyFD()
        try:
            self._fd.add_callback(os.fsencode(spool_dir), self.MASK, self, CallbackId(id(self)))
        except OSError:
            self._fd.close()
            raise

    def start(self) -> None:
        self._fd.start()

    def stop(self) -> None:
        self._fd.stop()  # unblocks the reader thread

    def join(self, timeout: float | None = None) -> None:
        if self._fd.is_alive():
            self._fd.join(timeout)

    def is_alive(self) -> bool:
        return self._fd.is_alive() and not self._lost

    # watchdog's WatchCallback protocol, called on the reader thread:

    def on_event(self, event: InotifyEvent) -> None:
        if event.is_delete_self or event.is_move_self:
            self._lost = True
            self._sink(SpoolGone())
            return
        name = os.fsdecode(event.name)
        if not _is_drop_name(name):
            return
        if event.is_directory:
            self._sink(FolderSeen(name))
        elif event.is_close_write or event.is_moved_to:
            self._sink(DropSeen(name, How.COMPLETE))
        elif event.is_create:
            self._sink(DropSeen(name, How.CREATED))

    def on_watch_deleted(self, wd: WatchDescriptor) -> None:
        self._lost = True

    def on_queue_overflow(self) -> None:
        self._overflow_reported = True
        self._sink(RescanNeeded("inotify queue overflow"))

    def on_events_lost(self) -> None:
        # Newer readers call this right after ``on_queue_overflow`` for the same overflow
        # (older ones never do): the rescan is asked already, and a second one would only
        # scan the spool twice. Asked here only if a reader ever skips the first hook.
        if self._overflow_reported:
            self._overflow_reported = False
        else:
            self._sink(RescanNeeded("inotify queue overflow"))


class _PollingHandler(FileSystemEventHandler):
    """Runs on the polling observer's thread: every change is a drop to let settle."""

    def __init__(self, spool_dir: Path, sink: Sink) -> None:
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
    """watchdog's PollingObserver: for filesystems without inotify (NFS, some FUSE)."""

    def __init__(self, spool_dir: Path, sink: Sink, interval: float) -> None:
        self._observer = PollingObserver(timeout=interval)
        self._observer.schedule(
            _PollingHandler(spool_dir, sink), os.fspath(spool_dir), recursive=False
        )

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()

    def join(self, timeout: float | None = None) -> None:
        self._observer.join(timeout)

    def is_alive(self) -> bool:
        return self._observer.is_alive() and all(e.is_alive() for e in self._observer.emitters)


def arrival_queue() -> queue.Queue[Arrival]:
    """A new, empty queue for a source's sink and the loop that waits on it.

    ``queue.Queue``, not the faster ``queue.SimpleQueue``: a signal that interrupts
    ``SimpleQueue.get(timeout=...)`` just after its deadline makes CPython (3.11 to 3.13)
    wait again with the time left, which is then negative, and a negative wait has no
    end. The loop then sleeps until the next arrival, deaf to the SIGTERM it was just
    sent. ``Queue.get`` waits on a lock whose timed acquire treats time run out as a
    timeout.
    """
    return queue.Queue()


def start_arrivals(spool_dir: Path, sink: Sink, *, polling: bool, poll_interval: float) -> Arrivals:
    """Watch ``spool_dir`` and send its arrivals to ``sink`` (on another thread).

    ``poll_interval`` (seconds) is how often polling looks. Raises ``OSError`` when the
    folder cannot be watched (gone, or out of inotify watches).
    """
    arrivals: Arrivals
    if polling:
        arrivals = _PollingArrivals(spool_dir, sink, poll_interval)
    else:
        arrivals = _InotifyArrivals(spool_dir, sink)
    arrivals.start()
    return arrivals


def watch_problem(exc: OSError) -> str:
    """Why :func:`start_arrivals` could not watch the spool: one line that says what to do.

    Two of the kernel's limits are met here, and neither is said well by its errno alone
    (inotify(7), "/proc interfaces"): EMFILE when the user has as many inotify instances
    as ``fs.inotify.max_user_instances`` allows (128 by default; or the process is out
    of descriptors), ENOSPC when the user has as many watches as
    ``fs.inotify.max_user_watches`` allows. Polling needs neither.
    """
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
