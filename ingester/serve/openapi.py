"""The OpenAPI 3.1 description of ``ingester serve`` (served at ``/openapi.json``).

The same document is committed as ``docs/openapi.json``; regenerate it with
``python -m ingester.serve.openapi > docs/openapi.json`` (a test checks they match).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from ..payload.schema import payload_schema
from .routes import (
    API_PATH,
    FORECAST_PATH,
    HEALTH_PATH,
    METRICS_PATH,
    OPENAPI_PATH,
    SERIES_PATH,
    TRIGGER_PATH,
    VERSION_PATH,
    VERSIONS_PATH,
)

__all__ = ["openapi_bytes", "openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


_CACHE_HEADERS = {
    "ETag": {
        "description": "Weak tag naming the served version; changes exactly when it does.",
        "schema": {"type": "string"},
    },
    "Cache-Control": {
        "description": "max-age=60 under 5 min of age, max-age=30 under 10 min, else no-cache.",
        "schema": {"type": "string"},
    },
    "Last-Modified": {
        "description": "The payload's lastUpdated as an HTTP date.",
        "schema": {"type": "string"},
    },
}

_IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
}

_SERIES_HEADERS = {
    "ETag": {
        "description": "Weak tag naming the versions selected; changes exactly when they do.",
        "schema": {"type": "string"},
    },
    "Cache-Control": {"description": "no-cache", "schema": {"type": "string"}},
}

# The fields every answer of a POST endpoint has, as the original server's clients read them.
_ANSWER = {
    "success": {"type": "boolean"},
    "message": {"type": "string"},
    "timestamp": {"type": "string"},
}

_SCHEMAS: dict[str, Any] = {
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
            "versionInfo": _ref("VersionInfo"),
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
        "required": ["asOf", "consoleTimeZone", "limits"],
        "properties": {
            "asOf": {
                "type": ["string", "null"],
                "description": "The newest lastUpdated (ISO-8601 UTC); null when no version "
                "holds a readable snapshot",
            },
            "consoleTimeZone": {
                "type": "string",
                "description": "The IANA zone absolute resetsIn wordings were read in",
            },
            "limits": {"type": "array", "items": _ref("LimitForecast")},
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
                "than 10 minutes",
            },
            "exhaustsAt": {
                "type": ["string", "null"],
                "description": "when 100 % is reached at this rate (already reached: when it "
                "was); null without a rising rate",
            },
            "beforeReset": {
                "type": ["boolean", "null"],
                "description": "whether exhaustsAt comes before resetsAt; null when either "
                "is unknown",
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
                },
            },
        },
    },
}


def openapi_document() -> dict[str, Any]:
    """The description as a dict."""
    unavailable = _json_body("Error", "The history cannot be read")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "console-usage-ingester",
            "version": "1",
            "description": "Read the versioned history of console usage snapshots; POST new "
            "snapshots into the spool.",
        },
        "paths": {
            API_PATH: {
                "get": {
                    "operationId": "getConsoleUsage",
                    "summary": "The newest version, or one chosen by version or timestamp",
                    "parameters": [
                        {
                            "name": "version",
                            "in": "query",
                            "required": False,
                            "description": "N >= 1 counts from the oldest, N <= -1 from the "
                            "newest (-1 = newest); 0 or out of range: 400. Empty: not given.",
                            "schema": {"type": "integer"},
                        },
                        {
                            "name": "timestamp",
                            "in": "query",
                            "required": False,
                            "description": "ISO-8601 instant (UTC without an offset): the "
                            "version ingested nearest to it. Wins over version (as the "
                            "original); empty: not given.",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "If-None-Match",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "If-Modified-Since",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {
                            **_json_body("ConsoleUsage", "The version's payload and freshness"),
                            "headers": _CACHE_HEADERS,
                        },
                        "304": {"description": "Not modified", "headers": _CACHE_HEADERS},
                        "400": _json_body("Error", "Bad version (validRange) or timestamp"),
                        "404": _json_body("NoVersions", "No versions stored yet"),
                        "502": _json_body("Error", "The stored version is not a JSON object"),
                        "503": unavailable,
                    },
                },
                "post": {
                    "operationId": "postConsoleUsage",
                    "summary": "Hand a snapshot to the spool (202 once it is durable there)",
                    "security": [{"apiKey": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ConsoleUsageDataSync")}},
                    },
                    "responses": {
                        "202": _json_body(
                            "PostResult",
                            "Durable in the spool (waitingForWatcher says whether "
                            "a watcher will store it)",
                        ),
                        "400": _json_body("PostResult", "Invalid payload, with errors"),
                        "401": _json_body("PostResult", "Missing or wrong X-API-Key"),
                        "408": _json_body("PostResult", "Body too slow"),
                        "413": _json_body("PostResult", "Body over --max-bytes"),
                        "415": _json_body(
                            "PostResult",
                            "Content-Type is not JSON, or the body is compressed "
                            "(Content-Encoding)",
                        ),
                        "503": _json_body(
                            "PostResult",
                            "The spool cannot be written, or (--require-watcher) no watcher "
                            "runs; nothing was dropped",
                        ),
                    },
                },
            },
            TRIGGER_PATH: {
                "post": {
                    "operationId": "triggerRefresh",
                    "summary": "Run the configured --trigger-command now (one run at a time; "
                    "a request during a run joins it)",
                    "security": [{"apiKey": []}],
                    "responses": {
                        "200": _json_body("TriggerResult", "The command exited 0"),
                        "401": _json_body("PostResult", "Missing or wrong X-API-Key"),
                        "500": _json_body(
                            "TriggerResult",
                            "The command failed, was killed, timed out or could not start",
                        ),
                        "501": _json_body("PostResult", "No trigger command is configured"),
                    },
                },
            },
            VERSIONS_PATH: {
                "get": {
                    "operationId": "listVersions",
                    "summary": "Versions, newest first, a page at a time",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                        {
                            "name": "before",
                            "in": "query",
                            "required": False,
                            "description": "A version name: only older versions",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "description": "A version name: only newer versions",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": _json_body("VersionsPage", "One page"),
                        "400": _json_body("Error", "Bad limit or cursor"),
                        "503": unavailable,
                    },
                },
            },
            VERSION_PATH: {
                "get": {
                    "operationId": "getVersion",
                    "summary": "A version's bytes, exactly as stored (immutable)",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The stored bytes",
                            "content": {"application/json": {"schema": {}}},
                        },
                        "304": {"description": "Not modified"},
                        "404": _json_body("Error", "No such version"),
                        "503": unavailable,
                    },
                },
            },
            SERIES_PATH: {
                "get": {
                    "operationId": "getSeries",
                    "summary": "The usage page's series: one export row per version ingested "
                    "within [since, until]",
                    "parameters": [
                        {
                            "name": bound,
                            "in": "query",
                            "required": False,
                            "description": f"ISO-8601 date-time (UTC without an offset): {words}",
                            "schema": {"type": "string"},
                        }
                        for bound, words in (
                            ("since", "only versions ingested (or observed) at or after it"),
                            ("until", "only versions ingested (or observed) at or before it"),
                        )
                    ]
                    + [
                        {
                            "name": "by",
                            "in": "query",
                            "required": False,
                            "description": "ingestedAt (the default): since and until select "
                            "by ingest time, rows in storage order; lastUpdated: by the time "
                            "of the observation, rows in that order",
                            "schema": {"enum": ["ingestedAt", "lastUpdated"]},
                        },
                        _IF_NONE_MATCH,
                    ],
                    "responses": {
                        "200": {
                            **_json_body("Series", "The rows"),
                            "headers": _SERIES_HEADERS,
                        },
                        "304": {
                            "description": "Not modified: the same versions are selected",
                            "headers": _SERIES_HEADERS,
                        },
                        "400": _json_body(
                            "Error",
                            "since or until is not a time (InvalidTime), or by is "
                            "unknown (InvalidBy)",
                        ),
                        "503": unavailable,
                    },
                },
            },
            FORECAST_PATH: {
                "get": {
                    "operationId": "getForecast",
                    "summary": "Each usage limit's burn rate, reset time and projected run-out",
                    "parameters": [_IF_NONE_MATCH],
                    "responses": {
                        "200": {
                            **_json_body("Forecast", "The forecast"),
                            "headers": _SERIES_HEADERS,
                        },
                        "304": {
                            "description": "Not modified: the same versions",
                            "headers": _SERIES_HEADERS,
                        },
                        "404": _json_body("NoVersions", "No versions stored yet"),
                        "503": unavailable,
                    },
                },
            },
            HEALTH_PATH: {
                "get": {
                    "operationId": "getHealth",
                    "summary": "healthy / degraded (> 10 min, or drops waiting with no "
                    "watcher) / unhealthy (> 30 min, none, unreadable, or drops waiting over "
                    "10 min with no watcher)",
                    "responses": {
                        "200": _json_body("Health", "healthy or degraded"),
                        "503": _json_body("Health", "unhealthy"),
                    },
                },
            },
            METRICS_PATH: {
                "get": {
                    "operationId": "getMetrics",
                    "summary": "Prometheus text format",
                    "responses": {
                        "200": {
                            "description": "Metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                },
            },
            OPENAPI_PATH: {
                "get": {
                    "operationId": "getOpenapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                },
            },
        },
        "components": {
            "schemas": {**_payload_schemas(), **_SCHEMAS},
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    }


def _payload_schemas() -> dict[str, Any]:
    """The payload's schemas as ``ingester schema`` gives them (generated from the model,
    the one judge of a drop), its ``$defs`` made components of this document."""
    schema = payload_schema()
    schema.pop("$schema", None)
    defs = schema.pop("$defs", {})
    text = json.dumps({"ConsoleUsageDataSync": schema, **defs})
    moved: dict[str, Any] = json.loads(text.replace('"#/$defs/', '"#/components/schemas/'))
    return moved


@functools.cache
def openapi_bytes() -> bytes:
    """The description as the bytes served (indented JSON, a final newline)."""
    return (json.dumps(openapi_document(), indent=2) + "\n").encode()


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.stdout.write(openapi_bytes().decode())
