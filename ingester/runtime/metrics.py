"""How our Prometheus metrics are exposed and named (``serve``'s ``/metrics`` and
``watch --metrics``).

Naming rules, which ``tests/test_metrics_format.py`` checks on real scrapes (with
``promtool check metrics`` among them):

* every name starts with ``ingester_``; units are base units named as a suffix
  (``_seconds``, ``_bytes``); a Unix time ends in ``_timestamp_seconds``;
* a count that only grows is a **counter**, exposed as ``<name>_total``; this holds
  for totals the program reads from elsewhere too (``_metadata.json``'s totals are
  counters, ``ingester_versions_stored_total``);
* a value that goes up and down is a **gauge** and never ends in ``_total``;
* no family name ends in a suffix the exposition formats give a meaning to
  (``_total``, ``_created``, ``_count``, ``_sum``, ``_bucket``, ``_info``) unless it
  is that kind of sample: ``ingester_versions_created`` would read as the creation
  time of ``ingester_versions``;
* no ``_created`` samples: prometheus-client adds one per counter and histogram
  child (the time it was first used), which doubles the series and tells an
  operator nothing (:class:`MetricsRegistry` leaves them out, for its own registry
  only, not process-wide).

``watch --metrics`` serves its registry with :func:`start_metrics_server`:
prometheus-client's WSGI app on the standard library's threaded WSGI server, made fit
for any client that can reach the port: a read deadline per connection (a silent or
trickling client would otherwise hold a thread forever), bounds on connections being
answered at once, in all and per client address, and one log line per client fault,
never the standard library's printed traceback (a client resetting the connection
while an error page is written).
"""

from __future__ import annotations

import io
import logging
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse
from wsgiref.types import WSGIApplication as WSGIApp

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.metrics_core import Metric

from .admission import ConnectionLimits, EventTally, client_key, format_peer, top_clients
from .logs import describe_exception

__all__ = ["MetricsRegistry", "start_metrics_server"]

log = logging.getLogger("ingester.metrics")

# A scrape is one short request from one Prometheus server; these bounds leave room
# for several scrapers and a person with curl, and none for a flood: connections being
# answered at once, in all and per client address (so that one slow client cannot keep
# the scraper out, the rule serve follows too; see ingester.runtime.admission).
REQUEST_TIMEOUT_S = 10
MAX_CONCURRENT = 16
MAX_PER_CLIENT = 4

_WITH_CREATED = frozenset({"counter", "histogram", "summary"})


class MetricsRegistry(CollectorRegistry):
    """A ``CollectorRegistry`` whose exposition leaves out the ``<name>_created`` samples."""

    def collect(self) -> Iterable[Metric]:
        """Every metric of the registered collectors, without ``_created`` samples."""
        for metric in super().collect():
            if metric.type not in _WITH_CREATED:
                yield metric
                continue
            created = metric.name + "_created"
            if not any(s.name == created for s in metric.samples):
                yield metric
                continue
            trimmed = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            trimmed.samples = [s for s in metric.samples if s.name != created]
            yield trimmed


class _LogLine(io.StringIO):
    """The standard library's "stderr" for a request: what it writes there (a
    traceback, when the WSGI app fails) becomes one log line, its last."""

    def __init__(self, peer: str) -> None:
        super().__init__()
        self.peer = peer

    def flush(self) -> None:
        lines = [line for line in self.getvalue().splitlines() if line.strip()]
        if lines:
            log.error("metrics: answering client %s failed: %s", self.peer, lines[-1].strip())
        self.seek(0)
        self.truncate()


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT_S  # the socket's read deadline (StreamRequestHandler)

    def log_message(self, format: str, *args: Any) -> None:
        """No line per request (http.server's access and error lines)."""

    def get_stderr(self) -> Any:
        return _LogLine(format_peer(self.client_address))


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scrape never holds up the watcher's exit

    def __init__(self, address: tuple[str, int], handler: type[_Handler]) -> None:
        super().__init__(address, handler)
        self._lock = threading.Lock()  # the limits and the tally are shared by threads
        self._limits = ConnectionLimits(MAX_CONCURRENT, MAX_PER_CLIENT)
        self._refusals = EventTally(
            _describe_refusals, lambda line: log.warning("%s", line), time.monotonic
        )
        self._flush_timer: threading.Timer | None = None

    def process_request(self, request: Any, client_address: Any) -> None:
        key = client_key(client_address)
        with self._lock:
            refused = self._limits.admit(key)
            if refused is not None:
                self._refusals.note(refused, key)
                self._flush_later()
        if refused is not None:
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def _flush_later(self) -> None:
        """Report the refusals counted, when the interval is up (called under the lock)."""
        due = self._refusals.due()
        if due is None or self._flush_timer is not None:
            return

        def flush() -> None:
            with self._lock:
                self._flush_timer = None
                self._refusals.flush()

        self._flush_timer = threading.Timer(due, flush)
        self._flush_timer.daemon = True
        self._flush_timer.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._limits.release(client_key(client_address))

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        peer = format_peer(client_address)
        if isinstance(exc, TimeoutError):
            log.info(
                "metrics: client %s sent no whole request within %d s; closed",
                peer,
                REQUEST_TIMEOUT_S,
            )
        elif isinstance(exc, ConnectionError):
            log.info("metrics: client %s closed the connection early (%s)", peer, exc)
        elif exc is not None:
            log.error("metrics: client %s: %s (please report)", peer, describe_exception(exc))


def _describe_refusals(
    count: int, seconds: float, by_reason: Counter[str], by_client: Counter[str]
) -> str:
    span = f" in {seconds:.0f} s" if seconds >= 1 else ""
    return (
        f"metrics: refused {count} connection{'s' if count != 1 else ''}{span} "
        f"({by_reason['per_client']} from an address with {MAX_PER_CLIENT} being answered, "
        f"{by_reason['total']} with {MAX_CONCURRENT} in all); from {top_clients(by_client)}"
    )


def _answering_head(app: WSGIApp) -> WSGIApp:
    """``app`` answering HEAD as GET without the body, as ``serve``'s /metrics does
    (RFC 9110 asks a server that answers GET to answer HEAD; the client library's app
    answers it 405)."""

    def wrapped(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "HEAD":
            return app(environ, start_response)
        answer: list[tuple[str, list[tuple[str, str]]]] = []

        def hold(status: str, headers: list[tuple[str, str]], *_exc_info: Any) -> Any:
            answer.append((status, headers))
            return lambda _data: None

        body = app({**environ, "REQUEST_METHOD": "GET"}, hold)
        try:
            length = sum(len(chunk) for chunk in body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        status, headers = answer[-1]
        # The GET's length, which the server would otherwise give as 0 for no body.
        if not any(name.lower() == "content-length" for name, _value in headers):
            headers = [*headers, ("Content-Length", str(length))]
        start_response(status, headers)
        return []

    return wrapped


def start_metrics_server(registry: CollectorRegistry, host: str, port: int) -> int:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread.

    Returns the bound port (``port`` 0 picks one). Raises ``OSError`` when the address
    cannot be bound (in use, not local) and ``socket.gaierror`` (an ``OSError``) when
    the host does not resolve.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _type, _proto, _name, address = infos[0]

    class Server(_Server):
        address_family = family

    httpd = make_server(
        str(address[0]),
        port,
        _answering_head(make_wsgi_app(registry)),
        Server,
        handler_class=_Handler,
    )
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    return int(httpd.server_port)
