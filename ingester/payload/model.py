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

from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    field_validator,
    model_validator,
)

from ..errors import PayloadRejected
from .gate import (
    ISO_WITH_OFFSET,
    LAST_UPDATED_RANGE,
    MISSING_SECTION,
    check_last_updated,
    check_sections,
    judge,
)
from .json_reading import MAX_NESTING

__all__ = [
    "LAST_UPDATED_RANGE",
    "MAX_NESTING",
    "MISSING_SECTION",
    "ConsoleUsageDataSync",
    "PayloadRejected",
    "UsageWindow",
    "WeeklyLimits",
    "judge_payload",
]

# A JSON number from 0 to 100. Strict: "40" and true are refused, as the original endpoint did.
Percentage = Annotated[float, Field(strict=True, ge=0, le=100)]
NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]
_ISO_WITH_OFFSET = (
    ISO_WITH_OFFSET  # the JSON Schema's pattern (ingester.payload.schema) reads it here
)


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
        return check_last_updated(value)

    @model_validator(mode="after")
    def _at_least_one_section(self) -> ConsoleUsageDataSync:
        check_sections(self.currentSession, self.weeklyLimits)
        return self


def judge_payload(data: bytes, *, max_bytes: int | None = None) -> ConsoleUsageDataSync:
    """Validate ``data`` as a drop; raise :class:`PayloadRejected` naming what is wrong.

    The gate's rules and words (:func:`ingester.payload.gate.judge`), returning the model.
    Raises nothing else, whatever the bytes hold; ``TypeError`` for anything but bytes
    (the rules are about bytes: UTF-8, no byte order mark, the size).
    """
    if not isinstance(data, bytes | bytearray):
        hint = ": encode the text as UTF-8 first" if isinstance(data, str) else ""
        raise TypeError(f"judge_payload takes the payload's bytes, not {type(data).__name__}{hint}")
    return judge(data, max_bytes, ConsoleUsageDataSync.model_validate_json)
