"""Probes from the review of the mirror's proof-of-bytes change (cbef3ad).

Each one fails on the code as merged; its docstring says what is wrong and what should
happen instead. They reuse the real SeaweedFS fixture and the FaultProxy of
``tests/test_mirror.py`` and run the real CLI in subprocesses.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from support.s3server import FaultProxy, SeaweedS3
from test_mirror import (  # noqa: F401  (fixtures)
    HISTORY,
    LATEST,
    MirrorProcess,
    add_old_versions,
    add_versions,
    aws_files,
    bucket,
    client_for,
    make_store,
    run_cli,
    s3,
    s3_env,
    state_of,
)


def _other_bytes(data: bytes) -> bytes:
    other = data.replace(b"1", b"2", 1)
    assert len(other) == len(data) and other != data
    return other


def test_probe_other_bytes_under_our_checksum_as_the_newest_version(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """The object under the *newest* version's name holds other bytes carrying our
    SHA-256 in its metadata (the case the change is about, but for the newest version).

    Observed: ``_check_sizes`` reports the version ("cannot mirror version ..."), then
    ``S3History.publish`` (s3_history.py 499-545, lines 522-526) takes that same version as the latest
    copy: ``_digest`` trusts the stored SHA-256 from a HEAD (the metadata the change says
    proves nothing), ``_version_bytes`` -> ``read_version`` -> ``_checked`` raises
    ``damaged``, and the whole pass ends blocked: the state file says ``damaged`` (a kind
    STATE_WORDS has no words for, logged as "damaged (...)"), no latest copy and no
    metadata object are ever made, and a service retries this forever (relisting, and
    never following deletions).

    Expected: a version found not ours is never a candidate for the latest copy (as a
    version that is no valid payload is not): the next newest proven version (or our own
    bytes) is published, and the state says ``stuck`` naming the version.
    """
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
    state = state_of(root)
    keys = {
        o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")["Contents"]
    }
    assert (state.state, f"{prefix}/{LATEST}" in keys) == ("stuck", True), (
        state,
        sorted(keys),
        done.stderr,
    )


def test_probe_one_unreadable_object_blocks_every_upload(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """Under SSE-KMS ETags the first listing after a start reads back every listed
    version (``S3History.proves`` -> ``_read_holds``, s3_history.py 342-367). When that
    GET is refused (403: a policy without ``kms:Decrypt``, as the least-privilege policy
    before this change was; an object another account wrote), ``_read_holds`` raises
    ``denied`` and ``MirrorSync._check_sizes`` (sync.py 221-263) ends the whole pass
    before ``_upload``.

    Observed: the two new local versions are never uploaded (0 PUTs), and the line says
    "object store refused the credentials", though listing and PUT work. A service
    stays so forever: the backlog grows until ``--mirror-hold`` is full and retention
    deletes versions no copy exists of.

    Expected: an object that cannot be read back is not proven (reported, not counted
    mirrored, as a refused DELETE now is said in its own words), and the versions the
    listing lacks are still uploaded.
    """
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


def test_probe_a_version_found_bad_stays_under_the_old_watermark(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """A previous run mirrored everything (watermark = newest). Then an expired
    version's object is replaced by other bytes. The next run's comparison reports it
    ("cannot mirror version ..."), then the store throttles the next read-back.

    Observed: the pass ends blocked before ``update_watermark`` (sync.py 166-185), so the
    watermark ``resume()`` took from the last run stands above the version just found
    bad; the line even says "0 version(s) not mirrored", the state file says
    ``waiting: 0``, and ``cleanup`` deletes the local copy: the only good copy of it.
    ``MirrorProgress.mark_bad`` (progress.py 88-92) never lowers the watermark.

    Expected (mirror.md: "never counted as mirrored, so retention keeps the local
    copy"): a version found not ours lowers the watermark below it at once (whatever ends
    the pass afterwards), and retention keeps it.
    """
    store = make_store(root, max_versions=1)
    old = add_old_versions(store, 3)
    add_versions(store, 1)
    prefix = "bad-under-watermark"
    target = f"s3://{bucket}/{prefix}"
    first = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
    assert first.returncode == 0 and state_of(root).mirrored_through is not None
    data = (root / HISTORY / old[0]).read_bytes()
    client_for(s3.endpoint).put_object(
        Bucket=bucket, Key=f"{prefix}/{old[0]}", Body=_other_bytes(data)
    )
    proxy = FaultProxy(s3.port)
    proxy.kms_etags = True

    def after(method: str, path: str) -> None:
        if method == "GET" and "list-type" not in path:
            proxy.fault = "slowdown"  # the store throttles after the first read-back

    proxy.answered = after
    try:
        done = run_cli(root, "mirror", target, "--once", **s3_env(proxy.endpoint, aws_files))
    finally:
        proxy.close()
    assert f"cannot mirror version {old[0]}" in done.stderr, done.stderr
    state = state_of(root)
    cleaned = run_cli(root, "--max-versions", "1", "cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert (root / HISTORY / old[0]).exists(), (state, cleaned.stdout, done.stderr)


def test_probe_a_stop_after_a_bad_version_was_found_leaves_it_counted_mirrored(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """As above, but the service is stopped (SIGTERM) during the comparison, after it
    reported the bad version. ``_check_sizes`` returns ``False`` and ``sync`` returns
    "so the watermark stays where it was" (sync.py 169-175): the previous run's.

    Observed: the state file is self-contradictory: ``state: stuck`` naming the version,
    ``mirroredThrough`` above it, ``waiting: 0``; ``cleanup`` deletes the version's local
    copy. mirror.md's "a stop there counts none of the versions not yet compared as
    mirrored" holds only when no earlier watermark exists.

    Expected: the version found bad (and, per the docs, those not yet compared) are not
    counted mirrored in the state the stop leaves; retention keeps the local copy.
    """
    store = make_store(root, max_versions=1)
    old = add_old_versions(store, 100)
    add_versions(store, 1)
    prefix = "bad-then-stop"
    target = f"s3://{bucket}/{prefix}"
    first = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
    assert first.returncode == 0, first.stderr
    data = (root / HISTORY / old[0]).read_bytes()
    client_for(s3.endpoint).put_object(
        Bucket=bucket, Key=f"{prefix}/{old[0]}", Body=_other_bytes(data)
    )
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
    cleaned = run_cli(root, "--max-versions", "1", "cleanup")
    assert cleaned.returncode == 0, cleaned.stderr
    assert (root / HISTORY / old[0]).exists(), (state, cleaned.stdout)


def test_probe_once_stopped_mid_comparison_after_a_bad_version_exits_0(
    root: Path, s3: SeaweedS3, bucket: str, aws_files: dict[str, str]
) -> None:
    """``mirror --once`` (cron, or a check) gets SIGTERM during its comparison, after it
    reported a version whose object holds other bytes.

    Observed: exit 0 and no line beyond the report: ``Mirror._loop`` (mirror.py 236-252)
    judges by ``result.waiting``, which the early return of ``sync`` computes from the
    previous run's watermark (0), so "stopped before N version(s) were mirrored" is never
    said. mirror.md: "--once (one pass; exit 0 when every version is mirrored, 1
    otherwise)"; sync.py's own comment: "its exit 0 says the copy is whole".

    Expected: exit 1 (a version is known not mirrored, and the comparison was cut short).
    """
    store = make_store(root)
    names = add_versions(store, 100)
    prefix = "once-stop"
    target = f"s3://{bucket}/{prefix}"
    first = run_cli(root, "mirror", target, "--once", **s3_env(s3.endpoint, aws_files))
    assert first.returncode == 0, first.stderr
    data = (root / HISTORY / names[0]).read_bytes()
    client_for(s3.endpoint).put_object(
        Bucket=bucket, Key=f"{prefix}/{names[0]}", Body=_other_bytes(data)
    )
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


def test_probe_check_says_ok_while_the_hold_retention_runs_by_is_full(root: Path) -> None:
    """Since this change a ``--mirror-hold`` given to the command that runs retention
    (``watch``/``cleanup``; option, ``INGESTER_MIRROR_HOLD`` or a config key) bounds its
    hold in place of the mirror's (settings/resolved.py 83-93). ``check``, given the very
    same setting (monitoring.md: "give it the watcher's --config"), still judges
    ``mirror_held`` by the state file's ``holdMax`` (check_facts.py 144-162,
    check.py ``_judge_hold``).

    Observed: the mirror recorded 10000, the watcher's config says 3; retention has
    already deleted 2 versions never uploaded ("more than 3 (--mirror-hold) were
    waiting"), and ``check`` with the same setting says ``mirror_held`` OK, "3 of 10000
    expired versions kept". monitoring.md's "The hold item warns before that bound
    bites" is then untrue: the bound that bites is never judged.

    Expected: where ``check`` is given a ``--mirror-hold``, the item judges by it (the
    bound retention on that config uses): CRITICAL here, the hold being full.
    """
    import json

    from ingester.mirror.state import write_mirror_state
    from ingester.mirror.state_model import MirrorState

    store = make_store(root, max_versions=1)
    add_old_versions(store, 5)
    add_versions(store, 1)
    write_mirror_state(
        root / HISTORY, MirrorState(target="s3://b/p", mirrored_through=None, hold_max=10_000)
    )
    env = {"INGESTER_MIRROR_HOLD": "3", "INGESTER_MAX_VERSIONS": "1"}
    cleaned = run_cli(root, "cleanup", **env)
    assert cleaned.returncode == 0 and "more than 3 (--mirror-hold)" in cleaned.stderr
    check = run_cli(root, "check", "--json", **env)
    items = {c["name"]: c for c in json.loads(check.stdout)["checks"]}
    assert items["mirror_held"]["status"] == "CRITICAL", items["mirror_held"]
