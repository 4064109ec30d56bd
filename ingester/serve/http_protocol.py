"""The connection layer of ``serve``: uvicorn's h11 protocol, with what it lacks added.

uvicorn answers HTTP/1.1 on each accepted connection. Three things a public server
needs are missing, and are added here by subclassing its ``H11Protocol`` (which is why
uvicorn is pinned below 1.0):

* **Admission** (:mod:`ingester.serve.connections`). Every connection takes a slot when
  accepted, or is refused at once with a short 503 the client gets to read. uvicorn
  itself would accept the connection, wait for a whole head, answer 503 and log one
  warning per refusal; here refusals are summarised, one line per interval.
* **A deadline for each request head.** uvicorn never times out a connection that has
  not finished its request head (any byte resets its keep-alive timer), so clients
  trickling headers could hold every slot. A timer starts when a connection opens and
  after each answer; if it fires while the next head is incomplete, the client gets a
  408 and the connection is closed.
* **One line per client-caused event, never a traceback.** uvicorn logs "Invalid HTTP
  request received." without saying who sent what; here each such line names the
  client and the fault (a malformed head, a head over the size limit, TLS or HTTP/2
  spoken to the plain HTTP/1.1 port, bad chunked encoding), and a client that goes away
  in the middle of sending a body is one line too. An answer given before its request's
  body was read whole ends the connection (``Connection: close``), so no fault in the
  rest of that body comes after an answer; should one come while an answer is going
  out, the connection just ends, as no 400 can follow.
"""

from __future__ import annotations

import asyncio
import logging
import re
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from ..clock import utc_now
from ..json_text import json_bytes
from ..runtime.admission import client_key, format_peer
from ..runtime.logs import cut
from .answers import JSON, SERVED_VERSIONS, http_date, post_body
from .connections import LINGER_S, ConnectionLayer, _answer

__all__ = ["ServeProtocol", "protocol_class"]

log = logging.getLogger("ingester.serve")


_BYTES_REPR = re.compile(r"bytearray\((b'.*'|b\".*\")\)$", re.DOTALL)
# A header that carries a secret: h11 quotes the line it refuses, and the log must never
# hold the key (a space before the colon, or a control character in the value, is
# enough to have the line refused).
_SECRET_HEADER = re.compile(
    r"(x-api-key|authorization|proxy-authorization|cookie)[^:]{0,16}:.*", re.IGNORECASE | re.DOTALL
)


# A refused header line, as h11 quotes it once the bytearray is unwrapped: its name (the
# token characters it begins with), then what broke it (the colon after any whitespace,
# or one character, escaped or not), then the rest: the value, never shown.
_HEADER_LINE = re.compile(
    r"(illegal header line: b)(['\"])([-!#$%&*+.^_`|~0-9A-Za-z]{0,64})"
    r"(\s*:|\\x[0-9a-f]{2}|\\.|.)?(.*)\2$",
    re.DOTALL,
)
# A refused request line, as h11 quotes it once the bytearray is unwrapped: only a method
# (a word in capitals, then a space) is shown, never the rest. The line may be no request
# at all but the body of the one before, sent past its Content-Length: a usage payload.
_REQUEST_LINE = re.compile(r"(illegal request line: b)(['\"])(?:([A-Z]{1,16}) )?(.*)\2$", re.DOTALL)
# h11's reasons for a broken chunk quote the bytes where a chunk's size or its ending
# CRLF was due: the client's body, which is never shown.
_CHUNK_FAULTS = {
    "illegal chunk header": "illegal chunk header: not a chunk size",
    "malformed chunk footer": "malformed chunk footer: no CRLF where the chunk's size ended it",
}


