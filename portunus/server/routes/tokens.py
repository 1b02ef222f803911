"""``/v1/tokens``: operator tokens. Admins create and delete; the token
itself is in the creation response, once."""

from __future__ import annotations

from sanic import Blueprint, empty, json
from sanic.request import Request
from sanic.response import HTTPResponse

from portunus.server import validate
from portunus.server.auth import ADMIN, VIEWER, requires
from portunus.server.model import tokens

bp = Blueprint("tokens", url_prefix="/v1/tokens")


@bp.post("")
@requires(ADMIN)
async def create_token(request: Request) -> HTTPResponse:
    name, role = validate.token_request(validate.json_object(request.body))
    created = await request.app.ctx.store.write(
        tokens.create, name, role, request.ctx.principal.actor
    )
    return json(created, status=201)


@bp.get("")
@requires(VIEWER)
async def list_tokens(request: Request) -> HTTPResponse:
    validate.query(request, ())
    return json({"tokens": await request.app.ctx.store.read(tokens.list_all)})


@bp.delete("/<token_id>")
@requires(ADMIN)
async def delete_token(request: Request, token_id: str) -> HTTPResponse:
    ident = validate.resource_id(token_id, "token")
    await request.app.ctx.store.write(tokens.delete, ident, request.ctx.principal.actor)
    request.app.ctx.tokens.invalidate()
    return empty()
