"""The payload model and ``judge_payload``: what passes, what fails, and why.

``judge_payload`` is the gate every drop passes, so besides the samples it is fed hostile
bytes: it must return a model or raise ``PayloadRejected``, never anything else.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import INVALID_SAMPLES, VALID_SAMPLES

from ingester import ConsoleUsageDataSync, HistoryStore, PayloadRejected, judge_payload

# The field each invalid sample gets wrong: the reason must name it.
EXPECTED_FIELD = {
    "empty-resets-in.json": "resetsIn",
    "half-weekly.json": "sonnetOnly",
    "missing-last-updated.json": "lastUpdated",
    "naive-timestamp.json": "lastUpdated",
    "no-sections.json": "currentSession",
    "not-json.json": "JSON",  # no field to name: the reason says it is not JSON
    "percentage-as-string.json": "percentageUsed",
    "percentage-out-of-range.json": "percentageUsed",
}

GOOD: dict[str, Any] = {
    "currentSession": {"resetsIn": "1 hr", "percentageUsed": 40},
    "lastUpdated": "2026-11-27T14:30:00Z",
}


def payload(**changes: Any) -> bytes:
    """``GOOD`` with top-level keys replaced (``None`` removes a key), as JSON bytes."""
    doc = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


def window(value: Any) -> bytes:
    return payload(currentSession={"resetsIn": "1 hr", "percentageUsed": value})


def test_the_samples_are_there() -> None:
    assert len(VALID_SAMPLES) >= 4
    assert len(INVALID_SAMPLES) >= 8
    # A new invalid sample needs an entry saying which field it gets wrong.
    assert {p.name for p in INVALID_SAMPLES} <= set(EXPECTED_FIELD)


@pytest.mark.parametrize("sample", VALID_SAMPLES, ids=lambda p: p.name)
def test_valid_sample_passes(sample: Path) -> None:
    model = judge_payload(sample.read_bytes())
    assert isinstance(model, ConsoleUsageDataSync)
    assert model.currentSession is not None or model.weeklyLimits is not None
    assert model.lastUpdated.utcoffset() is not None


@pytest.mark.parametrize("sample", INVALID_SAMPLES, ids=lambda p: p.name)
def test_invalid_sample_fails_naming_the_field(sample: Path) -> None:
    with pytest.raises(PayloadRejected) as caught:
        judge_payload(sample.read_bytes())
    field = EXPECTED_FIELD[sample.name]
    assert field in caught.value.reason
    assert caught.value.errors, "errors must list the problems"
    if field != "JSON":
        assert any(field in json.dumps(err) for err in caught.value.errors)


def test_unknown_fields_are_kept_at_every_level() -> None:
    doc = {
        "currentSession": {"resetsIn": "2 hr", "percentageUsed": 5, "resetsAt": "16:20"},
        "weeklyLimits": {
            "allModels": {"resetsIn": "Mon", "percentageUsed": 1, "deep": {"x": [1, 2]}},
            "sonnetOnly": {"resetsIn": "Mon", "percentageUsed": 2},
            "opusOnly": {"resetsIn": "Tue", "percentageUsed": 3},
        },
        "lastUpdated": "2026-11-27T14:20:00Z",
        "scraperVersion": "1.4.0",
    }
    dumped = judge_payload(json.dumps(doc).encode()).model_dump(mode="json")
    assert dumped["scraperVersion"] == "1.4.0"
    assert dumped["currentSession"]["resetsAt"] == "16:20"
    assert dumped["weeklyLimits"]["opusOnly"] == {"resetsIn": "Tue", "percentageUsed": 3}
    assert dumped["weeklyLimits"]["allModels"]["deep"] == {"x": [1, 2]}


def test_extra_fields_sample_keeps_its_extras() -> None:
    sample = next(p for p in VALID_SAMPLES if p.name == "extra-fields.json")
    dumped = judge_payload(sample.read_bytes()).model_dump()
    assert dumped["scraperVersion"] == "1.4.0"
    assert dumped["plan"] == "Max (5x)"
    assert dumped["currentSession"]["resetsAt"] == "2026-11-27T16:20:00Z"


@pytest.mark.parametrize("value", ["40", "40.5", "", True, False, None, [40], {"v": 40}])
def test_percentage_must_be_a_json_number(value: Any) -> None:
    with pytest.raises(PayloadRejected) as caught:
        judge_payload(window(value))
    assert "percentageUsed" in caught.value.reason


@pytest.mark.parametrize("value", [0, 0.0, 23, 88.5, 100, 1e2])
def test_percentage_in_range_passes(value: float) -> None:
    model = judge_payload(window(value))
    assert model.currentSession is not None
    assert model.currentSession.percentageUsed == value


@pytest.mark.parametrize("value", [-0.001, -1, 100.001, 101, 1e300])
def test_percentage_out_of_range_fails(value: float) -> None:
    with pytest.raises(PayloadRejected, match="percentageUsed"):
        judge_payload(window(value))


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-27 14:45",  # no offset
        "2026-11-27T14:45:00",  # no offset
        "2026-11-27",
        "yesterday",
        "",
        1764254700,  # a number, not a string
    ],
)
def test_last_updated_needs_a_timestamp_with_offset(value: Any) -> None:
    with pytest.raises(PayloadRejected, match="lastUpdated"):
        judge_payload(payload(lastUpdated=value))


@pytest.mark.parametrize("value", ["2026-11-27T14:45:00Z", "2026-11-27T14:45:00.123+05:30"])
def test_last_updated_with_offset_passes(value: str) -> None:
    assert judge_payload(payload(lastUpdated=value)).lastUpdated.utcoffset() is not None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"isPartial": "yes"}, "isPartial"),
        ({"isPartial": 1}, "isPartial"),
        ({"extractionErrors": {"weeklyLimits": 3}}, "extractionErrors"),
        ({"extractionErrors": ["oops"]}, "extractionErrors"),
        ({"currentSession": {"percentageUsed": 4}}, "resetsIn"),
        ({"currentSession": {"resetsIn": 5, "percentageUsed": 4}}, "resetsIn"),
        ({"currentSession": {"resetsIn": "x"}}, "percentageUsed"),
        ({"currentSession": "40%"}, "currentSession"),
        ({"weeklyLimits": {"sonnetOnly": {"resetsIn": "x", "percentageUsed": 1}}}, "allModels"),
    ],
)
def test_wrong_types_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(PayloadRejected) as caught:
        judge_payload(payload(**changes))
    assert field in caught.value.reason


def test_weekly_limits_alone_is_enough() -> None:
    both = {"resetsIn": "Thu", "percentageUsed": 1}
    model = judge_payload(
        payload(currentSession=None, weeklyLimits={"allModels": both, "sonnetOnly": both})
    )
    assert model.currentSession is None
    assert model.weeklyLimits is not None


VALID_TEXT = json.dumps(GOOD)

HOSTILE = {
    "NaN": VALID_TEXT.replace("40", "NaN").encode(),
    "Infinity": VALID_TEXT.replace("40", "Infinity").encode(),
    "-Infinity": VALID_TEXT.replace("40", "-Infinity").encode(),
    "NaN in an extra field": payload().replace(b"}", b', "x": NaN}', 1),
    "UTF-8 BOM": b"\xef\xbb\xbf" + VALID_TEXT.encode(),
    "UTF-16 LE with BOM": VALID_TEXT.encode("utf-16"),
    "UTF-16 BE": VALID_TEXT.encode("utf-16-be"),
    "UTF-32": VALID_TEXT.encode("utf-32"),
    "invalid UTF-8": VALID_TEXT.encode().replace(b"1 hr", b"1 \xff\xfe"),
    "truncated UTF-8": VALID_TEXT.encode()[:-2] + "é".encode()[:1],
    "overlong UTF-8": VALID_TEXT.encode().replace(b"1 hr", b"\xc0\xaf"),
    "200,000 brackets": b"[" * 200_000 + b"]" * 200_000,
    "200,000 braces": b'{"a":' * 200_000 + b"1" + b"}" * 200_000,
    "deep inside a valid payload": payload().replace(
        b"}", b', "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", 1
    ),
    "top-level array": f"[{VALID_TEXT}]".encode(),
    "top-level string": b'"hello"',
    "top-level number": b"42",
    "top-level null": b"null",
    "empty": b"",
    "whitespace": b"   \n",
    "binary": bytes(range(256)),
    "trailing garbage": VALID_TEXT.encode() + b" x",
    "two objects": VALID_TEXT.encode() * 2,
    "huge integer": payload().replace(b"}", b', "x": ' + b"9" * 5000 + b"}", 1),
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=list(HOSTILE))
def test_hostile_bytes_are_rejected(data: bytes) -> None:
    with pytest.raises(PayloadRejected) as caught:
        judge_payload(data)
    assert caught.value.reason
    assert caught.value.errors


@pytest.mark.parametrize(
    ("given", "words"),
    [
        (VALID_TEXT, "not str: encode the text as UTF-8 first"),
        (memoryview(VALID_TEXT.encode()), "not memoryview"),
        (None, "not NoneType"),
    ],
    ids=["text", "memoryview", "None"],
)
def test_judge_payload_given_anything_but_bytes_says_it_takes_bytes(given: Any, words: str) -> None:
    """The documented call is ``judge_payload(bytes)``; text read with ``read_text()``
    was a TypeError about ``startswith`` (or an AttributeError), naming nothing of it."""
    with pytest.raises(TypeError) as caught:
        judge_payload(given)
    assert str(caught.value) == f"judge_payload takes the payload's bytes, {words}"
    assert judge_payload(bytearray(VALID_TEXT.encode())).lastUpdated


def test_the_api_store_given_text_says_it_takes_bytes_and_stores_nothing(tmp_path: Path) -> None:
    """``save_version(str)``, a payload read with ``read_text()``, was an AttributeError
    about ``model_dump_json``; a bytearray, which ``judge_payload`` takes, was one too."""
    store = HistoryStore(tmp_path / "history", tmp_path / "latest.json")
    store.initialize()
    for text, words in (
        (VALID_TEXT, "not str: encode the text as UTF-8 first"),
        (None, "not NoneType"),
    ):
        with pytest.raises(TypeError) as caught:
            store.save_version(text)  # type: ignore[arg-type]
        assert str(caught.value) == (
            f"save_version takes the payload's bytes or a ConsoleUsageDataSync, {words}"
        )
    assert store.list_versions() == []
    saved = store.save_version(bytearray(VALID_TEXT.encode()))
    assert saved.read_bytes() == VALID_TEXT.encode()


@pytest.mark.parametrize(
    "escape",
    ["\\ud800", "\\uDFFF", "\\ud83d\\ud83d", "x\\ude00"],
    ids=["high", "low", "two", "low after"],
)
def test_a_lone_half_of_a_surrogate_pair_reads_as_the_replacement_character(escape: str) -> None:
    """JSON's grammar admits an escape of half a surrogate pair (JavaScript writes one for
    a string cut in the middle of an emoji): the payload passes, read with U+FFFD in its
    place, and a whole pair or an escaped backslash before ``u`` is left as it is."""
    model = judge_payload(VALID_TEXT.replace("1 hr", f"1 hr {escape}").encode())
    assert model.currentSession is not None
    read = model.currentSession.resetsIn
    assert "\ufffd" in read and read.encode("utf-8")
    whole = judge_payload(VALID_TEXT.replace("1 hr", "1 hr \\ud83d\\ude00 \\\\ud800").encode())
    assert whole.currentSession is not None
    assert whole.currentSession.resetsIn == "1 hr \U0001f600 \\ud800"


def test_over_max_bytes_is_rejected_before_parsing() -> None:
    data = payload()
    assert judge_payload(data, max_bytes=len(data)) is not None
    with pytest.raises(PayloadRejected, match="over the limit"):
        judge_payload(data, max_bytes=len(data) - 1)
    # Over the limit wins even when the bytes are garbage.
    with pytest.raises(PayloadRejected, match="over the limit"):
        judge_payload(b"\xff" * 100, max_bytes=10)


def test_rejection_errors_are_json_serialisable() -> None:
    for data in [*HOSTILE.values(), *(p.read_bytes() for p in INVALID_SAMPLES)]:
        with pytest.raises(PayloadRejected) as caught:
            judge_payload(data)
        json.dumps(caught.value.errors)  # they go into <name>.reason.json


# -- property tests ---------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)
windows = st.fixed_dictionaries(
    {},
    optional={
        "resetsIn": st.text(max_size=10) | json_values,
        "percentageUsed": st.floats(-10, 110) | st.integers(-5, 105) | json_values,
        "extra": json_values,
    },
)
near_payloads = st.fixed_dictionaries(
    {},
    optional={
        "currentSession": windows | json_values,
        "weeklyLimits": st.fixed_dictionaries(
            {}, optional={"allModels": windows, "sonnetOnly": windows}
        )
        | json_values,
        "lastUpdated": st.sampled_from(
            ["2026-11-27T14:30:00Z", "2026-11-27T14:30:00+02:00", "2026-11-27"]
        )
        | json_values,
        "isPartial": json_values,
        "extractionErrors": st.dictionaries(st.text(max_size=5), st.text(max_size=5)) | json_values,
        "other": json_values,
    },
)


def _judge_quietly(data: bytes) -> ConsoleUsageDataSync | PayloadRejected:
    try:
        return judge_payload(data, max_bytes=1 << 20)
    except PayloadRejected as exc:
        return exc


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    result = _judge_quietly(data)
    assert isinstance(result, ConsoleUsageDataSync | PayloadRejected)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values | near_payloads)
def test_random_json_never_raises_anything_else(doc: Any) -> None:
    data = json.dumps(doc).encode()
    result = _judge_quietly(data)
    if isinstance(result, ConsoleUsageDataSync):
        # Whatever passes really has the shape the model declares.
        assert isinstance(doc, dict)
        assert doc.get("currentSession") is not None or doc.get("weeklyLimits") is not None
        for section in (
            result.currentSession,
            *(
                (result.weeklyLimits.allModels, result.weeklyLimits.sonnetOnly)
                if result.weeklyLimits
                else ()
            ),
        ):
            if section is not None:
                assert 0 <= section.percentageUsed <= 100
                assert not math.isnan(section.percentageUsed)
                assert section.resetsIn
        assert result.model_dump()  # a model that passed can always be dumped
    else:
        assert result.errors


@settings(max_examples=200, deadline=None)
@given(near_payloads, st.sampled_from(["utf-8-sig", "utf-16", "utf-16-le", "latin-1"]))
def test_random_json_in_other_encodings_is_handled(doc: Any, encoding: str) -> None:
    text = json.dumps(doc, ensure_ascii=False)
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        return
    result = _judge_quietly(data)
    if encoding in ("utf-8-sig", "utf-16"):  # both start with a BOM
        assert isinstance(result, PayloadRejected)


@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01T00:00:00+01:00",  # valid with its offset, before year 1 in UTC
        "9999-12-31T23:59:00-01:00",  # after year 9999 in UTC
        "0001-01-01T00:00:00Z",
        "1999-12-31T23:59:59Z",
        "2200-01-01T00:00:00Z",
        "2000-01-01T00:30:00+01:00",  # 1999 in UTC
    ],
)
def test_last_updated_must_convert_to_utc_inside_the_window(value: str) -> None:
    with pytest.raises(PayloadRejected, match="lastUpdated") as caught:
        judge_payload(payload(lastUpdated=value))
    assert "UTC" in caught.value.reason


@pytest.mark.parametrize("value", ["2000-01-01T00:00:00Z", "2199-12-31T23:59:59.999Z"])
def test_last_updated_window_edges_pass(value: str) -> None:
    assert judge_payload(payload(lastUpdated=value)).lastUpdated is not None


@pytest.mark.parametrize("depth", [129, 250, 300, 600, 1000, 5000, 100_000])
def test_over_deep_nesting_has_one_wording_at_every_depth(depth: int) -> None:
    data = payload().replace(b"}", b', "x": ' + b"[" * depth + b"]" * depth + b"}", 1)
    with pytest.raises(PayloadRejected) as caught:
        judge_payload(data)
    assert caught.value.reason == "JSON nested deeper than 128 levels"


def test_nesting_up_to_the_limit_passes() -> None:
    # The extra field sits in currentSession (level 2), so it may nest 126 more.
    data = payload().replace(b"}", b', "x": ' + b"[" * 126 + b"]" * 126 + b"}", 1)
    assert judge_payload(data) is not None
    deeper = payload().replace(b"}", b', "x": ' + b"[" * 127 + b"]" * 127 + b"}", 1)
    with pytest.raises(PayloadRejected, match="deeper than 128"):
        judge_payload(deeper)


@pytest.mark.parametrize(
    "stamp", ["0", "1700000000", "2026-11-27T14:05:00+0100", "2026-02-30T10:00:00Z"]
)
def test_last_updated_must_be_iso_8601_with_offset(stamp: str) -> None:
    body = {"currentSession": {"resetsIn": "1 hr", "percentageUsed": 5}, "lastUpdated": stamp}
    with pytest.raises(PayloadRejected, match="lastUpdated"):
        judge_payload(json.dumps(body).encode())


# -- the words a scraper author reads ---------------------------------------------------------


def reasons(data: bytes) -> tuple[str, list[dict[str, Any]]]:
    with pytest.raises(PayloadRejected) as caught:
        judge_payload(data)
    return caught.value.reason, caught.value.errors


@pytest.mark.parametrize(
    ("stamp", "words"),
    [
        ("2026-11-27 14:05:00Z", 'has a space between the date and the time: ISO 8601 puts a "T"'),
        ("2026-11-27 14:05:00", 'has a space between the date and the time: ISO 8601 puts a "T"'),
        ("2026-11-27T14:05:00", 'has no offset: add "Z" for UTC'),
        ("2026-11-27T14:05:00+0100", "has its offset as +hh or +hhmm: write +hh:mm"),
        ("2026-11-27T14:05:00 Z", "has a space before its offset"),
        ("2026-11-27", "is a date without a time"),
        ("1700000000", "looks like a Unix time"),
        ("", "is empty"),
        (" 2026-11-27T14:05:00Z", "has spaces before or after it"),
        ("2026-02-30T10:00:00Z", "is not a date and time that exist"),
        ("yesterday", "is not an ISO 8601 date-time with an offset"),
    ],
)
def test_a_misspelt_last_updated_is_named_for_what_it_is(stamp: str, words: str) -> None:
    reason, errors = reasons(payload(lastUpdated=stamp))
    assert reason.startswith(f"lastUpdated: {words}"), reason
    assert [e["field"] for e in errors] == ["lastUpdated"]
    assert errors[0]["msg"].startswith(words)


def test_every_problem_is_reported_at_once_in_the_author_s_words() -> None:
    """A bad lastUpdated hides nothing: the missing sections and every bad field show too."""
    reason, errors = reasons(json.dumps({"lastUpdated": "2026-11-27 14:05:00Z"}).encode())
    assert [e["field"] for e in errors] == ["lastUpdated", "(payload)"]
    assert reason == (
        'lastUpdated: has a space between the date and the time: ISO 8601 puts a "T" there '
        "(2026-11-27T14:05:00Z); at least one of currentSession and weeklyLimits is required"
    )
    body = {
        "lastUpdated": "2026-11-27T14:05:00",
        "weeklyLimits": {"allModels": {"resetsIn": "", "percentageUsed": "41"}},
        "isPartial": "no",
        "extractionErrors": {"weekly": 3},
    }
    reason, errors = reasons(json.dumps(body).encode())
    by_field = {e["field"]: e["msg"] for e in errors}
    no_offset = 'has no offset: add "Z" for UTC, or the offset as +hh:mm (2026-11-27T14:05:00Z)'
    assert by_field == {
        "weeklyLimits.allModels.resetsIn": "must not be empty",
        "weeklyLimits.allModels.percentageUsed": "must be a JSON number (not a string or a "
        "boolean)",
        "weeklyLimits.sonnetOnly": "is required",
        "lastUpdated": no_offset,
        "isPartial": "must be true or false",
        "extractionErrors.weekly": "must be a string",
    }
    # One line, each problem once, no model name and no library wording.
    assert reason.count(";") == len(errors) - 1 and "\n" not in reason
    for jargon in ("ConsoleUsageDataSync", "does not match", "Value error", "Input should"):
        assert jargon not in reason
    # The reason file's shape stays: field, type, msg.
    assert all(set(e) == {"field", "type", "msg"} for e in errors)
    assert reasons(window(101))[0] == "currentSession.percentageUsed: must be at most 100"
    assert reasons(window(-1))[0] == "currentSession.percentageUsed: must be at least 0"
    assert reasons(payload(currentSession="x"))[0] == "currentSession: must be an object"


@pytest.mark.parametrize(("data", "what"), [(b"", "no bytes"), (b" \r\n\t", "only whitespace")])
def test_an_empty_drop_is_called_empty(data: bytes, what: str) -> None:
    reason, errors = reasons(data)
    assert reason == f"not JSON: empty ({what}); a payload is one JSON object"
    assert errors == [{"msg": reason}]
    assert "Expecting value" not in reason


# -- schema and program agree on lastUpdated ------------------------------------------------


def format_checking_validator() -> Any:
    """jsonschema's validator with format checking on, proven to check date-time."""
    import jsonschema

    from ingester.payload.schema import payload_schema

    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    probe = jsonschema.Draft202012Validator({"format": "date-time"}, format_checker=checker)
    assert not probe.is_valid("2026-12-04T01:30Z"), "date-time is not checked: rfc3339-validator?"
    return jsonschema.Draft202012Validator(payload_schema(), format_checker=checker)


