"""The payload a scraper drops: ``ConsoleUsageDataSync``, and how bytes are judged.

``judge_payload`` is the one gate every drop passes: it turns raw bytes into a validated
model or a :class:`PayloadRejected` whose ``errors`` name each failing field. It never
raises anything else, whatever the bytes hold (binary, BOMs, NaN, 200,000 brackets).
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
            return value  # the field's own type check names the problem
        if not _ISO_WITH_OFFSET.match(value):
            raise ValueError("must be an ISO 8601 date-time with an offset (Z or +hh:mm)")
        try:
            stamp = datetime.fromisoformat(value.upper())
        except ValueError as exc:
            raise ValueError(f"not a valid date-time: {exc}") from None
        try:
            utc = stamp.astimezone(UTC)
        except OverflowError:
            raise ValueError("not a date-time that exists in UTC") from None
        start, end = LAST_UPDATED_RANGE
        if not start <= utc < end:
            raise ValueError(f"must be from {start.year} up to (not including) {end.year} in UTC")
        return stamp

    @model_validator(mode="after")
    def _at_least_one_section(self) -> ConsoleUsageDataSync:
        if self.currentSession is None and self.weeklyLimits is None:
            raise ValueError("at least one of currentSession and weeklyLimits is required")
        return self


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
        # JSON mode so that strict typing still reads ISO strings as datetimes.
        return ConsoleUsageDataSync.model_validate_json(text)
    except ValidationError as exc:
        errors: list[dict[str, Any]] = [
            {"field": _field_path(err["loc"]), "type": err["type"], "msg": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        summary = "; ".join(f"{e['field']}: {e['msg']}" for e in errors)
        raise PayloadRejected(f"does not match ConsoleUsageDataSync: {summary}", errors) from None
    except RecursionError:
        raise PayloadRejected(_TOO_DEEP) from None
