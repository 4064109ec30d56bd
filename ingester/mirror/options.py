"""How ``ingester mirror`` runs: its target, its retention and its timings."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..history.retention import RetentionPolicy
from .objectstore import MirrorTarget
from .state import DEFAULT_HOLD_MAX

__all__ = ["MirrorOptions"]


@dataclass(frozen=True)
class MirrorOptions:
    """How the mirror runs. Times in seconds."""

    target: MirrorTarget
    policy: RetentionPolicy = field(default_factory=RetentionPolicy)
    retention: str = "keep"
    hold_max: int = DEFAULT_HOLD_MAX
    endpoint_url: str | None = None
    once: bool = False
    reconcile_interval: float = 300.0
    rescan_interval: float = 30.0
    retry_max: float = 30.0
    concurrency: int = 4
    timeout: float = 10.0
