"""Probes of the mirror to object storage: each one FAILS on the current code, because
the product breaks its promise or its own docs (docs/mirror.md, ``--help``).

Every probe is end to end: the real CLI in a subprocess, a real SeaweedFS on loopback
(``tests/support/s3server.py``), a real filesystem; where a bucket must refuse a request
that SeaweedFS allows, a small proxy in front of it answers that request as S3 does
(``403 AccessDenied``) and forwards everything else.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support import run_cli, wait_for
from support.ports import free_port
from support.s3server import ACCESS_KEY, SECRET_KEY, FaultProxy, SeaweedS3
from support.sdnotify import NotifyListener
from test_mirror import (  # the fixtures and helpers of the mirror's own tests
    HISTORY,
    MirrorProcess,
    add_old_versions,
    add_versions,
    aws_files,  # noqa: F401 - a fixture
    bucket,  # noqa: F401 - a fixture
    client_for,
    make_store,
    remote_names,
    s3,  # noqa: F401 - a fixture
    s3_env,
)

from ingester.mirror.state import read_mirror_state, write_mirror_state
from ingester.mirror.state_model import MirrorState

pytest.importorskip("boto3", reason="boto3 is not installed (pip install -e '.[s3]')")


class DenyProxy:
    """A loopback HTTP proxy in front of the S3 server that answers every request whose
    method is in ``deny`` with ``403 AccessDenied`` (what S3 says when a bucket policy or
    an IAM policy lacks the action, e.g. ``s3:DeleteObject``), and forwards the rest."""

    def __init__(self, upstream_port: int, deny: set[str]) -> None:
        self.deny = deny
        self.denied: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command in proxy.deny:
                    proxy.denied.append((self.command, self.path))
                    payload = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied'
                        b"</Code><Message>Access Denied</Message></Error>"
                    )
                    self.send_response(403)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                self.send_response(response.status)
                length_header = str(len(data))
                for key, value in response.getheaders():
                    if key.lower() == "content-length" and self.command == "HEAD":
                        length_header = value
                    elif key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", length_header)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def deny_delete(s3: SeaweedS3) -> Iterator[DenyProxy]:  # noqa: F811 - the fixture
    proxy = DenyProxy(s3.port, {"DELETE"})
    try:
        yield proxy
    finally:
        proxy.close()


def state_of(root: Path) -> MirrorState:
    """The mirror's state file (a blank state while there is none yet)."""
    return read_mirror_state(root / HISTORY) or MirrorState()


# -- follow mode against a bucket that refuses deletes ---------------------------------------


def test_follow_mode_whose_deletes_are_refused_is_not_reported_as_rejected_credentials(
    root: Path,
    s3: SeaweedS3,  # noqa: F811
    bucket: str,  # noqa: F811
    aws_files: dict[str, str],  # noqa: F811
    deny_delete: DenyProxy,
) -> None:
    """A ``follow`` mirror whose policy lacks ``s3:DeleteObject`` (the least-privilege
    policy of docs/mirror.md is the ``keep`` one; follow "adds s3:DeleteObject") uploads
    every version, then its deletion of an expired remote version is refused (403).

    Observed: the mirror logs ``object store refused the credentials (AccessDenied: ...)``,
    records state ``denied`` in ``_mirror.json`` (so ``status`` says the credentials are
    refused and ``check`` goes CRITICAL "the store refuses the credentials"), drops its
    client and loops through backoff and full re-listings for ever, although the
    credentials work: every version is uploaded and listed with them.

    Expected: the credentials are not what is refused. The failure names what was refused
    (deleting a remote version) and never reads as rejected credentials; the uploads,
    which succeed, leave the mirror's state not ``denied``.
    """
    store = make_store(root, max_versions=2)
    old = add_old_versions(store, 3)
    add_versions(store, 2)
    target = f"s3://{bucket}/follow"
    client = client_for(s3.endpoint)
    # First, with a store that allows everything, the five versions are mirrored.
    full = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
    assert full.returncode == 0, full.stderr
    # Local retention deletes the three old ones (mirrored, so not held).
    assert run_cli(root, "--max-versions", "2", "cleanup").returncode == 0
    assert not any((root / HISTORY / n).exists() for n in old)
    add_versions(store, 1, start=50)
    env = s3_env(deny_delete.endpoint, aws_files)
    mirror = MirrorProcess(root, target, env, "--max-versions", "2", "--mirror-retention", "follow")
    try:
        wait_for(lambda: deny_delete.denied, 30, "the mirror to try a DELETE")
        wait_for(
            lambda: len([n for n in remote_names(client, bucket, "follow") if n[:1] == "2"]) == 6,
            30,
            "the new version uploaded",
        )
        wait_for(lambda: state_of(root).state not in ("starting",), 10, "a state recorded")
        time.sleep(2)
        log = mirror.log
        state = state_of(root)
        status = run_cli(root, "status")
    finally:
        mirror.stop()
    assert "refused the credentials" not in log, log
    assert state.state != "denied", state
    assert "refused the credentials" not in status.stdout, status.stdout


