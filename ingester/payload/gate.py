"""The gate every drop passes: its bytes judged by pydantic, without the model classes.

:func:`check_payload` is what the watcher calls for each drop. It applies the byte rules
(UTF-8 without a BOM, JSON without NaN or a number beyond a double's range, nesting at
most :data:`MAX_NESTING`), then the payload's schema with pydantic's own validator
(``pydantic_core``), built once, on first use, from the core schema written out below.
That schema is the one pydantic generates for
:class:`ingester.payload.model.ConsoleUsageDataSync`, and the two validators are one gate:
``tests/test_gate.py`` checks that the schemas are equal and, with hypothesis, that
every payload gets the same answer and the same errors from both.

Why two spellings of one schema: building pydantic model classes loads pydantic's
schema generator (about 12 MB of a process that otherwise needs 25), and a watcher
needs the verdict, not the model. :func:`ingester.payload.model.judge_payload` (for callers
that want the model) shares everything here except the last step.

The rules that are ours, not pydantic's, live here once and the model uses them too:
:func:`check_last_updated` and :func:`check_sections`; so do the words a scraper's
author reads (every problem on its own as ``field: what is wrong``, a common misspelling
of ``lastUpdated`` named as such, all of them at once) and the one flow both follow,
:func:`judge`.
"""

from __future__ import annotations

import calendar
import json
import math
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic_core import PydanticCustomError

from ..clock import offset_out_of_range
from ..errors import IngesterError, PayloadRejected

if TYPE_CHECKING:
    from pydantic_core import SchemaValidator

__all__ = [
    "LAST_UPDATED_RANGE",
    "MAX_DROP_BYTES",
    "MAX_NESTING",
    "MAX_PROBLEMS",
    "MISSING_SECTION",
    "MORE_PROBLEMS",
    "check_last_updated",
    "check_payload",
    "check_sections",
    "judge",
    "load_json",
    "read_payload",
    "whole_characters",
]

MAX_DROP_BYTES = 256 << 20
"""The largest drop there can be, in bytes (256 MiB): ``--max-bytes`` goes up to this and
no further, as a drop is read into memory and parsed whole.

Versions are drops stored byte for byte (``restore`` and ``adopt`` pass the same gate),
so no version is larger either: every reader of a version reads at most this many bytes
and one more (:class:`~ingester.errors.VersionTooLarge`), and a larger file in the
history is damaged, never read whole.
"""

MAX_NESTING = 128
"""Deepest nesting of objects and arrays a drop may have (the payload itself needs 3)."""

MAX_PROBLEMS = 20
"""Most problems one rejection lists; the rest are counted in a last entry.

Every problem a payload can have outside the values of ``extractionErrors`` fits: at
most nine fields (the three windows' two each, ``lastUpdated``, ``isPartial``,
``extractionErrors`` itself) and the rule about the sections. Only that map is
unbounded: a drop of 1 MiB can hold 130,000 bad values, and listing each would make a
5 MB log line (the journal cuts a line at 48 KiB, its ``LineMax``), a 20 MB reason
file and a 5 MB refusal. Twenty show the pattern; with at most :data:`_FIELD_MAX`
characters of path and our own words each, the one-line reason stays under 8 KiB.
"""

MORE_PROBLEMS = "more_problems"
"""The ``type`` of the last entry of a rejection's ``errors`` when more than
:data:`MAX_PROBLEMS` problems were found: ``{"field": "(payload)", "type":
"more_problems", "msg": "… and K more problem(s)", "count": K}``."""

_FIELD_MAX = 200
"""Longest field path said, in characters: a key of ``extractionErrors`` may be as long
as the drop; longer paths are cut and end in ``…``."""

LAST_UPDATED_RANGE = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC))
"""``lastUpdated`` must fall in ``[start, end)`` once converted to UTC.

A date-time can be valid with its offset and still not exist in UTC
(``0001-01-01T00:00:00+01:00``); every reader converts to UTC and computes ages, so the
gate admits only times that convert, and only in a window a real snapshot can have.
"""

