"""``POST /api/claude/console-usage/trigger``: the dashboard card's refresh button.

Key check (401), then the configured command (:mod:`.trigger_command`): 200 when it
exits 0, 500 with the reason otherwise, 501 with a how-to when none is configured. The
answers have the original server's shape: ``{success, message, timestamp, requestId}``
(plus ``joined``: this request joined a run already under way).
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response

from .answers import ending_connection, post_answer
from .context import ServeContext
from .posts import client_address, key_refusal, refuse
from .routes import TRIGGER_PATH

__all__ = ["TRIGGER_PATH", "post_trigger"]

log = logging.getLogger("ingester.serve")


async def post_trigger(request: Request) -> Response:
    """Run the configured command (or join the run under way) and say how it went."""
    ctx: ServeContext = request.app.state.ctx
    denied = key_refusal(request, ctx.config.api_key)
    # Its body is never read: a refused client must not hold the server to it.
    if denied is not None:
        return ending_connection(refuse(request, 401, denied))
    runner = ctx.trigger
    if runner is None:
        return ending_connection(
            refuse(
                request,
                501,
                "no trigger command is configured: start the server with "
                "--trigger-command 'PROGRAM ARGS' (e.g. the scraper's command) to make this "
                "button run it; see docs/serve.md",
            )
        )
    log.info("trigger requested by %s", client_address(request))
    result, joined = await runner.run()
    extra = {"requestId": result.request_id, "joined": joined}
    if result.ok:
        return post_answer(200, True, result.message, **extra)
    return post_answer(500, False, result.message, **extra)
