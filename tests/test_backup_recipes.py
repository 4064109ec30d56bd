"""The backup recipes of docs/backup.md, run verbatim with the real tools, against a live watcher.

A watcher ingests a steady stream of drops while retention deletes versions (newest 3
kept, anything older than ~2 s deleted). Each recipe backs up a few times, and every
backup is restored into a fresh folder, where ``verify`` must exit 0 and the latest
link must resolve to a version inside the restored tree: in every single restore.

The tools come from Debian (``.ci/run`` installs restic, borgbackup, rsync and tar
where missing); a tool that is not installed is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import cli_env, run_cli, wait_for
from support.watchproc import WatchProcess, drop, payload, versions

DOC = Path(__file__).resolve().parent.parent / "docs" / "backup.md"
# Two backups and restores per recipe in the default suite, five in long mode: the suite
# has a time budget, and a recipe that loses a version mid-stream shows it in either.
ROUNDS = 2
LONG_ROUNDS = 5
LONG = os.environ.get("INGESTER_LONG_TESTS") == "1"
HISTORY = "console-usage-history"
LATEST = "console-usage-synced.json"


def recipes() -> dict[str, str]:
    """Every ``<!-- recipe: NAME -->`` block of docs/backup.md, by name."""
    text = DOC.read_text()
    return dict(re.findall(r"<!-- recipe: ([\w-]+) -->\n```sh\n(.*?)```", text, re.S))


@dataclass
class Live:
    """The running watcher, its feeder, and what the recipes share."""

    root: Path
    work: Path
    watcher: WatchProcess
    stop: threading.Event
    fed: list[int] = field(default_factory=lambda: [0])


def _feed(spool: Path, stop: threading.Event, fed: list[int]) -> None:
    seq = 0
    while not stop.wait(0.05):  # about 20 drops a second
        seq += 1
        drop(spool, f"feed-{seq:06d}.json", payload(seq))
        fed[0] = seq


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A watcher under a steady stream, with retention deleting all the time."""
    base = tmp_path_factory.mktemp("backup")
    root = base / "root"
    root.mkdir()
    watcher = WatchProcess(
        root, global_args=("--max-versions", "3", "--retention-days", "0.00002")
    ).wait_started()
    stop = threading.Event()
    state = Live(root, base, watcher, stop)
    feeder = threading.Thread(target=_feed, args=(root / "spool", stop, state.fed), daemon=True)
    feeder.start()
    try:
        wait_for(lambda: len(versions(root)) >= 3, 15, "the first versions")
        yield state
    finally:
        stop.set()
        feeder.join(5)
        assert watcher.stop() == 0, watcher.log


def _metadata(root: Path) -> dict[str, int]:
    meta: dict[str, int] = json.loads((root / HISTORY / "_metadata.json").read_bytes())
    return meta


def _tool_env(live: Live, name: str) -> dict[str, str]:
    area = live.work / name
    home = area / "home"
    home.mkdir(parents=True, exist_ok=True)
    ingester_bin = Path(sys.executable).parent
    assert (ingester_bin / "ingester").exists(), "the ingester command is not installed"
    return cli_env(
        PATH=f"{ingester_bin}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        HOME=os.fspath(home),
        XDG_CACHE_HOME=os.fspath(home / ".cache"),
        ROOT=os.fspath(live.root),
        SNAP=os.fspath(area / "scratch" / "snapshot"),
        DEST=os.fspath(area / "mirror"),
        ARCHIVE=os.fspath(area / "console-usage.tar.gz"),
        RESTIC_REPOSITORY=os.fspath(area / "restic-repo"),
        RESTIC_PASSWORD_FILE=os.fspath(home / "restic-password"),
        BORG_REPO=os.fspath(area / "borg-repo"),
        BORG_PASSPHRASE="test only",
        BORG_BASE_DIR=os.fspath(home),
    )


def _bash(script: str, env: dict[str, str], what: str) -> None:
    result = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"{what} exited {result.returncode}:\n{result.stderr}"


def _check_restore(restored: Path) -> None:
    result = run_cli(restored, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    link = restored / LATEST
    assert link.is_symlink(), "the restored latest link is not a link"
    target = Path(os.path.realpath(link))
    history = Path(os.path.realpath(restored / HISTORY))
    assert target.parent == history, f"the latest link leaves the restored tree: {target}"
    assert target.is_file(), f"the latest link dangles: {os.readlink(link)}"


def _tool_version(tool: str) -> tuple[int, ...]:
    out = subprocess.run([tool, "version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in match.groups()) if match else (0,)


# recipe prefix -> (the tool it needs, the setup a fresh repository needs)
TOOLS = {
    "rsync": ("rsync", ""),
    "restic": ("restic", "printf 'test only' > \"$RESTIC_PASSWORD_FILE\"; restic init -q"),
    "restic-stream": (
        "restic",
        "printf 'test only' > \"$RESTIC_PASSWORD_FILE\"; restic init -q",
    ),
    "borg": ("borg", "borg init --encryption=repokey-blake2"),
    "borg-stream": ("borg", "borg init --encryption=repokey-blake2"),
    "tar": ("tar", ""),
}


def test_every_recipe_in_the_doc_is_tested() -> None:
    names = set(recipes())
    expected = {f"{tool}-{step}" for tool in TOOLS for step in ("backup", "restore")}
    assert names == expected


@pytest.mark.parametrize(
    "rounds",
    [
        pytest.param(ROUNDS, id=f"{ROUNDS} rounds"),
        pytest.param(
            LONG_ROUNDS,
            id=f"{LONG_ROUNDS} rounds",
            marks=[
                pytest.mark.slow,
                pytest.mark.skipif(not LONG, reason="long mode: set INGESTER_LONG_TESTS=1"),
            ],
        ),
    ],
)
@pytest.mark.parametrize("recipe", sorted(TOOLS))
def test_recipe_restores_to_a_working_history_every_time(
    live: Live, recipe: str, rounds: int
) -> None:
    tool, setup = TOOLS[recipe]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (.ci/run installs it with apt-get)")
    if recipe == "restic-stream" and _tool_version("restic") < (0, 17):
        pytest.skip("this restic has no --stdin-from-command (needs 0.17; Debian 12 has 0.14)")
    steps = recipes()
    env = _tool_env(live, recipe)
    if setup:
        _bash(f"set -eu; {setup}", env, f"{recipe} setup")
    before = _metadata(live.root)
    fed_before = live.fed[0]
    passed = 0
    for round_ in range(rounds):
        deleted = _metadata(live.root)["totalVersionsDeleted"]
        _bash(steps[f"{recipe}-backup"], env, f"{recipe} backup, round {round_}")
        restored = live.work / recipe / f"restore-{round_}"
        restored.mkdir()
        _bash(steps[f"{recipe}-restore"], {**env, "RESTORE": os.fspath(restored)}, "restore")
        _check_restore(restored)
        passed += 1
        # Between backups the history moves both ways: new versions, and retention
        # deleting (a fast recipe's round may take less than retention's 2 s).
        wait_for(
            lambda n=live.fed[0], d=deleted: (
                live.fed[0] > n + 2 and _metadata(live.root)["totalVersionsDeleted"] > d
            ),
            15,
            "more drops, and retention deleting, between backups",
        )
    after = _metadata(live.root)
    # The history really moved while the backups ran: new versions, retention deleting.
    assert live.fed[0] > fed_before
    assert after["totalVersionsCreated"] > before["totalVersionsCreated"]
    assert after["totalVersionsDeleted"] > before["totalVersionsDeleted"]
    assert passed == rounds
    print(f"{recipe}: {passed}/{rounds} restores verified")
