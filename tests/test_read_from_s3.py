"""``list``, ``show``, ``export`` and ``check`` read the mirror with ``--from s3://``.

A history is mirrored to a real SeaweedFS, then each command run from a folder that has
no history at all answers from the object store as it answers from the history itself;
an unreachable store is one line (CRITICAL for ``check``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import run_cli
from support.ports import free_port
from support.s3server import SeaweedS3
from support.serveproc import version_name
from test_mirror import (  # noqa: F401
    add_versions,
    aws_files,
    bucket,
    client_for,
    make_store,
    s3,
    s3_env,
)

from ingester.history.base import at_or_before
from ingester.settings.bounds import MAX_BYTES

S3_MEMORY = 400 << 20
"""A limit on memory (bytes of address space) a reader of the bucket works within, and
that downloading an object of the largest drop's size whole breaks."""


@pytest.fixture
def mirrored(
    root: Path,
    s3: SeaweedS3,  # noqa: F811
    bucket: str,  # noqa: F811
    aws_files: dict[str, str],  # noqa: F811
) -> tuple[str, dict[str, str], list[str]]:
    """A history of five versions mirrored to ``s3://BUCKET/usage``: (target, env, names)."""
    names = add_versions(make_store(root), 5)
    target = f"s3://{bucket}/usage"
    env = s3_env(s3.endpoint, aws_files)
    result = run_cli(root, "mirror", target, "--once", **env)
    assert result.returncode == 0, result.stderr
    return target, env, names


def ok(result: object) -> str:
    assert getattr(result, "returncode") == 0, getattr(result, "stderr")  # noqa: B009
    assert getattr(result, "stderr") == "", getattr(result, "stderr")  # noqa: B009
    return str(getattr(result, "stdout"))  # noqa: B009


def test_list_and_show_read_the_object_store_as_the_history(
    root: Path, tmp_path: Path, mirrored: tuple[str, dict[str, str], list[str]]
) -> None:
    target, env, names = mirrored
    elsewhere = tmp_path / "elsewhere"  # a machine without the history
    local = json.loads(ok(run_cli(root, "list", "--json")))
    remote = json.loads(ok(run_cli(elsewhere, "list", "--json", "--from", target, **env)))
    assert remote == local
    assert [v["name"] for v in remote] == names[::-1]
    limited = json.loads(
        ok(run_cli(elsewhere, "list", "--json", "--limit", "2", "--from", target, **env))
    )
    assert limited == local[:2]
    history = root / "console-usage-history"
    assert (
        ok(run_cli(elsewhere, "show", "--from", target, **env)).encode()
        == (history / names[-1]).read_bytes()
    )
    assert (
        ok(run_cli(elsewhere, "show", names[1], "--from", target, **env)).encode()
        == (history / names[1]).read_bytes()
    )
    when = json.loads(ok(run_cli(root, "list", "--json")))[2]["ingestedAt"]
    at = ok(run_cli(elsewhere, "show", "--at", when, "--from", target, **env))
    assert at == ok(run_cli(root, "show", "--at", when))
    from ingester.clock import parse_iso_time

    assert at.encode() == (history / str(at_or_before(names, parse_iso_time(when)))).read_bytes()
    missing = run_cli(elsewhere, "show", "2020-01-01T00-00-00-00000000", "--from", target, **env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"error: no version 2020-01-01T00-00-00-00000000.json in {target}"
    )
    assert not elsewhere.exists() or not any(elsewhere.iterdir())  # nothing written here


def test_export_reads_the_object_store_as_the_history(
    root: Path, tmp_path: Path, mirrored: tuple[str, dict[str, str], list[str]]
) -> None:
    target, env, _names = mirrored
    for fmt in ("csv", "jsonl"):
        local = ok(run_cli(root, "export", "--format", fmt))
        remote = ok(run_cli(tmp_path, "export", "--format", fmt, "--from", target, **env))
        assert remote == local
        assert len(remote.splitlines()) == 5 + (fmt == "csv")


