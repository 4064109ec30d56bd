"""The settings once resolved: :class:`Settings`, every path and limit, absolute, each
value with where it came from; and the store they describe.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any

from ..history.names import MIRROR_STATE_NAME
from ..history.retention import (
    DEFAULT_HOLD_MAX,
    DEFAULT_MAX_VERSIONS,
    DEFAULT_RETENTION_DAYS,
    RetentionPolicy,
)
from ..history.store import HistoryStore
from .table import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MIRROR_RETENTION,
    DEFAULT_REJECTED_RETENTION_DAYS,
    SPECS,
)

__all__ = ["Settings", "mirror_hold_hook"]


def mirror_hold_hook(
    history_dir: Path, sorted_names: Sequence[str], expired: int, hold_max: int | None = None
) -> tuple[int, str | None]:
    """Retention's hold for the stores the commands and the Python API make:
    :func:`ingester.mirror.state.mirror_hold` where a mirror keeps its state file in the
    history, else every expired version may go. ``hold_max``: a ``--mirror-hold`` given
    to the command that runs retention, which bounds the hold in place of the mirror's
    own (``None``: the mirror's, from its state file). The mirror's module (and pydantic
    with it) is loaded only where there is a state file, so a watcher without a mirror
    never loads it."""
    if not os.path.lexists(history_dir / MIRROR_STATE_NAME):
        return expired, None
    from ..mirror.state import mirror_hold

    return mirror_hold(history_dir, sorted_names, expired, hold_max)


@dataclass(frozen=True)
class Settings:
    """Every path and limit, resolved and absolute."""

    root: Path
    spool_dir: Path
    rejected_dir: Path
    history_dir: Path
    latest_path: Path
    max_versions: int = DEFAULT_MAX_VERSIONS
    retention_days: float = DEFAULT_RETENTION_DAYS
    max_bytes: int = DEFAULT_MAX_BYTES
    rejected_retention_days: float = DEFAULT_REJECTED_RETENTION_DAYS
    mirror: str | None = None
    mirror_retention: str = DEFAULT_MIRROR_RETENTION
    mirror_hold: int = DEFAULT_HOLD_MAX
    console_timezone: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def writers_tmp_dir(self) -> Path:
        """``<spool>/tmp/``: scratch space for writers; the watcher never reads it."""
        return self.spool_dir / "tmp"

    @property
    def claimed_dir(self) -> Path:
        """``<spool>/.claimed/``: drops the watcher has taken but not yet stored."""
        return self.spool_dir / ".claimed"

    def policy(self) -> RetentionPolicy:
        """The retention policy these settings describe."""
        return RetentionPolicy(self.max_versions, self.retention_days)

    def store(self) -> HistoryStore:
        """A store on these settings' history (not yet loaded), its retention held for a
        configured mirror (:func:`ingester.mirror.state.mirror_hold`), bounded by
        ``mirror_hold`` where it was given (an option, the environment or a config file),
        else by the mirror's own bound from its state file."""
        hold = mirror_hold_hook
        if "mirror_hold" in self.sources:
            # The state file holds the bound the mirror was started with; a bound given
            # to the command that runs retention is what its user asked of it.
            hold = functools.partial(mirror_hold_hook, hold_max=self.mirror_hold)
        return HistoryStore(self.history_dir, self.latest_path, self.policy(), hold=hold)

    def console_zone(self) -> tuple[tzinfo, str]:
        """The console's time zone and its name: the setting, else this machine's zone.

        The machine's zone is the default because the scraper usually runs in the browser
        of the person whose console it reads, on the machine (or in the zone) the history
        is kept for; a server elsewhere sets ``--console-timezone``.
        """
        from ..usage.resets import load_zone, machine_zone

        if self.console_timezone is not None:
            return load_zone(self.console_timezone), self.console_timezone
        return machine_zone()

    def describe(self) -> dict[str, dict[str, Any]]:
        """Each setting's value and where it came from, for ``status``."""
        out: dict[str, dict[str, Any]] = {}
        for spec in SPECS:
            value = getattr(self, spec.name)
            if spec.name == "console_timezone" and value is None:
                value = self.console_zone()[1]  # the zone in effect: this machine's
            out[spec.name] = {
                "value": os.fspath(value) if isinstance(value, Path) else value,
                "source": self.sources.get(spec.name, "default"),
            }
        return out
