"""The range each numeric setting may take (:class:`Bounds`), and the ranges themselves.

Every number a setting or an option holds has an upper bound that fits its use, so a
value that passes here never overflows a later step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import shown
from ..payload.gate import MAX_DROP_BYTES

__all__ = [
    "MAX_BYTES",
    "MAX_VERSIONS",
    "MIRROR_HOLD",
    "REJECTED_RETENTION_DAYS",
    "RESCAN_INTERVAL",
    "RETENTION_DAYS",
    "RETRY_MAX",
    "SETTLE",
    "Bounds",
    "shown",
]


@dataclass(frozen=True)
class Bounds:
    """The range a numeric setting may take: from ``low`` (exclusive if ``above``) to ``high``.

    Every number has an upper bound that fits its use, so a value that passes here never
    overflows a later step (a date minus ``retention_days``, a timer, an allocation).
    """

    low: float
    high: float
    whole: bool = False
    above: bool = False
    unit: str = ""

    def describe(self) -> str:
        """The range in words, e.g. ``1 to 1000000`` or ``> 0, at most 36500``."""
        low = int(self.low) if self.whole or self.low == int(self.low) else self.low
        high = int(self.high) if self.whole or self.high == int(self.high) else self.high
        return f"> {low}, at most {high}" if self.above else f"{low} to {high}"

    def parse(self, text: Any) -> Any:
        """``text`` as a number in range; ``ValueError`` with a message fit for the user."""
        kind = "whole number" if self.whole else "number"
        if isinstance(text, bool) or (self.whole and isinstance(text, float)):
            raise ValueError(f"{shown(text)} is not a {kind}")
        try:
            value: float = int(text) if self.whole else float(text)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{shown(text)} is not a {kind}") from None
        low = int(self.low) if self.whole else self.low
        high = int(self.high) if self.whole else self.high
        unit = f" {self.unit}" if self.unit else ""
        too_low = value <= low if self.above else value < low
        if not math.isfinite(value) or too_low or value > high:
            low_words = f"greater than {low}" if self.above else f"at least {low}"
            raise ValueError(f"must be {low_words} and at most {high}{unit}, got {shown(text)}")
        return value


MAX_VERSIONS = Bounds(1, 1_000_000, whole=True)
"""The store keeps every version name in memory; a million is far past any real need."""
RETENTION_DAYS = Bounds(0, 36_500, above=True, unit="days")
"""A hundred years: ``now - retention_days`` must stay a date."""
MAX_BYTES = Bounds(1, MAX_DROP_BYTES, whole=True, unit="bytes")
"""A drop is read into memory and parsed whole; a snapshot is about a kilobyte. The
readers of the history rely on this bound (see :data:`MAX_DROP_BYTES`)."""
RESCAN_INTERVAL = Bounds(0.1, 86_400, unit="seconds")
"""At least one full rescan of the spool a day."""
RETRY_MAX = Bounds(0.1, 3_600, unit="seconds")
"""A failing history is retried at least once an hour."""
REJECTED_RETENTION_DAYS = Bounds(0, 36_500, above=True, unit="days")
"""As for versions: ``now - days`` must stay a date."""
MIRROR_HOLD = Bounds(0, 1_000_000, whole=True, unit="versions")
"""No more versions than the store keeps at all."""
SETTLE = Bounds(0, 3_600, unit="seconds")
"""A drop written in place is waited for at most an hour."""
