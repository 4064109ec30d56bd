"""A version that passed an older gate, or was placed by hand, with values no reader can
normalise: every command reports it, none crashes (real CLI)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import SAMPLES, run_cli

HISTORY = "console-usage-history"
SAMPLE = SAMPLES / "valid" / "full.json"

ODD_TIMES = [
    "0001-01-01T00:00:00+01:00",  # exists with its offset, not in UTC
    "9999-12-31T23:59:00-01:00",  # past year 9999 in UTC
    "1900-01-01T00:00:00Z",  # converts, but outside the gate's window
]

READERS: list[tuple[str, ...]] = [
    ("list",),
    ("list", "--json"),
    ("status",),
    ("status", "--json"),
    ("show",),
    ("show", "--at", "2099-01-01T00:00:00Z"),
    ("verify",),
    ("verify", "--json"),
    ("cleanup", "--dry-run"),
    ("cleanup", "--dry-run", "--json"),
    ("cleanup",),
]


def odd_payload(last_updated: str) -> bytes:
    return json.dumps(
        {"lastUpdated": last_updated, "currentSession": {"resetsIn": "1h", "percentageUsed": 3}}
    ).encode()


@pytest.mark.parametrize("when", ODD_TIMES)
def test_the_gate_refuses_it(root: Path, when: str) -> None:
    odd = root / "odd.json"
    odd.write_bytes(odd_payload(when))
    result = run_cli(root, "ingest", str(odd))
    assert result.returncode == 1
    assert "lastUpdated" in result.stdout and "UTC" in result.stdout


@pytest.mark.parametrize("when", ODD_TIMES[:2])  # the third takes the same path as these
def test_every_reader_reports_a_hand_placed_odd_version(root: Path, when: str) -> None:
    assert run_cli(root, "ingest", str(SAMPLE)).returncode == 0
    soon = datetime.now(UTC) + timedelta(hours=1)  # the newest, but not future-dated
    name = soon.strftime("%Y-%m-%dT%H-%M-%S") + "-handmade.json"
    (root / HISTORY / name).write_bytes(odd_payload(when))
    (root / HISTORY / name).chmod(0o444)
    for args in READERS:
        result = run_cli(root, *args)
        what = f"{' '.join(args)}: exit {result.returncode}\n{result.stdout}{result.stderr}"
        assert "Traceback" not in result.stderr, what
        assert result.returncode in (0, 1), what
        if args[0] in ("list", "status", "show", "verify"):
            # The odd version is the newest: each of these must name the problem.
            assert "lastUpdated" in result.stdout + result.stderr, what
    verify = json.loads(run_cli(root, "verify", "--json").stdout)
    assert verify["ok"] is False
    assert [p["subject"] for p in verify["problems"]] == [name]
    listed = json.loads(run_cli(root, "list", "--json").stdout)
    assert listed[0]["name"] == name and listed[0]["error"]


def test_odd_times_in_metadata_do_not_crash_status(root: Path) -> None:
    assert run_cli(root, "ingest", str(SAMPLE)).returncode == 0
    meta_path = root / HISTORY / "_metadata.json"
    meta = json.loads(meta_path.read_text())
    for odd in ("0001-01-01T00:00:00+01:00", "not a time"):
        meta["lastCleanup"] = odd
        meta_path.write_text(json.dumps(meta))
        for args in (("status",), ("status", "--json"), ("verify",)):
            result = run_cli(root, *args)
            assert "Traceback" not in result.stderr, result.stderr
            assert result.returncode in (0, 1), result.stderr


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_show_at_a_time_outside_utc_is_a_usage_error(root: Path, when: str) -> None:
    assert run_cli(root, "ingest", str(SAMPLE)).returncode == 0
    result = run_cli(root, "show", "--at", when)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "--at" in result.stderr and "UTC" in result.stderr


def test_a_year_one_version_name_is_listed_and_dated(root: Path) -> None:
    assert run_cli(root, "ingest", str(SAMPLE)).returncode == 0
    name = "0001-01-01T00-00-00-ancient.json"
    (root / HISTORY / name).write_bytes(SAMPLE.read_bytes())
    for args in (("list", "--json"), ("status", "--json"), ("cleanup", "--dry-run", "--json")):
        result = run_cli(root, *args)
        assert result.returncode == 0, result.stderr
    status = json.loads(run_cli(root, "status", "--json").stdout)
    assert status["metadata"]["oldestTimestamp"] == "0001-01-01T00:00:00.000Z"
    text = run_cli(root, "status")
    assert text.returncode == 0 and "Traceback" not in text.stderr


def test_verify_json_says_a_names_byte_that_is_not_utf8_as_the_log_does(root: Path) -> None:
    """A file named like a version with a byte that is not UTF-8 is a ``not-a-version``
    warning: ``verify --json`` names it with that byte as ``\\xNN``, as the log and the
    reason files do, never as the ``\\udcff`` escape, which names no byte and which
    strict JSON parsers refuse."""
    assert run_cli(root, "ingest", str(SAMPLE)).returncode == 0
    odd = os.fsencode(root / HISTORY) + b"/2026-01-01T00-00-00-ab\xffcd.json"
    with open(odd, "wb") as handle:
        handle.write(SAMPLE.read_bytes())
    result = run_cli(root, "verify", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\\udc" not in result.stdout, result.stdout
    warnings = json.loads(result.stdout)["warnings"]
    assert [w["subject"] for w in warnings] == ["2026-01-01T00-00-00-ab\\xffcd.json"]


@pytest.mark.parametrize(
    "odd", ["2026-01-01T00-00-00-ab\ncd.json", "2026-01-01T00-00-00-abcd.json\n"]
)
def test_a_file_named_like_a_version_but_for_a_newline_is_a_warning_of_verify(
    root: Path, odd: str
) -> None:
    """A newline in a name (inside it, or after its ``.json``) makes it no version, but
    it was meant as one, as every other odd suffix was: ``verify`` warns of it, and
    never lets it pass unseen."""
    assert run_cli(root, "ingest", str(SAMPLE)).returncode == 0
    (root / HISTORY / odd).write_bytes(SAMPLE.read_bytes())
    result = run_cli(root, "verify", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = json.loads(result.stdout)["warnings"]
    assert [(w["kind"], w["subject"]) for w in warnings] == [("not-a-version", odd)], warnings