def _shorten(detail: str, limit: int = 120) -> str:
    """h11's reason, with the client's bytes shown briefly (a head can be 16 KiB), and
    neither any header's value nor any of the body's bytes shown: a refused request line
    is its method, a refused header line its name, a broken chunk is named without its
    bytes, and everything from a secret header's name on is left out. The log and the
    400's message both hold it."""
    for prefix, words in _CHUNK_FAULTS.items():
        if detail.startswith(prefix):
            return words
    match = _BYTES_REPR.search(detail)
    if match:
        detail = detail[: match.start()] + match[1]
    request = _REQUEST_LINE.match(detail)
    if request is not None:
        method = f"{request[3]} " if request[3] else ""
        rest = "<left out>" if request[4] else ""
        return f"{request[1]}{request[2]}{method}{rest}{request[2]}"
    line = _HEADER_LINE.match(detail)
    if line is not None:
        # Any header may carry a secret (a key under a name of its own, a token), so a
        # value is left out whatever its name; the name and what broke the line stay.
        sep = line[4] or ""
        broke = sep if ":" in sep else sep.strip()
        value = " <left out>" if line[5] or (line[4] and not broke) else ""
        detail = f"{line[1]}{line[2]}{line[3]}{broke}{value}{line[2]}"
    else:
        detail = _SECRET_HEADER.sub(r"\1: <left out>", detail)
    return cut(detail, limit)


_ABSOLUTE_FORM = re.compile(rb"(?i)https?://[^/?#]*")


def _origin_form(target: bytes) -> bytes | None:
    """The path and query of an absolute-form request target (``http://host/p?q``: what a
    client sends to a proxy), ``None`` for any other form. RFC 9112 (3.2.2) has every
    server accept the absolute form, as the original server's framework did; the routes
    know only the path, so the scheme and authority are dropped."""
    found = _ABSOLUTE_FORM.match(target)
    if found is None:
        return None
    rest = target[found.end() :]
    return rest if rest.startswith(b"/") else b"/" + rest


_ANSWER_SENT = (h11.SEND_BODY, h11.DONE, h11.MUST_CLOSE, h11.CLOSED)
"""Our states once an answer's head has gone out: no other answer can follow it."""


def _modified_no_later_than_date(event: h11.Response) -> h11.Response:
    """``event`` with its ``Last-Modified`` no later than its ``Date`` (RFC 9110 8.8.2.1).

    The Date is the server's clock as the head is sent (:func:`_dated_now`), in whole
    seconds, and a ``Last-Modified`` is the data's own time: a snapshot taken within that
    second, or by a scraper whose clock runs ahead, would date the answer in the future of
    every cache. Said here, where both are known."""
    fields = dict(event.headers)
    date, modified = fields.get(b"date"), fields.get(b"last-modified")
    if date is None or modified is None:
        return event
    try:
        later = parsedate_to_datetime(modified.decode()) > parsedate_to_datetime(date.decode())
    except (TypeError, ValueError, UnicodeDecodeError):
        return event
    if not later:
        return event
    return h11.Response(
        status_code=event.status_code,
        headers=[(n, date if n == b"last-modified" else v) for n, v in event.headers],
        reason=event.reason,
        http_version=event.http_version,
    )


def _dated_now(event: h11.Response) -> h11.Response:
    """``event`` with one ``Date``: the app's where it gave one (an answer whose body
    carries the time it was made, dated from the same clock reading), else the clock's
    now.

    uvicorn puts its own first, then the app's headers: its own is the server's clock as
    its main loop last renewed it (once a second) when the request came, so it lags by
    as long as the answer took (a trigger's run), and by however long the stop has
    lasted once the server is stopping (the loop that renews it has ended)."""
    dates = [i for i, (name, _) in enumerate(event.headers) if name == b"date"]
    if not dates:
        return event
    headers = list(event.headers)
    if len(dates) > 1:
        for i in reversed(dates[:-1]):
            del headers[i]
    else:
        headers[dates[0]] = (b"date", formatdate(usegmt=True).encode())
    return h11.Response(
        status_code=event.status_code,
        headers=headers,
        reason=event.reason,
        http_version=event.http_version,
    )