ISO_WITH_OFFSET = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})\Z", re.ASCII
)
"""The spelling ``lastUpdated`` must have: ISO 8601 with an offset (``Z`` or ``+hh:mm``)."""

_TOO_DEEP = f"JSON nested deeper than {MAX_NESTING} levels"
T = TypeVar("T")


_EXAMPLE = "2026-11-27T14:05:00Z"
_NOT_A_STRING = f"must be a string: an ISO 8601 date-time with an offset ({_EXAMPLE})"
MISSING_SECTION = "missing_section"
"""The error type of a payload that has neither usage section."""
_NO_SECTION = "at least one of currentSession and weeklyLimits is required"
_DATE = r"\d{4}-\d{2}-\d{2}"
_TIME = r"\d{2}:\d{2}(:\d{2}(\.\d+)?)?"
_OFFSET = r"([Zz]|[+-]\d{2}:\d{2})"
# Each way a date-time is commonly written wrong, and what to say about it.
_MISSPELT: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(pattern + r"\Z", re.ASCII), kind, words)
    for pattern, kind, words in (
        (
            rf"{_DATE} +{_TIME}\s*{_OFFSET}?",
            "datetime_separator",
            f'has a space between the date and the time: ISO 8601 puts a "T" there ({_EXAMPLE})',
        ),
        (
            rf"{_DATE}[Tt]{_TIME}",
            "datetime_no_offset",
            f'has no offset: add "Z" for UTC, or the offset as +hh:mm ({_EXAMPLE})',
        ),
        (
            rf"{_DATE}[Tt]{_TIME} *[+-]\d{{2}}(\d{{2}})?",
            "datetime_offset_format",
            'has its offset as +hh or +hhmm: write +hh:mm (e.g. +01:00), or "Z" for UTC',
        ),
        (
            rf"{_DATE}[Tt]{_TIME} +{_OFFSET}",
            "datetime_format",
            f"has a space before its offset: write it right after the time ({_EXAMPLE})",
        ),
        (
            _DATE,
            "datetime_no_time",
            f"is a date without a time: write the date, the time and an offset ({_EXAMPLE})",
        ),
        (
            r"\s*-?\d+(\.\d+)?\s*",
            "datetime_unix_time",
            f"looks like a Unix time: write an ISO 8601 date-time with an offset ({_EXAMPLE})",
        ),
        (
            r"\s*",
            "datetime_empty",
            f"is empty: write an ISO 8601 date-time with an offset ({_EXAMPLE})",
        ),
    )
)


def _misspelt_date_time(value: str) -> tuple[str, str]:
    """The error type and words for a ``lastUpdated`` that is not the pattern."""
    for pattern, kind, words in _MISSPELT:
        if pattern.match(value):
            return kind, words
    if value != value.strip():
        return "datetime_format", "has spaces before or after it: remove them"
    return "datetime_format", f"is not an ISO 8601 date-time with an offset ({_EXAMPLE})"


_PARTS = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})[Tt](?P<h>\d{2}):(?P<mi>\d{2})"
    r"(:(?P<s>\d{2}))?[^Zz+-]*([Zz]|(?P<off>[+-](?P<oh>\d{2}):(?P<om>\d{2})))\Z",
    re.ASCII,
)