def test_check_judges_the_object_store_by_its_versions_alone(
    root: Path, tmp_path: Path, mirrored: tuple[str, dict[str, str], list[str]]
) -> None:
    target, env, names = mirrored
    result = run_cli(tmp_path, "check", "--max-age", "3650d", "--json", "--from", target, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    answer = json.loads(result.stdout)
    assert answer["from"] == target
    assert answer["latest"] == names[-1]
    # The spool and the rejections belong to the machine that ingests: not judged here.
    assert [c["name"] for c in answer["checks"]] == ["age"]
    line = run_cli(tmp_path, "check", "--max-age", "3650d", "--from", target, **env)
    assert line.returncode == 0 and line.stdout.startswith("INGESTER OK - newest data ")
    assert "backlog" not in line.stdout


def test_an_unreachable_object_store_is_one_line(
    tmp_path: Path,
    aws_files: dict[str, str],  # noqa: F811
) -> None:
    port = free_port()  # nothing listens there
    env = s3_env(f"http://127.0.0.1:{port}", aws_files)
    target = "s3://nobody-here/usage"
    for args in (("list",), ("show",), ("export",)):
        result = run_cli(tmp_path, *args, "--from", target, **env)
        assert result.returncode == 1, (args, result.stdout)
        assert result.stderr.startswith(f"error: {target}: unreachable: "), result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
    check = run_cli(tmp_path, "check", "--from", target, **env)
    assert check.returncode == 2
    assert check.stdout.startswith(f"INGESTER CRITICAL - {target}: unreachable: "), check.stdout
    assert len(check.stdout.splitlines()) == 1


def test_without_boto3_check_is_critical_and_the_others_one_line(tmp_path: Path) -> None:
    # An interpreter where boto3 cannot be imported: the install without the s3 extra.
    shim = tmp_path / "no-boto3"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['boto3'] = None\n")
    target = "s3://my-bucket/usage"
    needs = "the object store needs boto3: pip install 'console-usage-ingester[s3]'"
    for args in (("list",), ("show",), ("export",)):
        result = run_cli(tmp_path, *args, "--from", target, PYTHONPATH=str(shim))
        assert result.returncode == 1, (args, result.stdout)
        assert result.stderr == f"error: {needs}\n", result.stderr
    # A monitoring agent reads exit 1 as WARNING: a check that cannot see is CRITICAL.
    check = run_cli(tmp_path, "check", "--from", target, PYTHONPATH=str(shim))
    assert check.returncode == 2, check.stderr
    assert check.stdout == f"INGESTER CRITICAL - {target}: {needs}\n"
    as_json = run_cli(tmp_path, "check", "--json", "--from", target, PYTHONPATH=str(shim))
    assert as_json.returncode == 2, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert (answer["status"], answer["from"]) == ("CRITICAL", target)
    assert answer["summary"] == f"{target}: {needs}"


@pytest.mark.parametrize("command", ["list", "show", "export", "check"])
def test_from_takes_an_s3_address_only(tmp_path: Path, command: str) -> None:
    result = run_cli(tmp_path, command, "--from", "/some/folder")
    assert result.returncode == 2
    assert "is not an s3://BUCKET/PREFIX address" in result.stderr
    endpoint = run_cli(tmp_path, command, "--endpoint-url", "http://127.0.0.1:1")
    assert endpoint.returncode == 2
    assert "--endpoint-url is for --from" in endpoint.stderr


def put_object(endpoint: str, in_bucket: str, key: str, body: bytes, checksum_of: bytes) -> None:
    """``body`` under ``key``, with the SHA-256 of ``checksum_of`` stored as the mirror
    stores it: a tampered or damaged object keeps the checksum of what it was."""
    client_for(endpoint).put_object(
        Bucket=in_bucket,
        Key=key,
        Body=body,
        Metadata={"sha256": hashlib.sha256(checksum_of).hexdigest()},
    )


def damage(root: Path, endpoint: str, in_bucket: str, name: str) -> bytes:
    """Version ``name``'s object under ``usage/`` given other bytes of the same size, its
    stored checksum left as it was; the damaged bytes."""
    data = (root / "console-usage-history" / name).read_bytes()
    damaged = data.replace(b"1", b"2", 1)
    assert len(damaged) == len(data) and damaged != data
    put_object(endpoint, in_bucket, f"usage/{name}", damaged, checksum_of=data)
    return damaged


def test_a_version_whose_bytes_do_not_match_its_stored_checksum_is_never_shown(
    root: Path,
    tmp_path: Path,
    s3: SeaweedS3,  # noqa: F811
    bucket: str,  # noqa: F811
    mirrored: tuple[str, dict[str, str], list[str]],
) -> None:
    """Bytes changed in the store (a tampered or damaged object, its stored SHA-256 left
    as it was) are refused by every reader, as ``restore`` refuses them."""
    target, env, names = mirrored
    damage(root, s3.endpoint, bucket, names[-1])
    why = f"{names[-1]}: the bytes do not match the SHA-256 stored with the object"
    for args in (("show",), ("show", names[-1])):
        result = run_cli(tmp_path, *args, "--from", target, **env)
        assert result.returncode == 1, (args, result.stdout)
        assert result.stderr == f"error: {target}: damaged: {why} [EIO]\n", (args, result.stderr)
        assert result.stdout == ""
    # export leaves a damaged version out, saying so, as it does in a local history.
    export = run_cli(tmp_path, "export", "--format", "jsonl", "--from", target, **env)
    assert export.returncode == 0, export.stderr
    assert f"warning: skipped damaged version {names[-1]}: " in export.stderr, export.stderr
    assert [json.loads(line)["version"] for line in export.stdout.splitlines()] == names[:-1]
    # An older version, untouched, is still read.
    older = ok(run_cli(tmp_path, "show", names[1], "--from", target, **env))
    assert older.encode() == (root / "console-usage-history" / names[1]).read_bytes()
    # Bytes that are their own (checksum and all) but no payload: damaged, and the advice
    # names a command that can look (verify has no --from).
    junk = b"not a payload"
    put_object(s3.endpoint, bucket, f"usage/{names[2]}", junk, checksum_of=junk)
    shown = run_cli(tmp_path, "show", names[2], "--from", target, **env)
    assert shown.returncode == 1
    assert shown.stderr.startswith(f"error: version {names[2]} is damaged: "), shown.stderr
    assert shown.stderr.endswith("; run 'ingester verify' on the history the mirror copies\n")


def test_a_damaged_older_version_is_left_out_of_the_usage_judged_from_the_store(
    root: Path,
    tmp_path: Path,
    s3: SeaweedS3,  # noqa: F811
    bucket: str,  # noqa: F811
    mirrored: tuple[str, dict[str, str], list[str]],
) -> None:
    """As in a local history: one damaged version does not make the usage unreadable."""
    target, env, names = mirrored
    damage(root, s3.endpoint, bucket, names[1])
    judged = run_cli(
        tmp_path, "check", "--max-age", "3650d", "--forecast", "--json", "--from", target, **env
    )
    answer = json.loads(judged.stdout)
    assert "unreadable" not in answer["summary"], answer["summary"]
    assert [c["name"] for c in answer["checks"] if c["name"].startswith("forecast_")], answer
    assert f"{names[1]} is damaged (" in judged.stderr, judged.stderr


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")
def test_an_object_larger_than_any_drop_is_damaged_and_never_downloaded(
    tmp_path: Path,
    s3: SeaweedS3,  # noqa: F811
    bucket: str,  # noqa: F811
    mirrored: tuple[str, dict[str, str], list[str]],
) -> None:
    # One byte over the largest --max-bytes, put in the bucket by other means, as the
    # newest version: its size is told by the GET's Content-Length, so its body is never
    # read, under a limit on memory that reading it whole would break.
    target, env, names = mirrored
    limit = int(MAX_BYTES.high)
    huge = version_name(datetime.now(UTC) + timedelta(minutes=1), 0xDEADBEEF)
    client_for(s3.endpoint).put_object(Bucket=bucket, Key=f"usage/{huge}", Body=bytes(limit + 1))
    reason = f"larger than any drop: {limit + 1} bytes, the limit is {limit}"
    elsewhere = tmp_path / "elsewhere"
    wrapper = ("prlimit", f"--as={S3_MEMORY}", "--")

    def limited(*args: str) -> tuple[int, str, str]:
        result = run_cli(elsewhere, *args, "--from", target, wrapper=wrapper, **env)
        assert "Traceback" not in result.stderr, result.stderr
        return result.returncode, result.stdout, result.stderr

    code, out, err = limited("list", "--json")
    assert code == 0, err
    listed = {entry["name"]: entry["error"] for entry in json.loads(out)}
    assert listed == {huge: reason, **dict.fromkeys(names)}
    code, out, err = limited("show")
    assert (code, out) == (1, ""), err
    assert err == (
        f"error: version {huge} is damaged: {reason}; "
        "run 'ingester verify' on the history the mirror copies\n"
    )
    code, out, err = limited("export")
    assert code == 0, err
    assert err == f"warning: skipped damaged version {huge}: {reason}\n"
    assert [row["version"] for row in csv.DictReader(io.StringIO(out))] == names
    # restore: refused from its listed size, never downloaded; the rest restored.
    restored = tmp_path / "restored"
    back = run_cli(tmp_path, "restore", target, "--root", str(restored), wrapper=wrapper, **env)
    assert "Traceback" not in back.stderr, back.stderr
    assert back.returncode == 1, back.stdout + back.stderr
    assert back.stderr == (
        f"error: {huge} in the object store is not a valid payload (drop is over the limit "
        "of 1048576 bytes); not restored\n"
    )
    history = restored / "console-usage-history"
    assert sorted(p.name for p in history.glob("*T*.json")) == names


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")
def test_the_mirror_never_uploads_a_file_larger_than_any_drop(
    root: Path,
    s3: SeaweedS3,  # noqa: F811
    bucket: str,  # noqa: F811
    mirrored: tuple[str, dict[str, str], list[str]],
) -> None:
    # A sparse 3 GiB file in the history as the newest version: refused in one line,
    # never read whole nor uploaded in part; the versions beside it are mirrored as ever.
    target, env, names = mirrored
    huge = version_name(datetime.now(UTC) + timedelta(minutes=1), 0xDEADBEEF)
    path = root / "console-usage-history" / huge
    with path.open("wb") as handle:
        handle.truncate(3 << 30)
    path.chmod(0o444)
    later = add_versions(make_store(root), 1, start=5)
    # More room than the readers: the mirror's upload threads reserve address space.
    wrapper = ("prlimit", f"--as={1 << 30}", "--")
    result = run_cli(root, "mirror", target, "--once", wrapper=wrapper, **env)
    assert "Traceback" not in result.stderr, result.stderr
    said = [line for line in result.stderr.splitlines() if huge in line]
    assert len(said) == 1, result.stderr
    assert f"cannot mirror version {huge}: " in said[0], said
    assert f"larger than any drop: {3 << 30} bytes" in said[0], said
    listing = client_for(s3.endpoint).list_objects_v2(Bucket=bucket, Prefix="usage/")
    keys = {item["Key"].removeprefix("usage/") for item in listing.get("Contents", [])}
    assert huge not in keys
    assert set(names + later) <= keys, result.stderr


def test_a_metadata_object_over_a_mebibyte_is_not_the_metadata(
    tmp_path: Path,
    s3: SeaweedS3,  # noqa: F811
    bucket: str,  # noqa: F811
    mirrored: tuple[str, dict[str, str], list[str]],
) -> None:
    # The metadata is a few hundred bytes: an object over the limit in its place is
    # another writer's, never read whole nor believed, however well it parses. A
    # restore then counts the totals from the versions it brings back.
    target, env, names = mirrored
    client = client_for(s3.endpoint)
    key = "usage/_metadata.json"
    meta = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    meta["totalVersionsCreated"] = 900
    meta["padding"] = "x" * (1 << 20)
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(meta).encode())
    restored = tmp_path / "restored"
    back = run_cli(tmp_path, "restore", target, "--root", str(restored), **env)
    assert back.returncode == 0, back.stdout + back.stderr
    assert "Traceback" not in back.stderr
    written = json.loads((restored / "console-usage-history" / "_metadata.json").read_bytes())
    assert written["totalVersionsCreated"] == len(names)
