"""The forecast over HTTP: ``GET /api/claude/console-usage/forecast`` and the usage metrics.

:func:`install` adds both to an app of :func:`ingester.serve.app.create_app`:

* the route answers ``{"asOf", "consoleTimeZone", "limits": [{"limit", "percentageUsed",
  "resetsIn", "resetsAt", "ratePerHour", "exhaustsAt", "beforeReset", "basis":
  {"points", "since"}, "observedAt", "inNewest", "missingReason"}]}``
  (:meth:`ingester.usage.forecast.Forecast.to_json`), with a weak
  ``ETag`` naming the versions it came from and those it could not read (a repeated
  request with ``If-None-Match`` is a 304), 404 ``{"error", "message",
  "versionsAvailable": 0}`` without a version to forecast from (none stored, or all
  dated more than a day ahead, which the message says) and 503 when the history cannot
  be read, like the other reads;
* the collector exports, per limit (label ``limit``, the dotted path):
  ``ingester_usage_percent``, ``ingester_usage_resets_timestamp_seconds`` and
  ``ingester_usage_resets_latest_timestamp_seconds`` (the earliest and the latest instant
  the reset's words allow), ``ingester_usage_rate_percent_per_hour`` and
  ``ingester_usage_exhausts_timestamp_seconds``,
  each absent where the forecast has no value, and
  ``ingester_usage_observed_timestamp_seconds`` (when its reading was observed: older
  than the newest snapshot for a limit held through a partial scrape, so the series
  stay put and alerts on them do not resolve and fire again; kept, alone, for a limit
  whose window reset since, as long as the history holds its last reading); and
  ``ingester_usage_resets_unparsable_total``; and ``ingester_usage_limits_left_out``, the
  windows beyond the forecast's cap (:data:`~ingester.usage.forecast.MAX_LIMITS`).

Both read the history through the app's :class:`~ingester.history.index.HistoryIndex`,
so they work the same over a local folder and over an object store (``serve --from``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..history.index import HistoryIndex
from ..json_text import json_bytes
from ..settings.resolved import Settings
from ..usage.forecast import MAX_LIMITS
from ..usage.usage_history import UsageHistory, forecast_json
from .conditional import etag_matches, if_none_match
from .read_faults import HISTORY, ReadFaults
from .routes import FORECAST_PATH

__all__ = ["FORECAST_PATH", "UsageCollector", "install"]


def _json(body: object, status: int, headers: dict[str, str] | None = None) -> Response:
    data = json_bytes(body)
    return Response(data, status_code=status, media_type="application/json", headers=headers)


class _ForecastRoute:
    """The handler, with the body of the last answer kept (it changes with the history)."""

    def __init__(
        self, usage: UsageHistory, clock: Callable[[], datetime], faults: ReadFaults
    ) -> None:
        self.usage = usage
        self.clock = clock
        self.faults = faults
        self._body: tuple[str, bytes] | None = None

    def _held(self) -> int:
        """How many versions the history holds (``OSError`` when it cannot be listed)."""
        return len(self.usage.index.snapshot())

    async def handle(self, request: Request) -> Response:
        now = self.clock()
        try:
            # The answer kept while nothing changed is at hand without a worker thread.
            answer = self.usage.cached(now) or await run_in_threadpool(self.usage.answer, now)
            held = 0 if answer is not None else await run_in_threadpool(self._held)
        except OSError as exc:
            self.faults.failed(request, HISTORY, exc)
            return _json(
                {
                    "error": "HistoryUnavailable",
                    "message": f"the history cannot be read: {exc.strerror or exc}",
                },
                503,
            )
        self.faults.passed(HISTORY)
        if answer is None:
            # Versions held that are all dated more than a day ahead (none is the
            # latest, so none is available to forecast from): said as such, as `ingester
            # forecast` says it, not as an empty history, which the data's own answer and
            # /api/health would contradict.
            message = (
                f"no version to forecast from: the {held} held are dated more than a day "
                "ahead of this server's clock"
                if held
                else "No console usage data has been stored yet"
            )
            return _json({"error": "NotFound", "message": message, "versionsAvailable": 0}, 404)
        headers = {"ETag": answer.tag, "Cache-Control": "no-cache"}
        inm = if_none_match(request)
        if inm is not None and etag_matches(inm, answer.tag):
            return Response(status_code=304, headers=headers)
        cached = self._body
        if cached is None or cached[0] != answer.tag:
            body = forecast_json(answer, self.usage.zone_name)
            cached = (answer.tag, json_bytes(body))
            self._body = cached
        return Response(cached[1], media_type="application/json", headers=headers)


class UsageCollector(Collector):
    """Each limit's forecast as gauges, read at scrape time (cached while nothing changes)."""

    def __init__(self, usage: UsageHistory, clock: Callable[[], datetime]) -> None:
        self.usage = usage
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        """The families, without reading anything: the registry asks at registration."""
        yield self._unparsable()
        yield from self._families().values()
        yield self._left_out()

    def _unparsable(self) -> Metric:
        return CounterMetricFamily(
            "ingester_usage_resets_unparsable",
            "resetsIn texts read that give no reset time (an unknown wording; each version "
            "counted once)",
            self.usage.unparsable,
        )

    def collect(self) -> Iterable[Metric]:
        yield self._unparsable()
        try:
            answer = self.usage.answer(self.clock())
        except OSError:
            return  # ingester_history_readable says so
        if answer is None:
            return
        families = self._families()
        for limit in answer.forecast.limits:
            label = [limit.limit]
            families["percent"].add_metric(label, limit.percentage)
            families["observed"].add_metric(label, limit.observed_at.timestamp())
            if limit.resets_at is not None:
                families["resets"].add_metric(label, limit.resets_at.timestamp())
                latest = limit.resets_at + (limit.resets_within or timedelta(0))
                families["resets_latest"].add_metric(label, latest.timestamp())
            if limit.rate_per_hour is not None:
                families["rate"].add_metric(label, limit.rate_per_hour)
            if limit.exhausts_at is not None:
                families["exhausts"].add_metric(label, limit.exhausts_at.timestamp())
        # A limit whose window reset since its last reading has no value to show, but the
        # scraper still misses it: its reading's time stays, so an alert on how long a
        # limit has gone unread keeps firing instead of resolving at the reset.
        for name, observed_at in answer.forecast.lapsed:
            families["observed"].add_metric([name], observed_at.timestamp())
        yield from families.values()
        yield self._left_out(len(answer.forecast.left_out))

    @staticmethod
    def _left_out(count: int | None = None) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "ingester_usage_limits_left_out",
            f"Usage windows read but left out of these series (at most {MAX_LIMITS} limits "
            "are kept; a payload with more came from no console as it is known)",
            count,
        )

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        return {
            "percent": GaugeMetricFamily(
                "ingester_usage_percent",
                "Percentage used of each usage limit, in the newest snapshot that read it",
                labels=["limit"],
            ),
            "observed": GaugeMetricFamily(
                "ingester_usage_observed_timestamp_seconds",
                "When each limit's reading was observed (its snapshot's lastUpdated, Unix "
                "seconds): older than the newest snapshot when that one lacks the limit",
                labels=["limit"],
            ),
            "resets": GaugeMetricFamily(
                "ingester_usage_resets_timestamp_seconds",
                "When each limit resets (Unix seconds; absent when resetsIn is unreadable)",
                labels=["limit"],
            ),
            "resets_latest": GaugeMetricFamily(
                "ingester_usage_resets_latest_timestamp_seconds",
                "The latest each limit may reset as its resetsIn words allow (Unix seconds; "
                "'2 hr' is 2 to 3 hours away: the reset lies from the resets series to this)",
                labels=["limit"],
            ),
            "rate": GaugeMetricFamily(
                "ingester_usage_rate_percent_per_hour",
                "Burn rate of each limit in its current window (absent without enough data)",
                labels=["limit"],
            ),
            "exhausts": GaugeMetricFamily(
                "ingester_usage_exhausts_timestamp_seconds",
                "When each limit reaches 100 % at its burn rate (Unix seconds; absent when "
                "there is no projection)",
                labels=["limit"],
            ),
        }


def install(
    app: Starlette,
    *,
    index: HistoryIndex,
    settings: Settings,
    registry: CollectorRegistry,
    clock: Callable[[], datetime],
    faults: ReadFaults,
) -> UsageHistory:
    """Add the forecast route to ``app`` and the usage metrics to ``registry``.

    ``index`` is the app's view of the history, ``clock`` its UTC clock (which versions
    count as "future" depends on it), ``faults`` where a read that fails is told.
    """
    zone, name = settings.console_zone()
    usage = UsageHistory(index, zone, name)
    app.router.routes.append(
        Route(FORECAST_PATH, _ForecastRoute(usage, clock, faults).handle, methods=["GET", "HEAD"])
    )
    registry.register(UsageCollector(usage, clock))
    app.state.usage = usage
    return usage
