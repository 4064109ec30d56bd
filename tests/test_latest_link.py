"""Where the latest link points, for each way the folders can be laid out (real CLI).

The link names the history through its logical path, so a copy of the root holds a
link into its own history; it still resolves when the link's own folder is reached
through a symlink.
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from support import SAMPLES, run_cli
from support.watchproc import payload

HISTORY = "console-usage-history"
LATEST = "console-usage-synced.json"
SAMPLE = SAMPLES / "valid" / "full.json"


def ingest(root: Path, *options: str) -> str:
    result = run_cli(root, *options, "ingest", str(SAMPLE))
    assert result.returncode == 0, result.stderr
    return result.stdout.split(" -> ")[1].split()[0]


def verify_ok(root: Path, *options: str) -> None:
    result = run_cli(root, *options, "verify")
    assert result.returncode == 0, result.stdout + result.stderr


def copy_tree(source: Path, target: Path) -> None:
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)


def test_plain_layout_and_its_copy(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    version = ingest(root)
    assert os.readlink(root / LATEST) == f"{HISTORY}/{version}"
    copy = tmp_path / "copy"
    copy_tree(root, copy)
    assert (copy / LATEST).resolve() == (copy / HISTORY / version).resolve()
    verify_ok(copy)


def test_history_on_another_disk_is_named_through_its_logical_path(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    bigdisk = tmp_path / "bigdisk" / "hist"
    bigdisk.mkdir(parents=True)
    (root / HISTORY).symlink_to(bigdisk)
    version = ingest(root)
    assert os.readlink(root / LATEST) == f"{HISTORY}/{version}"
    assert (root / LATEST).resolve() == bigdisk / version
    verify_ok(root)

    # A copy of the root (history link and all) holds a link through its own history entry.
    copy = tmp_path / "copy"
    copy_tree(root, copy)
    assert os.readlink(copy / LATEST) == f"{HISTORY}/{version}"
    assert os.path.samefile(copy / LATEST, copy / HISTORY / version)
    verify_ok(copy)

    # The same when the history's symlink is relative and the copy brings the disk along.
    (root / HISTORY).unlink()
    (root / HISTORY).symlink_to(os.path.relpath(bigdisk, root))
    second = ingest(root)
    assert os.readlink(root / LATEST) == f"{HISTORY}/{second}"
    verify_ok(root)


def test_root_reached_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(real)
    version = ingest(alias)
    assert os.readlink(real / LATEST) == f"{HISTORY}/{version}"
    verify_ok(alias)
    verify_ok(real)


def test_link_folder_reached_through_a_symlink_with_the_history_elsewhere(tmp_path: Path) -> None:
    # ".." in a target climbs out of the link's real folder: a logical relpath would miss.
    (tmp_path / "real" / "deep").mkdir(parents=True)
    (tmp_path / "links").symlink_to(tmp_path / "real" / "deep")
    root = tmp_path / "root"
    root.mkdir()
    options = ("--latest-path", str(tmp_path / "links" / LATEST))
    version = ingest(root, *options)
    link = tmp_path / "links" / LATEST
    assert os.path.samefile(link, root / HISTORY / version)
    verify_ok(root, *options)


def test_both_history_and_link_folder_behind_symlinks(tmp_path: Path) -> None:
    (tmp_path / "disk" / "hist").mkdir(parents=True)
    (tmp_path / "real").mkdir()
    root = tmp_path / "root"
    root.symlink_to(tmp_path / "real")
    (tmp_path / "real" / HISTORY).symlink_to(tmp_path / "disk" / "hist")
    version = ingest(root)
    assert os.readlink(root / LATEST) == f"{HISTORY}/{version}"
    assert os.path.samefile(root / LATEST, tmp_path / "disk" / "hist" / version)
    verify_ok(root)


def test_latest_link_resolves_through_a_symlinked_folder(root: Path, tmp_path: Path) -> None:
    real = tmp_path / "real" / "sub"
    real.mkdir(parents=True)
    (tmp_path / "lnk").symlink_to(real)
    latest = tmp_path / "lnk" / "latest.json"
    sample = payload(5)
    source = tmp_path / "p.json"
    source.write_bytes(sample)
    result = run_cli(root, "--latest-path", str(latest), "ingest", str(source))
    assert result.returncode == 0, result.stderr
    assert latest.read_bytes() == sample
    check = run_cli(root, "--latest-path", str(latest), "verify")
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_link_to_a_version_dated_days_ahead_is_said_so_not_called_gone(tmp_path: Path) -> None:
    """The clock set back days (or a version placed by hand): every version is future, so
    the link goes, and what is said names why, never that a version is gone."""
    root = tmp_path / "root"
    (root / HISTORY).mkdir(parents=True)
    ahead = datetime.now(UTC) + timedelta(days=3)
    version = f"{ahead:%Y-%m-%dT%H-%M-%S}-00000000.json"
    (root / HISTORY / version).write_bytes(SAMPLE.read_bytes())
    (root / HISTORY / version).chmod(0o444)
    (root / LATEST).symlink_to(f"{HISTORY}/{version}")
    why = (
        f"points at {HISTORY}/{version}, but every version is dated more than a day ahead "
        "of the clock, so none is the latest"
    )
    found = run_cli(root, "verify")
    assert found.returncode == 1
    assert f"latest link {why}" in found.stdout, found.stdout
    repaired = run_cli(root, "verify", "--repair")
    assert f"was: latest link {why}" in repaired.stdout, repaired.stdout
    assert "gone" not in found.stdout + repaired.stdout + repaired.stderr
    assert not os.path.lexists(root / LATEST)
    assert (root / HISTORY / version).read_bytes() == SAMPLE.read_bytes()
