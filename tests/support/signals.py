"""Stop signals sent the way an unlucky operator or a closed terminal sends them."""

from __future__ import annotations

import os
import random
import signal
import time

STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def storm(pid: int, count: int, seed: int) -> None:
    """``count`` stop signals of every kind to ``pid``, each within a millisecond of the
    last (fewer if it exits first)."""
    pacing = random.Random(seed)
    for _ in range(count):
        try:
            os.kill(pid, pacing.choice(STOPS))
        except ProcessLookupError:
            return
        pause(pacing.uniform(0, 0.001))


def pause(seconds: float) -> None:
    """A busy pause between two signals (a sleep would space them further apart)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        pass