# -- --mirror-hold, as --help describes it -----------------------------------------------------


def test_mirror_hold_zero_given_to_cleanup_turns_the_hold_off(root: Path) -> None:
    """``ingester --help``: ``--mirror-hold N  While a mirror lags, retention keeps at
    most N expired versions it has not uploaded, 0 for none``; docs/mirror.md: "``--mirror-hold
    0`` turns the hold off". It is a global option and an env variable
    (``INGESTER_MIRROR_HOLD``), accepted by every command, ``cleanup`` included.

    Observed: ``ingester --mirror-hold 0 cleanup`` (and ``INGESTER_MIRROR_HOLD=0``) keeps
    every expired version as ``not-mirrored``: retention takes the bound from the mirror's
    ``_mirror.json`` (``holdMax``, 10000) and ignores the setting it was given, silently
    (``ingester/mirror/state.py`` ``mirror_hold``/``deletable_count`` use
    ``state.hold_max``; ``Settings.mirror_hold`` is never read by retention).

    Expected: the command that runs retention honours the ``--mirror-hold`` it was given
    (0: no hold, the expired versions go), or refuses the option where it has no effect.
    """
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
    done = run_cli(root, "--max-versions", "2", "cleanup", INGESTER_MIRROR_HOLD="0")
    assert done.returncode == 0, done.stderr
    left = [n for n in old if (root / HISTORY / n).exists()]
    assert [reasons[n] for n in old] == ["expired"] * 4, reasons
    assert left == [], f"--mirror-hold 0 kept {left}"


# -- other bytes under a version's name, carrying our stored SHA-256 ------------------------


