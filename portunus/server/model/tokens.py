"""Operator tokens: admins write, viewers read. Only hashes are stored."""

from __future__ import annotations

from typing import Any

import apsw

from portunus.engine.tokens import create_operator_token
from portunus.server.errors import Conflict, NotFound
from portunus.server.model.principal import Principal
from portunus.store import audit

COLUMNS = "id, name, role, created_at, last_used_at"


def create(conn: apsw.Connection, name: str, role: str, actor: str) -> dict[str, Any]:
    if conn.execute("SELECT 1 FROM operator_tokens WHERE name=?", (name,)).fetchall():
        raise Conflict(f"a token named {name!r} already exists", field="name")
    token = create_operator_token(conn, name, role, actor=actor)
    row = conn.execute(f"SELECT {COLUMNS} FROM operator_tokens WHERE name=?", (name,)).fetchall()
    return {**_token(row[0]), "token": token}


def delete(conn: apsw.Connection, token_id: int, actor: str) -> None:
    found = get(conn, token_id)
    if found["role"] == "admin" and _admin_count(conn) == 1:
        raise Conflict(
            f"{found['name']!r} is the last admin token; deleting it would lock every operator out",
            field="id",
            hint="create another admin token first",
        )
    conn.execute("DELETE FROM operator_tokens WHERE id=?", (token_id,))
    audit.record(conn, actor, "token.delete", f"token:{found['name']}", role=found["role"])


def get(conn: apsw.Connection, token_id: int) -> dict[str, Any]:
    rows = conn.execute(f"SELECT {COLUMNS} FROM operator_tokens WHERE id=?", (token_id,)).fetchall()
    if not rows:
        raise NotFound(f"no token with id {token_id}", field="id")
    return _token(rows[0])


def list_all(conn: apsw.Connection) -> list[dict[str, Any]]:
    return [_token(r) for r in conn.execute(f"SELECT {COLUMNS} FROM operator_tokens ORDER BY id")]


def principal_for(conn: apsw.Connection, token_hash: bytes) -> Principal | None:
    rows = conn.execute(
        "SELECT id, name, role FROM operator_tokens WHERE token_hash=?", (token_hash,)
    ).fetchall()
    return Principal("operator", *rows[0]) if rows else None


def touch(conn: apsw.Connection, token_id: int) -> None:
    """Bookkeeping, not an operator's change: no audit row."""
    conn.execute(
        "UPDATE operator_tokens SET last_used_at=? WHERE id=?", (audit.now_rfc3339(), token_id)
    )


def _admin_count(conn: apsw.Connection) -> int:
    return conn.execute("SELECT count(*) FROM operator_tokens WHERE role='admin'").fetchall()[0][0]


def _token(row: tuple) -> dict[str, Any]:
    token_id, name, role, created_at, last_used_at = row
    return {
        "id": token_id,
        "name": name,
        "role": role,
        "created_at": created_at,
        "last_used_at": last_used_at,
    }
