"""The payload contract as a JSON Schema, generated from the model: ``ingester schema``.

:class:`~ingester.model.ConsoleUsageDataSync` is the one judge of a drop; its schema is
taken from it by pydantic, so the published contract cannot drift from what the
watcher accepts. Two rules that live in validators, not in field types, are added
here in schema terms: ``lastUpdated`` must carry an offset (the model's own pattern),
and at least one of ``currentSession`` and ``weeklyLimits`` must be an object.

What no JSON Schema can say, and ``judge_payload`` still refuses: bytes that are not
UTF-8, a byte order mark, ``NaN``/``Infinity``, absurd nesting, a drop over
``--max-bytes``, and a date-time that matches the pattern but does not exist
(``2026-02-30``). ``ingester submit --dry-run FILE`` gives the exact verdict.
"""

from __future__ import annotations

import json
from typing import Any

from .model import _ISO_WITH_OFFSET, ConsoleUsageDataSync

__all__ = ["SCHEMA_DIALECT", "payload_schema", "payload_schema_text"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_RULES = (
    "A drop's payload, as 'ingester watch' and 'ingester submit' accept it. Rules: "
    "lastUpdated is required, an ISO 8601 date-time with an offset (Z or +hh:mm); at least "
    "one of currentSession and weeklyLimits is present; weeklyLimits needs both allModels "
    "and sonnetOnly; every window has a non-empty resetsIn string and a percentageUsed JSON "
    "number from 0 to 100 (not a string, not a boolean); isPartial is a boolean; "
    "extractionErrors maps names to strings. Unknown fields are allowed at every level and "
    "kept. The file is UTF-8 JSON without a byte order mark, NaN or Infinity."
)


def _ecma_pattern() -> str:
    # The model's regex, anchored the way JSON Schema (ECMA-262) spells it.
    return "^" + _ISO_WITH_OFFSET.pattern.replace(r"\Z", "$")


def payload_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``ConsoleUsageDataSync`` as a dict."""
    generated = ConsoleUsageDataSync.model_json_schema()
    generated["properties"]["lastUpdated"]["pattern"] = _ecma_pattern()
    generated["description"] = _RULES
    generated["anyOf"] = [
        {"required": [section], "properties": {section: {"type": "object"}}}
        for section in ("currentSession", "weeklyLimits")
    ]
    return {"$schema": SCHEMA_DIALECT, **generated}


def payload_schema_text() -> str:
    """The schema as the committed file spells it: 2-space indent, a final newline."""
    return json.dumps(payload_schema(), indent=2) + "\n"
