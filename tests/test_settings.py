"""Numeric settings have a range that fits their use; anything outside is a usage error
(exit 2, naming the setting) before anything is touched. Reads never allocate the limit.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from support import SAMPLES, cli_env, run_cli
from support.capabilities import bind_mount

SAMPLE = SAMPLES / "valid" / "full.json"

# (global option, environment variable, values just outside, value at the upper bound)
GLOBAL = [
    ("--max-versions", "INGESTER_MAX_VERSIONS", ["0", "1000001", "1e3", "99" * 3000], "1000000"),
    ("--retention-days", "INGESTER_RETENTION_DAYS", ["0", "1000000", "inf", "nan"], "36500"),
    ("--max-bytes", "INGESTER_MAX_BYTES", ["0", "10000000000000", "-1"], "268435456"),
]
WATCH = [
    ("--rescan-interval", ["0", "86401", "1e300", "nan", "inf"]),
    ("--retry-max", ["0.05", "3601", "1e300", "nan"]),
    ("--settle", ["-1", "3601", "nan", "inf"]),
]


def assert_usage_error(result: subprocess.CompletedProcess[str], setting: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and setting in errors[0], result.stderr


@pytest.mark.parametrize(("option", "env", "bad", "top"), GLOBAL, ids=[g[0] for g in GLOBAL])
def test_global_settings_out_of_range_are_usage_errors(
    root: Path, option: str, env: str, bad: list[str], top: str
) -> None:
    for value in bad:
        assert_usage_error(run_cli(root, f"{option}={value}", "cleanup"), option)
    for command in (("watch", "--once"), ("submit", str(SAMPLE))):
        assert_usage_error(run_cli(root, f"{option}={bad[1]}", *command), option)
    assert_usage_error(run_cli(root, "status", **{env: bad[1]}), env)
    config = root.parent / "ingester.toml"
    config.write_text(f"[ingester]\n{option[2:].replace('-', '_')} = {bad[1]}\n")
    assert_usage_error(run_cli(root, "--config", str(config), "cleanup"), option)
    assert list(root.iterdir()) == []  # nothing touched

    # The upper bound itself is accepted, and works to the end.
    for command in (("watch", "--once"), ("cleanup",)):
        result = run_cli(root, f"{option}={top}", *command)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("option", "bad"), WATCH, ids=[w[0] for w in WATCH])
def test_watch_settings_out_of_range_are_usage_errors(
    root: Path, option: str, bad: list[str]
) -> None:
    for value in bad:
        assert_usage_error(run_cli(root, "watch", "--once", f"{option}={value}"), option)
    assert list(root.iterdir()) == []


def test_unknown_config_table_or_key_is_a_usage_error(root: Path) -> None:
    config = root.parent / "ingester.toml"
    config.write_text("[ingestor]\nmax_versions = 5\n")
    result = run_cli(root, "--config", str(config), "status")
    assert_usage_error(result, "--config")
    assert "ingestor" in result.stderr
    config.write_text("max_versions = 5\n[ingester]\n")
    result = run_cli(root, "--config", str(config), "status")
    assert_usage_error(result, "--config")
    assert "max_versions" in result.stderr
    assert list(root.iterdir()) == []


def _limit_memory() -> None:
    # Far less than the largest --max-bytes: a read that sized its buffer by the limit fails.
    resource.setrlimit(resource.RLIMIT_AS, (200 << 20, 200 << 20))


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_a_large_max_bytes_is_never_allocated_up_front(root: Path, source: str) -> None:
    args = [sys.executable, "-m", "ingester", "--root", str(root), "--max-bytes", "268435456"]
    args += ["submit", str(SAMPLE) if source == "file" else "-"]
    result = subprocess.run(
        args,
        input=SAMPLE.read_bytes() if source == "stdin" else None,
        capture_output=True,
        timeout=60,
        env=cli_env(),
        preexec_fn=_limit_memory,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize("how", ["option", "environment"])
def test_status_names_a_config_file_given_relative_by_its_absolute_path(
    root: Path, tmp_path: Path, how: str
) -> None:
    """A value's source is ``config /abs/path.toml`` whatever way the file was named:
    read later, from another folder, a relative name would not tell which file it was."""
    assert run_cli(root, "init").returncode == 0
    config = tmp_path / "ingester.toml"
    config.write_text("[ingester]\nmax_versions = 7\n")
    given = ["--config", "ingester.toml"] if how == "option" else []
    env = {**cli_env(), "INGESTER_CONFIG": "ingester.toml"} if how == "environment" else cli_env()
    done = subprocess.run(
        [sys.executable, "-m", "ingester", "--root", str(root), *given, "status", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    setting = json.loads(done.stdout)["settings"]["max_versions"]
    assert setting == {"value": 7, "source": f"config {config}"}


def test_a_config_file_that_is_not_utf8_is_a_usage_error(root: Path) -> None:
    config = root.parent / "ingester.toml"
    config.write_bytes(b'[ingester]\nroot = "\xff"\n')
    assert_usage_error(run_cli(root, "--config", str(config), "status"), "--config")


@pytest.mark.parametrize(
    "value", ["[" * 100_000 + "]" * 100_000, "{a=" * 450 + "1" + "}" * 450], ids=["array", "table"]
)
def test_a_config_file_nested_too_deeply_is_a_usage_error(root: Path, value: str) -> None:
    """Valid TOML or not, a value nested thousands deep (a generated or damaged file) is
    a bad config file like any other, not an internal error."""
    config = root.parent / "ingester.toml"
    config.write_text(f"[ingester]\nroot = {value}\n")
    refused = run_cli(root, "--config", str(config), "status")
    assert_usage_error(refused, "--config")
    assert "nested too deeply" in refused.stderr, refused.stderr


def test_a_config_file_starting_with_a_byte_order_mark_is_refused_saying_so(root: Path) -> None:
    """A config saved by an editor that starts UTF-8 with a BOM is refused naming the BOM,
    not as an invalid statement at line 1, column 1, where nothing can be seen."""
    config = root.parent / "ingester.toml"
    config.write_bytes(b"\xef\xbb\xbf[ingester]\nmax_versions = 5\n")
    refused = run_cli(root, "--config", str(config), "status")
    assert_usage_error(refused, "--config")
    assert "byte order mark (BOM)" in refused.stderr, refused.stderr


def test_a_long_wrong_time_zone_is_shown_cut_as_every_other_bad_value(root: Path) -> None:
    """A value pasted by mistake (a whole file in INGESTER_CONSOLE_TIMEZONE) is named in
    the error by its first characters, as every other setting's bad value is."""
    pasted = "Europe/" + "x" * 5000
    refused = run_cli(root, "forecast", INGESTER_CONSOLE_TIMEZONE=pasted)
    assert_usage_error(refused, "INGESTER_CONSOLE_TIMEZONE")
    assert "'Europe/xxx" in refused.stderr and len(refused.stderr) < 400, refused.stderr