def _nonexistent(value: str) -> str:
    """Which part of ``value`` (spelt as :data:`ISO_WITH_OFFSET`) names no real time.

    In our words, never Python's: its own messages name its types (``timedelta(...)``).
    """
    m = _PARTS.match(value)
    if m is None:  # pragma: no cover - ISO_WITH_OFFSET matched first
        return "not a valid date-time"
    year, month, day = int(m["y"]), int(m["mo"]), int(m["d"])
    if year == 0:
        return "there is no year 0000: years run from 0001"
    if not 1 <= month <= 12:
        return f"there is no month {m['mo']}: months run from 01 to 12"
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return f"{m['y']}-{m['mo']} has no day {m['d']}"
    if int(m["h"]) > 23:
        return f"there is no hour {m['h']}: hours run from 00 to 23"
    if int(m["mi"]) > 59:
        return f"there is no minute {m['mi']}: minutes run from 00 to 59"
    if m["s"] is not None and int(m["s"]) > 59:
        return f"there is no second {m['s']}: seconds run from 00 to 59, no leap second"
    if m["off"] is not None and (int(m["oh"]) > 23 or int(m["om"]) > 59):
        return f"the offset {m['off']} is out of range: offsets run from -23:59 to +23:59"
    return "not a valid date-time"


def check_last_updated(value: Any) -> Any:
    """``lastUpdated`` before pydantic's own datetime check: our spelling and range rules.

    pydantic alone would also read ``"0"`` or ``"1700000000"`` as Unix times, and
    ``+0100`` offsets. Returns the parsed datetime. Raises ``PydanticCustomError``
    whose type and words say which rule is broken.
    """
    if not isinstance(value, str):
        raise PydanticCustomError("datetime_type", _NOT_A_STRING)
    if not ISO_WITH_OFFSET.match(value):
        kind, words = _misspelt_date_time(value)
        raise PydanticCustomError(kind, words)
    try:
        stamp = datetime.fromisoformat(value.upper())
        if offset_out_of_range(value):
            # fromisoformat takes "+05:99" as 5 h 99 min: an offset no clock shows.
            raise ValueError(value)
    except ValueError:
        raise PydanticCustomError(
            "datetime_invalid",
            "is not a date and time that exist ({reason})",
            {"reason": _nonexistent(value)},
        ) from None
    try:
        utc = stamp.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError(
            "datetime_out_of_range", "is not a date and time that exist in UTC"
        ) from None
    start, end = LAST_UPDATED_RANGE
    if not start <= utc < end:
        raise PydanticCustomError(
            "datetime_out_of_range",
            "must be from {start} up to (not including) {end} in UTC",
            {"start": start.year, "end": end.year},
        )
    return stamp


def check_sections(current_session: object, weekly_limits: object) -> None:
    """At least one of the two sections: ``PydanticCustomError`` when both are missing."""
    if current_session is None and weekly_limits is None:
        raise PydanticCustomError(MISSING_SECTION, _NO_SECTION)


class _OurWords(IngesterError, ValueError):
    """A JSON problem already said in our words."""


def _refuse_constant(name: str) -> Any:
    raise _OurWords(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """``text``, a JSON number with a fraction or an exponent, as a float; ``_OurWords``
    when it is beyond the largest double (``1e400``): it would read as infinite, and be
    served back as ``Infinity``, which no JSON reader takes."""
    value = float(text)
    if math.isinf(value):
        shown = text if len(text) <= 24 else f"{text[:20]}..."
        raise _OurWords(
            f"the number {shown} is beyond a double's range (about ±1.8e308): it reads as infinite"
        )
    return value


# Every escape in a JSON text, from its backslash (so an escaped backslash is taken whole
# and never starts another): a surrogate pair, a lone half of one (group 1), or any other.
_ESCAPE = re.compile(
    r"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    r"|(u[dD][89a-fA-F][0-9a-fA-F]{2})|.)",
    re.DOTALL,
)


def _lone_half(match: re.Match[str]) -> str:
    return "\\ufffd" if match[1] else match[0]


def whole_characters(text: str) -> str:
    """``text``, a JSON text, with each escape of a lone half of a surrogate pair
    (``"\\ud83d"``) replaced by U+FFFD's, every other escape as it was.

    JSON's grammar admits such an escape, and JavaScript's ``JSON.stringify`` writes one
    for a string cut in the middle of an emoji (the original server took them), but it
    is no character: pydantic's parser refuses it, and Python's makes a string that no
    UTF-8 output can hold. Read this way, a payload's strings are whole characters
    everywhere, and the replacement character is what a browser's decoder shows for it.
    The drop's bytes are stored as they came all the same.
    """
    if "\\ud" not in text and "\\uD" not in text:
        return text  # no surrogate escape at all: the usual case, in one scan
    return _ESCAPE.sub(_lone_half, text)


