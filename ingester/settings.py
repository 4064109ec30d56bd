"""Settings: the one table of every path and limit, and where each value comes from.

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
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any

from .errors import SettingError, os_cause
from .history.names import MIRROR_STATE_NAME
from .history.retention import (
    DEFAULT_HOLD_MAX,
    DEFAULT_MAX_VERSIONS,
    DEFAULT_RETENTION_DAYS,
    RetentionPolicy,
)
from .history.store import HistoryStore
from .payload.gate import MAX_DROP_BYTES

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_REJECTED_RETENTION_DAYS",
    "DRAIN_S",
    "MAX_BYTES",
    "MAX_VERSIONS",
    "RESCAN_INTERVAL",
    "RETENTION_DAYS",
    "RETRY_MAX",
    "SETTING_NAMES",
    "SETTLE",
    "SPECS",
    "Bounds",
    "SettingError",
    "Settings",
    "Spec",
    "WatchOptions",
    "check_layout",
    "resolve_settings",
]


def _shown(text: Any) -> str:
    shown = repr(text)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def mirror_hold_hook(
    history_dir: Path, sorted_names: Sequence[str], expired: int
) -> tuple[int, str | None]:
    """Retention's hold for the stores the commands and the Python API make:
    :func:`ingester.mirror.state.mirror_hold` where a mirror keeps its state file in the
    history, else every expired version may go. The mirror's module (and pydantic with
    it) is loaded only where there is a state file, so a watcher without a mirror never
    loads it."""
    if not os.path.lexists(history_dir / MIRROR_STATE_NAME):
        return expired, None
    from .mirror.state import mirror_hold

    return mirror_hold(history_dir, sorted_names, expired)


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
            raise ValueError(f"{_shown(text)} is not a {kind}")
        try:
            value: float = int(text) if self.whole else float(text)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{_shown(text)} is not a {kind}") from None
        low = int(self.low) if self.whole else self.low
        high = int(self.high) if self.whole else self.high
        unit = f" {self.unit}" if self.unit else ""
        too_low = value <= low if self.above else value < low
        if not math.isfinite(value) or too_low or value > high:
            low_words = f"greater than {low}" if self.above else f"at least {low}"
            raise ValueError(f"must be {low_words} and at most {high}{unit}, got {_shown(text)}")
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
DRAIN_S = 10.0
"""``serve --watch``'s default budget (seconds) at a stop for the watcher to store what
waits in the spool once the server has stopped taking requests. A drop is stored in
milliseconds, so this is room for thousands; with the server's 5 s grace period it stays
well inside the single unit's ``TimeoutStopSec=30s``."""
RETRY_MAX = Bounds(0.1, 3_600, unit="seconds")
"""A failing history is retried at least once an hour."""
REJECTED_RETENTION_DAYS = Bounds(0, 36_500, above=True, unit="days")
"""As for versions: ``now - days`` must stay a date."""
MIRROR_HOLD = Bounds(0, 1_000_000, whole=True, unit="versions")
"""No more versions than the store keeps at all."""
SETTLE = Bounds(0, 3_600, unit="seconds")
"""A drop written in place is waited for at most an hour."""


def _mirror_target(text: Any) -> str:
    from .mirror.objectstore import parse_target

    return str(parse_target(text))


def _mirror_retention(text: Any) -> str:
    if text not in ("keep", "follow"):
        raise ValueError(f"must be keep or follow, got {text!r}")
    return str(text)


def _time_zone(text: Any) -> str:
    from .usage.resets import load_zone

    if not isinstance(text, str):
        raise ValueError(f"{_shown(text)} is not a time zone name")
    return load_zone(text).key


def _path(text: Any) -> Path:
    if not isinstance(text, str | os.PathLike):
        raise ValueError(f"{_shown(text)} is not a path")
    if not os.fspath(text):
        raise ValueError("the path is empty")
    if "\x00" in os.fspath(text):
        raise ValueError(f"{_shown(text)} holds a NUL character")
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
_SPECS = SPECS
SETTING_NAMES = tuple(s.name for s in SPECS)
_DEFAULTS: dict[str, Any] = {s.name: s.default for s in SPECS if not s.is_path}