class _RecordingConnection(h11.Connection):
    """h11's connection, remembering why it last refused the client's bytes, and ending
    the connection after an answer given before the request's body was read whole."""

    last_error: str | None = None

    def send_with_data_passthrough(self, event: h11.Event) -> list[bytes] | None:
        if isinstance(event, h11.Response):
            event = _modified_no_later_than_date(_dated_now(event))
        if isinstance(event, h11.Response) and self.their_state is h11.SEND_BODY:
            # The rest of the body would be read as the connection's next bytes after
            # the answer, where nothing can be said about a fault in it any more (its
            # request is answered), and waiting for it holds the slot: close instead.
            closing = any(
                name == b"connection" and b"close" in value.lower() for name, value in event.headers
            )
            if not closing:
                event = h11.Response(
                    status_code=event.status_code,
                    headers=[*event.headers, (b"connection", b"close")],
                    reason=event.reason,
                    http_version=event.http_version,
                )
        return super().send_with_data_passthrough(event)

    def next_event(self) -> Any:
        try:
            event = super().next_event()
            if isinstance(event, h11.Request):
                names = {name for name, _ in event.headers}
                if b"transfer-encoding" in names and b"content-length" in names:
                    # Two framings: a proxy in front may read the body by the other one,
                    # which is how requests are smuggled. RFC 9112 (6.3) lets a server
                    # refuse it, and has it close the connection whatever it answers.
                    raise h11.RemoteProtocolError(
                        "both Transfer-Encoding and Content-Length", error_status_hint=400
                    )
                origin = _origin_form(event.target)
                if origin is not None:
                    event = h11.Request(
                        method=event.method,
                        headers=event.headers,
                        target=origin,
                        http_version=event.http_version,
                    )
            return event
        except h11.RemoteProtocolError as exc:
            self.last_error = str(exc) or type(exc).__name__
            raise


class _ClientLog:
    """Stands in for uvicorn's logger on one connection: its lines name the client and
    say what happened, in one line, without a traceback."""

    level = logging.WARNING  # uvicorn compares this with its TRACE level

    def __init__(self, protocol: ServeProtocol) -> None:
        self.protocol = protocol

    def _line(self, level: int, msg: str, args: tuple[Any, ...], exc: Any) -> None:
        p = self.protocol
        text = (msg % args if args else msg).strip()
        if text.startswith("Invalid HTTP request"):
            p.reported = True
            after = p.answer_under_way()
            ending = "answered 400 and closed" if after is None else f"{after}; closed"
            level, text = logging.WARNING, f"{p.fault()}; {ending}"
        elif text.startswith("Unsupported upgrade request"):
            wanted = p.upgrade_wanted()
            level = logging.INFO
            text = f"asked to switch to {wanted}: not served, answered as HTTP/1.1"
        elif text.startswith("No supported WebSocket library"):
            return  # advice for uvicorn's users; a WebSocket is not part of this API
        elif exc is not None and isinstance(exc, BaseException):
            text = f"{text.rstrip('.')}: {type(exc).__name__}: {exc}"
        log.log(level, "client %s: %s", p.peer, text)

    def debug(self, msg: str, *args: Any, **kw: Any) -> None:
        """Dropped (uvicorn's traces)."""

    def info(self, msg: str, *args: Any, **kw: Any) -> None:
        """Dropped: uvicorn's own chatter per connection."""

    def log(self, level: int, msg: str, *args: Any, **kw: Any) -> None:
        """Only warnings and errors get through."""
        if level >= logging.WARNING:
            self._line(level, msg, args, kw.get("exc_info"))

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        """One line naming the client."""
        self._line(logging.WARNING, msg, args, kw.get("exc_info"))

    def error(self, msg: str, *args: Any, **kw: Any) -> None:
        """One line naming the client (an exception as its type and message only)."""
        self._line(logging.ERROR, msg, args, kw.get("exc_info"))


