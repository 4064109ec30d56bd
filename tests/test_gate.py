"""The watcher's gate (``ingester.gate``) and the model's (``judge_payload``) are one gate.

The watcher judges drops with pydantic's validator built from a core schema written out
in ``ingester/gate.py``, so that it never builds the model classes. These tests hold the
two to each other: the schemas are equal, and every payload (the samples, and many
generated around the schema, valid and not) gets the same verdict and the same errors.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import INVALID_SAMPLES, VALID_SAMPLES

from ingester import gate
from ingester.errors import PayloadRejected
from ingester.model import ConsoleUsageDataSync, judge_payload


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
