"""The watcher's gate (``ingester.payload.gate``) and the model's (``judge_payload``) are one gate.

The watcher judges drops with pydantic's validator built from a core schema written out
in ``ingester/payload/gate.py``, so that it never builds the model classes. These tests hold the
two to each other: the schemas are equal, and every payload (the samples, and many
generated around the schema, valid and not) gets the same verdict and the same errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import INVALID_SAMPLES, SAMPLES, VALID_SAMPLES, run_cli
from support.hostile import HOSTILE, STAMPED, assert_our_words, many_problems

from ingester.errors import PayloadRejected
from ingester.payload import gate
from ingester.payload.model import ConsoleUsageDataSync, judge_payload


def _normalized(schema: Any) -> Any:
    """A core schema with what names things in memory (ids, classes, functions) as names."""
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key == "metadata":
                continue  # JSON Schema hooks: not part of validation
            if key in ("ref", "schema_ref"):
                value = value.split(":")[0].rsplit(".", 1)[-1]
            out[key] = _normalized(value)
        return out
    if isinstance(schema, list):
        return [_normalized(v) for v in schema]
    if isinstance(schema, type):
        return ("class", schema.__name__)
    if callable(schema):
        return "a function"  # our two rules: compared by behaviour below
    return schema


def verdict(judge: Any, data: bytes) -> Any:
    try:
        judge(data)
    except PayloadRejected as exc:
        return exc.reason, exc.errors
    return "valid"


def test_the_schemas_are_the_same() -> None:
    ours = _normalized(gate.core_schema())
    assert ours == _normalized(ConsoleUsageDataSync.__pydantic_core_schema__)


def test_the_rules_are_ours_once() -> None:
    # The model's validators are the gate's functions, not copies of them.
    source = json.dumps(_normalized(gate.core_schema()))
    assert source.count("a function") == 2


def test_every_sample_gets_the_same_answer() -> None:
    for path in [*VALID_SAMPLES, *INVALID_SAMPLES]:
        data = path.read_bytes()
        assert verdict(gate.check_payload, data) == verdict(judge_payload, data), path.name
    assert all(verdict(gate.check_payload, p.read_bytes()) == "valid" for p in VALID_SAMPLES)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 150),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e3, max_value=1e3),
    st.text(max_size=12),
    st.sampled_from(["40", "", "1 hr", "Mon 8:59 AM"]),
)
_times = st.one_of(
    st.sampled_from(
        [
            "2026-11-27T14:05:00Z",
            "2026-11-27t14:05:00.123+01:00",
            "2026-11-27T14:05Z",
            "2026-11-27T14:05:00",
            "2026-11-27 14:05:00Z",
            "1999-12-31T23:59:59Z",
            "2199-12-31T23:59:59-05:00",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:00-01:00",
            "2026-02-30T00:00:00Z",
            "1700000000",
            "0",
        ]
    ),
    st.integers(),
    st.text(max_size=30),
    st.none(),
)
_windows = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "resetsIn": _scalars,
            "percentageUsed": _scalars,
            "extra": _scalars,
        },
    ),
    _scalars,
    st.lists(_scalars, max_size=2),
)
_payloads = st.fixed_dictionaries(
    {},
    optional={
        "currentSession": _windows,
        "weeklyLimits": st.one_of(
            st.fixed_dictionaries({}, optional={"allModels": _windows, "sonnetOnly": _windows}),
            _scalars,
        ),
        "lastUpdated": _times,
        "isPartial": _scalars,
        "extractionErrors": st.one_of(st.dictionaries(st.text(max_size=5), _scalars), _scalars),
        "scraperVersion": _scalars,
    },
)


@given(_payloads)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_payloads_get_the_same_answer(doc: dict[str, Any]) -> None:
    data = json.dumps(doc).encode()
    assert verdict(gate.check_payload, data) == verdict(judge_payload, data)


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_any_bytes_get_the_same_answer(data: bytes) -> None:
    assert verdict(gate.check_payload, data) == verdict(judge_payload, data)


def test_the_gate_can_tell_them_apart() -> None:
    """The comparison can fail: a verdict differs when the payload does."""
    good = VALID_SAMPLES[0].read_bytes()
    assert verdict(gate.check_payload, good) != verdict(judge_payload, b"{}")


# -- the words: ours, never Python's or pydantic's parser's ---------------------------------


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_is_refused_in_our_words(name: str) -> None:
    for judge_it in (judge_payload, gate.check_payload):
        with pytest.raises(PayloadRejected) as refused:
            judge_it(HOSTILE[name])
        assert_our_words(refused.value.reason)
        for problem in refused.value.errors:
            assert_our_words(str(problem["msg"]))


def test_the_words_say_what_and_where() -> None:
    def reason(data: bytes) -> str:
        with pytest.raises(PayloadRejected) as refused:
            judge_payload(data)
        return refused.value.reason

    assert reason(HOSTILE["gzip body"]) == (
        "not JSON: gzip-compressed bytes; send the JSON uncompressed"
    )
    assert reason(b"x") == "not JSON: a value was expected at line 1 column 1"
    # The top level named in JSON's words, not Python's (NoneType, str, list).
    for text, kind in (
        (b"null", "null"),
        (b'"usage"', "string"),
        (b"42", "number"),
        (b"4.2", "number"),
        (b"true", "boolean"),
        (b"[{}]", "array"),
    ):
        assert reason(text) == f"top level is a JSON {kind}, not an object", text
    assert reason(b'{"a": 1\n "b": 2}') == (
        "not JSON: a comma or the end of the object or array was expected at line 2 column 2"
    )
    assert reason(HOSTILE["lastUpdated 2026-01-01T00:00:00+25:00"]) == (
        "lastUpdated: is not a date and time that exist (the offset +25:00 is out of range: "
        "offsets run from -23:59 to +23:59)"
    )
    assert reason(HOSTILE["lastUpdated 2026-02-30T00:00:00Z"]) == (
        "lastUpdated: is not a date and time that exist (2026-02 has no day 30)"
    )


def test_a_number_beyond_a_double_s_range_is_refused_in_one_reason() -> None:
    """A number that reads as infinite (valid JSON text, but no double holds it) is
    refused as the literal Infinity is, by both gates and wherever it stands: stored,
    it would be served back as ``Infinity``, which no JSON reader takes."""
    valid = json.loads(VALID_SAMPLES[0].read_bytes())
    for number, shown in (
        ("1e400", "1e400"),
        ("-1.5E+309", "-1.5E+309"),
        ("9" * 400 + ".0", "9" * 20 + "..."),
    ):
        for where in ("extra", "currentSession"):
            payload = json.dumps({**valid, where: "HERE"}).replace('"HERE"', number)
            expected = (
                f"not JSON: the number {shown} is beyond a double's range (about ±1.8e308): "
                "it reads as infinite"
            )
            for judge_it in (judge_payload, gate.check_payload):
                assert verdict(judge_it, payload.encode())[0] == expected, number
    # Tiny numbers round to zero, as every reader rounds them: they stay valid.
    tiny = json.dumps({**valid, "extra": "HERE"}).replace('"HERE"', "1e-400").encode()
    assert verdict(gate.check_payload, tiny) == verdict(judge_payload, tiny) == "valid"


_valid_text = (SAMPLES / "valid" / "full.json").read_bytes()


@given(
    st.integers(min_value=0, max_value=len(_valid_text)),
    st.integers(min_value=0, max_value=8),
    st.binary(max_size=6) | st.sampled_from([b"1e999", b"-", b'"', b"\\", b"{", b"]", b"+25:00"]),
)
@settings(max_examples=300, deadline=None)
def test_a_damaged_payload_is_refused_in_our_words(at: int, cut: int, insert: bytes) -> None:
    data = _valid_text[:at] + insert + _valid_text[at + cut :]
    try:
        judge_payload(data)
    except PayloadRejected as exc:
        assert_our_words(exc.reason)


@given(
    st.from_regex(
        r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})\Z",
        fullmatch=True,
    )
)
@settings(max_examples=300, deadline=None)
def test_any_spelt_date_time_is_judged_in_our_words(stamp: str) -> None:
    try:
        judge_payload((STAMPED % stamp).encode())
    except PayloadRejected as exc:
        assert_our_words(exc.reason)


def test_the_spool_s_reason_files_hold_our_words(root: Path) -> None:
    spool = root / "spool"
    assert run_cli(root, "init").returncode == 0
    for i, data in enumerate(HOSTILE.values()):
        (spool / f"drop-{i:02d}.json").write_bytes(data)
    done = run_cli(root, "watch", "--once")
    assert "Traceback" not in done.stderr
    reasons = sorted((spool / "rejected").glob("*.reason.json"))
    assert len(reasons) == len(HOSTILE)
    for path in reasons:
        record = json.loads(path.read_bytes())
        assert_our_words(record["reason"])
        for problem in record.get("errors", []):
            assert_our_words(problem["msg"])
    assert_our_words(done.stderr)


def _fields(payload: Any) -> Any:
    """What readers take from a valid payload: every field, a time with its offset."""
    when = payload.lastUpdated
    return (when.isoformat(), when.utcoffset(), payload.isPartial, payload.extractionErrors)


@given(_payloads)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_gate_reads_the_models_values(doc: dict[str, Any]) -> None:
    """``read_payload`` (what status, list and show read a version with) gives the
    model's verdict, and for a valid payload the model's values."""
    data = json.dumps(doc).encode()
    assert verdict(gate.read_payload, data) == verdict(judge_payload, data)
    try:
        model = judge_payload(data)
    except PayloadRejected:
        return
    assert _fields(gate.read_payload(data)) == _fields(model)


def test_the_gate_reads_the_samples_values() -> None:
    for path in VALID_SAMPLES:
        data = path.read_bytes()
        assert _fields(gate.read_payload(data)) == _fields(judge_payload(data)), path.name


def test_a_payload_with_very_many_problems_names_the_first_and_counts_the_rest() -> None:
    """Up to ``MAX_PROBLEMS`` problems are listed (the payload's own rule among them),
    then one entry counting the rest; the one-line reason says the same, and a key as
    long as the drop is cut in the field's path."""
    for judge in (gate.check_payload, judge_payload):
        with pytest.raises(PayloadRejected) as caught:
            judge(many_problems())
        errors = caught.value.errors
        assert len(errors) == gate.MAX_PROBLEMS + 1
        assert errors[-2]["type"] == gate.MISSING_SECTION
        more = errors[-1]
        assert more["type"] == gate.MORE_PROBLEMS and more["field"] == "(payload)"
        assert more["count"] > 100_000
        assert caught.value.reason.endswith(f"; … and {more['count']} more problems")
        assert len(caught.value.reason) < 8 * 1024
    one_more = {"lastUpdated": "x", "extractionErrors": {str(i): 1 for i in range(19)}}
    with pytest.raises(PayloadRejected) as caught:
        gate.check_payload(json.dumps(one_more).encode())
    assert caught.value.errors[-1]["msg"] == "… and 1 more problem"
    long_key = json.dumps({"extractionErrors": {"k" * 100_000: 1}}).encode()
    with pytest.raises(PayloadRejected) as caught:
        gate.check_payload(long_key)
    assert len(caught.value.reason) < 1024
