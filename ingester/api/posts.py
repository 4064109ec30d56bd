"""The scraper's upload: ``POST /api/claude/console-usage``.

Key, content type, size, then the same judge as the watcher's; a valid payload is
handed to the spool through :meth:`ingester.spool.Spool.submit` (atomic, never
replacing a waiting drop). The answer is a 2xx only once the drop is durable.
"""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..errors import StorageError
from ..model import PayloadRejected, judge_payload
from ..spool import Spool, drop_name_for_now
from .answers import post_answer
from .auth import key_matches
from .body import is_json_type, read_body
from .context import ServeContext

__all__ = ["post_console_usage", "submit_drop"]

log = logging.getLogger("ingester.serve")


def submit_drop(spool: Spool, data: bytes) -> str:
    """Drop ``data`` into the spool under a fresh name; the name it got."""
    for _attempt in range(5):
        try:
            return spool.submit(data, drop_name_for_now()).name
        except FileExistsError:  # a name is never reused while its drop waits: take another
            continue
    raise StorageError("submit", spool.dir, OSError(17, "no free drop name after 5 tries"))


async def post_console_usage(request: Request) -> Response:
    """The scraper's upload: key, content type, size, validation, then a durable drop."""
    ctx: ServeContext = request.app.state.ctx
    s = ctx.settings
    if not key_matches(request.headers.get("x-api-key"), ctx.config.api_key):
        ctx.posts.labels("unauthorized").inc()
        return post_answer(401, False, "missing or wrong X-API-Key")
    if not is_json_type(request.headers.get("content-type")):
        ctx.posts.labels("unsupported").inc()
        return post_answer(415, False, "Content-Type must be application/json")
    try:
        body = await read_body(request, s.max_bytes, ctx.config.body_timeout)
    except ClientDisconnect:
        return Response(status_code=400)  # nobody is listening; nothing was dropped
    if isinstance(body, Response):
        ctx.posts.labels("refused").inc()
        return body
    try:
        await run_in_threadpool(judge_payload, body, max_bytes=s.max_bytes)
    except PayloadRejected as exc:
        ctx.posts.labels("invalid").inc()
        return post_answer(400, False, f"invalid payload: {exc.reason}", errors=exc.errors)
    try:
        drop = await run_in_threadpool(submit_drop, ctx.spool, body)
    except OSError as exc:
        ctx.posts.labels("spool_error").inc()
        log.error("POST not accepted: spool not writable: %s", exc)
        return post_answer(503, False, f"the spool cannot be written: {exc.strerror}")
    ctx.posts.labels("accepted").inc()
    log.info("accepted POST as drop %s (%d bytes)", drop, len(body))
    return post_answer(
        202, True, f"Accepted: durable in the spool as {drop}; the watcher stores it", drop=drop
    )
