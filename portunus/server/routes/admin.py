"""``POST /v1/admin/backup``: a managed backup into ``[backup].dir`` (pruned
per ``[retention]``, recorded in the metrics textfile), the same engine call
as ``portunus-server backup`` without ``--out``."""

from __future__ import annotations

import structlog
from sanic import Blueprint, json
from sanic.request import Request
from sanic.response import HTTPResponse

from portunus.engine import backup as backup_engine
from portunus.engine import managed, retention
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
    if not ctx.settings.get("backup.dir"):
        raise Unavailable(
            "no backup directory is configured",
            event="api.backup_not_configured",
            hint="set [backup] dir in server.toml and restart the server",
        )
    # The same managed backup as the CLI without --out: backup, prune, metrics.
    options = managed.options_from_settings(ctx.settings)
    try:
        made = await ctx.store.in_backup_thread(managed.managed_backup, ctx.store.data_dir, options)
    except managed.BackupIncomplete as incomplete:
        # The backup exists: audited and described, with the failure after it.
        await ctx.store.write(_record, request.ctx.principal.actor, incomplete.made.backup)
        _log_failed(incomplete)
        raise Unavailable(
            incomplete.message,
            event=incomplete.event,
            hint=incomplete.hint,
            details=_describe(incomplete.made),
            **incomplete.fields,
        ) from incomplete
    except PortunusError as error:
        _log_failed(error)
        raise
    await ctx.store.write(_record, request.ctx.principal.actor, made.backup)
    return json(_describe(made), status=201)


def _log_failed(error: PortunusError) -> None:
    # The same summary line the CLI emits, so one alert covers both.
    log.error("backup.failed", msg="operation failed", reason=error.event, via="api")


def _describe(made: managed.ManagedBackup) -> dict[str, object]:
    result = made.backup
    return {
        "path": str(result.path),
        "size": result.bytes,
        "sha256": result.sha256,
        "schema_version": result.schema_version,
        "sidecar": str(result.sidecar) if result.sidecar else None,
        "seconds": round(result.total_seconds, 3),
        "prune": _describe_prune(made.prune),
    }


def _describe_prune(pruned: retention.PruneReport | None) -> dict[str, object] | None:
    """What the retention pass removed; None when no [retention] rule is set."""
    if pruned is None:
        return None
    return {
        "removed": pruned.removed,
        "kept": [d.backup.name for d in pruned.plan.kept],
        "skipped": pruned.skipped,
        "bytes_freed": pruned.bytes_freed,
    }


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
