"""The Starlette app: the route table, the error answers, and :func:`create_app`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..history.index import HistoryIndex
from ..history.local import LocalHistory
from ..intake.spool import Spool
from ..runtime.admission import format_peer
from ..runtime.metrics import MetricsRegistry
from ..threads import THREAD_LIMIT, OffLoop, is_thread_limit
from .answers import JSON, announces_body, ending_connection, json_answer, post_answer
from .backlog import BacklogWarnings, WatcherProbe
from .context import ServeConfig, ServeContext
from .forecast import install as install_forecast
from .health import get_health
from .metrics import (
    POST_OUTCOMES,
    HistoryCollector,
    MetricsMiddleware,
    get_metrics,
    request_metrics,
)
from .page import routes as page_routes
from .posts import post_console_usage
from .reads import get_console_usage, get_version, list_versions
from .routes import (
    API_PATH,
    HEALTH_PATH,
    METRICS_PATH,
    OPENAPI_PATH,
    TRIGGER_PATH,
    VERSION_PATH,
    VERSIONS_PATH,
)
from .trigger import post_trigger
from .trigger_command import TriggerRunner

__all__ = ["api_routes", "create_app", "log_configuration"]

log = logging.getLogger("ingester.serve")

BACKLOG_CHECK_S = 5.0  # seconds between looks at the spool for the "no watcher" warning


async def console_usage(request: Request) -> Response:
    """One route for both methods, so a 405 names them all in ``Allow``."""
    if request.method == "POST":
        return await post_console_usage(request)
    return await get_console_usage(request)


async def get_openapi(request: Request) -> Response:
    """The OpenAPI description of this API (also committed as docs/openapi.json)."""
    from .openapi import openapi_bytes

    return Response(openapi_bytes(), media_type=JSON)


def api_routes() -> list[BaseRoute]:
    """The API's routes (method-specific endpoints share paths)."""
    return [
        Route(API_PATH, console_usage, methods=["GET", "HEAD", "POST"]),
        Route(TRIGGER_PATH, post_trigger, methods=["POST"]),
        Route(VERSIONS_PATH, list_versions, methods=["GET", "HEAD"]),
        Route(VERSION_PATH, get_version, methods=["GET", "HEAD"]),
        Route(HEALTH_PATH, get_health, methods=["GET", "HEAD"]),
        Route(METRICS_PATH, get_metrics, methods=["GET"]),
        Route(OPENAPI_PATH, get_openapi, methods=["GET"]),
    ]


def _route_builders() -> list[Callable[[], Sequence[BaseRoute]]]:
    """Every group of routes the app serves, in match order (add page routes here)."""
    return [api_routes, page_routes]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    answer = json_answer(
        {"error": "HTTPError", "message": str(exc.detail)}, exc.status_code, headers=headers
    )
    # No route reads the body of a request it refuses (a POST to a read-only path, say).
    return ending_connection(answer) if announces_body(request.headers) else answer


async def _thread_limit(request: Request, exc: Exception) -> Response:
    """A handler whose worker thread could not start (the metrics, a forecast): 503 and
    one line naming the limit, where it would be a 500 and a traceback. Any other
    ``RuntimeError`` goes on to the internal-error answer."""
    if not is_thread_limit(exc):
        raise exc
    log.error(
        "client %s: %s %s: %s; answered 503",
        format_peer(request.scope.get("client")),
        request.method,
        request.url.path,
        THREAD_LIMIT,
    )
    message = f"{THREAD_LIMIT}; retry"
    if request.method == "POST":
        answer = post_answer(503, False, message, error="ThreadLimit")
    else:
        answer = json_answer({"error": "ThreadLimit", "message": message}, 503)
    return ending_connection(answer) if announces_body(request.headers) else answer


def log_configuration(config: ServeConfig, listen_source: str | None = None) -> None:
    """The start-up lines that say how the API is configured (never the key itself).

    ``listen_source`` says where the address came from when not from ``--listen``.
    """
    if listen_source is not None:
        log.info("serve: address from %s", listen_source)
    if config.api_key is None:
        log.warning(
            "serve: no API key (INGESTER_API_KEY, CLAUDE_SYNC_API_KEY or --api-key-file): "
            "every POST answers 401; the read endpoints work"
        )
    else:
        log.info("serve: POST key from %s", config.api_key_source or "the caller")
    if config.trigger is not None:
        log.info(
            "serve: trigger runs %s (at most %g s)",
            config.trigger.describe(),
            config.trigger.timeout,
        )
    if config.require_watcher:
        log.info("serve: --require-watcher: POSTs answer 503 while no watcher runs")


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    """While the app runs: say at start whether a watcher will store POSTs, and keep
    saying so (rate-limited) while drops wait without one."""
    ctx: ServeContext = app.state.ctx
    if ctx.config.reader is not None:  # serving an object store: POSTs are not its job
        yield
        return
    checks = OffLoop("ingester-checks")
    if checks.inline:
        log.warning(
            "serve: %s; the spool checks run on the server's own thread instead", THREAD_LIMIT
        )
    await checks.run(ctx.warnings.at_start)

    async def keep_watching() -> None:
        while True:
            await asyncio.sleep(BACKLOG_CHECK_S)
            try:
                await checks.run(ctx.warnings.check)
            except OSError as exc:  # pragma: no cover - the probe handles its own errors
                log.debug("backlog check failed: %s", exc)

    task = asyncio.create_task(keep_watching())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        checks.close()


def create_app(config: ServeConfig, *, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The ASGI app for ``config``.

    ``extra_routes`` are matched after the API's (e.g. a page at ``/``). Handlers reach
    the shared state as ``request.app.state.ctx`` (a :class:`ServeContext`: the history
    index, the spool, the settings). Run it with its lifespan on: that is where the
    "no watcher" warnings start.
    """
    s = config.settings
    registry = MetricsRegistry(auto_describe=True)
    requests, latency, posts = request_metrics(registry)
    spool = Spool(s.spool_dir, s.rejected_dir)
    probe = WatcherProbe(s.store().lock_path, spool, config.watcher_running)
    ctx = ServeContext(
        config=config,
        index=HistoryIndex(config.reader or LocalHistory(s.history_dir)),
        spool=spool,
        probe=probe,
        warnings=BacklogWarnings(probe, refuses_posts=config.require_watcher),
        trigger=TriggerRunner(config.trigger) if config.trigger is not None else None,
        registry=registry,
        requests=requests,
        latency=latency,
        posts=posts,
    )
    for outcome in POST_OUTCOMES:
        ctx.posts.labels(outcome)  # each shows from the start, at 0
    registry.register(HistoryCollector(ctx))
    routes: list[BaseRoute] = []
    for build in _route_builders():
        routes.extend(build())
    routes.extend(extra_routes)
    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error, RuntimeError: _thread_limit},
        lifespan=_lifespan,
    )
    # A path with a trailing slash is another path: 404, not a bodyless redirect to a
    # URL built from the Host header (plain http behind a TLS proxy, where a client
    # that follows it would send its key in the clear).
    app.router.redirect_slashes = False
    app.state.ctx = ctx
    install_forecast(
        app,
        index=ctx.index,
        settings=s,
        registry=registry,
        clock=config.clock,
        faults=ctx.read_faults,
    )
    app.add_middleware(MetricsMiddleware, ctx=ctx)
    return app
