"""The published payload contract: ``ingester schema``, the committed copy, the docs' example,
``submit --dry-run``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
from support import INVALID_SAMPLES, VALID_SAMPLES, run_cli

from ingester.model import judge_payload
from ingester.schema import payload_schema

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
