"""Stop signals sent the way an unlucky operator or a closed terminal sends them."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import pytest

STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def storm(
    pid: int,
    count: int,
    seed: int,
    kinds: Sequence[signal.Signals] = STOPS,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """``count`` signals of ``kinds`` to ``pid``, each within a millisecond of the last
    (fewer if it exits first, or once ``alive()`` says it has)."""
    pacing = random.Random(seed)
    for _ in range(count):
        if not alive():
            return
        try:
            os.kill(pid, pacing.choice(kinds))
        except ProcessLookupError:
            return
        pause(pacing.uniform(0, 0.001))


def pause(seconds: float) -> None:
    """A busy pause between two signals (a sleep would space them further apart)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        pass


def survives_a_storm(
    script: str, kinds: Sequence[signal.Signals], count: int, seed: int, what: str
) -> None:
    """Run ``script`` (``python -c``); once it prints ``ready``, send it up to ``count``
    signals of ``kinds`` (see :func:`storm`) until it exits. It must then end within
    10 s, having printed ``done``, with exit 0; ``what`` names it in a failure."""
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None
        try:
            said = child.stdout.readline().strip()
            if said != "ready":
                # Nothing at all: it ended before it was ready; say how, not '' != 'ready'.
                child.kill()
                pytest.fail(f"{what} printed {said!r} where 'ready' was due (exit {child.wait()})")
            storm(child.pid, count, seed, kinds, alive=lambda: child.poll() is None)
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{what} still runs 10 s after the signals")
            assert child.stdout.read().strip() == "done"
            assert child.returncode == 0
        finally:
            if child.poll() is None:
                child.kill()
