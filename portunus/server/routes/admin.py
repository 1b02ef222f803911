"""``POST /v1/admin/backup``: an online backup into ``[backup].dir``, by the
same engine and with the same guarantees as ``portunus-server backup``."""

from __future__ import annotations

from pathlib import Path

import structlog
from sanic import Blueprint, json
from sanic.request import Request
from sanic.response import HTTPResponse

from portunus.engine import backup as backup_engine
from portunus.errors import PortunusError
from portunus.server import validate
from portunus.server.auth import ADMIN, requires
from portunus.server.errors import Unavailable
from portunus.store import audit

log = structlog.get_logger()

bp = Blueprint("admin", url_prefix="/v1/admin")


@bp.post("/backup")
@requires(ADMIN)
async def take_backup(request: Request) -> HTTPResponse:
    validate.query(request, ())
    if request.body.strip() not in (b"", b"{}"):
        validate.only_fields(validate.json_object(request.body), required=())
    ctx = request.app.ctx
    backup_dir = ctx.settings.get("backup.dir")
    if not backup_dir:
        raise Unavailable(
            "no backup directory is configured",
            event="api.backup_not_configured",
            hint="set [backup] dir in server.toml and restart the server",
        )
    try:
        result = await ctx.store.in_backup_thread(
            _backup, ctx.store.data_dir, Path(backup_dir).expanduser(), ctx.settings
        )
    except PortunusError as error:
        # The same summary line the CLI emits, so one alert covers both.
        log.error("backup.failed", msg="operation failed", reason=error.event, via="api")
        raise
    await ctx.store.write(_record, request.ctx.principal.actor, result)
    return json(
        {
            "path": str(result.path),
            "size": result.bytes,
            "sha256": result.sha256,
            "schema_version": result.schema_version,
            "sidecar": str(result.sidecar) if result.sidecar else None,
            "seconds": round(result.total_seconds, 3),
        },
        status=201,
    )


def _backup(data_dir, out: Path, settings) -> backup_engine.BackupResult:
    return backup_engine.backup(
        data_dir,
        out,
        verify=settings.get("backup.verify"),
        checksum=settings.get("backup.checksum"),
        directory=True,
    )


def _record(conn, actor: str, result: backup_engine.BackupResult) -> None:
    audit.record(
        conn,
        actor,
        "backup.create",
        f"backup:{result.path.name}",
        path=str(result.path),
        bytes=result.bytes,
        sha256=result.sha256,
    )