def load_json(text: str | bytes) -> Any:
    """``text`` parsed as the gate parses it: the literals ``NaN`` and ``Infinity``, and
    numbers beyond the largest double, refused with a ``ValueError`` whose words
    :func:`json_problem` gives (bytes that are not UTF-8 too); ``RecursionError`` for
    nesting deeper than Python can parse; a lone half of a surrogate pair read as
    U+FFFD (:func:`whole_characters`). What it returns can be written back as JSON with
    ``allow_nan=False``, and every string in it encoded as UTF-8."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return _loads(whole_characters(text))


def _loads(text: str) -> Any:
    """:func:`load_json` of a text :func:`whole_characters` has been applied to."""
    # Python's json takes NaN and Infinity by default, and reads 1e400 as infinite.
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


# Python's json messages (the part before the position), in a scraper author's words.
_JSON_WORDS: tuple[tuple[str, str], ...] = (
    ("Expecting value", "a value was expected"),
    ("Expecting ',' delimiter", "a comma or the end of the object or array was expected"),
    ("Expecting ':' delimiter", "a colon was expected after the property name"),
    ("Expecting property name", "a property name in double quotes was expected"),
    ("Extra data", "more follows the JSON object (a payload is one object)"),
    ("Invalid \\uXXXX escape", "a string holds an invalid \\u escape"),
    ("Invalid \\escape", "a string holds an invalid escape"),
    ("Invalid control character", "a string holds a control character (escape it)"),
    ("Unterminated string", "a string is not closed"),
)

# serde_json's messages (pydantic's JSON parser), for what Python's parser let through.
_PARSER_WORDS: tuple[tuple[str, str], ...] = (
    ("surrogate", "a string holds half of a \\u surrogate pair"),
    ("hex escape", "a string holds half of a \\u surrogate pair"),
    ("number out of range", "a number is out of range"),
    ("recursion limit", _TOO_DEEP),
)
_POSITION = re.compile(r"line (\d+) column (\d+)")
_GZIP_MAGIC = b"\x1f\x8b"


def _words_for(message: str, table: tuple[tuple[str, str], ...]) -> str:
    for start, words in table:
        if start in message:
            return words
    return "not valid JSON"


def json_problem(exc: ValueError) -> str:
    """``"not JSON: <what> at line L column C"``: a JSON parse error in our words.

    ``exc`` is what :func:`json.loads` raised; Python's own words (``Expecting value:
    line 1 column 1 (char 0)``) name its parser's states, not the author's mistake.
    """
    if isinstance(exc, _OurWords):
        return f"not JSON: {exc}"
    if isinstance(exc, json.JSONDecodeError):
        return (
            f"not JSON: {_words_for(exc.msg, _JSON_WORDS)} at line {exc.lineno} column {exc.colno}"
        )
    if "digits" in str(exc):  # int("9" * 5000): Python's guard against slow conversions
        return f"not JSON: a number has more than {sys.get_int_max_str_digits()} digits"
    return "not JSON: a value that cannot be read"


def _parser_problem(message: str) -> str:
    """A JSON error from pydantic's parser in the words of :func:`json_problem`."""
    words = _words_for(message, _PARSER_WORDS)
    if words == _TOO_DEEP:
        return words
    at = _POSITION.search(message)
    where = f" at line {at[1]} column {at[2]}" if at else ""
    return f"not JSON: {words}{where}"


def _depth_over(obj: Any, limit: int) -> bool:
    """Whether ``obj`` nests objects and arrays more than ``limit`` levels deep."""
    level: list[Any] = [obj]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        nxt: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                nxt.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                nxt.extend(v for v in item if isinstance(v, dict | list))
        level = nxt
    return False