@dataclass(frozen=True)
class WatchOptions:
    """The knobs of ``ingester watch`` (options of that command only); durations in seconds.

    Their ranges are :data:`RESCAN_INTERVAL`, :data:`RETRY_MAX` and :data:`SETTLE`.
    """

    once: bool = False  # drain the backlog, then exit
    polling: bool = False  # poll the spool instead of inotify (NFS, some FUSE mounts)
    rescan_interval: float = 30.0  # seconds between full rescans of the spool
    retry_max: float = 30.0  # seconds, the longest wait between retries after a failure
    settle: float = 1.0  # seconds a drop not announced complete must stay unchanged


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
        configured mirror (:func:`ingester.mirror.state.mirror_hold`)."""
        return HistoryStore(
            self.history_dir, self.latest_path, self.policy(), hold=mirror_hold_hook
        )

    def console_zone(self) -> tuple[tzinfo, str]:
        """The console's time zone and its name: the setting, else this machine's zone.

        The machine's zone is the default because the scraper usually runs in the browser
        of the person whose console it reads, on the machine (or in the zone) the history
        is kept for; a server elsewhere sets ``--console-timezone``.
        """
        from .usage.resets import load_zone, machine_zone

        if self.console_timezone is not None:
            return load_zone(self.console_timezone), self.console_timezone
        return machine_zone()

    def describe(self) -> dict[str, dict[str, Any]]:
        """Each setting's value and where it came from, for ``status``."""
        out: dict[str, dict[str, Any]] = {}
        for spec in _SPECS:
            value = getattr(self, spec.name)
            if spec.name == "console_timezone" and value is None:
                value = self.console_zone()[1]  # the zone in effect: this machine's
            out[spec.name] = {
                "value": os.fspath(value) if isinstance(value, Path) else value,
                "source": self.sources.get(spec.name, "default"),
            }
        return out


def read_setting_file(path: Path, limit: int) -> bytes:
    """The bytes of a file a setting names (the config, the API key file), at most
    ``limit`` of them.

    A FIFO is not waited on and nothing but a regular file is read, so a wrong path
    (``/dev/zero``, a pipe) is an error at start, not a hang or a read that never ends.
    Raises ``OSError`` when it cannot be read, ``ValueError`` (its words) when it is not
    a regular file or is over ``limit`` bytes.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"over {limit} bytes")
    return data


CONFIG_MAX_BYTES = 1 << 20
"""The largest config file read (a few settings take a few hundred bytes)."""


def _read_config(path: Path) -> dict[str, Any]:
    try:
        document = tomllib.loads(read_setting_file(path, CONFIG_MAX_BYTES).decode())
    except OSError as exc:
        raise SettingError("--config", f"cannot read {path}: {os_cause(exc)}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingError("--config", f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SettingError("--config", f"{path} is not UTF-8 (byte {exc.start})") from None
    except ValueError as exc:  # not a regular file, or too large to be a config
        raise SettingError("--config", f"cannot read {path}: {exc}") from None
    others = sorted(set(document) - {"ingester"})
    if others:
        # A misspelt table would otherwise leave every setting at its default, silently.
        raise SettingError(
            "--config", f"{path}: unknown table or key(s) {', '.join(others)}; expected [ingester]"
        )
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


def _identity(path: Path) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of ``path`` itself (a link is not followed), or None if absent."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _identities_above(path: Path) -> set[tuple[int, int]]:
    """The identities of the folders above ``path`` (a real path), as far as they exist."""
    found = set()
    for folder in path.parents:
        identity = _identity(folder)
        if identity is not None:
            found.add(identity)
    return found


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies in ``folder``: by name, or by the folder's identity among the
    folders above ``path``. A bind mount shows one folder under two paths, and names
    alone cannot see that; only folders that exist can be compared so."""
    if path == folder:
        return False
    if path.is_relative_to(folder):
        return True
    identity = _identity(folder)
    return identity is not None and identity in _identities_above(path)


