"""``/v1/rules`` for operators, and ``/v1/client/rules``: what an edge
forwarder polls with its client token."""

from __future__ import annotations

from sanic import Blueprint, empty, json
from sanic.request import Request
from sanic.response import HTTPResponse

from portunus.server import validate
from portunus.server.auth import ADMIN, CLIENT, VIEWER, requires
from portunus.server.model import rules

bp = Blueprint("rules")


@bp.post("/v1/rules")
@requires(ADMIN)
async def create_rule(request: Request) -> HTTPResponse:
    spec = validate.rule_spec(validate.json_object(request.body))
    created = await request.app.ctx.store.write(rules.create, spec, request.ctx.principal.actor)
    return json(created, status=201)


@bp.get("/v1/rules")
@requires(VIEWER)
async def list_rules(request: Request) -> HTTPResponse:
    params = validate.query(request, ("client", "protocol", "cursor", "limit"))
    if "client" in params:
        validate.name(params, "client")
    if "protocol" in params:
        validate.choice(params, "protocol", validate.PROTOCOLS)
    found, next_cursor = await request.app.ctx.store.read(
        _page,
        params.get("client"),
        params.get("protocol"),
        validate.cursor(params),
        validate.page_limit(params),
    )
    return json({"rules": found, "next_cursor": _cursor(next_cursor)})


@bp.get("/v1/rules/<rule_id>")
@requires(VIEWER)
async def get_rule(request: Request, rule_id: str) -> HTTPResponse:
    ident = validate.resource_id(rule_id, "rule")
    return json(request.app.ctx.store.lookup(rules.get, ident))


@bp.put("/v1/rules/<rule_id>")
@requires(ADMIN)
async def replace_rule(request: Request, rule_id: str) -> HTTPResponse:
    ident = validate.resource_id(rule_id, "rule")
    spec = validate.rule_spec(validate.json_object(request.body))
    updated = await request.app.ctx.store.write(
        rules.replace, ident, spec, request.ctx.principal.actor
    )
    return json(updated)


@bp.delete("/v1/rules/<rule_id>")
@requires(ADMIN)
async def delete_rule(request: Request, rule_id: str) -> HTTPResponse:
    ident = validate.resource_id(rule_id, "rule")
    await request.app.ctx.store.write(rules.delete, ident, request.ctx.principal.actor)
    return empty()


@bp.get("/v1/client/rules")
@requires(CLIENT)
async def client_rules(request: Request) -> HTTPResponse:
    validate.query(request, ())
    client = request.ctx.principal
    found = await request.app.ctx.store.read(rules.enabled_for_client, client.id)
    return json({"client": client.name, "rules": found})


def _page(conn, client, protocol, after, limit):
    return rules.list_page(conn, client=client, protocol=protocol, after=after, limit=limit)


def _cursor(value: int | None) -> str | None:
    return None if value is None else str(value)