def _wide_encoding(data: bytes) -> str | None:
    """What ``data`` is when it is UTF-16 or UTF-32 text (``"UTF-16LE text, with a byte
    order mark"``), else ``None``.

    JSON text never holds a NUL byte, and its first character is ASCII: the NULs among
    the first four bytes tell the encoding (RFC 4627, section 3), with or without a
    byte order mark. Windows PowerShell 5.1 writes UTF-16LE with a mark by default (its
    ``>`` and ``Out-File``), and that text is mostly valid UTF-8 too, so without these
    words its author reads about a property name at column 2, or about byte 0.
    """
    for mark, name in _WIDE_MARKS:
        if data.startswith(mark):
            return f"{name} text, with a byte order mark"
    head = data[:4]
    if len(head) < 4 or b"\x00" not in head:
        return None
    found = _WIDE_PATTERNS.get(tuple(byte == 0 for byte in head))
    return None if found is None else f"{found} text"


# Longest first: the UTF-32LE mark begins with the UTF-16LE one.
_WIDE_MARKS = (
    (b"\xff\xfe\x00\x00", "UTF-32LE"),
    (b"\x00\x00\xfe\xff", "UTF-32BE"),
    (b"\xff\xfe", "UTF-16LE"),
    (b"\xfe\xff", "UTF-16BE"),
)
_WIDE_PATTERNS: dict[tuple[bool, ...], str] = {
    (True, True, True, False): "UTF-32BE",
    (False, True, True, True): "UTF-32LE",
    (True, False, True, False): "UTF-16BE",
    (False, True, False, True): "UTF-16LE",
}


def _parse(data: bytes, max_bytes: int | None) -> tuple[dict[str, Any], str]:
    """The byte rules: ``data`` as text holding one JSON object, not too deep.

    Returns the object and the text. Raises :class:`PayloadRejected` naming the rule.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadRejected(f"drop is over the limit of {max_bytes} bytes")
    if data.startswith(_GZIP_MAGIC):
        raise PayloadRejected("not JSON: gzip-compressed bytes; send the JSON uncompressed")
    wide = _wide_encoding(data)
    if wide is not None:
        raise PayloadRejected(f"not valid UTF-8: it is {wide}; a payload is UTF-8 without a BOM")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadRejected(f"not valid UTF-8 (byte {exc.start})") from None
    if text.startswith("\ufeff"):
        raise PayloadRejected("starts with a byte order mark; UTF-8 without BOM is required")
    if not text.strip():
        what = "no bytes" if not data else "only whitespace"
        raise PayloadRejected(f"not JSON: empty ({what}); a payload is one JSON object")
    text = whole_characters(text)  # also the text the schema's validator is given
    try:
        obj = _loads(text)
    except RecursionError:
        raise PayloadRejected(_TOO_DEEP) from None
    except ValueError as exc:
        raise PayloadRejected(json_problem(exc)) from None
    if not isinstance(obj, dict):
        raise PayloadRejected(f"top level is a JSON {_json_kind(obj)}, not an object")
    # One limit, checked here, so the schema's parser (with a recursion limit of its own)
    # never sees a payload deep enough to give a second wording for the same fault.
    # Nesting needs an opening bracket per level: a text with few of them (as every
    # real payload has) cannot be too deep, and the walk is skipped.
    if text.count("{") + text.count("[") > MAX_NESTING and _depth_over(obj, MAX_NESTING):
        raise PayloadRejected(_TOO_DEEP)
    return obj, text


def _json_kind(value: Any) -> str:
    """JSON's own name for the kind of a parsed value (``null``, never ``NoneType``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else "array"


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ".".join(str(part) for part in loc) or "(payload)"
    return path if len(path) <= _FIELD_MAX else path[: _FIELD_MAX - 1] + "…"


