"""The signals that stop a long-running command, and what becomes of them once it has.

``watch``, ``serve`` and ``mirror`` stop cleanly on each of :data:`STOP_SIGNALS`:
SIGTERM (``systemctl stop``, ``kill``), SIGINT (Ctrl-C) and SIGHUP (the terminal they ran
in was closed, which may send it twice), unless started with it ignored (``nohup``
ignores SIGHUP): that one stays ignored. Once a command has stopped, a further one is
ignored: Python puts each signal's default action back as it finalizes, and a signal
arriving then would end a process that stopped cleanly with the signal's exit code.

A handler only sets plain attributes (:class:`StopFlag`). Python runs it in the main
thread between two bytecodes, which may be inside a ``threading`` call holding a lock:
``Event.set`` and ``Event.wait`` hold their condition's lock, which one thread cannot
take twice, so a handler calling ``Event.set`` there waits on itself for ever. Two
signals a millisecond apart were enough.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator

__all__ = [
    "STOP_SIGNALS",
    "StopFlag",
    "handled_stop_signals",
    "hold_interrupt",
    "hold_stop_signals",
    "ignore_stop_signals",
    "on_stop_signals",
    "release_held_stops",
    "stop_signals_held",
    "take_held_stops",
]

_SLICE = 0.1  # seconds: how soon a wait sees a stop asked by a signal handler


class StopFlag:
    """A stop asked once, by a signal handler or by any thread; takes no lock.

    :meth:`set` may run at any point of the thread it interrupts; the loops read
    :meth:`is_set` at each step and sleep with :meth:`wait`, which sees a stop within
    0.1 s.
    """

    def __init__(self) -> None:
        self._asked = False

    def set(self) -> None:
        """Ask for the stop (safe in a signal handler, and from any thread)."""
        self._asked = True

    def is_set(self) -> bool:
        """Whether a stop was asked."""
        return self._asked

    def wait(self, timeout: float) -> bool:
        """Sleep ``timeout`` seconds or until a stop is asked; whether one was."""
        deadline = time.monotonic() + timeout
        while not self._asked:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, _SLICE))
        return self._asked


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""What stops a service: each finishes what is in hand first."""

_IGNORED_AT_START = frozenset(s for s in STOP_SIGNALS if signal.getsignal(s) is signal.SIG_IGN)
# Looked at once, as the package loads: a parent that started us with a stop signal
# ignored (nohup: SIGHUP; a shell without job control: SIGINT for a background job)
# asked that it not stop us, and our own SIG_IGN on the way out must not count as theirs.


def handled_stop_signals() -> tuple[signal.Signals, ...]:
    """:data:`STOP_SIGNALS` less those the process was started with ignored: those stay
    ignored for the whole run, as the parent asked (``nohup ingester watch &`` survives
    its terminal closing)."""
    return tuple(s for s in STOP_SIGNALS if s not in _IGNORED_AT_START)


_held: list[int] = []  # the held stop signals that came, in order (signal numbers)
_holding = False


def _note(signum: int, _frame: object) -> None:
    _held.append(signum)


def hold_stop_signals() -> None:
    """From now on SIGTERM and SIGHUP (those the process was not started with ignored)
    are only noted, until the command takes them (:func:`on_stop_signals`,
    :func:`take_held_stops`) or lets them go (:func:`release_held_stops`). SIGINT is
    left to :mod:`ingester.__main__`, whose Ctrl-C while loading ends in click's words,
    until a command that stops cleanly on it is named (:func:`hold_interrupt`).
    A no-op off the main thread, where no handler can be set."""
    global _holding
    if threading.current_thread() is threading.main_thread():
        for stop in handled_stop_signals():
            if stop != signal.SIGINT:
                signal.signal(stop, _note)
        _holding = True


def hold_interrupt() -> None:
    """While stop signals are held (:func:`hold_stop_signals`), hold Ctrl-C (SIGINT) as
    well, from now on: for a command that stops cleanly on it, named on the command line
    and about to load and start. Before that, a Ctrl-C ends the run at once, as
    :mod:`ingester.__main__` makes it. A no-op when nothing is held (a program that
    imports the package), off the main thread, and when SIGINT is not Python's own
    handler (one the process was started with ignored stays ignored)."""
    if (
        _holding
        and threading.current_thread() is threading.main_thread()
        and signal.SIGINT in handled_stop_signals()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, _note)


def take_held_stops() -> tuple[int, ...]:
    """The held stop signals that came (signal numbers, in order), taken: the caller,
    whose own handlers are now in place, acts on them as if they came now."""
    global _holding
    _holding = False
    came = tuple(_held)
    _held.clear()
    return came


def release_held_stops() -> None:
    """For a command that does not stop cleanly: the held signals get their default
    action back, and one that came meanwhile ends the process now, as it would have
    without the hold. A no-op when none are held."""
    global _holding
    if not _holding:
        return
    _holding = False
    for stop in STOP_SIGNALS:
        if signal.getsignal(stop) is _note:
            # SIGINT's own is Python's handler (KeyboardInterrupt, click's Aborted!).
            default = signal.default_int_handler if stop == signal.SIGINT else signal.SIG_DFL
            signal.signal(stop, default)
    for came in take_held_stops():
        signal.raise_signal(came)


def on_stop_signals(ask: Callable[[], None]) -> None:
    """From now on each of :data:`STOP_SIGNALS` only calls ``ask`` (a no-op off the main
    thread, where no handler can be set): SIGHUP too, whose default would end the process
    at once, mid-step; one the process was started with ignored stays ignored
    (:func:`handled_stop_signals`), one the process was started with blocked is let
    through. One held while the command started (:func:`hold_stop_signals`) calls
    ``ask`` now. ``ask`` runs between two bytecodes of
    the main thread, so it only sets plain attributes (:meth:`StopFlag.set`). Call
    :func:`ignore_stop_signals` on the way out."""
    if threading.current_thread() is threading.main_thread():
        handled = handled_stop_signals()
        for stop in handled:
            signal.signal(stop, lambda _signum, _frame: ask())
        # A blocked signal mask is inherited through exec (a launcher that blocked them
        # around its fork): unlike an ignored signal, no parent asks for that, and a
        # blocked SIGTERM would wait, pending, until systemd's SIGKILL. One pending now
        # is handled as the mask lets it through.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
        if take_held_stops():
            ask()


def ignore_stop_signals() -> None:
    """Ignore :data:`STOP_SIGNALS` from now on (a no-op off the main thread, where no
    handler can be set). Call it once the command has stopped, on its way out."""
    if threading.current_thread() is threading.main_thread():
        for stop in STOP_SIGNALS:
            signal.signal(stop, signal.SIG_IGN)


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold :data:`STOP_SIGNALS` back while the block runs; one that came meanwhile is
    delivered as it ends.

    For a clean-up that a handler raising ``SystemExit`` (a one-shot command's stop)
    must not cut in half: a stop during the removal of a temp tree left half of it. The
    signal mask is the calling thread's: call it from the thread that runs the
    handlers (the main one) of a process without others that take signals.
    """
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
