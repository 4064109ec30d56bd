"""The OpenAPI 3.1 description of ``ingester serve`` (served at ``/openapi.json``).

The same document is committed as ``docs/openapi.json``; regenerate it with
``python -m ingester.serve.openapi > docs/openapi.json`` (a test checks they match).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from .openapi_schemas import SCHEMAS, payload_schemas, ref
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


def _json_body(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}


_CACHE_HEADERS = {
    "ETag": {
        "description": "Strong tag, the digest of the body served: the same for the same "
        "bytes, new whenever any of them changes (another version, its versionInfo, its "
        "ageMinutes).",
        "schema": {"type": "string"},
    },
    "Cache-Control": {
        "description": "max-age=60 under 5 min of age, max-age=30 under 10 min, else no-cache.",
        "schema": {"type": "string"},
    },
    "Last-Modified": {
        "description": "The payload's lastUpdated as an HTTP date (no validator: the "
        "answer's age and versionInfo move on after it).",
        "schema": {"type": "string"},
    },
}

_IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
}

_VERSION_HEADERS = {
    "ETag": {
        "description": "Strong tag, the digest of the bytes served.",
        "schema": {"type": "string"},
    },
    "Cache-Control": {
        "description": "public, max-age=31536000, immutable; no-cache for bytes that are "
        "no JSON object (damaged: they may be put right from a backup)",
        "schema": {"type": "string"},
    },
}

_SERIES_HEADERS = {
    "ETag": {
        "description": "Weak tag naming the versions the answer came from, and those of "
        "them left out as unreadable or damaged: the same request with it is a 304 while "
        "they stay so.",
        "schema": {"type": "string"},
    },
    "Cache-Control": {"description": "no-cache", "schema": {"type": "string"}},
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
                            "newest (-1 = newest); 0 or out of range: 400. Empty: not given; "
                            "given twice with different values: 400.",
                            "schema": {"type": "integer"},
                        },
                        {
                            "name": "timestamp",
                            "in": "query",
                            "required": False,
                            "description": "ISO-8601 instant (UTC without an offset): the "
                            "version ingested nearest to it. Wins over version (as the "
                            "original); empty: not given; given twice with different "
                            "values: 400.",
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
                            "description": "Never a 304 on its own: the answer's age and "
                            "versionInfo move on after lastUpdated. Send If-None-Match.",
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
                        "502": _json_body(
                            "Error",
                            "The stored version is not a JSON object, or is larger than any "
                            "drop (CorruptVersion); the message says what is wrong with it, "
                            "as ingester show does",
                        ),
                        "503": _json_body(
                            "Error",
                            "The history cannot be read; or the chosen version was deleted by "
                            "retention while being read (VersionGone, with Retry-After)",
                        ),
                    },
                },
                "post": {
                    "operationId": "postConsoleUsage",
                    "summary": "Hand a snapshot to the spool (202 once it is durable there)",
                    "security": [{"apiKey": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("ConsoleUsageDataSync")}},
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
                            "The spool cannot be written, (--require-watcher) no watcher "
                            "runs, or the server serves an object store read only (--from); "
                            "nothing was dropped",
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
                        },
                        _IF_NONE_MATCH,
                    ],
                    "responses": {
                        "200": {
                            "description": "The stored bytes",
                            "content": {"application/json": {"schema": {}}},
                            "headers": _VERSION_HEADERS,
                        },
                        "304": {"description": "Not modified", "headers": _VERSION_HEADERS},
                        "404": _json_body("Error", "No such version"),
                        "502": _json_body(
                            "Error",
                            "The file under the version's name is larger than any drop "
                            "(CorruptVersion): refused, never sent in part",
                        ),
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
                            "since or until is not a time (InvalidTime), since is after "
                            "until (InvalidRange), or by is unknown (InvalidBy)",
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
            "schemas": {**payload_schemas(), **SCHEMAS},
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    }


@functools.cache
def openapi_bytes() -> bytes:
    """The description as the bytes served (indented JSON, a final newline)."""
    return (json.dumps(openapi_document(), indent=2) + "\n").encode()


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.stdout.write(openapi_bytes().decode())
