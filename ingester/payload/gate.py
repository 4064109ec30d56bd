"""The gate every drop passes: its bytes judged by pydantic, without the model classes.

:func:`check_payload` is what the watcher calls for each drop. It applies the byte rules
(:func:`~ingester.payload.json_reading.read_object`: UTF-8 without a BOM, JSON without
NaN or a number beyond a double's range, nesting at most
:data:`~ingester.payload.json_reading.MAX_NESTING`), then the payload's schema with
pydantic's own validator (``pydantic_core``), built once, on first use, from the core
schema written out below. That schema is the one pydantic generates for
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
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic_core import PydanticCustomError

from ..clock import offset_out_of_range
from ..errors import PayloadRejected
from .json_reading import TOO_DEEP, load_json, parser_problem, read_object

if TYPE_CHECKING:
    from pydantic_core import SchemaValidator

__all__ = [
    "LAST_UPDATED_RANGE",
    "MAX_DROP_BYTES",
    "MAX_PROBLEMS",
    "MISSING_SECTION",
    "MORE_PROBLEMS",
    "check_last_updated",
    "check_payload",
    "check_sections",
    "judge",
    "load_json",  # json_reading's, here for the readers of versions that import it from here
    "read_payload",
]

MAX_DROP_BYTES = 256 << 20
"""The largest drop there can be, in bytes (256 MiB): ``--max-bytes`` goes up to this and
no further, as a drop is read into memory and parsed whole.

Versions are drops stored byte for byte (``restore`` and ``adopt`` pass the same gate),
so no version is larger either: every reader of a version reads at most this many bytes
and one more (:class:`~ingester.errors.VersionTooLarge`), and a larger file in the
history is damaged, never read whole.
"""

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

    obj, text = read_object(data, max_bytes)
    problems: list[dict[str, Any]] = []
    try:
        # JSON mode so that strict typing still reads ISO strings as datetimes.
        return validate(text)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        for err in errors:
            if err["type"] == "json_invalid":  # what Python's parser let through
                raise PayloadRejected(parser_problem(str(err["msg"]))) from None
        found = [err for err in errors if err["type"] != MISSING_SECTION]
        del errors
    except RecursionError:
        raise PayloadRejected(TOO_DEEP) from None
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
