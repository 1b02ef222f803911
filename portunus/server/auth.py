"""Bearer tokens: operators (admin writes, viewer reads) and clients.

Only a token's sha256 is looked up, and neither the token nor its hash
ever reaches a log line. Known tokens are cached in memory: the server is
the only writer while it holds the lock, so every change that could make a
cached entry stale goes through it and clears the cache.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import structlog
from sanic.request import Request

from portunus.engine.tokens import OPERATOR_TOKEN_PREFIX, hash_token
from portunus.server.errors import Forbidden, Unauthorized
from portunus.server.model import clients, tokens
from portunus.server.model.clients import CLIENT_TOKEN_PREFIX
from portunus.server.model.principal import Principal

log = structlog.get_logger()

ADMIN, VIEWER, CLIENT = "admin", "viewer", "client"
OPERATOR = "operator"  # a Principal's kind; CLIENT is the other
TOUCH_EVERY_SECS = 60.0
CACHE_LIMIT = 10_000


class TokenCache:
    """hash → Principal for tokens seen recently; ``invalidate()`` after any
    deletion commits. Lookups and invalidations both run on the event loop,
    and a lookup reads the latest committed state, so a deleted token can
    only be cached before its deletion commits, and is cleared right after."""

    def __init__(self) -> None:
        self._known: dict[bytes, Principal] = {}
        self._touched: dict[int, float] = {}

    def get(self, token_hash: bytes) -> Principal | None:
        return self._known.get(token_hash)

    def put(self, token_hash: bytes, principal: Principal) -> None:
        if len(self._known) >= CACHE_LIMIT:
            self._known.clear()
        self._known[token_hash] = principal

    def invalidate(self) -> None:
        self._known.clear()

    def due_for_touch(self, principal: Principal) -> bool:
        now = time.monotonic()
        if now - self._touched.get(principal.id, float("-inf")) < TOUCH_EVERY_SECS:
            return False
        self._touched[principal.id] = now
        return True


def requires(role: str) -> Callable:
    """Decorate a handler: ``viewer`` (any operator token), ``admin``, or
    ``client`` (a client's token); the caller lands on ``request.ctx.principal``."""

    def decorate(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(handler)
        async def guarded(request: Request, *args: Any, **kwargs: Any) -> Any:
            principal = await authenticate(request, CLIENT if role == CLIENT else OPERATOR)
            if role == ADMIN and principal.role != ADMIN:
                log.warning(
                    "auth.forbidden",
                    msg="a viewer token tried an admin-only request",
                    reason="viewer_token",
                    name=principal.name,
                    method=request.method,
                    path=request.path,
                )
                raise Forbidden("this request needs an admin token; yours is a viewer token")
            request.ctx.principal = principal
            return await handler(request, *args, **kwargs)

        return guarded

    return decorate


async def authenticate(request: Request, kind: str) -> Principal:
    """The caller of an endpoint for ``kind`` ("operator" or "client"): 401
    for no or an unknown token, 403 for a known token of the other kind."""
    token = _bearer(request)
    app_ctx = request.app.ctx
    principal = _principal(app_ctx, token)
    if principal is None:
        _fail(request, "unknown_token")
    if principal.kind != kind:
        _wrong_kind(request, principal, kind)
    if principal.kind == "operator" and app_ctx.tokens.due_for_touch(principal):
        _touch_in_background(app_ctx.store, principal.id)
    return principal


# The token's prefix says which table may know it.
_LOOKUP_BY_PREFIX = (
    (OPERATOR_TOKEN_PREFIX, tokens.principal_for),
    (CLIENT_TOKEN_PREFIX, clients.principal_for),
)


def _principal(app_ctx: Any, token: str) -> Principal | None:
    lookup = next((fn for prefix, fn in _LOOKUP_BY_PREFIX if token.startswith(prefix)), None)
    if lookup is None:
        return None
    cache: TokenCache = app_ctx.tokens
    token_hash = hash_token(token)
    principal = cache.get(token_hash)
    if principal is None:
        principal = app_ctx.store.lookup(lookup, token_hash)
        if principal is not None:
            cache.put(token_hash, principal)
    return principal


def _wrong_kind(request: Request, principal: Principal, needed: str) -> NoReturn:
    log.warning(
        "auth.forbidden",
        msg=f"a {principal.kind} token on an endpoint that needs a {needed} token",
        reason="wrong_token_kind",
        given=principal.kind,
        needed=needed,
        name=principal.name,
        method=request.method,
        path=request.path,
        peer=request.ip,
    )
    raise Forbidden(
        f"this endpoint needs {_a(needed)} token; yours is {_a(principal.kind)} token",
        hint="client tokens only poll /v1/client/rules; operator tokens use every other endpoint",
    )


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        _fail(request, "missing_token")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        _fail(request, "malformed_header")
    return token


def _fail(request: Request, reason: str) -> NoReturn:
    # Never the token: the reason, the route and the peer are enough to act on.
    log.warning(
        "auth.failure",
        msg="request refused: missing or unknown bearer token",
        reason=reason,
        method=request.method,
        path=request.path,
        peer=request.ip,
    )
    raise Unauthorized(
        "a valid bearer token is required",
        hint="send 'Authorization: Bearer <token>'; bootstrap-admin prints the first one",
    )


def _touch_in_background(store: Any, token_id: int) -> None:
    try:
        store.writer.submit(tokens.touch, token_id)
    except RuntimeError:
        pass  # shutting down: the bookkeeping can wait for next time
