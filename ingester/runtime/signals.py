"""The signals that stop a long-running command, and what becomes of them once it has.

``watch``, ``serve`` and ``mirror`` stop cleanly on each of :data:`STOP_SIGNALS`:
SIGTERM (``systemctl stop``, ``kill``), SIGINT (Ctrl-C) and SIGHUP (the terminal they ran
in was closed, which may send it twice). Once a command has stopped, a further one is
ignored: Python puts each signal's default action back as it finalizes, and a signal
arriving then would end a process that stopped cleanly with the signal's exit code.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["STOP_SIGNALS", "ignore_stop_signals"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""What stops a service: each finishes what is in hand first."""


def ignore_stop_signals() -> None:
    """Ignore :data:`STOP_SIGNALS` from now on (a no-op off the main thread, where no
    handler can be set). Call it once the command has stopped, on its way out."""
    if threading.current_thread() is threading.main_thread():
        for stop in STOP_SIGNALS:
            signal.signal(stop, signal.SIG_IGN)
