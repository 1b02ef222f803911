"""The sanic application: ``create_app(settings, store) -> Sanic``, one
``setup_x(app)`` per concern, one blueprint per resource."""

from __future__ import annotations

import itertools
import secrets
import time

import structlog
from sanic import Sanic
from sanic.request import Request
from sanic.response import HTTPResponse

from portunus.config import Settings
from portunus.server.auth import TokenCache
from portunus.server.errors import setup_errors
from portunus.server.framework_logs import route_framework_logs
from portunus.server.metrics import setup_metrics
from portunus.server.routes import admin, audit, clients, health, rules, tokens
from portunus.server.store import ServerStore

log = structlog.get_logger()

APP_NAME = "portunus"
MAX_BODY_BYTES = 64 * 1024
BLUEPRINTS = (health.bp, tokens.bp, clients.bp, rules.bp, audit.bp, admin.bp)


def create_app(settings: Settings, store: ServerStore, *, url: str) -> Sanic:
    """The API over ``store``; ``url`` is what ``server.listening`` announces."""
    route_framework_logs()
    app = Sanic(APP_NAME, configure_logging=False)
    configure(app, settings)
    app.ctx.settings = settings
    app.ctx.store = store
    app.ctx.tokens = TokenCache()
    app.ctx.url = url
    app.ctx.stopping = False
    setup_errors(app)
    setup_request_log(app)
    setup_metrics(app)
    setup_store(app)
    for blueprint in BLUEPRINTS:
        app.blueprint(blueprint)
    return app


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
    an ``http.request`` line (debug when fine, info for 4xx, error for 5xx)."""
    # Unique per server life, and cheaper than random bytes per request.
    id_prefix = secrets.token_hex(3)
    sequence = itertools.count(1)
    # A debug call still costs a logger proxy per request; skip it unless shown.
    log_successes = app.ctx.settings.get("log_level") == "debug"

    @app.on_request
    async def start_clock(request: Request) -> None:
        request.ctx.started = time.perf_counter()
        request.ctx.request_id = f"{id_prefix}-{next(sequence):x}"
        structlog.contextvars.bind_contextvars(request_id=request.ctx.request_id)

    @app.on_response
    async def record(request: Request, response: HTTPResponse) -> None:
        started = getattr(request.ctx, "started", None)
        seconds = time.perf_counter() - started if started is not None else 0.0
        route = f"/{request.route.path}" if request.route else "unmatched"
        app.ctx.metrics.observe(route, request.method, response.status, seconds)
        response.headers["X-Request-Id"] = getattr(request.ctx, "request_id", "-")
        if app.ctx.stopping and request.stream is not None:
            # Draining: sanic closes idle connections only once, so a busy
            # keep-alive client would keep a connection (and the drain) going
            # until the timeout. Answer this request, then close.
            request.stream.keep_alive = False
        if response.status >= 400 or log_successes:
            _log_request(request, response.status, route, seconds)
        structlog.contextvars.unbind_contextvars("request_id")


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
