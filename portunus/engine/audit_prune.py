"""Audit retention: delete audit rows older than a cut-off, in small batches.

Runs beside a live server (it does not take the data dir's lock): each
batch is its own short ``BEGIN IMMEDIATE`` transaction, and between batches
the writer lock is left free for about as long as the batch held it, so the
server's own writes, waiting in their busy handler, get their turn instead
of timing out behind one long delete.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import apsw
import structlog

from portunus.datadir import DataDir
from portunus.errors import InputMissing, StorageIOError
from portunus.store import audit, migrations
from portunus.store.connection import close_quietly, open_as_found, use_wal
from portunus.store.live import require_state_file

log = structlog.get_logger()

BATCH_ROWS = 1000
MIN_PAUSE_SECONDS = 0.01


@dataclass(frozen=True)
class AuditPruneResult:
    before: datetime
    matched: int  # rows older than the cut-off when we started
    deleted: int
    batches: int
    oldest: str | None  # `at` of the oldest matching row
    dry_run: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "before": to_stored_time(self.before),
            "matched": self.matched,
            "deleted": self.deleted,
            "batches": self.batches,
            "oldest": self.oldest,
            "dry_run": self.dry_run,
        }


def to_stored_time(at: datetime) -> str:
    """The audit log's own format, so text order is time order."""
    return audit.stored_time(at)


def cutoff_from_days(retain_days: int, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) - timedelta(days=retain_days)


def prune_audit(
    data_dir: DataDir,
    before: datetime,
    *,
    dry_run: bool = False,
    batch_rows: int = BATCH_ROWS,
    actor: str = "cli",
) -> AuditPruneResult:
    """Delete ``audit_log`` rows with ``at`` before ``before`` (or count them)."""
    conn = None
    try:
        conn = _open(data_dir, dry_run=dry_run)
        cutoff = to_stored_time(before)
        matched, oldest = _matching(conn, cutoff)
        log.info(
            "audit.prune_planned",
            msg="audit rows older than the cut-off",
            before=cutoff,
            matched=matched,
            oldest=oldest,
            dry_run=dry_run,
        )
        if dry_run or matched == 0:
            return AuditPruneResult(before, matched, 0, 0, oldest, dry_run)
        deleted, batches = _delete_in_batches(conn, cutoff, batch_rows)
        _record(conn, actor, cutoff, deleted)
    except apsw.BusyError as exc:
        raise _io_error(data_dir, f"the store stayed busy: {exc}") from exc
    except apsw.Error as exc:
        raise _io_error(data_dir, str(exc)) from exc
    finally:
        close_quietly(conn)
    result = AuditPruneResult(before, matched, deleted, batches, oldest, dry_run)
    log.info("audit.pruned", msg="old audit rows deleted", **result.as_dict())
    return result


def _open(data_dir: DataDir, *, dry_run: bool) -> apsw.Connection:
    """The store, checked; a dry run leaves its journal mode as found."""
    path = data_dir.state_db
    if not os.path.lexists(path):
        raise InputMissing(
            f"no state database at {path}",
            event="audit.store_missing",
            hint="check --data-dir (or data_dir in server.toml)",
            path=str(path),
        )
    require_state_file(path)
    conn = open_as_found(path)
    try:
        # No migration here: the server may be running this store right now.
        # Every schema version has had this audit_log table since migration 1.
        # Checked before the first write: a refused file is left as it was.
        version = migrations.usable_schema_version(conn, path)
        if not dry_run:
            use_wal(conn)
        migrations.log_store_opened(
            path,
            version,
            "store open to prune its audit log (not migrated: a server may run it)",
            mode="read-write",
        )
    except BaseException:
        close_quietly(conn)
        raise
    return conn


def _matching(conn: apsw.Connection, cutoff: str) -> tuple[int, str | None]:
    count, oldest = conn.execute(
        "SELECT count(*), min(at) FROM audit_log WHERE at < ?", (cutoff,)
    ).fetchall()[0]
    return count, oldest


def _delete_in_batches(conn: apsw.Connection, cutoff: str, batch_rows: int) -> tuple[int, int]:
    deleted = batches = 0
    while True:
        started = time.monotonic()
        with _immediate(conn):
            conn.execute(
                "DELETE FROM audit_log WHERE id IN "
                "(SELECT id FROM audit_log WHERE at < ? ORDER BY at LIMIT ?)",
                (cutoff, batch_rows),
            )
            count = conn.changes()
        deleted += count
        batches += 1
        if count < batch_rows:
            return deleted, batches
        time.sleep(max(MIN_PAUSE_SECONDS, time.monotonic() - started))


def _record(conn: apsw.Connection, actor: str, cutoff: str, deleted: int) -> None:
    # Pruning history is itself a mutation worth an audit row.
    with _immediate(conn):
        audit.record(conn, actor, "audit.prune", "audit_log", before=cutoff, deleted=deleted)


@contextlib.contextmanager
def _immediate(conn: apsw.Connection):
    """A write transaction that takes the writer lock up front, waiting in the
    busy handler: a deferred one could fail at once on a stale snapshot."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _io_error(data_dir: DataDir, detail: str) -> StorageIOError:
    return StorageIOError(
        f"audit prune failed on {data_dir.state_db}: {detail}",
        event="audit.prune_failed",
        hint="nothing past the last finished batch was deleted; run it again later",
        path=str(data_dir.state_db),
    )
