"""``/v1/clients``: the edge forwarders. Creation returns the client's
token, once; deleting a client deletes its rules."""

from __future__ import annotations

from sanic import Blueprint, empty, json
from sanic.request import Request
from sanic.response import HTTPResponse

from portunus.server import validate
from portunus.server.auth import ADMIN, VIEWER, requires
from portunus.server.model import clients

bp = Blueprint("clients", url_prefix="/v1/clients")


@bp.post("")
@requires(ADMIN)
async def create_client(request: Request) -> HTTPResponse:
    name = validate.client_request(validate.json_object(request.body))
    created = await request.app.ctx.store.write(clients.create, name, request.ctx.principal.actor)
    return json(created, status=201)


@bp.get("")
@requires(VIEWER)
async def list_clients(request: Request) -> HTTPResponse:
    validate.query(request, ())
    return json({"clients": await request.app.ctx.store.read(clients.list_all)})


@bp.get("/<name>")
@requires(VIEWER)
async def get_client(request: Request, name: str) -> HTTPResponse:
    # Not a loop lookup: the rule count grows with the client's rules.
    return json(await request.app.ctx.store.read(clients.get, name))


@bp.delete("/<name>")
@requires(ADMIN)
async def delete_client(request: Request, name: str) -> HTTPResponse:
    await request.app.ctx.store.write(clients.delete, name, request.ctx.principal.actor)
    request.app.ctx.tokens.invalidate()
    return empty()