# pydantic's words for its own checks, as a scraper author would say them; the rest
# (and ours, raised as PydanticCustomError with our words) pass through as they are.
_AUTHOR_WORDS: dict[str, str] = {
    "missing": "is required",
    "string_type": "must be a string",
    "string_too_short": "must not be empty",
    "float_type": "must be a JSON number (not a string or a boolean)",
    "int_type": "must be a JSON number (not a string or a boolean)",
    "bool_type": "must be true or false",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
    "less_than_equal": "must be at most {le:g}",
    "greater_than_equal": "must be at least {ge:g}",
}


def _author_words(err: Any) -> str:
    words = _AUTHOR_WORDS.get(err["type"])
    if words is None:
        return str(err["msg"])
    try:
        return words.format(**err.get("ctx", {}))
    except (KeyError, ValueError, TypeError):
        return str(err["msg"])


def _summary(problems: list[dict[str, Any]]) -> str:
    """One line: ``field: words`` per problem (the words alone for the whole payload)."""
    return "; ".join(
        p["msg"] if p["field"] == "(payload)" else f"{p['field']}: {p['msg']}" for p in problems
    )


def judge(data: bytes, max_bytes: int | None, validate: Callable[[str], T]) -> T:
    """The one flow of the gate: the byte rules, then ``validate`` (pydantic, JSON mode).

    Returns what ``validate`` returns. Raises :class:`PayloadRejected` with every
    problem, up to :data:`MAX_PROBLEMS` (then the first ones, and a last entry of type
    :data:`MORE_PROBLEMS` counting the rest): pydantic stops at field errors before the
    payload's own rule (a section is required), so that rule is judged here too, on the
    parsed object, and a bad ``lastUpdated`` does not hide a missing section.

    pydantic cannot be told to stop after a number of errors (its ``fail_fast`` stops a
    container at its first, and needs a newer pydantic than this package's floor), so
    a drop with very many problems still has all of them found once; only what is said
    of them is bounded.
    """
    from pydantic_core import ValidationError

    obj, text = _parse(data, max_bytes)
    problems: list[dict[str, Any]] = []
    try:
        # JSON mode so that strict typing still reads ISO strings as datetimes.
        return validate(text)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        for err in errors:
            if err["type"] == "json_invalid":  # what Python's parser let through
                raise PayloadRejected(_parser_problem(str(err["msg"]))) from None
        found = [err for err in errors if err["type"] != MISSING_SECTION]
        del errors
    except RecursionError:
        raise PayloadRejected(_TOO_DEEP) from None
    ours = []
    if all(obj.get(section) is None for section in ("currentSession", "weeklyLimits")):
        ours.append({"field": "(payload)", "type": MISSING_SECTION, "msg": _NO_SECTION})
    # The payload's own rule is always said; pydantic's problems fill the rest.
    room = MAX_PROBLEMS - len(ours)
    problems = [
        {"field": _field_path(err["loc"]), "type": err["type"], "msg": _author_words(err)}
        for err in found[:room]
    ]
    problems += ours
    more = len(found) - room
    if more > 0:
        problems.append(
            {
                "field": "(payload)",
                "type": MORE_PROBLEMS,
                "msg": f"… and {more} more problem{'s' if more != 1 else ''}",
                "count": more,
            }
        )
    raise PayloadRejected(_summary(problems), problems, kind="schema")


def check_payload(data: bytes, *, max_bytes: int | None = None) -> None:
    """Judge ``data`` as a drop; raise :class:`PayloadRejected` naming what is wrong.

    The same verdict and words as :func:`ingester.payload.model.judge_payload`, without
    building the model.
    """
    judge(data, max_bytes, _validator().validate_json)


def read_payload(data: bytes, *, max_bytes: int | None = None) -> ConsoleUsageDataSync:
    """:func:`check_payload`, returning what it validated: the payload's fields, as the
    model's (``lastUpdated`` an aware datetime, ``isPartial``, ...), on a plain object.

    For readers that need a field or two of a version (``status``, ``list``, ``show``):
    the model's values, from the same schema, without loading pydantic's model machinery
    (some 50 ms of every command's start).
    """
    validate: Callable[[str], ConsoleUsageDataSync] = _validator().validate_json
    return judge(data, max_bytes, validate)


