"""The settings table: one row (:class:`Spec`) per setting, each with its ``--option``,
its ``INGESTER_*`` variable, its parser, its default and its help.

The global options, the environment, the config file's keys and ``status`` are all read
from :data:`SPECS`. A parser raises ``ValueError`` with words fit for the user.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..history.retention import DEFAULT_HOLD_MAX, DEFAULT_MAX_VERSIONS, DEFAULT_RETENTION_DAYS
from .bounds import (
    MAX_BYTES,
    MAX_VERSIONS,
    MIRROR_HOLD,
    REJECTED_RETENTION_DAYS,
    RETENTION_DAYS,
    Bounds,
    shown,
)

__all__ = [
    "DEFAULTS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MIRROR_RETENTION",
    "DEFAULT_REJECTED_RETENTION_DAYS",
    "SETTING_NAMES",
    "SPECS",
    "Spec",
]


def _mirror_target(text: Any) -> str:
    from ..mirror.objectstore import parse_target

    return str(parse_target(text))


def _mirror_retention(text: Any) -> str:
    if text not in ("keep", "follow"):
        raise ValueError(f"must be keep or follow, got {text!r}")
    return str(text)


def _time_zone(text: Any) -> str:
    from ..usage.resets import load_zone

    if not isinstance(text, str):
        raise ValueError(f"{shown(text)} is not a time zone name")
    return load_zone(text).key


def _path(text: Any) -> Path:
    if not isinstance(text, str | os.PathLike):
        raise ValueError(f"{shown(text)} is not a path")
    if not os.fspath(text):
        raise ValueError("the path is empty")
    if "\x00" in os.fspath(text):
        raise ValueError(f"{shown(text)} holds a NUL character")
    return Path(text)


DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_REJECTED_RETENTION_DAYS = 30.0
DEFAULT_MIRROR_RETENTION = "keep"
"""The object store is the copy that outlives this machine: by default it keeps what
local retention deletes (a bucket lifecycle rule can expire it instead)."""


@dataclass(frozen=True)
class Spec:
    """One row of the settings table: ``--name`` option, ``INGESTER_NAME`` variable, key.

    ``default`` is the value when none is given (None for the paths, which derive from
    each other: ``default_text`` says how); ``bounds`` the range of a number.
    """

    name: str
    parse: Callable[[Any], Any]
    metavar: str
    help: str
    default: Any = None
    default_text: str = ""
    bounds: Bounds | None = None
    is_path: bool = False

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "INGESTER_" + self.name.upper()

    @property
    def help_text(self) -> str:
        """The option's help: what it is, its range, its variable and its default."""
        shown = self.default_text or (
            f"{self.default:g}" if isinstance(self.default, float) else f"{self.default}"
        )
        where = f" ({self.bounds.describe()})" if self.bounds is not None else ""
        return f"{self.help}{where}. [env {self.env}; default: {shown}]"


SPECS = (
    Spec(
        "root",
        _path,
        "DIR",
        "Folder all default paths derive from",
        default_text="current folder",
        is_path=True,
    ),
    Spec("spool_dir", _path, "DIR", "Drop folder", default_text="ROOT/spool", is_path=True),
    Spec(
        "rejected_dir",
        _path,
        "DIR",
        "Quarantine for invalid drops",
        default_text="SPOOL/rejected",
        is_path=True,
    ),
    Spec(
        "history_dir",
        _path,
        "DIR",
        "Version files and _metadata.json",
        default_text="ROOT/console-usage-history",
        is_path=True,
    ),
    Spec(
        "latest_path",
        _path,
        "FILE",
        "Link to the newest version",
        default_text="ROOT/console-usage-synced.json",
        is_path=True,
    ),
    Spec(
        "max_versions",
        MAX_VERSIONS.parse,
        "N",
        "Retention keeps the newest N versions",
        DEFAULT_MAX_VERSIONS,
        bounds=MAX_VERSIONS,
    ),
    Spec(
        "retention_days",
        RETENTION_DAYS.parse,
        "D",
        "...and anything newer than D days",
        DEFAULT_RETENTION_DAYS,
        bounds=RETENTION_DAYS,
    ),
    Spec(
        "max_bytes",
        MAX_BYTES.parse,
        "N",
        "Largest accepted drop in bytes",
        DEFAULT_MAX_BYTES,
        bounds=MAX_BYTES,
    ),
    Spec(
        "rejected_retention_days",
        REJECTED_RETENTION_DAYS.parse,
        "D",
        "Rejected drops (and their reason files) are removed after D days",
        DEFAULT_REJECTED_RETENTION_DAYS,
        bounds=REJECTED_RETENTION_DAYS,
    ),
    Spec(
        "mirror",
        _mirror_target,
        "s3://BUCKET/PREFIX",
        "Object store the 'mirror' command copies the history to",
        default_text="none",
    ),
    Spec(
        "mirror_retention",
        _mirror_retention,
        "keep|follow",
        "keep: remote versions stay (a bucket lifecycle rule may expire them); follow: "
        "deleted when local retention deletes them",
        DEFAULT_MIRROR_RETENTION,
    ),
    Spec(
        "mirror_hold",
        MIRROR_HOLD.parse,
        "N",
        "While a mirror lags, retention keeps at most N expired versions it has not "
        "uploaded, 0 for none",
        DEFAULT_HOLD_MAX,
        bounds=MIRROR_HOLD,
    ),
    Spec(
        "console_timezone",
        _time_zone,
        "ZONE",
        "IANA time zone the console shows absolute reset times in ('Mon 8:59 AM'), e.g. "
        "Europe/Berlin",
        default_text="this machine's zone",
    ),
)
"""Every setting, in the order ``--help`` and ``status`` show them."""
SETTING_NAMES = tuple(s.name for s in SPECS)
DEFAULTS: dict[str, Any] = {s.name: s.default for s in SPECS if not s.is_path}
"""Each setting's value when none is given (the paths derive from each other instead)."""