def _same(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file: by name, or by identity (a bind mount)."""
    if a == b:
        return True
    identity = _identity(a)
    return identity is not None and identity == _identity(b)


def _overlaps(a: Path, b: Path) -> bool:
    return _same(a, b) or _inside(a, b) or _inside(b, a)


def _by_identity(a: Path, b: Path) -> str:
    """What to add to an overlap of ``a`` and ``b`` that their names do not show."""
    by_name = a == b or a.is_relative_to(b) or b.is_relative_to(a)
    return "" if by_name else " (one folder under two paths: a bind mount?)"


def _named(path: Path, real: Path) -> str:
    """``path`` as the user gave it, and where it leads when a symlink on it leads
    elsewhere: the overlap may only be seen there."""
    return str(path) if real == path else f"{path} (which leads to {real})"


def check_layout(spool: Path, history: Path, rejected: Path, latest: Path) -> None:
    """Refuse folders that overlap: :class:`SettingError` naming the option and why.

    Each pair is compared as real paths (a symlinked folder is the folder it names), and
    folders that exist also by identity (``st_dev``, ``st_ino``: a bind mount shows one
    folder under two paths), so it is checked again wherever a folder may have been
    replaced since (a watcher whose spool was replaced by a link to its history would
    set up its folders in there).
    """
    real = {k: Path(os.path.realpath(v)) for k, v in (("s", spool), ("h", history))}
    real["r"] = Path(os.path.realpath(rejected))
    if _overlaps(real["s"], real["h"]):
        raise SettingError(
            "--spool-dir/--history-dir",
            f"the spool {_named(spool, real['s'])} and the history "
            f"{_named(history, real['h'])} overlap{_by_identity(real['s'], real['h'])}",
        )
    if (
        _overlaps(real["r"], real["h"])
        or _same(real["r"], real["s"])
        or _inside(real["s"], real["r"])
    ):
        raise SettingError(
            "--rejected-dir",
            f"the quarantine {_named(rejected, real['r'])} must not be, hold or lie in the "
            f"history {_named(history, real['h'])}, nor be or hold the spool "
            f"{_named(spool, real['s'])}",
        )
    # The spool's own folders: a drop quarantined among the claims would be stored as a
    # version by the next start, and writers' scratch files are swept.
    for own in (".claimed", "tmp"):
        if _overlaps(real["r"], real["s"] / own):
            raise SettingError(
                "--rejected-dir",
                f"the quarantine {_named(rejected, real['r'])} must not be, hold or lie in "
                f"the spool's own folder {real['s'] / own}",
            )
    real_latest = Path(os.path.realpath(latest.parent)) / latest.name
    roles = ((spool, "s", "spool"), (history, "h", "history"), (rejected, "r", "quarantine"))
    for path, key, role in roles:
        # A link is one name: it cannot lie in a folder another role owns, nor be one of
        # those folders or hold them (replacing it would replace the folder).
        if _overlaps(real_latest, real[key]) or _overlaps(latest, path):
            raise SettingError(
                "--latest-path",
                f"{latest} must not be, hold or lie in the {role} {_named(path, real[key])}",
            )


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
    if cwd is None:
        try:
            cwd = Path.cwd()
        except OSError as exc:
            raise SettingError(
                "--root",
                f"the current folder cannot be used ({os_cause(exc)}); run from another folder",
            ) from None
    cwd = Path(os.path.abspath(cwd))
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
    rejected = values.get("rejected_dir", spool / "rejected")
    check_layout(spool, history, rejected, latest)
    return Settings(
        root=root,
        spool_dir=spool,
        rejected_dir=rejected,
        history_dir=history,
        latest_path=latest,
        max_versions=values.get("max_versions", _DEFAULTS["max_versions"]),
        retention_days=values.get("retention_days", _DEFAULTS["retention_days"]),
        max_bytes=values.get("max_bytes", _DEFAULTS["max_bytes"]),
        rejected_retention_days=values.get(
            "rejected_retention_days", _DEFAULTS["rejected_retention_days"]
        ),
        mirror=values.get("mirror", _DEFAULTS["mirror"]),
        mirror_retention=values.get("mirror_retention", _DEFAULTS["mirror_retention"]),
        mirror_hold=values.get("mirror_hold", _DEFAULTS["mirror_hold"]),
        console_timezone=values.get("console_timezone"),
        sources=sources,
    )
