"""The payload contract as a JSON Schema, generated from the model: ``ingester schema``.

:class:`~ingester.payload.model.ConsoleUsageDataSync` is the one judge of a drop; its schema is
taken from it by pydantic, so the published contract cannot drift from what the
watcher accepts. Two rules that live in validators, not in field types, are added
here in schema terms: ``lastUpdated`` must carry an offset (the model's own pattern),
and at least one of ``currentSession`` and ``weeklyLimits`` must be an object.

``lastUpdated`` is ISO 8601 with an offset, seconds optional, as the model has always
accepted it; so the schema gives no ``format: date-time``, which means RFC 3339 and
would refuse ``2026-11-27T14:05Z`` in a validator that checks formats.

What no JSON Schema can say, and ``judge_payload`` still refuses: bytes that are not
UTF-8, a byte order mark, ``NaN``/``Infinity`` or a number beyond a double's range
(``1e400``, which reads as infinite), absurd nesting, a drop over
``--max-bytes``, and a date-time that matches the pattern but does not exist
(``2026-02-30``). ``ingester submit --dry-run FILE`` gives the exact verdict.
"""

from __future__ import annotations

import json
from typing import Any

from .model import _ISO_WITH_OFFSET, ConsoleUsageDataSync

__all__ = ["SCHEMA_DIALECT", "last_updated_schema", "payload_schema", "payload_schema_text"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_RULES = (
    "A drop's payload, as 'ingester watch' and 'ingester submit' accept it. Rules: "
    "lastUpdated is required, an ISO 8601 date-time with an offset (Z or +hh:mm), seconds "
    "optional; at least "
    "one of currentSession and weeklyLimits is present; weeklyLimits needs both allModels "
    "and sonnetOnly; every window has a non-empty resetsIn string and a percentageUsed JSON "
    "number from 0 to 100 (not a string, not a boolean); isPartial is a boolean; "
    "extractionErrors maps names to strings. Unknown fields are allowed at every level and "
    "kept. The file is UTF-8 JSON without a byte order mark, NaN, Infinity or a number "
    "beyond a double's range (1e400)."
)


_LAST_UPDATED = (
    "ISO 8601 date-time with an offset (Z or +hh:mm); the seconds and their fraction are "
    "optional: 2026-11-27T14:05:00Z, 2026-11-27T14:05Z, 2026-11-27T15:05:00.250+01:00. "
    "It must exist (no 2026-02-30) and fall from 2000 up to (not including) 2200 in UTC."
)


def _ecma_pattern() -> str:
    # The model's regex, anchored the way JSON Schema (ECMA-262) spells it.
    return "^" + _ISO_WITH_OFFSET.pattern.replace(r"\Z", "$")


def last_updated_schema() -> dict[str, Any]:
    """``lastUpdated`` in JSON Schema terms: a string, the model's pattern, the rule in words.

    Not ``"format": "date-time"``: that is RFC 3339, which requires the seconds, while
    the model (and ISO 8601) accepts ``2026-11-27T14:05Z``. The pattern says what is
    accepted; what it cannot say (a date that does not exist, the range) is in words.
    """
    return {"type": "string", "pattern": _ecma_pattern(), "description": _LAST_UPDATED}


def payload_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``ConsoleUsageDataSync`` as a dict."""
    generated = ConsoleUsageDataSync.model_json_schema()
    last_updated = generated["properties"]["lastUpdated"]
    last_updated.pop("format", None)
    last_updated.update(last_updated_schema())
    generated["description"] = _RULES
    generated["anyOf"] = [
        {"required": [section], "properties": {section: {"type": "object"}}}
        for section in ("currentSession", "weeklyLimits")
    ]
    return {"$schema": SCHEMA_DIALECT, **generated}


def payload_schema_text() -> str:
    """The schema as the committed file spells it: 2-space indent, a final newline."""
    return json.dumps(payload_schema(), indent=2) + "\n"
