"""Where each setting's value comes from: the command line, the environment, a config file.

Precedence: command-line option > ``INGESTER_*`` environment > ``--config`` TOML file
(table ``[ingester]``) > default. Each value remembers where it came from (``status``
shows it). A bad value raises :class:`SettingError` naming the setting, before anything
on disk is touched.

Relative paths are taken from the current directory, except in a config file, where
they are taken from the file's folder (so a config file can travel with its tree).
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import SettingError, os_cause
from .bounds import shown
from .layout import check_layout
from .resolved import Settings
from .table import DEFAULTS, SETTING_NAMES, SPECS

__all__ = ["CONFIG_MAX_BYTES", "read_setting_file", "resolve_settings"]


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
        data = read_setting_file(path, CONFIG_MAX_BYTES)
    except OSError as exc:
        raise SettingError("--config", f"cannot read {path}: {os_cause(exc)}") from None
    except ValueError as exc:  # not a regular file, or too large to be a config
        raise SettingError("--config", f"cannot read {path}: {exc}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        # Some editors start a UTF-8 file with a byte order mark, which TOML does not
        # allow; "invalid statement at line 1, column 1" would not say what is there.
        raise SettingError(
            "--config", f"{path} starts with a byte order mark (BOM): save it as UTF-8 without one"
        )
    try:
        document = tomllib.loads(data.decode())
    except tomllib.TOMLDecodeError as exc:
        raise SettingError("--config", f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SettingError("--config", f"{path} is not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        # The parser descends once per level: a value thousands deep (a generated or
        # damaged file) ends it before the end of the file is found.
        raise SettingError(
            "--config", f"cannot read {path}: a value is nested too deeply"
        ) from None
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
    # The current folder is looked up only where a path is taken from it: with every
    # path absolute, a folder removed under the shell refuses nothing.
    known_cwd = Path(os.path.abspath(cwd)) if cwd is not None else None

    def current(label: str) -> Path:
        if known_cwd is not None:
            return known_cwd
        try:
            return Path(os.path.abspath(Path.cwd()))
        except OSError as exc:
            raise SettingError(
                label,
                f"the current folder cannot be used ({os_cause(exc)}); run from another "
                "folder, or give the path absolute",
            ) from None

    if config_path is None and environ.get("INGESTER_CONFIG"):
        config_path = Path(environ["INGESTER_CONFIG"])
    config = _read_config(config_path) if config_path is not None else {}
    # Named by its absolute path where a value's source is said: read later (status,
    # from another folder), a relative name would not tell which file it was.
    config_file: Path | None = None
    if config_path is not None:
        given = config_path if config_path.is_absolute() else current("--config") / config_path
        config_file = Path(os.path.abspath(given))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SPECS:
        raw: Any
        base: Path | None = None  # None: the current folder
        if options.get(spec.name) is not None:
            raw, where, label = options[spec.name], "option", spec.option
        elif environ.get(spec.env):
            raw, where, label = environ[spec.env], f"env {spec.env}", spec.env
        elif spec.name in config and config_file is not None:
            raw, where = config[spec.name], f"config {config_file}"
            label, base = f"{spec.option} (config {spec.name})", config_file.parent
        else:
            continue
        try:
            value = spec.parse(raw)
        except ValueError as exc:
            raise SettingError(label, str(exc)) from None
        if spec.is_path:
            try:
                path = Path(value).expanduser()
            except RuntimeError:
                # ``~name`` of a user this system does not know (or ``~`` with no home
                # to be found): no folder to take it for.
                head = os.fspath(value).split("/", 1)[0]
                raise SettingError(
                    label,
                    f"{shown(os.fspath(value))}: {head} names no home folder here "
                    "(no such user, or no HOME)",
                ) from None
            if not path.is_absolute():
                path = (base if base is not None else current(label)) / path
            value = Path(os.path.abspath(path))
        values[spec.name] = value
        sources[spec.name] = where

    root = values["root"] if "root" in values else current("--root")
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
        max_versions=values.get("max_versions", DEFAULTS["max_versions"]),
        retention_days=values.get("retention_days", DEFAULTS["retention_days"]),
        max_bytes=values.get("max_bytes", DEFAULTS["max_bytes"]),
        rejected_retention_days=values.get(
            "rejected_retention_days", DEFAULTS["rejected_retention_days"]
        ),
        mirror=values.get("mirror", DEFAULTS["mirror"]),
        mirror_retention=values.get("mirror_retention", DEFAULTS["mirror_retention"]),
        mirror_hold=values.get("mirror_hold", DEFAULTS["mirror_hold"]),
        console_timezone=values.get("console_timezone"),
        sources=sources,
    )
