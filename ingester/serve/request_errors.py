"""The outermost layer of ``serve``'s app: whatever escapes a request becomes one log line.

uvicorn logs an exception that leaves the app as ``Exception in ASGI application`` with
its traceback, at ERROR, whatever caused it. Two kinds reach that far:

* a request cut short when the server stops: after the stop's grace period uvicorn
  cancels the requests still running (a client still sending its body, at a trickle or
  not at all) and the ``CancelledError`` surfaces. That is the client's doing: one
  WARNING line naming the client and the request, and a 503 if nothing was answered;
* any other exception is a bug of ours: one ERROR line with the exception and the
  place it was raised (no traceback, as everywhere in this program), and a 500 if
  nothing was answered (Starlette has usually sent it already).

Nothing propagates to uvicorn, so it never logs a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..clock import utc_now
from ..json_text import json_bytes
from ..runtime.admission import format_peer
from ..runtime.logs import describe_exception
from .answers import SERVED_VERSIONS, http_date, post_body

__all__ = ["OneLineErrors"]

log = logging.getLogger("ingester.serve")


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def _answer(send: Send, status: int, error: str, message: str, *, post: bool = False) -> None:
    """Answer if the connection still takes one; a client already gone is no error.

    ``post``: in the POST endpoints' shape, ``{"success": false, "message", "timestamp"}``
    (with ``error`` too), which the scraper reads; else ``{"error", "message"}``.
    """
    headers = []
    if post:
        # Dated as its timestamp: uvicorn's Date is no longer renewed while it stops.
        now = utc_now()
        answer = post_body(False, message, at=now, error=error)
        headers.append((b"date", http_date(now).encode()))
    else:
        answer = {"error": error, "message": message}
    # Compact, as every other answer is written (json_answer).
    body = json_bytes(answer)
    try:
        await _send_answer(send, status, body, headers)
    except Exception:
        pass


async def _send_answer(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class OneLineErrors:
    """Wraps the app; see the module docstring. ``grace`` is the stop's grace period (s)."""

    def __init__(self, app: ASGIApp, grace: float) -> None:
        self.app = app
        self.grace = grace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = {"started": False, "body_done": not _has_body(scope)}

        async def tracking_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        client = format_peer(scope.get("client"))
        what = f"{scope['method']} {scope['path']}"
        post = scope["method"] == "POST"
        version = scope.get("http_version", "1.1")
        if version not in ("1.0", "1.1"):
            # h11 parses any HTTP/x.y request line; HTTP/2's connection preface
            # ("PRI * HTTP/2.0") is one, and what follows it is binary frames.
            log.warning(
                "client %s: sent an HTTP/%s request line (%s); only %s are served, answered "
                "505 and closed",
                client,
                version[:10],
                "HTTP/2 without an upgrade" if scope["method"] == "PRI" else what,
                SERVED_VERSIONS,
            )
            await _answer(
                send, 505, "HTTPVersionNotSupported", f"only {SERVED_VERSIONS} are served here"
            )
            return
        try:
            await self.app(scope, tracking_receive, tracking_send)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # taken in hand here: answer, then end normally
            doing = (
                "was still sending its request body"
                if not state["body_done"]
                else "was still being answered"
            )
            log.warning(
                "client %s: %s %s when the server stopped; given up after the %g s grace period%s",
                client,
                what,
                doing,
                self.grace,
                "" if state["started"] else ", answered 503",
            )
            if not state["started"]:
                await _answer(
                    send, 503, "ServerStopping", "the server is stopping; retry", post=post
                )
        except Exception as exc:
            log.error(
                "internal error answering %s for client %s: %s (please report)",
                what,
                client,
                describe_exception(exc),
            )
            if not state["started"]:
                await _answer(send, 500, "InternalError", "internal error (logged)", post=post)