# -- the schema -----------------------------------------------------------------------------


class UsageWindow:
    """Stands in for :class:`ingester.payload.model.UsageWindow` in the gate's schema.

    pydantic's validator makes an instance of the class a schema names and uses the
    class's name in its messages ("an instance of UsageWindow"); these plain classes
    give it both, without pydantic's model machinery. The validator sets the fields as
    attributes (:func:`read_payload`); the annotations only name them for the type checker.
    """

    resetsIn: str
    percentageUsed: float


class WeeklyLimits:
    """Stands in for :class:`ingester.payload.model.WeeklyLimits` (see :class:`UsageWindow`)."""

    allModels: UsageWindow
    sonnetOnly: UsageWindow


class ConsoleUsageDataSync:
    """Stands in for :class:`ingester.payload.model.ConsoleUsageDataSync`.

    See :class:`UsageWindow`.
    """

    currentSession: UsageWindow | None
    weeklyLimits: WeeklyLimits | None
    lastUpdated: datetime
    isPartial: bool | None
    extractionErrors: dict[str, str] | None


def _after_sections(model: Any) -> Any:
    fields = model.__dict__
    check_sections(fields.get("currentSession"), fields.get("weeklyLimits"))
    return model


def _open_model(cls: type, fields: dict[str, Any]) -> dict[str, Any]:
    """A model schema as pydantic writes it for our models: strict, extra fields kept."""
    name = cls.__name__
    return {
        "type": "model",
        "cls": cls,
        "config": {"extra_fields_behavior": "allow", "strict": True, "title": name},
        "custom_init": False,
        "root_model": False,
        "schema": {
            "type": "model-fields",
            "computed_fields": [],
            "fields": {
                key: {"type": "model-field", "schema": schema, "metadata": {}}
                for key, schema in fields.items()
            },
            "model_name": name,
        },
    }


def _optional(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "default", "default": None, "schema": {"type": "nullable", "schema": schema}}


def core_schema() -> dict[str, Any]:
    """The core schema of the payload, as pydantic generates it for the model classes."""
    window_ref = "UsageWindow"
    window = {"type": "definition-ref", "schema_ref": window_ref}
    weekly = _open_model(WeeklyLimits, {"allModels": window, "sonnetOnly": window})
    weekly["ref"] = "WeeklyLimits"
    last_updated = {
        "type": "function-before",
        "function": {"type": "no-info", "function": check_last_updated},
        "schema": {
            "type": "datetime",
            "microseconds_precision": "truncate",
            "tz_constraint": "aware",
        },
    }
    payload = _open_model(
        ConsoleUsageDataSync,
        {
            "currentSession": _optional(window),
            "weeklyLimits": _optional(weekly),
            "lastUpdated": last_updated,
            "isPartial": _optional({"type": "bool", "strict": True}),
            "extractionErrors": _optional(
                {
                    "type": "dict",
                    "keys_schema": {"type": "str"},
                    "values_schema": {"type": "str", "strict": True},
                }
            ),
        },
    )
    usage_window = _open_model(
        UsageWindow,
        {
            "resetsIn": {"type": "str", "strict": True, "min_length": 1},
            "percentageUsed": {"type": "float", "strict": True, "ge": 0, "le": 100},
        },
    )
    usage_window["ref"] = window_ref
    return {
        "type": "definitions",
        "definitions": [usage_window],
        "schema": {
            "type": "function-after",
            "function": {"type": "no-info", "function": _after_sections},
            "schema": payload,
            "ref": "ConsoleUsageDataSync",
        },
    }


_VALIDATOR: list[SchemaValidator] = []


def _validator() -> SchemaValidator:
    if not _VALIDATOR:
        from pydantic_core import SchemaValidator

        _VALIDATOR.append(SchemaValidator(core_schema()))
    return _VALIDATOR[0]
