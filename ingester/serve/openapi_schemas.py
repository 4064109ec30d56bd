"""The OpenAPI description's components: the schema of each body ``serve`` takes or gives.

:data:`SCHEMAS` are the answers' and errors' schemas; :func:`payload_schemas` gives the
payload's as ``ingester schema`` does (generated from the model, the one judge of a
drop), its ``$defs`` made components. :func:`ref` names a component. The paths that use
them are :mod:`ingester.serve.openapi`'s.
"""

from __future__ import annotations

import json
from typing import Any

from ..payload.schema import payload_schema

__all__ = ["SCHEMAS", "payload_schemas", "ref"]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# The fields every answer of a POST endpoint has, as the original server's clients read them.
_ANSWER = {
    "success": {"type": "boolean"},
    "message": {"type": "string"},
    "timestamp": {"type": "string"},
}


SCHEMAS: dict[str, Any] = {
    "VersionInfo": {
        "type": "object",
        "required": ["current", "total", "timestamp", "filename"],
        "properties": {
            "current": {"type": "integer", "minimum": 1, "description": "1-based, oldest = 1"},
            "total": {"type": "integer", "minimum": 1},
            "timestamp": {"type": "string", "description": "Ingest time, ISO-8601 UTC"},
            "filename": {"type": "string"},
        },
    },
    "ConsoleUsage": {
        "type": "object",
        "description": "The stored payload's fields at the top level, plus these four.",
        "required": ["isStale", "ageMinutes", "source", "versionInfo"],
        "properties": {
            "isStale": {"type": "boolean", "description": "lastUpdated older than 10 min"},
            "ageMinutes": {
                "type": ["integer", "null"],
                "description": "Whole minutes since lastUpdated",
            },
            "source": {"const": "ec2-sync"},
            "versionInfo": ref("VersionInfo"),
            "lastUpdated": {"type": "string"},
        },
    },
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "validRange": {"type": "string", "description": "for InvalidVersion"},
            "example": {
                "type": "string",
                "description": "for InvalidTimestamp, InvalidTime, InvalidBy",
            },
        },
    },
    "NoVersions": {
        "type": "object",
        "required": ["error", "message", "versionsAvailable"],
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "versionsAvailable": {"const": 0},
        },
    },
    "PostResult": {
        "type": "object",
        "required": ["success", "message", "timestamp"],
        "properties": {
            **_ANSWER,
            "drop": {"type": "string", "description": "the drop's name in the spool (202)"},
            "waitingForWatcher": {
                "type": "boolean",
                "description": "202: true when no watcher runs, so the drop waits in the "
                "spool until one starts",
            },
            "errors": {
                "type": "array",
                "items": {"type": "object"},
                "description": "every validation problem (400)",
            },
        },
    },
    "TriggerResult": {
        "type": "object",
        "required": ["success", "message", "timestamp"],
        "properties": {
            **_ANSWER,
            "requestId": {
                "type": "string",
                "description": "the run's id (a request that joined a run gets that run's)",
            },
            "joined": {
                "type": "boolean",
                "description": "this request came while a run was under way, and joined it",
            },
        },
    },
    "VersionsPage": {
        "type": "object",
        "required": ["total", "versions", "next"],
        "properties": {
            "total": {"type": "integer", "minimum": 0},
            "versions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "timestamp", "size"],
                    "properties": {
                        "name": {"type": "string"},
                        "timestamp": {"type": "string"},
                        "size": {"type": "integer", "minimum": 0},
                    },
                },
            },
            "next": {
                "type": ["string", "null"],
                "description": "pass as before= for the next (older) page; null at the end",
            },
        },
    },
    "Series": {
        "type": "object",
        "description": "Export rows of the versions ingested within [since, until], oldest "
        "first; each row has one cell per column, in the columns' order.",
        "required": ["columns", "rows", "count", "skipped", "since", "until"],
        "properties": {
            "columns": {"type": "array", "items": {"type": "string"}},
            "rows": {
                "type": "array",
                "items": {
                    "type": "array",
                    "items": {"type": ["string", "number", "boolean", "null"]},
                },
            },
            "count": {"type": "integer", "minimum": 0, "description": "number of rows"},
            "skipped": {
                "type": "array",
                "description": "selected versions that give no row (damaged, unreadable)",
                "items": {
                    "type": "object",
                    "required": ["version", "reason"],
                    "properties": {
                        "version": {"type": "string"},
                        "reason": {"type": "string"},
                    },
                },
            },
            "since": {
                "type": ["string", "null"],
                "description": "the lower bound as read (UTC), null when open",
            },
            "until": {
                "type": ["string", "null"],
                "description": "the upper bound as read (UTC), null when open",
            },
            "by": {"enum": ["ingestedAt", "lastUpdated"]},
        },
    },
    "Forecast": {
        "type": "object",
        "description": "Each usage limit read in the last 24 hours (one the newest snapshot "
        "lacks is held at its last reading until its reset time): its burn rate over the "
        "current window (since the last reset, its last 24 hours) and when it reaches 100 %.",
        "required": ["asOf", "version", "notLatest", "consoleTimeZone", "limits"],
        "properties": {
            "asOf": {
                "type": ["string", "null"],
                "description": "The newest snapshot's lastUpdated (ISO-8601 UTC; a lastUpdated "
                "counts as no later than when its snapshot was stored); null when no version "
                "holds a readable snapshot",
            },
            "version": {
                "type": ["string", "null"],
                "description": "The name of the version whose snapshot asOf is; null with asOf",
            },
            "notLatest": {
                "type": ["string", "null"],
                "description": "Why that is not the latest version, the one the data's own "
                "answer shows (a snapshot sent late, or the latest left out: damaged, "
                "unreadable, dated over 1 h after it was stored); null when it is",
            },
            "consoleTimeZone": {
                "type": "string",
                "description": "The IANA zone absolute resetsIn wordings were read in",
            },
            "limits": {"type": "array", "items": ref("LimitForecast")},
        },
    },
    "LimitForecast": {
        "type": "object",
        "required": [
            "limit",
            "percentageUsed",
            "resetsIn",
            "resetsAt",
            "ratePerHour",
            "exhaustsAt",
            "beforeReset",
            "basis",
            "observedAt",
            "inNewest",
            "missingReason",
        ],
        "properties": {
            "limit": {
                "type": "string",
                "description": "The window's dotted path in the payload, e.g. "
                "weeklyLimits.allModels",
            },
            "percentageUsed": {
                "type": "number",
                "description": "as in the newest snapshot that read the limit",
            },
            "resetsIn": {"type": ["string", "null"], "description": "as in that snapshot"},
            "resetsAt": {
                "type": ["string", "null"],
                "description": "resetsIn as an instant (ISO-8601 UTC); null when unreadable",
            },
            "ratePerHour": {
                "type": ["number", "null"],
                "description": "percent per hour; null from fewer than 2 snapshots or less "
                "than 10 minutes; at 100 %, the rise to the first reading there (null when "
                "that is the window's first reading in the basis)",
            },
            "exhaustsAt": {
                "type": ["string", "null"],
                "description": "when 100 % is reached at this rate (already reached: when it "
                "was); null without a rising rate, or when that is more than a year ahead",
            },
            "beforeReset": {
                "type": ["boolean", "null"],
                "description": "true when exhaustsAt comes before resetsAt (the earliest "
                "the reset's words allow), false at or after the latest they allow ('2 hr': "
                "2 to 3 hours away); null in between, or when either is unknown (100 % more "
                "than a year ahead, the reset possibly too)",
            },
            "basis": {
                "type": "object",
                "required": ["points", "since"],
                "properties": {
                    "points": {"type": "integer", "minimum": 1},
                    "since": {"type": "string"},
                },
            },
            "observedAt": {
                "type": "string",
                "description": "the lastUpdated of the snapshot the reading comes from "
                "(ISO-8601 UTC): asOf, unless the newest snapshot lacks the limit",
            },
            "inNewest": {
                "type": "boolean",
                "description": "false: the newest snapshot lacks the limit (a partial scrape) "
                "and this is its last reading, held until its reset time or for 24 hours",
            },
            "missingReason": {
                "type": ["string", "null"],
                "description": "why the newest snapshot lacks it (its extractionErrors entry "
                "for the limit where it has one); null when inNewest",
            },
        },
    },
    "Health": {
        "type": "object",
        "description": "The original server's fields (status, timestamp, storage, "
        "latestData) and the numbers behind the verdict.",
        "required": ["status", "reason", "timestamp", "storage", "latestData"],
        "properties": {
            "status": {"enum": ["healthy", "degraded", "unhealthy"]},
            "reason": {"type": "string", "description": "every reason found, worst first"},
            "timestamp": {"type": "string"},
            "storage": {
                "type": "object",
                "required": ["accessible", "versionCount"],
                "properties": {
                    "accessible": {"type": "boolean"},
                    "versionCount": {"type": "integer", "minimum": 0},
                },
            },
            "latestData": {
                "type": "object",
                "description": "The newest stored version, by its ingest time (the "
                "metadata's newestTimestamp), judged by the same thresholds",
                "required": ["ageMinutes", "status", "timestamp"],
                "properties": {
                    "ageMinutes": {"type": ["integer", "null"]},
                    "status": {"enum": ["healthy", "degraded", "unhealthy"]},
                    "timestamp": {"type": ["string", "null"]},
                },
            },
            "versionCount": {"type": "integer", "minimum": 0},
            "latestVersion": {"type": "string"},
            "latestIngestedAt": {"type": "string"},
            "lastUpdated": {"type": "string"},
            "ageSeconds": {"type": "number"},
            "ageMinutes": {"type": "integer", "description": "rounded to the nearest minute"},
            "staleAfterMinutes": {"type": "integer"},
            "unhealthyAfterMinutes": {"type": "integer"},
            "spool": {
                "type": "object",
                "properties": {
                    "waiting": {"type": ["integer", "null"]},
                    "oldestWaitingSeconds": {"type": ["number", "null"]},
                },
            },
            "watcher": {
                "type": "object",
                "properties": {
                    "running": {
                        "type": ["boolean", "null"],
                        "description": "null: cannot tell (the lock table is hidden)",
                    },
                    "pid": {"type": ["integer", "null"]},
                    "inProcess": {"type": "boolean", "description": "serve --watch"},
                    "storeFault": {
                        "type": "object",
                        "description": "serve --watch only, while its watcher cannot store "
                        "drops (degraded): since the first failure after the last drop "
                        "stored or set aside, the tries since, and the last one's error "
                        "(one line, at most 1000 characters)",
                        "properties": {
                            "since": {"type": "string"},
                            "failures": {"type": "integer", "minimum": 1},
                            "cause": {"type": "string", "maxLength": 1000},
                        },
                    },
                },
            },
        },
    },
}


def payload_schemas() -> dict[str, Any]:
    """The payload's schemas as ``ingester schema`` gives them (generated from the model,
    the one judge of a drop), its ``$defs`` made components of this document."""
    schema = payload_schema()
    schema.pop("$schema", None)
    defs = schema.pop("$defs", {})
    text = json.dumps({"ConsoleUsageDataSync": schema, **defs})
    moved: dict[str, Any] = json.loads(text.replace('"#/$defs/', '"#/components/schemas/'))
    return moved
