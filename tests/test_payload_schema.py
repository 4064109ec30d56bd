"""The published payload contract: ``ingester schema``, the committed copy, the docs' example,
``submit --dry-run``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
from support import INVALID_SAMPLES, VALID_SAMPLES, run_cli

from ingester.payload.model import PayloadRejected, judge_payload
from ingester.payload.schema import payload_schema

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "docs" / "payload.schema.json"


def test_schema_command_prints_the_committed_schema(root: Path) -> None:
    result = run_cli(root, "schema")
    assert result.returncode == 0, result.stderr
    assert result.stdout == COMMITTED.read_text(), (
        "docs/payload.schema.json is out of date: ingester schema > docs/payload.schema.json"
    )
    jsonschema.Draft202012Validator.check_schema(json.loads(result.stdout))


@pytest.mark.parametrize("sample", VALID_SAMPLES, ids=lambda p: p.name)
def test_valid_samples_match_the_schema(sample: Path) -> None:
    jsonschema.validate(json.loads(sample.read_bytes()), payload_schema())


# Rules a schema can express; the rest (bytes, BOM, NaN, impossible dates) only the model.
SCHEMA_CATCHES = {
    "empty-resets-in.json",
    "half-weekly.json",
    "missing-last-updated.json",
    "naive-timestamp.json",
    "no-sections.json",
    "percentage-as-string.json",
    "percentage-out-of-range.json",
}


@pytest.mark.parametrize(
    "sample", [p for p in INVALID_SAMPLES if p.name in SCHEMA_CATCHES], ids=lambda p: p.name
)
def test_invalid_samples_fail_the_schema(sample: Path) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(sample.read_bytes()), payload_schema())


@pytest.mark.parametrize(
    "doc", ["README.md", "spool/README.md", "docs/scraper.md"], ids=lambda d: d.replace("/", "-")
)
def test_the_complete_example_in_the_docs_is_valid(doc: str) -> None:
    text = (REPO / doc).read_text()
    examples = re.findall(r"<!-- valid payload -->\n```json\n(.*?)```", text, re.S)
    assert examples, f"{doc} has no complete example marked <!-- valid payload -->"
    for example in examples:
        judge_payload(example.encode())
        jsonschema.validate(json.loads(example), payload_schema())


def test_submit_dry_run_validates_and_drops_nothing(root: Path) -> None:
    good = run_cli(root, "submit", "--dry-run", str(VALID_SAMPLES[0]))
    assert good.returncode == 0, good.stderr
    assert good.stdout == f"valid {VALID_SAMPLES[0]}\n"
    bad = run_cli(root, "submit", "--dry-run", str(REPO / "tests/samples/invalid/no-sections.json"))
    assert bad.returncode == 1
    assert "at least one of currentSession and weeklyLimits" in bad.stderr
    stdin = run_cli(root, "submit", "--dry-run", "-", input=VALID_SAMPLES[0].read_bytes())
    assert stdin.returncode == 0, stdin.stderr
    spool = root / "spool"
    assert not spool.exists() or [p for p in spool.iterdir() if p.name.endswith(".json")] == []


# A scraper author's typical mistakes, all in one payload: every one must be named.
AUTHOR_MISTAKES = json.dumps(
    {"lastUpdated": "2026-11-27 14:05:00Z", "extras": {"kept": True}, "isPartial": "no"}
).encode()
AUTHOR_WORDS = (
    'lastUpdated: has a space between the date and the time: ISO 8601 puts a "T" there '
    "(2026-11-27T14:05:00Z); isPartial: must be true or false; "
    "at least one of currentSession and weeklyLimits is required"
)


def test_the_author_reads_every_problem_in_the_same_words_everywhere(root: Path) -> None:
    """submit's refusal, the log line, the reason file and the HTTP 400 say the same."""
    from support.serveproc import KEY, ServeProcess

    refused = run_cli(root, "submit", "-", input=AUTHOR_MISTAKES)
    assert refused.returncode == 1
    assert refused.stderr == f"refused -: {AUTHOR_WORDS}\n"
    empty = run_cli(root, "submit", "-", input=b"")
    assert empty.stderr == "refused -: not JSON: empty (no bytes); a payload is one JSON object\n"

    spool = root / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    (spool / "bad.json").write_bytes(AUTHOR_MISTAKES)
    watched = run_cli(root, "watch", "--once")
    assert watched.returncode == 0, watched.stderr
    assert f"rejected bad.json: {AUTHOR_WORDS} (moved to " in watched.stderr
    reason = json.loads((spool / "rejected" / "bad.json.reason.json").read_text())
    assert set(reason) == {"file", "rejectedAt", "reason", "errors"}
    assert reason["reason"] == AUTHOR_WORDS
    assert [(e["field"], e["type"]) for e in reason["errors"]] == [
        ("lastUpdated", "datetime_separator"),
        ("isPartial", "bool_type"),
        ("(payload)", "missing_section"),
    ]

    with ServeProcess(root) as server:
        headers = {"Content-Type": "application/json", "X-API-Key": KEY}
        answer = server.post("/api/claude/console-usage", content=AUTHOR_MISTAKES, headers=headers)
        assert answer.status_code == 400
        assert answer.json()["message"] == f"invalid payload: {AUTHOR_WORDS}"
        assert answer.json()["errors"] == reason["errors"]
        nothing = server.post("/api/claude/console-usage", content=b"", headers=headers)
        assert nothing.status_code == 400
        assert "empty (no bytes)" in nothing.json()["message"], nothing.text


def test_the_reason_file_quoted_for_authors_is_what_the_program_writes() -> None:
    text = (REPO / "docs" / "scraper.md").read_text()
    quoted = next(
        json.loads(block)
        for block in re.findall(r"```json\n(.*?)```", text, re.S)
        if '"rejectedAt"' in block
    )
    with pytest.raises(PayloadRejected) as caught:
        judge_payload(json.dumps({"lastUpdated": "2026-11-27 14:05:00Z"}).encode())
    assert quoted["reason"] == caught.value.reason
    assert quoted["errors"] == caught.value.errors


def test_the_openapi_description_takes_the_payload_from_the_schema() -> None:
    """One payload contract: the served description's is ``ingester schema``'s."""
    from ingester.payload.schema import payload_schema
    from ingester.serve.openapi import openapi_document

    components = openapi_document()["components"]["schemas"]
    schema = payload_schema()
    served = components["ConsoleUsageDataSync"]
    assert served["description"] == schema["description"]
    assert served["properties"]["lastUpdated"] == schema["properties"]["lastUpdated"]
    assert served["anyOf"] == schema["anyOf"]
    for name, definition in schema["$defs"].items():
        assert components[name]["properties"].keys() == definition["properties"].keys()
    assert "$defs" not in json.dumps(components)