class ServeProtocol(H11Protocol):
    """uvicorn's h11 protocol with admission, a head deadline and client-naming log lines
    (see the module docstring). Made per server by :func:`protocol_class`."""

    layer: ConnectionLayer  # set on the class :func:`protocol_class` makes

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.recording = _RecordingConnection(
            h11.SERVER, config.h11_max_incomplete_event_size or 16 * 1024
        )
        self.conn = self.recording
        self.logger = _ClientLog(self)  # type: ignore[assignment]
        self.peer = "local"
        self.key: str | None = None
        self.admitted = False
        self.reported = False  # a fault of this connection has been logged
        self._first_bytes = b""
        self._bytes_since_answer = 0
        self._half_closed = False  # the client ended its sending side after its request
        self._head_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None

    # -- admission ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        self.peer = format_peer(peer)
        self.key = client_key(peer)
        layer = self.layer
        reason = layer.limits.admit(self.key)
        if reason is not None:
            self.transport = transport
            self._refuse(transport, reason)
            return
        self.admitted = True
        super().connection_made(transport)
        self._arm_head_timer()

    def _refuse(self, transport: asyncio.Transport, reason: str) -> None:
        layer = self.layer
        layer.refused(self.loop, reason, self.key)
        if reason == "per_client":
            message = (
                f"this address holds {layer.limits.per_client} connections, the most one "
                "client may; close one, or retry later"
            )
        else:
            message = f"all {layer.limits.max_total} connections are taken; retry later"
        transport.write(
            _answer(503, "Service Unavailable", "TooManyConnections", message, "retry-after: 1\r\n")
        )
        if len(layer.lingering) >= layer.limits.max_total or not transport.can_write_eof():
            transport.close()
            return
        # Shut our side after the answer, read and drop what the client sends, close on
        # its EOF or after LINGER_S: closing with its request unread would reset the
        # connection, and the reset can destroy the 503 before the client reads it.
        transport.write_eof()
        layer.lingering.add(transport)
        self._linger_timer = self.loop.call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return  # a refused connection, draining
        if len(self._first_bytes) < 24:
            self._first_bytes += data[: 24 - len(self._first_bytes)]
        self._bytes_since_answer += len(data)
        super().data_received(data)

    def eof_received(self) -> bool | None:  # type: ignore[override]
        if not self.admitted:
            return False  # the client read the 503 and closed: close our side too
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            # The whole request came, then the client closed its sending side (as
            # "send, shutdown(SHUT_WR), read" clients do): it still reads the answer. A
            # POST stored without one would be sent again, and stored twice. Our side
            # is closed once the answer is written.
            self._half_closed = True
            return True
        super().eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            if self._linger_timer is not None:
                self._linger_timer.cancel()
            self.layer.lingering.discard(self.transport)
            return
        self.admitted = False
        self.layer.limits.release(self.key)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._cancel_send_timer()
        self._report_unfinished()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        if self.admitted:
            super().pause_writing()
            if self._send_timer is None:
                self._send_timer = self.loop.call_later(self.layer.send_timeout, self._send_expired)

    def resume_writing(self) -> None:
        if self.admitted:
            super().resume_writing()
            self._cancel_send_timer()

    def _cancel_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_expired(self) -> None:
        # The client has read nothing of its answer for the whole deadline: end the
        # connection at once (a close would wait for the unread bytes to go out).
        self._send_timer = None
        if not self.transport.is_closing():
            self.reported = True  # this line says why its answer was not sent
            self.layer.send_timed_out(self.loop, self.key)
            self.transport.abort()

    def shutdown(self) -> None:
        if self.admitted:
            super().shutdown()

    # -- the head deadline --------------------------------------------------------------

    def on_response_complete(self) -> None:
        answered = self.cycle
        super().on_response_complete()  # starts the next pipelined request, if one came
        if self._half_closed:
            following = self.cycle
            if following is not answered and following is not None and not following.more_body:
                # A whole request sent before the client's EOF, pipelined behind the one
                # just answered, is under way: answered too, then the connection ends (a
                # drop stored under a closed connection is a 202 the client never reads,
                # and its snapshot would come again).
                return
            # Nothing more can come from the client: a request it began but cut short
            # by its EOF can never end, and meets a closed connection.
            self.transport.close()
            return
        self._bytes_since_answer = 0
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = None
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.layer.head_timeout, self._head_expired)

    def _head_expired(self) -> None:
        self._head_timer = None
        # IDLE: no complete head since the timer started (none in flight, none answered).
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            timeout = self.layer.head_timeout
            self.layer.head_timed_out(self.loop, self._bytes_since_answer > 0, self.key)
            self.transport.write(
                _answer(
                    408,
                    "Request Timeout",
                    "RequestTimeout",
                    f"request head not received within {timeout:g} s",
                )
            )
            self.transport.close()

    # -- saying what the client did -------------------------------------------------------

    def fault(self) -> str:
        """What was wrong with the bytes h11 refused, in words for the log."""
        first = self._first_bytes
        if first[:1] == b"\x16" and first[1:2] == b"\x03":
            return "sent a TLS handshake to the plain HTTP port (https:// to an http:// server?)"
        if first.startswith(b"PRI * HTTP/2.0"):
            return f"spoke HTTP/2 without an upgrade; only {SERVED_VERSIONS} are served"
        detail = _shorten(self.recording.last_error or "unparsable")
        in_body = self.cycle is not None and (
            not self.cycle.response_complete or self.answer_under_way() is not None
        )
        if detail.startswith("Receive buffer too long"):
            if not in_body:
                return "sent a request head over the 16 KiB limit"
            # Within a body only a chunked one's lines are held whole: a chunk's size
            # line (or a trailer) that never ended, not the request's head.
            detail = "a chunk's size line or trailer over the 16 KiB limit"
        if in_body:
            scope = self.scope
            return f"sent a malformed body for {scope['method']} {scope['path']} ({detail})"
        return f"sent a malformed request ({detail})"

    def answer_under_way(self) -> str | None:
        """How far the answer to the request in hand has gone, in words for the log
        (``"after its answer"``), or ``None`` while an answer can still be given."""
        state = self.conn.our_state
        if state not in _ANSWER_SENT:
            return None
        return "while its answer was being sent" if state is h11.SEND_BODY else "after its answer"

    def send_400_response(self, msg: str) -> None:
        if self.answer_under_way() is not None:
            # Its answer has gone out (or is going out): a second one cannot follow, so
            # the connection just ends; the line before says so.
            self.transport.close()
            return
        # JSON as every other answer, saying what was wrong, where uvicorn would send
        # "Invalid HTTP request received." as text; a POST whose body broke gets the
        # upload's shape, which the scraper reads.
        fault = self.fault()
        message = fault.removeprefix("sent a ").removeprefix("sent ").removeprefix("spoke ")
        cycle = self.cycle
        now = utc_now()  # the Date, and the POST shape's timestamp: one reading
        if cycle is not None and not cycle.response_complete and self.scope["method"] == "POST":
            answer: dict[str, object] = post_body(False, message, at=now, error="MalformedRequest")
        else:
            answer = {"error": "MalformedRequest", "message": message}
        body = json_bytes(answer)
        head = h11.Response(
            status_code=400,
            headers=[
                (b"date", http_date(now).encode()),  # as every other answer has one
                (b"content-type", JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
            reason=b"Bad Request",
        )
        for event in (head, h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()

    def upgrade_wanted(self) -> str:
        """The protocol named in the request's ``Upgrade`` header, for the log."""
        wanted = self._get_upgrade() or b"?"
        return wanted.decode("latin-1")[:40]

    def _report_unfinished(self) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_complete or self.reported:
            return
        self.reported = True
        method, path = self.scope["method"], self.scope["path"]
        if cycle.more_body:
            length = next((v for k, v in self.scope["headers"] if k == b"content-length"), None)
            size = f" (Content-Length {length.decode('latin-1')[:20]})" if length else ""
            log.warning(
                "client %s: closed the connection before its %s %s body was complete%s; "
                "nothing was done with it",
                self.peer,
                method,
                path,
                size,
            )
        else:
            log.info(
                "client %s: closed the connection before the answer to %s %s was sent",
                self.peer,
                method,
                path,
            )


def protocol_class(layer: ConnectionLayer) -> type[asyncio.Protocol]:
    """A :class:`ServeProtocol` class bound to ``layer``, for ``uvicorn.Config(http=...)``."""
    return type("ServeProtocol", (ServeProtocol,), {"layer": layer})
