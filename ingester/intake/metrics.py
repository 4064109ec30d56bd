"""The watcher's own metrics, served in the Prometheus text format (``watch --metrics``).

``ingester serve`` exports what can be read from the history and the spool; what only
the running watcher knows (how many drops it took or turned away, how long each took
to become durable, whether its stores fail) is exported by the watcher itself, on a
small HTTP server of ``prometheus-client`` bound to the address the operator gives.
With no address nothing listens, and :data:`NO_METRICS` takes the calls for free.

The loop calls the hooks from its own thread; the HTTP server reads the values from
its threads (``prometheus-client`` metrics are thread-safe, and the gauges read by a
callback read one integer or flag of the loop's, which needs no lock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

__all__ = [
    "NO_METRICS",
    "REJECT_KINDS",
    "REJECT_LABELS",
    "UPKEEP_STEPS",
    "Metrics",
    "NoMetrics",
    "WatchMetrics",
    "reject_kind",
]

# Ingest latency buckets, seconds: a drop usually takes a millisecond or two (one fsync
# of a version, one of the history); slow disks and retries stretch it to seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# Rejection reasons are free text naming the drop's own bytes; the label takes a kind
# from this fixed list (first matching prefix or phrase wins), so the series stay few.
# A payload that breaks the model's rules comes with its kind ("schema") instead: its
# words are the author's field-by-field problems, with no fixed phrase to match.
REJECT_KINDS: tuple[tuple[str, str], ...] = (
    ("cannot read", "unreadable"),
    ("not a regular file", "not_a_file"),
    ("over the limit", "too_large"),
    ("not valid UTF-8", "not_utf8"),
    ("byte order mark", "not_utf8"),
    ("not JSON", "not_json"),
    ("top level is", "not_json"),
    ("nested deeper", "not_json"),
)
REJECT_LABELS: tuple[str, ...] = (*dict.fromkeys(k for _, k in REJECT_KINDS), "schema", "other")
"""Every value the ``reason`` label takes."""

UPKEEP_STEPS: tuple[str, ...] = ("latest_link", "metadata")
"""Every value the upkeep failures' ``step`` label takes: the latest link's refresh, and
the round that finishes claims left, applies retention and writes ``_metadata.json``."""


def reject_kind(reason: str, kind: str | None = None) -> str:
    """The bounded label for a rejection: ``kind`` when it is one of :data:`REJECT_LABELS`,
    else the kind of the first phrase of ``reason`` found, else ``other``."""
    if kind is not None and kind in REJECT_LABELS:
        return kind
    for phrase, kind in REJECT_KINDS:
        if phrase in reason:
            return kind
    return "other"


class Metrics(Protocol):
    """What the watcher loop calls; :class:`WatchMetrics` and :class:`NoMetrics` answer."""

    def ingested(self, seconds: float) -> None: ...
    def rejected(self, reason: str, kind: str | None = None) -> None: ...
    def failed(self, cause: str) -> None: ...
    def upkeep_failed(self, step: str) -> None: ...
    def watch(self, backlog: Callable[[], int], holding: Callable[[], bool]) -> None: ...


class NoMetrics:
    """Metrics off (the default): every hook does nothing."""

    def ingested(self, seconds: float) -> None:
        """Ignored."""

    def rejected(self, reason: str, kind: str | None = None) -> None:
        """Ignored."""

    def failed(self, cause: str) -> None:
        """Ignored."""

    def upkeep_failed(self, step: str) -> None:
        """Ignored."""

    def watch(self, backlog: Callable[[], int], holding: Callable[[], bool]) -> None:
        """Ignored."""


NO_METRICS = NoMetrics()


class WatchMetrics:
    """The watcher's counters, latency histogram and gauges, on a private registry."""

    def __init__(self) -> None:
        # Imported here: a watcher without --metrics does not pay for loading it.
        from prometheus_client import Counter, Gauge, Histogram

        from ..runtime.metrics import MetricsRegistry

        # No "*_created" twin per series, in this registry only (see ingester.runtime.metrics).
        self.registry = MetricsRegistry(auto_describe=True)
        r = self.registry
        self._ingested = Counter(
            "ingester_watch_drops_ingested",
            "Drops stored as a durable version by this watcher",
            registry=r,
        )
        self._rejected = Counter(
            "ingester_watch_drops_rejected",
            "Drops moved to the rejected folder, by kind of reason",
            ["reason"],
            registry=r,
        )
        for label in REJECT_LABELS:
            self._rejected.labels(label)  # every kind shows from the start, at 0
        self._failures = Counter(
            "ingester_watch_store_failures",
            "Times a drop or the history could not be written (each is retried after a backoff)",
            registry=r,
        )
        self._upkeep_failures = Counter(
            "ingester_watch_upkeep_failures",
            "Times the upkeep beside the drops failed (drops are still stored; each is "
            "retried after a backoff), by step: latest_link (the latest link could not be "
            "refreshed), metadata (claims left, retention or _metadata.json)",
            ["step"],
            registry=r,
        )
        for step in UPKEEP_STEPS:
            self._upkeep_failures.labels(step)  # both show from the start, at 0
        self._latency = Histogram(
            "ingester_watch_ingest_duration_seconds",
            "From taking a drop in hand to its version being durable, seconds",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._last = Gauge(
            "ingester_watch_last_ingest_timestamp_seconds",
            "Unix time of the last drop stored (0 before the first)",
            registry=r,
        )
        self._backlog = Gauge(
            "ingester_watch_backlog_drops",
            "Drops seen in the spool and not yet stored or rejected",
            registry=r,
        )
        self._holding = Gauge(
            "ingester_watch_retention_held",
            "1 while automatic deletions are held back after a wall-clock jump",
            registry=r,
        )

    def start(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the bound port.

        Raises ``OSError`` when the address cannot be bound (in use, not local) and
        ``socket.gaierror`` (an ``OSError``) when the host does not resolve.
        """
        from ..runtime.metrics import start_metrics_server

        return start_metrics_server(self.registry, host, port)

    def ingested(self, seconds: float) -> None:
        """One drop is durable, ``seconds`` after the watcher took it in hand."""
        self._ingested.inc()
        self._latency.observe(max(0.0, seconds))
        self._last.set(time.time())

    def rejected(self, reason: str, kind: str | None = None) -> None:
        """One drop went to the rejected folder for ``reason`` (free text) of ``kind``."""
        self._rejected.labels(reject_kind(reason, kind)).inc()

    def failed(self, cause: str) -> None:
        """A drop or the history could not be written (``cause``: the error's one line);
        the watcher backs off."""
        self._failures.inc()

    def upkeep_failed(self, step: str) -> None:
        """The upkeep's ``step`` (one of :data:`UPKEEP_STEPS`) failed; retried after a
        backoff, while drops go on being stored."""
        self._upkeep_failures.labels(step).inc()

    def watch(self, backlog: Callable[[], int], holding: Callable[[], bool]) -> None:
        """Read the backlog size and the retention hold from the loop at each scrape."""
        self._backlog.set_function(lambda: float(backlog()))
        self._holding.set_function(lambda: 1.0 if holding() else 0.0)