@pytest.mark.parametrize(
    ("args", "setting"),
    [(("show",), "VERSION"), (("list", "--limit"), "--limit"), (("export", "--since"), "--since")],
)
def test_a_value_with_a_byte_that_is_not_utf8_is_named_by_that_byte(
    root: Path, args: tuple[str, ...], setting: str
) -> None:
    """A value holding a byte that is not UTF-8 (a name pasted from ``ls`` of another
    machine) is quoted in the error with that byte as ``\\xff``, as the log says it;
    never as ``\\udcff``, the stand-in Python carries it by, which names no byte."""
    assert run_cli(root, "init").returncode == 0
    refused = run_cli(root, *args, os.fsdecode(b"ab\xffc"))
    assert_usage_error(refused, setting)
    assert "'ab\\xffc'" in refused.stderr and "udc" not in refused.stderr, refused.stderr


def test_a_path_with_a_nul_character_is_a_usage_error(root: Path) -> None:
    config = root.parent / "ingester.toml"
    config.write_text('[ingester]\nhistory_dir = "a\\u0000b"\n')
    assert_usage_error(run_cli(root, "--config", str(config), "status"), "--history-dir")


def test_a_float_where_a_whole_number_belongs_is_a_usage_error(root: Path) -> None:
    config = root / "c.toml"
    config.write_text("[ingester]\nmax_versions = 7.9\n")
    result = run_cli(root, "--config", str(config), "init")
    assert result.returncode == 2 and "max_versions" in result.stderr
    assert not (root / "console-usage-history").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("--spool-dir", "console-usage-history"),
        ("--history-dir", "spool/history"),
        ("--latest-path", "spool/latest.json"),
        # The latest link is one name: never one of the folders, nor a folder holding one.
        ("--latest-path", "spool"),
        ("--latest-path", "console-usage-history"),
        ("--latest-path", "."),
        ("--latest-path", ".."),
        ("--latest-path", "spool/rejected"),
        ("--latest-path", "spool/rejected/latest.json"),
        # A quarantine among the claims would be stored by the next start.
        ("--rejected-dir", "spool/.claimed"),
        ("--rejected-dir", "spool/tmp"),
        ("--rejected-dir", "spool/tmp/rejected"),
    ],
)
def test_overlapping_folders_are_a_usage_error(root: Path, args: tuple[str, str]) -> None:
    option, value = args
    result = run_cli(root, option, str(root / value), "init")
    assert result.returncode == 2, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error: ")] == [
        result.stderr.splitlines()[-1]
    ], result.stderr
    assert not (root / "spool").exists()


