"""Every HTTP path ``serve`` answers, spelled once.

The routes (:mod:`ingester.serve.app`, the page, the forecast), the request metric's
route label and the OpenAPI description all take their paths from here, so they cannot
drift apart. The first four are the original server's, which its clients call.
"""

from __future__ import annotations

__all__ = [
    "API_PATH",
    "FORECAST_PATH",
    "HEALTH_PATH",
    "METRICS_PATH",
    "OPENAPI_PATH",
    "SERIES_PATH",
    "TRIGGER_PATH",
    "VERSIONS_PATH",
    "VERSION_PATH",
]

API_PATH = "/api/claude/console-usage"
"""GET the newest (or a chosen) version; POST a snapshot into the spool."""
TRIGGER_PATH = f"{API_PATH}/trigger"
"""POST: run the configured refresh command."""
VERSIONS_PATH = f"{API_PATH}/versions"
"""GET the list of versions, newest first."""
VERSION_PATH = f"{VERSIONS_PATH}/{{name}}"
"""GET one version's bytes by its file name (a route template)."""
HEALTH_PATH = "/api/health"
SERIES_PATH = f"{API_PATH}/series"
"""GET one usage window's readings over time (the page's chart)."""
FORECAST_PATH = f"{API_PATH}/forecast"
METRICS_PATH = "/metrics"
OPENAPI_PATH = "/openapi.json"