_stamp_parts = st.tuples(
    st.sampled_from(["2026-11-27", "2026-02-30", "1999-12-31", "2026-1-27", "20261127"]),
    st.sampled_from(["T", "t", " ", ""]),
    st.sampled_from(["14:05", "14:05:00", "14:05:00.250", "14", "1405", "14:05:60", "24:00"]),
    st.sampled_from(
        ["Z", "z", "+01:00", "-23:59", "+0100", "+01", " Z", "", "+24:00", "+05:99", "-00:60"]
    ),
)


@settings(max_examples=400, deadline=None)
@given(_stamp_parts)
def test_schema_and_program_agree_on_last_updated(parts: tuple[str, str, str, str]) -> None:
    """jsonschema with format checking never refuses what the program accepts, and the
    program refuses all the schema refuses. The program alone refuses what no pattern
    can say (a date that does not exist, outside 2000-2200): the schema's words say so."""
    stamp = "".join(parts)
    data = payload(lastUpdated=stamp)
    try:
        judge_payload(data)
        program = True
    except PayloadRejected:
        program = False
    schema = format_checking_validator().is_valid(json.loads(data))
    if program:
        assert schema, f"the schema refuses {stamp!r}, which the program accepts"
    if not schema:
        assert not program


@pytest.mark.parametrize("offset", ["+05:99", "-00:60", "+23:60"])
def test_an_offset_no_clock_shows_is_refused_naming_it(offset: str) -> None:
    # Python's fromisoformat reads "+05:99" as 5 h 99 min; no zone is written that way.
    with pytest.raises(PayloadRejected) as caught:
        judge_payload(payload(lastUpdated=f"2026-12-05T17:52:30{offset}"))
    assert f"the offset {offset} is out of range" in caught.value.reason


def test_the_documented_choice_seconds_are_optional() -> None:
    validator = format_checking_validator()
    for stamp in ("2026-12-04T01:30Z", "2026-12-04T01:30:00Z", "2026-12-04T02:30:00.5+01:00"):
        judge_payload(payload(lastUpdated=stamp))
        assert validator.is_valid(json.loads(payload(lastUpdated=stamp))), stamp
