"""The scraper's upload: ``POST /api/claude/console-usage``.

Key, content type, size, then the same judge as the watcher's; a valid payload is
handed to the spool through :meth:`ingester.intake.spool.Spool.submit` (atomic, never
replacing a waiting drop). The answer is a 2xx only once the drop is durable, and it
says whether a watcher will store it: with none running, the drop waits in the spool,
and with ``--require-watcher`` the POST is refused (503, nothing dropped) so the
scraper keeps the snapshot and retries.

Every refused POST is one log line: the status, the reason and the client's address
(never the key it sent).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..clock import utc_now
from ..errors import StorageError, describe_os_error
from ..history.lock import HistoryHolder
from ..intake.spool import Spool, drop_name_for_now
from ..payload.model import PayloadRejected, judge_payload
from ..runtime.admission import format_peer
from ..threads import THREAD_LIMIT, started_pool
from .answers import ending_connection, iso, post_answer
from .auth import key_matches
from .backlog import until_watched, why_unwatched
from .body import Refused, is_json_type, read_body
from .context import ServeContext

__all__ = ["client_address", "key_refusal", "post_console_usage", "refuse", "submit_drop"]

log = logging.getLogger("ingester.serve")

_WRITERS = 8  # POSTs written at once; more wait for a free writer


def client_address(request: Request) -> str:
    """``HOST:PORT`` of the peer (``[v6]:PORT``), or ``local`` (a Unix socket peer)."""
    return format_peer(request.client and tuple(request.client))


def refuse(
    request: Request, status: int, message: str, *, cause: str | None = None, **extra: Any
) -> Response:
    """Log the refusal of a POST (one line, naming the client, never key material) and
    answer it ``{"success": false, ...}``.

    The line has the shape of every refused request's line of the server:
    ``client HOST:PORT: POST PATH: reason; answered STATUS``. ``cause``, when given, is
    the reason for the log in place of ``message`` (a path on this server the client
    is not told), and marks the refusal as this server's fault: an ERROR, not a WARNING.
    """
    log.log(
        logging.WARNING if cause is None else logging.ERROR,
        "client %s: %s %s: %s; answered %d",
        client_address(request),
        request.method,
        request.scope["path"],  # not request.url: a malformed Host header breaks it
        message if cause is None else cause,
        status,
        extra={"event": "refused", "status": status, "client": client_address(request)},
    )
    return post_answer(status, False, message, **extra)


def key_refusal(request: Request, expected: bytes | None) -> str | None:
    """Why the request's ``X-API-Key`` is refused (the words for a 401), or ``None``.

    A key sent on more than one header line is refused whatever the lines hold: they
    are one field, ``"k1, k2"`` (RFC 9110 5.3), as the original server read them, and
    judging by one line alone would let a proxy's added line, or a client's stale one,
    decide.
    """
    sent = request.headers.getlist("x-api-key")
    given = sent[0] if len(sent) == 1 else None
    if key_matches(given, expected):
        return None
    if expected is None:
        return (
            "no API key is configured on this server (INGESTER_API_KEY, CLAUDE_SYNC_API_KEY "
            "or --api-key-file): every POST is refused"
        )
    if len(sent) > 1:
        return f"X-API-Key sent {len(sent)} times: send it once"
    return "missing X-API-Key header" if given is None else "wrong X-API-Key"


def submit_drop(spool: Spool, data: bytes) -> str:
    """Drop ``data`` into the spool under a fresh name; the name it got."""
    for _attempt in range(5):
        try:
            return spool.submit(data, drop_name_for_now()).name
        except FileExistsError:  # a name is never reused while its drop waits: take another
            continue
    raise StorageError("submit", spool.dir, OSError(17, "no free drop name after 5 tries"))


def _unwatched(ctx: ServeContext) -> tuple[bool | None, HistoryHolder | None]:
    """Whether no watcher takes this spool's drops (so a drop would wait; ``None`` when
    that cannot be told), and the history's holder if it does not hold this spool's lock."""
    running, _pid, elsewhere = ctx.probe.look()
    return (None if running is None else not running), elsewhere


def _writers(ctx: ServeContext) -> ThreadPoolExecutor:
    """The POSTs' writer threads, all started at the first POST (none is started later:
    :func:`~ingester.threads.started_pool` says why). Raises ``RuntimeError``
    when they cannot be, with nothing written."""
    if ctx.writers is None:
        ctx.writers = started_pool(_WRITERS, "ingester-post")
    return ctx.writers


async def _submit_to_the_end(writers: ThreadPoolExecutor, spool: Spool, data: bytes) -> str:
    """:func:`submit_drop` in a worker thread, waited for even if this request is
    cancelled meanwhile (the stop's grace period ran out).

    A cancelled wait would leave the write running unseen: the client would be told
    "stopping; retry" for a snapshot that is durable after all, and its retry stored a
    second time. So the wait goes on to the write's end and the request answers what
    became of it. Raises what :func:`submit_drop` raises.
    """
    # A future of the executor, not a task: the loop's own end (asyncio.run cancels
    # every task left) cannot cancel the wait for it.
    job = asyncio.get_running_loop().run_in_executor(writers, submit_drop, spool, data)
    cancelled = 0
    while True:
        try:
            name = await asyncio.shield(job)
            break
        except asyncio.CancelledError:
            if job.cancelled():
                raise
            cancelled += 1  # the write is under way: see it through, then answer
    task = asyncio.current_task()
    if cancelled and task is not None:
        for _ in range(cancelled):
            task.uncancel()
        log.warning("drop %s was being written when the server stopped; it is kept", name)
    return name


async def post_console_usage(request: Request) -> Response:
    """The scraper's upload: key, content type, size, validation, then a durable drop."""
    ctx: ServeContext = request.app.state.ctx
    s = ctx.settings
    denied = key_refusal(request, ctx.config.api_key)
    if denied is not None:
        ctx.posts.labels("unauthorized").inc()
        return ending_connection(refuse(request, 401, denied))
    if ctx.config.read_only is not None:
        # A drop in a local spool would never reach the history served: no watcher here
        # stores into the object store, and a scraper told 202 would not send it again.
        ctx.posts.labels("no_watcher").inc()
        return ending_connection(
            refuse(
                request,
                503,
                f"this server serves {ctx.config.read_only} read only (--from): nothing was "
                "dropped; send snapshots to the server beside the watcher",
            )
        )
    if not is_json_type(request.headers.get("content-type")):
        ctx.posts.labels("unsupported").inc()
        return ending_connection(refuse(request, 415, "Content-Type must be application/json"))
    # Every line of it: lines of a list field are one field (RFC 9110 5.3), so
    # "identity" on one line and "gzip" on the next says the body is gzip.
    encoding = ", ".join(request.headers.getlist("content-encoding")).strip().lower()
    if any(coding.strip() not in ("", "identity") for coding in encoding.split(",")):
        # Never decompressed (nor was it by the original server): a compressed body would
        # otherwise be judged as JSON and refused in words that do not say why.
        ctx.posts.labels("unsupported").inc()
        return ending_connection(
            refuse(
                request,
                415,
                f"Content-Encoding {encoding[:40]!r} is not supported: send the JSON uncompressed",
            )
        )
    try:
        body = await read_body(request, s.max_bytes, ctx.config.body_timeout)
    except ClientDisconnect:
        # Nobody is listening, and nothing was dropped; the connection layer logs the line.
        return Response(status_code=400)
    except Refused as exc:
        ctx.posts.labels("refused").inc()
        return ending_connection(refuse(request, exc.status, exc.message))
    try:
        await run_in_threadpool(judge_payload, body, max_bytes=s.max_bytes)
    except PayloadRejected as exc:
        ctx.posts.labels("invalid").inc()
        return refuse(request, 400, f"invalid payload: {exc.reason}", errors=exc.errors)
    unwatched, elsewhere = _unwatched(ctx) if ctx.config.require_watcher else (False, None)
    # Refused only when it is known that no watcher runs (cannot tell: see the answer).
    if unwatched:
        ctx.posts.labels("no_watcher").inc()
        return refuse(
            request,
            503,
            f"{why_unwatched(elsewhere)}, so the snapshot would not be stored: nothing was "
            f"dropped; retry once {until_watched(elsewhere)}",
        )
    try:
        writers = _writers(ctx)
    except RuntimeError:
        ctx.posts.labels("spool_error").inc()
        return refuse(
            request,
            503,
            "cannot start a thread to write the snapshot: nothing was dropped; retry later",
            cause=THREAD_LIMIT,
        )
    try:
        drop = await _submit_to_the_end(writers, ctx.spool, body)
    except OSError as exc:
        ctx.posts.labels("spool_error").inc()
        since = ctx.spool_fault[1] if ctx.spool_fault is not None else iso(utc_now())
        ctx.spool_fault = (describe_os_error(exc), since)
        return refuse(
            request,
            503,
            f"the spool cannot be written: {exc.strerror}",
            cause=f"the spool cannot be written: {describe_os_error(exc)}",
        )
    ctx.posts.labels("accepted").inc()
    if ctx.spool_fault is not None:
        # The refusals were each logged; without this line the log would only stop
        # saying them, and a reader could not tell the fault ended from no POSTs coming.
        log.info(
            "the spool is written again: POSTs are accepted (refused since %s: %s)",
            ctx.spool_fault[1],
            ctx.spool_fault[0],
        )
        ctx.spool_fault = None
    # Asked once the drop is durable: a watcher that stopped meanwhile will not take it.
    unwatched, elsewhere = _unwatched(ctx)
    if unwatched:
        log.warning(
            "accepted POST as drop %s (%d bytes) from %s; %s: it waits in the spool until %s",
            drop,
            len(body),
            client_address(request),
            why_unwatched(elsewhere),
            until_watched(elsewhere),
        )
        if elsewhere is None:
            why, until = "no watcher is running", "one starts"
        else:
            why, until = why_unwatched(elsewhere), until_watched(elsewhere)
        return post_answer(
            202,
            True,
            f"Accepted: durable in the spool as {drop}, but {why}: the snapshot waits there "
            f"and is stored once {until}",
            drop=drop,
            waitingForWatcher=True,
        )
    log.info("accepted POST as drop %s (%d bytes)", drop, len(body))
    if unwatched is None:
        # Not "the watcher stores it": that is what cannot be told.
        return post_answer(
            202,
            True,
            f"Accepted: durable in the spool as {drop}; whether a watcher runs to store it "
            f"cannot be told here ({ctx.probe.unknown_why or 'its lock cannot be looked at'})",
            drop=drop,
            waitingForWatcher=False,
        )
    return post_answer(
        202,
        True,
        f"Accepted: durable in the spool as {drop}; the watcher stores it",
        drop=drop,
        waitingForWatcher=False,
    )