def test_an_overlap_through_a_symlink_says_where_the_link_leads(root: Path) -> None:
    # Neither path given shows the overlap: only the link's target does.
    (root / "console-usage-history").mkdir()
    (root / "spool").symlink_to("console-usage-history")
    result = run_cli(root, "status")
    assert result.returncode == 2, result.stderr
    real = os.path.realpath(root / "console-usage-history")
    assert f"the spool {root / 'spool'} (which leads to {real}) and the history" in result.stderr


BIND_HINT = "(one folder under two paths: a bind mount?)"


@pytest.mark.usefixtures("can_mount")
@pytest.mark.parametrize(
    ("option", "shown", "seen_at"),
    [
        # The spool is the history itself, seen through a bind mount.
        ("--spool-dir", "console-usage-history", "mnt/spool"),
        # The spool is a folder that holds the history.
        ("--spool-dir", ".", "mnt/spool"),
        # The quarantine is the history.
        ("--rejected-dir", "console-usage-history", "mnt/rejected"),
    ],
)
def test_an_overlap_through_a_bind_mount_is_a_usage_error(
    tmp_path: Path, option: str, shown: str, seen_at: str
) -> None:
    # Names alone cannot show it: the folder's identity (device and inode) does.
    root = tmp_path / "root"
    (root / "console-usage-history").mkdir(parents=True)
    with bind_mount(root / shown, tmp_path / seen_at) as other:
        result = run_cli(root, option, str(other), "init")
        made = sorted(os.listdir(other))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert error == result.stderr.splitlines()[-1], result.stderr
    if option == "--spool-dir":
        assert error.endswith(f"overlap {BIND_HINT}"), error
    else:
        assert "the quarantine" in error and "must not be, hold or lie in" in error, error
    assert "tmp" not in made and ".claimed" not in made and "rejected" not in made, made


@pytest.mark.usefixtures("can_mount")
def test_two_folders_side_by_side_under_a_bind_mount_are_no_overlap(tmp_path: Path) -> None:
    # A bind-mounted data folder holding both, apart: nothing overlaps.
    data = tmp_path / "data"
    (data / "spool").mkdir(parents=True)
    (data / "history").mkdir()
    with bind_mount(data, tmp_path / "mnt") as mnt:
        root = tmp_path / "root"
        root.mkdir()
        args = ("--spool-dir", str(mnt / "spool"), "--history-dir", str(data / "history"))
        result = run_cli(root, *args, "init")
    assert result.returncode == 0, result.stderr


@pytest.mark.usefixtures("can_mount")
def test_a_spool_mounted_apart_from_the_history_on_one_filesystem_stores_its_drops(
    tmp_path: Path,
) -> None:
    # One filesystem (one st_dev) through two mounts, as a container's bind mounts give
    # it: no link crosses them (EXDEV), so the watcher's own drops are stored as copies,
    # not retried for ever.
    from support.watchproc import drop, payload, stored_contents

    data = tmp_path / "data"
    (data / "spool").mkdir(parents=True)
    root = tmp_path / "root"
    root.mkdir()
    with bind_mount(data, tmp_path / "mnt") as mnt:
        spool = mnt / "spool"
        assert os.stat(spool).st_dev == os.stat(root).st_dev
        drop(spool, "a.json", payload(1))
        done = run_cli(root, "--spool-dir", str(spool), "watch", "--once")
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        assert " ERROR " not in done.stderr, done.stderr
        assert stored_contents(root) == {payload(1): 1}
        assert not (spool / "a.json").exists()