def test_other_bytes_carrying_our_checksum_are_never_counted_mirrored(
    root: Path,
    tmp_path: Path,
    s3: SeaweedS3,  # noqa: F811
    bucket: str,  # noqa: F811
    aws_files: dict[str, str],  # noqa: F811
) -> None:
    """docs/mirror.md: a listing "compares each remote version with ours ... the bytes (the
    listing's ETag when it is their MD5, else the SHA-256 stored with the object, one
    HEAD). One that is not ours is reported ..., never overwritten, and never counted as
    mirrored, so retention keeps the local copy".

    Here the object under an (expired) version's name holds other bytes of the same size
    whose ``x-amz-meta-sha256`` is *our* bytes' checksum (what a tool that rewrites an
    object and copies its metadata leaves; the same object the readers' own test,
    ``test_a_version_whose_bytes_do_not_match_its_stored_checksum_is_never_shown``, uses).
    In this plain bucket the listing's ETag is the MD5 of the remote bytes, which is not
    ours, so the mirror falls back to the stored SHA-256, which is ours.

    Observed: ``mirror --once`` exits 0, the watermark passes the version, ``cleanup``
    deletes the local copy, and ``restore`` then refuses the object ("the bytes do not
    match the SHA-256 stored with the object"): the version is lost everywhere.
    (``ingester/mirror/sync.py`` ``MirrorSync._check_sizes`` -> ``S3History.compare`` /
    ``same_bytes`` in ``ingester/mirror/s3_history.py``: an ETag that is not our MD5 is
    never taken as evidence, and the stored checksum, metadata anyone can copy, is
    taken as proof of the bytes.)

    Expected: the object is not proved to hold our bytes (a GET would tell), so it is
    reported and never counted as mirrored; retention keeps the local copy.
    """
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
    state = state_of(root)
    cleaned = run_cli(root, "--max-versions", "1", "cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    kept = (root / HISTORY / old[0]).exists()
    restored = run_cli(tmp_path, "restore", target, "--root", str(tmp_path / "restored"), **env)
    assert kept or restored.returncode == 0, (
        f"{old[0]} deleted locally and unrecoverable from the bucket: mirror said "
        f"{done.returncode} {done.stderr!r}, watermark {state.mirrored_through}; "
        f"restore: {restored.stderr!r}"
    )
    assert done.returncode == 1, done.stderr
    assert f"cannot mirror version {old[0]}" in done.stderr, done.stderr


# -- the watchdog while the first listing is compared (SSE-KMS) ------------------------------


def test_the_watchdog_is_pinged_while_a_listing_is_compared_under_sse_kms(
    root: Path,
    s3: SeaweedS3,  # noqa: F811
    bucket: str,  # noqa: F811
    aws_files: dict[str, str],  # noqa: F811
) -> None:
    """The unit runs the mirror with ``WatchdogSec=60s`` ("WATCHDOG=1 while the loop
    runs"); the mirror pings at half of ``WATCHDOG_USEC``. In an SSE-KMS bucket (the
    listing's ETags are not MD5s: docs/mirror.md) the first listing after every start
    compares each local version already in the bucket by one ``HEAD``, one after the
    other, on the mirror's main thread (``MirrorSync._check_sizes``), with no watchdog
    ping in between: 2,016 versions (7 days at one drop per 5 min, the default retention)
    at a 30 ms round trip is a minute.

    Here, scaled down: 150 mirrored versions, a KMS-ETag proxy adding 40 ms a request,
    and ``WATCHDOG_USEC`` of 3 s (pings due every 1.5 s).

    Observed: no ``WATCHDOG=1`` for the whole comparison (well over the 3 s timeout), so
    systemd would kill the mirror mid-listing, restart it, and the restart (its
    ``_compared`` cache is per process) does the same HEADs again: the mirror never gets
    past its first listing. (``ingester/mirror/sync.py`` ``MirrorSync._check_sizes``
    never calls ``self._alive()``; ``Mirror._ping`` is reached only from ``_sleep`` and
    between upload chunks in ``ingester/mirror/mirror.py``.)

    Expected: the watchdog is pinged within its interval during every step of a pass.
    """
    store = make_store(root)
    add_versions(store, 150)
    target = f"s3://{bucket}/kmsdog"
    first = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
    assert first.returncode == 0, first.stderr
    proxy = FaultProxy(s3.port)
    proxy.kms_etags = True
    proxy.fault, proxy.delay = "delay", 0.04
    usec = 3_000_000
    with NotifyListener() as listener:
        env = s3_env(
            proxy.endpoint,
            aws_files,
            NOTIFY_SOCKET=listener.address,
            WATCHDOG_USEC=str(usec),
        )
        mirror = MirrorProcess(root, target, env, command_args=("--reconcile-interval", "600"))
        try:
            listener.wait_for(lambda m: m.fields.get("READY") == "1", 20, "READY=1")
            # The first pass: a listing, then a HEAD per version (150 x >= 40 ms).
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
            mirror.stop()
            proxy.close()
        heads = sum(1 for method, _ in proxy.requests if method == "HEAD")
        beats = [
            m.at
            for m in listener.messages
            if m.fields.get("READY") == "1" or m.fields.get("WATCHDOG") == "1"
        ]
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert heads >= 100, f"only {heads} HEADs: the comparison did not run"
    assert max(gaps) <= usec / 1e6, (
        f"{max(gaps):.1f} s without WATCHDOG=1 (timeout {usec / 1e6:.0f} s) while the "
        f"mirror compared the listing ({heads} HEADs)"
    )


def test_a_stop_during_the_first_listing_s_comparison_is_prompt(
    root: Path,
    s3: SeaweedS3,  # noqa: F811
    bucket: str,  # noqa: F811
    aws_files: dict[str, str],  # noqa: F811
) -> None:
    """docs/mirror.md, Stopping: on SIGTERM "the uploads already running finish (each
    bounded by the client's timeouts), and those not begun, the latest copy and the
    metadata wait for the next start"; the unit gives it ``TimeoutStopSec=30s``.

    In an SSE-KMS bucket the first listing after a start compares every local version
    already in the bucket by one ``HEAD`` each, one after the other. Here 150 versions
    behind a KMS-ETag proxy adding 50 ms a request; SIGTERM once a few HEADs are done.

    Observed: the mirror goes on with every remaining HEAD before it stops (seconds
    here; 2,016 versions at a 30 ms round trip is a minute, past ``TimeoutStopSec``, so
    systemd SIGKILLs it). ``ingester/mirror/sync.py`` ``MirrorSync._check_sizes`` never
    looks at the stop flag.

    Expected: a stop is honoured between requests, as between uploads: the mirror exits
    0 within about one request's time.
    """
    store = make_store(root)
    add_versions(store, 150)
    target = f"s3://{bucket}/kmsstop"
    first = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
    assert first.returncode == 0, first.stderr
    proxy = FaultProxy(s3.port)
    proxy.kms_etags = True
    proxy.fault, proxy.delay = "delay", 0.05
    try:
        mirror = MirrorProcess(root, target, s3_env(proxy.endpoint, aws_files))
        heads = lambda: sum(1 for method, _ in proxy.requests if method == "HEAD")  # noqa: E731
        wait_for(lambda: heads() >= 10, 30, "the comparison's HEADs to begin")
        asked = time.monotonic()
        code = mirror.stop()
        took = time.monotonic() - asked
        done = heads()
    finally:
        proxy.close()
    assert code == 0, mirror.log
    assert took < 2.0, (
        f"SIGTERM took {took:.1f} s: the mirror made {done} HEADs in all, most after the stop"
    )


# -- the words of --once's failure ------------------------------------------------------------


def test_mirror_once_does_not_say_it_retries_when_it_exits(
    root: Path,
    aws_files: dict[str, str],  # noqa: F811
) -> None:
    """``mirror --once``: "One pass (list, upload what is missing), then exit: 0 when every
    version is mirrored, 1 otherwise" (``--help``); docs/mirror.md: exit 1 "the object
    store ... could not be used ... (one line on stderr)", an error "one clear line".

    Observed: against an unreachable store, ``--once`` exits 1 at once, yet its error line
    says ``...; 3 version(s) waiting; retrying with backoff up to 30 s``: no retry
    follows, the process has ended. A cron job's mail reads as if the mirror were still
    at it. (``ingester/mirror/mirror.py`` ``Mirror._blocked`` logs the service's words
    before ``_loop`` returns 1 for ``once``.)

    Expected: the one line says what happened (the store could not be used, N versions
    not mirrored) and claims no retry that never comes.
    """
    store = make_store(root)
    add_versions(store, 3)
    dead = s3_env(f"http://127.0.0.1:{free_port()}", aws_files)
    once = run_cli(root, "mirror", f"s3://t-{free_port()}x/p", "--once", **dead)
    assert once.returncode == 1, once.stderr
    assert "object store unreachable" in once.stderr, once.stderr
    assert "retrying" not in once.stderr, once.stderr


# -- --concurrency over its whole documented range ------------------------------------------


def test_the_documented_concurrency_range_logs_no_connection_pool_warnings(
    root: Path,
    s3: SeaweedS3,  # noqa: F811
    bucket: str,  # noqa: F811
    aws_files: dict[str, str],  # noqa: F811
) -> None:
    """``mirror --concurrency N`` takes 1 to 32 (``--help``: "Uploads in flight while a
    backlog drains"); docs/mirror.md promises one log line per change of state, and every
    line the product's own.

    Observed: with ``--concurrency`` above 16 a backlog's drain logs dozens of urllib3
    lines, ``WARNING Connection pool is full, discarding connection: 127.0.0.1.
    Connection pool size: 16`` (15 to 30 of them for 300 versions at 32 here), and each
    discarded connection is a new TCP (and, on AWS, TLS) handshake for the next upload.
    ``ingester/mirror/objectstore.py`` ``make_client`` fixes ``max_pool_connections=16``
    whatever ``--concurrency`` the mirror runs with (``ingester/cli/mirror.py`` allows 32).

    Expected: the client's pool holds as many connections as uploads may be in flight,
    so no such warning appears (none does at 16).
    """
    store = make_store(root)
    add_versions(store, 300)
    env = s3_env(s3.endpoint, aws_files)
    done = run_cli(root, "mirror", f"s3://{bucket}/pool", "--once", "--concurrency", "32", **env)
    assert done.returncode == 0, done.stderr
    noise = [line for line in done.stderr.splitlines() if "Connection pool is full" in line]
    assert not noise, f"{len(noise)} lines like: {noise[0]}"


def test_a_damaged_latest_copy_is_repaired_by_the_next_pass(
    root: Path,
    s3: SeaweedS3,  # noqa: F811
    bucket: str,  # noqa: F811
    aws_files: dict[str, str],  # noqa: F811
) -> None:
    """docs/mirror.md: ``PREFIX/console-usage-synced.json`` is "a copy of the newest
    version"; "A reader of the bucket therefore finds the newest snapshot at a fixed
    name"; "the mirror knows _metadata.json and the latest copy are current by the same
    checksum (one HEAD each after a listing)".

    Here the latest copy is overwritten with an older snapshot's bytes while its user
    metadata (``version``, ``sha256`` of the newest) is kept, as a tool that rewrites an
    object and copies its metadata leaves it. In this plain bucket the listing's ETag
    (the MD5 of what the object holds) differs from the MD5 of the newest version.

    Observed: a new ``mirror --once`` (a fresh listing) exits 0 and leaves the latest
    copy as it is: readers of the fixed name get the older snapshot (whose bytes do not
    match the SHA-256 the object carries) until a newer version is mirrored.
    (``ingester/mirror/s3_history.py`` ``S3History.publish``/``_current``: the stored
    metadata alone is compared, never the object's bytes or its ETag.)

    Expected: a pass that lists the prefix notices that the latest copy does not hold the
    newest version's bytes and puts it again.
    """
    store = make_store(root)
    names = add_versions(store, 3)
    prefix = "latest-damaged"
    target = f"s3://{bucket}/{prefix}"
    env = s3_env(s3.endpoint, aws_files)
    assert run_cli(root, "mirror", target, "--once", **env).returncode == 0
    client = client_for(s3.endpoint)
    key = f"{prefix}/console-usage-synced.json"
    metadata = client.head_object(Bucket=bucket, Key=key)["Metadata"]
    newest = (root / HISTORY / names[-1]).read_bytes()
    older = (root / HISTORY / names[0]).read_bytes()
    assert older != newest and metadata["version"] == names[-1]
    client.put_object(Bucket=bucket, Key=key, Body=older, Metadata=metadata)
    again = run_cli(root, "mirror", target, "--once", **env)
    assert again.returncode == 0, again.stderr
    held = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert held == newest, "the latest copy still holds an older snapshot"


# -- the bucket is gone: the watermark still says the versions are in it ---------------------


def test_retention_holds_once_the_store_says_the_bucket_is_gone(
    root: Path,
    s3: SeaweedS3,  # noqa: F811
    bucket: str,  # noqa: F811
    aws_files: dict[str, str],  # noqa: F811
) -> None:
    """docs/mirror.md: "Local retention never deletes what is not mirrored yet"; the
    watermark means "every version whose name sorts at or below it is in the object
    store"; "A backlog, not a loss".

    The bucket is deleted (by mistake, by an account clean-up). The
    store then answers every request with ``404 NoSuchBucket``: not an outage but a
    definite answer that none of the versions is in the object store any more.

    Observed: the mirror records state ``no-bucket`` and keeps the old watermark, so
    ``cleanup`` deletes the expired versions as "mirrored": they are then nowhere, not on
    disk and not in any bucket. (``ingester/mirror/mirror.py`` ``Mirror._blocked`` and
    ``ingester/mirror/sync.py`` ``MirrorSync.forget`` leave
    ``MirrorProgress.state.mirrored_through`` as it was for every kind of failure, and
    ``MirrorProgress.resume`` takes it up at a start.) Shown here with a cron-style
    ``--once`` after the deletion; a running mirror keeps its watermark the same way on
    AWS (SeaweedFS re-creates a bucket on the next PUT, so the running case cannot be
    shown against it).

    Expected: once the store says the bucket does not exist, nothing counts as mirrored
    (the watermark is dropped), so retention holds the versions (bounded by
    ``--mirror-hold``) until a bucket holds them again.
    """
    store = make_store(root, max_versions=1)
    old = add_old_versions(store, 3)
    add_versions(store, 1)
    target = f"s3://{bucket}/gone-bucket"
    env = s3_env(s3.endpoint, aws_files)
    client = client_for(s3.endpoint)
    first = run_cli(root, "mirror", target, "--once", **env)
    assert first.returncode == 0, first.stderr
    # The bucket goes: every object, then the bucket itself.
    for name in remote_names(client, bucket, "gone-bucket"):
        client.delete_object(Bucket=bucket, Key=f"gone-bucket/{name}")
    client.delete_bucket(Bucket=bucket)
    # The mirror's next pass (here a cron-style --once) meets the missing bucket.
    again = run_cli(root, "mirror", target, "--once", **env)
    assert again.returncode == 1 and "bucket does not exist" in again.stderr, again.stderr
    state = state_of(root)
    assert state.state == "no-bucket", state
    cleaned = run_cli(root, "--max-versions", "1", "cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    lost = [n for n in old if not (root / HISTORY / n).exists()]
    assert not lost, (
        f"with the bucket gone (state {state.state}, watermark still {state.mirrored_through}) "
        f"cleanup deleted {len(lost)} version(s) that are now nowhere: {cleaned.stdout.strip()}"
    )


# -- credentials that cannot be fetched for a moment, while the mirror retries ---------------


def test_a_credential_process_failing_for_a_moment_is_retried_not_fatal(
    root: Path,
    tmp_path: Path,
    s3: SeaweedS3,  # noqa: F811
    bucket: str,  # noqa: F811
) -> None:
    """docs/mirror.md: "rejected credentials (403) ... stop the pass; it is retried with
    backoff"; "After rejected credentials each retry builds a new client, which re-reads
    the credential chain: a corrected credentials file (or a refreshed instance role) is
    picked up without a restart"; a mirror is "A backlog, not a loss".

    The mirror runs with a wrong secret (denied, retrying). Meanwhile the operator moves
    the profile to a ``credential_process`` helper (SSO, aws-vault, a vault agent) that
    fails for a moment (its IdP unreachable), then fixes the credentials.

    Observed: at the next retry the new client cannot be made (botocore runs the helper
    while making the client: ``CredentialRetrievalError``), and the mirror *exits 1*
    (``error: cannot make an S3 client: cannot fetch credentials: ...``) instead of
    retrying: the fixed credentials are never picked up, the backlog waits for a restart.
    (``ingester/mirror/sync.py`` ``MirrorSync.sync`` calls ``self.remote()``, which calls
    the client factory outside ``_call``, so ``ObjectStoreUnavailable`` from
    ``ingester/mirror/objectstore.py`` ``make_client`` is not a ``MirrorBlocked`` and
    leaves ``Mirror._loop``; ``ingester/cli/mirror.py`` ``mirror`` turns it into exit 1.)

    Expected: a credential chain that fails while making a new client is one more
    "credentials refused" retry with backoff; the mirror drains once they work again.
    """
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
