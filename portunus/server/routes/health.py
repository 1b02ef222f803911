"""``/healthz`` (the process answers) and ``/readyz`` (the store is open,
not found damaged, and its schema is this binary's)."""

from __future__ import annotations

from typing import Any

import apsw
from sanic import Blueprint, json
from sanic.request import Request
from sanic.response import HTTPResponse

from portunus.server.errors import StoreDamaged, Unavailable
from portunus.store.migrations import binary_schema_version

bp = Blueprint("health")


@bp.get("/healthz")
async def healthz(request: Request) -> HTTPResponse:
    return json({"status": "ok"})


@bp.get("/readyz")
async def readyz(request: Request) -> HTTPResponse:
    store = request.app.ctx.store
    if not store.is_open:
        raise Unavailable("the store is not open")
    if store.damage is not None:
        raise StoreDamaged()
    version = await store.read(_schema_version)
    if version != binary_schema_version():
        raise Unavailable(
            f"the store's schema is {version}, this binary's is {binary_schema_version()}"
        )
    return json({"status": "ready", "schema_version": version})


def _schema_version(conn: apsw.Connection) -> Any:
    return conn.execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0]
