"""The sanic application: ``create_app(settings, store) -> Sanic``, one
``setup_x(app)`` per concern, one blueprint per resource."""

from __future__ import annotations

import asyncio
import functools
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from sanic import Sanic
from sanic.request import Request
from sanic.response import HTTPResponse

from portunus.config import Settings
from portunus.server.auth import TokenCache
from portunus.server.errors import RequestTimedOut, setup_errors
from portunus.server.framework_logs import route_framework_logs
from portunus.server.metrics import setup_metrics
from portunus.server.routes import admin, audit, clients, health, rules, tokens
from portunus.server.store import ServerStore

log = structlog.get_logger()

APP_NAME = "portunus"
MAX_BODY_BYTES = 64 * 1024
# A body of at most 64 KiB arrives in well under a second on any working
# link; one shorter than its Content-Length would otherwise hold its
# connection (and a handler slot) until sanic's 60 s response timeout, which
# then answers 500. docs/api.md states it; not a config key.
BODY_TIMEOUT_SECS = 10.0
BLUEPRINTS = (health.bp, tokens.bp, clients.bp, rules.bp, audit.bp, admin.bp)


def create_app(settings: Settings, store: ServerStore, *, url: str) -> Sanic:
    """The API over ``store``; ``url`` is what ``server.listening`` announces."""
    route_framework_logs()
    app = Sanic(APP_NAME, configure_logging=False, request_class=BodyDeadlineRequest)
    configure(app, settings)
    app.ctx.settings = settings
    app.ctx.store = store
    app.ctx.tokens = TokenCache()
    app.ctx.url = url
    app.ctx.stopping = False
    setup_errors(app)
    setup_metrics(app)
    setup_store(app)
    for blueprint in BLUEPRINTS:
        app.blueprint(blueprint)
    setup_request_log(app)  # last: it wraps every route registered above
    return app


class BodyDeadlineRequest(Request):
    """sanic's request, whose body must arrive within ``BODY_TIMEOUT_SECS``."""

    async def receive_body(self) -> None:
        try:
            async with asyncio.timeout(BODY_TIMEOUT_SECS):
                await super().receive_body()
        except TimeoutError:
            # What is still to come of this body must never be parsed as the
            # next request: answer, then close the connection.
            self.stream.keep_alive = False
            self.stream.request_body = None
            raise RequestTimedOut(
                f"the request body did not arrive within {BODY_TIMEOUT_SECS:g} s "
                "(is it shorter than its Content-Length?)",
                hint="send the whole body at once, with a Content-Length that matches it",
            ) from None


def configure(app: Sanic, settings: Settings) -> None:
    app.config.REQUEST_MAX_SIZE = MAX_BODY_BYTES
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = float(settings.get("shutdown_drain_timeout_secs"))
    # Our own events on stderr, not sanic's banner and access log.
    app.config.MOTD = False
    app.config.ACCESS_LOG = False
    app.config.NOISY_EXCEPTIONS = False
    app.config.FALLBACK_ERROR_FORMAT = "json"


def setup_store(app: Sanic) -> None:
    """The store's threads start with the server and stop after the drain."""

    @app.before_server_start
    async def start_store(app: Sanic) -> None:
        app.ctx.store.start()
        app.ctx.store.pin_loop_thread()

    @app.after_server_start
    async def announce(app: Sanic) -> None:
        log.info("server.listening", msg="serving the API", url=app.ctx.url)

    @app.before_server_stop
    async def announce_stop(app: Sanic) -> None:
        app.ctx.stopping = True
        log.info(
            "server.stopping",
            msg="stopped accepting; finishing in-flight requests",
            drain_timeout_secs=app.config.GRACEFUL_SHUTDOWN_TIMEOUT,
        )

    @app.after_server_stop
    async def close_store(app: Sanic) -> None:
        app.ctx.store.close()


def setup_request_log(app: Sanic) -> None:
    """Per request: an id in the logs and the response, a metrics sample, and
    an ``http.request`` line (debug when fine, info for 4xx, error for 5xx).

    Not sanic middleware nor signal handlers: each of those costs sanic
    extra signal dispatches per request, together about a fifth of a read's
    CPU (measured: /healthz at ~130 µs of server CPU with them against ~75
    µs without, a bare hello-world at ~70). Instead every route's handler is
    wrapped (:func:`observe_routes`, after the blueprints are registered),
    and the error handler finishes the requests that end in an error,
    including those that never reached a handler (unknown route, oversize
    body)."""
    app.ctx.request_log = RequestLog(app)
    observe_routes(app)


class RequestLog:
    def __init__(self, app: Sanic) -> None:
        self._app = app
        # Unique per server life, and cheaper than random bytes per request.
        self._id_prefix = secrets.token_hex(3)
        self._sequence = itertools.count(1)
        # A debug call still costs a logger proxy per request; skip it unless shown.
        self._log_successes = app.ctx.settings.get("log_level") == "debug"

    def begin(self, request: Request) -> None:
        ctx = request.ctx
        ctx.started = time.perf_counter()
        ctx.request_id = f"{self._id_prefix}-{next(self._sequence):x}"
        structlog.contextvars.bind_contextvars(request_id=ctx.request_id)

    def ensure_begun(self, request: Request) -> None:
        """For requests that failed before any handler ran."""
        if not hasattr(request.ctx, "request_id"):
            self.begin(request)

    def finish(self, request: Request, response: HTTPResponse) -> None:
        """Once per request, after :meth:`begin` (the handler's wrapper) or
        :meth:`ensure_begun` (the error handler)."""
        ctx = request.ctx
        if getattr(ctx, "finished", False):
            return
        ctx.finished = True
        seconds = time.perf_counter() - ctx.started
        route = f"/{request.route.path}" if request.route else "unmatched"
        self._app.ctx.metrics.observe(route, request.method, response.status, seconds)
        response.headers["X-Request-Id"] = ctx.request_id
        if self._app.ctx.stopping and request.stream is not None:
            # Draining: sanic closes idle connections only once, so a busy
            # keep-alive client would keep a connection (and the drain) going
            # until the timeout. Answer this request, then close.
            request.stream.keep_alive = False
        if response.status >= 400 or self._log_successes:
            _log_request(request, response.status, route, seconds)
        structlog.contextvars.unbind_contextvars("request_id")


def observe_routes(app: Sanic) -> None:
    """Wrap every registered route's handler with the request log."""
    for route in app.router.routes:
        route.handler = _observed(route.handler)


def _observed(handler: Callable[..., Awaitable[HTTPResponse]]) -> Callable:
    @functools.wraps(handler)
    async def observed(request: Request, *args: Any, **kwargs: Any) -> HTTPResponse:
        request_log: RequestLog = request.app.ctx.request_log
        request_log.begin(request)
        # An exception goes on to the error handler, which finishes the log.
        response = await handler(request, *args, **kwargs)
        request_log.finish(request, response)
        return response

    observed.observed = True
    return observed


def _log_request(request: Request, status: int, route: str, seconds: float) -> None:
    fields = {
        "method": request.method,
        "path": request.path,
        "route": route,
        "status": status,
        "ms": round(seconds * 1000, 2),
        "error": getattr(request.ctx, "error_event", None),
    }
    if status >= 500:
        log.error("http.request", **fields)
    elif status >= 400:
        log.info("http.request", **fields)
    else:
        log.debug("http.request", **fields)
