"""Reading the append-only audit log, newest first, a page at a time."""

from __future__ import annotations

import json
from typing import Any

import apsw


def page(
    conn: apsw.Connection,
    *,
    since: str | None,
    until: str | None,
    before: int | None,
    limit: int,
) -> tuple[list[dict[str, Any]], int | None]:
    """Entries with ``since <= at < until``, ids below ``before``; the
    cursor for the next page is the last id returned."""
    where, params = [], []
    if before is not None:
        where.append("id < ?")
        params.append(before)
    if since is not None:
        where.append("at >= ?")
        params.append(since)
    if until is not None:
        where.append("at < ?")
        params.append(until)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        f"SELECT id, at, actor, action, resource, details FROM audit_log {clause}"
        " ORDER BY id DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    entries = [_entry(row) for row in rows[:limit]]
    return entries, (entries[-1]["id"] if len(rows) > limit else None)


def _entry(row: tuple) -> dict[str, Any]:
    entry_id, at, actor, action, resource, details = row
    return {
        "id": entry_id,
        "at": at,
        "actor": actor,
        "action": action,
        "resource": resource,
        "details": json.loads(details),
    }
