"""``/v1/audit``: the audit log, newest first, cursor-paginated."""

from __future__ import annotations

from sanic import Blueprint, json
from sanic.request import Request
from sanic.response import HTTPResponse

from portunus.server import validate
from portunus.server.auth import VIEWER, requires
from portunus.server.model import audit_log

bp = Blueprint("audit")


@bp.get("/v1/audit")
@requires(VIEWER)
async def list_audit(request: Request) -> HTTPResponse:
    params = validate.query(request, ("since", "until", "cursor", "limit"))
    entries, next_cursor = await request.app.ctx.store.read(
        _page,
        validate.timestamp(params, "since"),
        validate.timestamp(params, "until"),
        validate.cursor(params),
        validate.page_limit(params),
    )
    return json(
        {"entries": entries, "next_cursor": None if next_cursor is None else str(next_cursor)}
    )


def _page(conn, since, until, before, limit):
    return audit_log.page(conn, since=since, until=until, before=before, limit=limit)
