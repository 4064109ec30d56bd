"""The payload a scraper drops: ``ConsoleUsageDataSync``, and how bytes are judged.

``judge_payload`` is the one gate every drop passes: it turns raw bytes into a validated
model or a :class:`PayloadRejected` whose ``errors`` name each failing field. It never
raises anything else, whatever the bytes hold (binary, BOMs, NaN, 200,000 brackets).

The words are for the scraper's author, who reads them in ``submit``'s refusal, the
rejected drop's reason file, the log and an HTTP 400: every problem on its own as
``field: what is wrong`` (a common misspelling of ``lastUpdated`` is named as such),
all of them at once, none hidden behind another.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .errors import PayloadRejected

__all__ = [
    "LAST_UPDATED_RANGE",
    "MAX_NESTING",
    "ConsoleUsageDataSync",
    "PayloadRejected",
    "UsageWindow",
    "WeeklyLimits",
    "judge_payload",
]

# A JSON number from 0 to 100. Strict: "40" and true are refused, as the original endpoint did.
Percentage = Annotated[float, Field(strict=True, ge=0, le=100)]
NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]
_ISO_WITH_OFFSET = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})\Z", re.ASCII
)

MAX_NESTING = 128
"""Deepest nesting of objects and arrays a drop may have (the payload itself needs 3)."""

LAST_UPDATED_RANGE = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC))
"""``lastUpdated`` must fall in ``[start, end)`` once converted to UTC.

A date-time can be valid with its offset and still not exist in UTC
(``0001-01-01T00:00:00+01:00``); every reader converts to UTC and computes ages, so the
gate admits only times that convert, and only in a window a real snapshot can have.
"""

_TOO_DEEP = f"JSON nested deeper than {MAX_NESTING} levels"


class _Open(BaseModel):
    """Unknown fields are allowed at every level and kept: a scraper may add some."""

    model_config = ConfigDict(extra="allow", strict=True)


class UsageWindow(_Open):
    """One usage window: when it resets and how much of it is used."""

    resetsIn: NonEmptyStr
    percentageUsed: Percentage


class WeeklyLimits(_Open):
    """The two weekly windows; both are required when the section is present."""

    allModels: UsageWindow
    sonnetOnly: UsageWindow


class ConsoleUsageDataSync(_Open):
    """The payload of the original sync endpoint."""

    currentSession: UsageWindow | None = None
    weeklyLimits: WeeklyLimits | None = None
    lastUpdated: AwareDatetime
    isPartial: StrictBool | None = None
    extractionErrors: dict[str, StrictStr] | None = None

    @field_validator("lastUpdated", mode="before")
    @classmethod
    def _iso_with_offset(cls, value: Any) -> Any:
        # pydantic would also read "0" or "1700000000" as Unix times, and "+0100" offsets.
        if not isinstance(value, str):
            raise PydanticCustomError("datetime_type", _NOT_A_STRING)
        if not _ISO_WITH_OFFSET.match(value):
            kind, words = _misspelt_date_time(value)
            raise PydanticCustomError(kind, words)
        try:
            stamp = datetime.fromisoformat(value.upper())
        except ValueError as exc:
            raise PydanticCustomError(
                "datetime_invalid",
                "is not a date and time that exist ({reason})",
                {"reason": str(exc)},
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

    @model_validator(mode="after")
    def _at_least_one_section(self) -> ConsoleUsageDataSync:
        if self.currentSession is None and self.weeklyLimits is None:
            raise PydanticCustomError(MISSING_SECTION, _NO_SECTION)
        return self


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


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


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


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(payload)"


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


def _model_problems(obj: dict[str, Any], text: str) -> list[dict[str, Any]]:
    """Every problem with a JSON object as a payload, each on its own; ``[]`` if none.

    pydantic stops at field errors before it runs the model's own rule (a section is
    required), so that rule is judged here too, on the parsed object: a bad
    ``lastUpdated`` does not hide a missing section.
    """
    problems: list[dict[str, Any]] = []
    try:
        # JSON mode so that strict typing still reads ISO strings as datetimes.
        ConsoleUsageDataSync.model_validate_json(text)
    except ValidationError as exc:
        problems = [
            {"field": _field_path(err["loc"]), "type": err["type"], "msg": _author_words(err)}
            for err in exc.errors(include_url=False, include_input=False)
            if err["type"] != MISSING_SECTION
        ]
    if all(obj.get(section) is None for section in ("currentSession", "weeklyLimits")):
        problems.append({"field": "(payload)", "type": MISSING_SECTION, "msg": _NO_SECTION})
    return problems


def _summary(problems: list[dict[str, Any]]) -> str:
    """One line: ``field: words`` per problem (the words alone for the whole payload)."""
    return "; ".join(
        p["msg"] if p["field"] == "(payload)" else f"{p['field']}: {p['msg']}" for p in problems
    )


def judge_payload(data: bytes, *, max_bytes: int | None = None) -> ConsoleUsageDataSync:
    """Validate ``data`` as a drop; raise :class:`PayloadRejected` naming what is wrong."""
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadRejected(f"drop is over the limit of {max_bytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadRejected(f"not valid UTF-8 (byte {exc.start})") from None
    if text.startswith("\ufeff"):
        raise PayloadRejected("starts with a byte order mark; UTF-8 without BOM is required")
    if not text.strip():
        what = "no bytes" if not data else "only whitespace"
        raise PayloadRejected(f"not JSON: empty ({what}); a payload is one JSON object")
    try:
        # parse_constant refuses NaN/Infinity, which Python's json accepts by default.
        obj = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise PayloadRejected(_TOO_DEEP) from None
    except ValueError as exc:
        raise PayloadRejected(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PayloadRejected(f"top level is a JSON {type(obj).__name__}, not an object")
    # One limit, checked here, so the model's parser (with a recursion limit of its own)
    # never sees a payload deep enough to give a second wording for the same fault.
    if _depth_over(obj, MAX_NESTING):
        raise PayloadRejected(_TOO_DEEP)
    try:
        problems = _model_problems(obj, text)
        if not problems:
            return ConsoleUsageDataSync.model_validate_json(text)
    except RecursionError:
        raise PayloadRejected(_TOO_DEEP) from None
    raise PayloadRejected(_summary(problems), problems, kind="schema")
