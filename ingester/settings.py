"""Settings: the one place every path and limit of SPEC section 2 is resolved.

Precedence: command-line option > ``INGESTER_*`` environment > ``--config`` TOML file
(table ``[ingester]``) > default. Each value remembers where it came from (``status``
shows it). A bad value raises :class:`SettingError` naming the setting, before anything
on disk is touched.

Relative paths are taken from the current directory, except in a config file, where
they are taken from the file's folder (so a config file can travel with its tree).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .mirror_state import DEFAULT_HOLD_MAX
from .retention import RetentionPolicy
from .store import HistoryStore

__all__ = ["SETTING_NAMES", "SettingError", "Settings", "resolve_settings"]


class SettingError(ValueError):
    """A setting has a bad value; ``setting`` is its option name, e.g. ``--max-versions``."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


def _positive_int(text: Any) -> int:
    if isinstance(text, bool | float):
        raise ValueError(f"{text!r} is not a whole number")
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: Any) -> float:
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a number")
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a number greater than 0, got {text!r}")
    return value


def _mirror_target(text: Any) -> str:
    from .objectstore import parse_target

    return str(parse_target(text))


def _mirror_retention(text: Any) -> str:
    if text not in ("keep", "follow"):
        raise ValueError(f"must be keep or follow, got {text!r}")
    return str(text)


def _count(text: Any) -> int:
    if isinstance(text, bool | float):
        raise ValueError(f"{text!r} is not a whole number")
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise ValueError(f"must be at least 0, got {value}")
    return value


def _path(text: Any) -> Path:
    if not isinstance(text, str | os.PathLike) or not os.fspath(text):
        raise ValueError(f"{text!r} is not a path")
    return Path(text)


@dataclass(frozen=True)
class _Spec:
    name: str
    parse: Callable[[Any], Any]
    is_path: bool = False

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "INGESTER_" + self.name.upper()


_SPECS = (
    _Spec("root", _path, is_path=True),
    _Spec("spool_dir", _path, is_path=True),
    _Spec("rejected_dir", _path, is_path=True),
    _Spec("history_dir", _path, is_path=True),
    _Spec("latest_path", _path, is_path=True),
    _Spec("max_versions", _positive_int),
    _Spec("retention_days", _positive_float),
    _Spec("max_bytes", _positive_int),
    _Spec("mirror", _mirror_target),
    _Spec("mirror_retention", _mirror_retention),
    _Spec("mirror_hold", _count),
)
SETTING_NAMES = tuple(s.name for s in _SPECS)

_DEFAULTS: dict[str, Any] = {
    "max_versions": 100,
    "retention_days": 7.0,
    "max_bytes": 1 << 20,
    "mirror": None,
    # The object store is the copy that outlives this machine: by default it keeps
    # what local retention deletes (a bucket lifecycle rule can expire it instead).
    "mirror_retention": "keep",
    "mirror_hold": DEFAULT_HOLD_MAX,
}


@dataclass(frozen=True)
class Settings:
    """Every path and limit, resolved and absolute."""

    root: Path
    spool_dir: Path
    rejected_dir: Path
    history_dir: Path
    latest_path: Path
    max_versions: int = 100
    retention_days: float = 7.0
    max_bytes: int = 1 << 20
    mirror: str | None = None
    mirror_retention: str = "keep"
    mirror_hold: int = DEFAULT_HOLD_MAX
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
        """A store on these settings' history (not yet loaded)."""
        return HistoryStore(self.history_dir, self.latest_path, self.policy())

    def describe(self) -> dict[str, dict[str, Any]]:
        """Each setting's value and where it came from, for ``status``."""
        out: dict[str, dict[str, Any]] = {}
        for spec in _SPECS:
            value = getattr(self, spec.name)
            out[spec.name] = {
                "value": os.fspath(value) if isinstance(value, Path) else value,
                "source": self.sources.get(spec.name, "default"),
            }
        return out


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise SettingError("--config", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingError("--config", f"{path} is not valid TOML: {exc}") from None
    table = document.get("ingester", {})
    if not isinstance(table, dict):
        raise SettingError("--config", f"{path}: [ingester] must be a table")
    unknown = sorted(set(table) - set(SETTING_NAMES))
    if unknown:
        raise SettingError(
            "--config",
            f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(SETTING_NAMES)}",
        )
    return table


def _inside(path: Path, folder: Path) -> bool:
    return path != folder and path.is_relative_to(folder)


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or _inside(a, b) or _inside(b, a)


def resolve_settings(
    options: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_path: Path | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Resolve every setting from options, the environment, a config file and defaults.

    ``options`` maps setting names to command-line values (``None`` when not given).
    """
    environ = os.environ if environ is None else environ
    cwd = Path(os.path.abspath(cwd or Path.cwd()))
    if config_path is None and environ.get("INGESTER_CONFIG"):
        config_path = Path(environ["INGESTER_CONFIG"])
    config = _read_config(config_path) if config_path is not None else {}
    config_dir = Path(os.path.abspath(config_path)).parent if config_path is not None else cwd

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in _SPECS:
        raw: Any
        base = cwd
        if options.get(spec.name) is not None:
            raw, where, label = options[spec.name], "option", spec.option
        elif environ.get(spec.env):
            raw, where, label = environ[spec.env], f"env {spec.env}", spec.env
        elif spec.name in config:
            raw, where = config[spec.name], f"config {config_path}"
            label, base = f"{spec.option} (config {spec.name})", config_dir
        else:
            continue
        try:
            value = spec.parse(raw)
        except ValueError as exc:
            raise SettingError(label, str(exc)) from None
        if spec.is_path:
            value = Path(os.path.abspath(base / Path(value).expanduser()))
        values[spec.name] = value
        sources[spec.name] = where

    root = values.get("root", cwd)
    spool = values.get("spool_dir", root / "spool")
    history = values.get("history_dir", root / "console-usage-history")
    latest = values.get("latest_path", root / "console-usage-synced.json")
    if _overlaps(spool, history):
        raise SettingError(
            "--spool-dir/--history-dir", f"the spool {spool} and the history {history} overlap"
        )
    if latest.parent == spool or _inside(latest, spool) or _inside(latest, history):
        raise SettingError(
            "--latest-path", f"{latest} must not be inside the spool or the history folder"
        )
    return Settings(
        root=root,
        spool_dir=spool,
        rejected_dir=values.get("rejected_dir", spool / "rejected"),
        history_dir=history,
        latest_path=latest,
        max_versions=values.get("max_versions", _DEFAULTS["max_versions"]),
        retention_days=values.get("retention_days", _DEFAULTS["retention_days"]),
        max_bytes=values.get("max_bytes", _DEFAULTS["max_bytes"]),
        mirror=values.get("mirror", _DEFAULTS["mirror"]),
        mirror_retention=values.get("mirror_retention", _DEFAULTS["mirror_retention"]),
        mirror_hold=values.get("mirror_hold", _DEFAULTS["mirror_hold"]),
        sources=sources,
    )
