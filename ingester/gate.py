"""The gate every drop passes: its bytes judged by pydantic, without the model classes.

:func:`check_payload` is what the watcher calls for each drop. It applies the byte rules
(UTF-8 without a BOM, JSON without NaN, nesting at most :data:`MAX_NESTING`), then the
payload's schema with pydantic's own validator (``pydantic_core``), built once, on first
use, from the core schema written out below. That schema is the one pydantic generates
for :class:`ingester.model.ConsoleUsageDataSync`, and the two validators are one gate:
``tests/test_gate.py`` checks that the schemas are equal and, with hypothesis, that
every payload gets the same answer and the same errors from both.

Why two spellings of one schema: building pydantic model classes loads pydantic's
schema generator (about 12 MB of a process that otherwise needs 25), and a watcher
needs the verdict, not the model. :func:`ingester.model.judge_payload` (for callers
that want the model) shares everything here except the last step.

The rules that are ours, not pydantic's, live here once and the model uses them too:
:func:`check_last_updated` and :func:`check_sections`.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .errors import PayloadRejected

if TYPE_CHECKING:
    from pydantic_core import SchemaValidator, ValidationError

__all__ = [
    "LAST_UPDATED_RANGE",
    "MAX_NESTING",
    "check_last_updated",
    "check_payload",
    "check_sections",
    "parse_text",
    "rejection",
]

MAX_NESTING = 128
"""Deepest nesting of objects and arrays a drop may have (the payload itself needs 3)."""

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


def check_last_updated(value: Any) -> Any:
    """``lastUpdated`` before pydantic's own datetime check: our spelling and range rules.

    pydantic alone would also read ``"0"`` or ``"1700000000"`` as Unix times, and
    ``+0100`` offsets. Returns the parsed datetime (non-strings pass through, for the
    field's own type check to name). Raises ``ValueError`` naming the rule broken.
    """
    if not isinstance(value, str):
        return value
    if not ISO_WITH_OFFSET.match(value):
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


def check_sections(current_session: object, weekly_limits: object) -> None:
    """At least one of the two sections: ``ValueError`` when both are missing (or null)."""
    if current_session is None and weekly_limits is None:
        raise ValueError("at least one of currentSession and weeklyLimits is required")


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


def parse_text(data: bytes, max_bytes: int | None = None) -> str:
    """The byte rules: ``data`` as text that holds one JSON object, not too deep.

    Raises :class:`PayloadRejected` naming the rule broken (the schema comes next).
    """
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
    # One limit, checked here, so the schema's parser (with a recursion limit of its own)
    # never sees a payload deep enough to give a second wording for the same fault.
    if _depth_over(obj, MAX_NESTING):
        raise PayloadRejected(_TOO_DEEP)
    return text


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(payload)"


def rejection(exc: ValidationError) -> PayloadRejected:
    """pydantic's errors as one :class:`PayloadRejected`, each failing field named."""
    errors: list[dict[str, Any]] = [
        {"field": _field_path(err["loc"]), "type": err["type"], "msg": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
    summary = "; ".join(f"{e['field']}: {e['msg']}" for e in errors)
    return PayloadRejected(f"does not match ConsoleUsageDataSync: {summary}", errors)


def check_payload(data: bytes, *, max_bytes: int | None = None) -> None:
    """Judge ``data`` as a drop; raise :class:`PayloadRejected` naming what is wrong.

    The same verdict and errors as :func:`ingester.model.judge_payload`, without
    building the model.
    """
    text = parse_text(data, max_bytes)
    from pydantic_core import ValidationError

    try:
        _validator().validate_json(text)
    except ValidationError as exc:
        raise rejection(exc) from None
    except RecursionError:
        raise PayloadRejected(_TOO_DEEP) from None


# -- the schema -----------------------------------------------------------------------------


class UsageWindow:
    """Stands in for :class:`ingester.model.UsageWindow` in the gate's schema.

    pydantic's validator makes an instance of the class a schema names and uses the
    class's name in its messages ("an instance of UsageWindow"); these plain classes
    give it both, without pydantic's model machinery.
    """


class WeeklyLimits:
    """Stands in for :class:`ingester.model.WeeklyLimits` (see :class:`UsageWindow`)."""


class ConsoleUsageDataSync:
    """Stands in for :class:`ingester.model.ConsoleUsageDataSync` (see :class:`UsageWindow`)."""


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