def test_an_empty_environment_variable_counts_as_not_set(root: Path) -> None:
    # As systemd's `Environment=INGESTER_MAX_VERSIONS=` leaves it; an empty option is
    # still a usage error.
    assert run_cli(root, "init").returncode == 0
    shown = run_cli(root, "status", "--json", INGESTER_MAX_VERSIONS="", INGESTER_HISTORY_DIR="")
    assert shown.returncode == 0, shown.stderr
    settings = json.loads(shown.stdout)["settings"]
    assert settings["max_versions"] == {"value": 100, "source": "default"}, settings
    assert settings["history_dir"]["source"] == "default", settings
    empty = run_cli(root, "--max-versions", "", "status")
    assert empty.returncode == 2 and "--max-versions" in empty.stderr, empty.stderr


@pytest.mark.parametrize("command", ["watch", "check", "status", "submit"])
@pytest.mark.parametrize(
    ("args", "extra"),
    [
        ((), {"INGESTER_MAX_VERSIONS": "abc"}),
        ((), {"INGESTER_CONFIG": "/nonexistent/ingester.toml"}),
        (("--max-bytes", "0"), {}),
    ],
    ids=["environment", "config-file", "option"],
)
def test_a_bad_setting_does_not_keep_a_command_from_showing_its_help(
    root: Path, command: str, args: tuple[str, ...], extra: dict[str, str]
) -> None:
    """``ingester COMMAND --help`` shows the help (exit 0) whatever the settings: it is
    how an operator finds out what a service with a broken setting should be given, and
    ``ingester --help`` shows it too. Without ``--help`` the bad setting is refused."""
    shown = run_cli(root, *args, command, "--help", **extra)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"Usage: ingester {command} [OPTIONS]"), shown.stdout
    assert shown.stderr == ""
    refused = run_cli(root, *args, command, **extra)
    assert refused.returncode == 2, refused.stderr


def _run_in_a_removed_folder(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``ingester ARGS`` run from a folder removed after the shell entered it."""
    gone = tmp_path / "gone"
    gone.mkdir()
    code = "import os, sys, runpy; os.rmdir(sys.argv[1]); sys.argv[1:2] = []; " + (
        "runpy.run_module('ingester', run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(gone), *args],
        cwd=gone,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_removed_current_folder_matters_only_to_a_relative_path(
    root: Path, tmp_path: Path
) -> None:
    """Every path given absolute, the current folder is never used: its removal (a shell
    left in a folder a deploy replaced) refuses nothing. A relative path, which is taken
    from it, is refused in one line naming the setting."""
    assert run_cli(root, "init").returncode == 0
    fine = _run_in_a_removed_folder(tmp_path, "--root", str(root), "status", "--json")
    assert fine.returncode == 0, fine.stderr
    assert json.loads(fine.stdout)["settings"]["root"]["value"] == str(root)
    relative = _run_in_a_removed_folder(tmp_path, "--root", str(root), "--spool-dir", "s", "status")
    assert_usage_error(relative, "--spool-dir")
    assert "the current folder cannot be used" in relative.stderr
    default = _run_in_a_removed_folder(tmp_path, "status")
    assert_usage_error(default, "--root")


def test_a_path_under_the_home_of_a_user_who_does_not_exist_is_a_usage_error(
    root: Path,
) -> None:
    """``~name`` is expanded as a shell would; a ``name`` the system does not know (a
    typo, a service user not made yet) is refused naming the setting, before anything is
    touched, from the command line, the environment and a config file alike."""
    missing = "~no-such-user-of-this-system/history"
    assert_usage_error(run_cli(root, "--history-dir", missing, "init"), "--history-dir")
    assert_usage_error(run_cli(root, "init", INGESTER_SPOOL_DIR=missing), "INGESTER_SPOOL_DIR")
    config = root.parent / "ingester.toml"
    config.write_text(f'[ingester]\nrejected_dir = "{missing}"\n')
    refused = run_cli(root, "--config", str(config), "init")
    assert_usage_error(refused, "--rejected-dir")
    assert "no-such-user-of-this-system" in refused.stderr
    assert list(root.iterdir()) == []
