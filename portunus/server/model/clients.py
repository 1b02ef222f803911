"""Clients: the edge forwarders. Each gets a token, shown once, with which
it polls its own rules."""

from __future__ import annotations

from typing import Any

import apsw

from portunus.engine.tokens import hash_token, new_token
from portunus.server.errors import Conflict, NotFound
from portunus.server.model.principal import Principal
from portunus.store import audit

CLIENT_TOKEN_PREFIX = "pct_"


def create(conn: apsw.Connection, name: str, actor: str) -> dict[str, Any]:
    # Names are host-like: "edge1" and "EDGE1" are one client (migration 0002).
    if find_id(conn, name) is not None:
        raise Conflict(f"a client named {name!r} already exists", field="name")
    token = new_token(CLIENT_TOKEN_PREFIX)
    conn.execute(
        "INSERT INTO clients (name, token_hash, created_at) VALUES (?, ?, ?)",
        (name, hash_token(token), audit.now_rfc3339()),
    )
    audit.record(conn, actor, "client.create", f"client:{name}")
    return {**get(conn, name), "token": token}


def delete(conn: apsw.Connection, name: str, actor: str) -> None:
    """Remove a client and, with it, its rules."""
    client = get(conn, name)
    conn.execute("DELETE FROM clients WHERE id=?", (client["id"],))
    audit.record(
        conn, actor, "client.delete", f"client:{client['name']}", rules_deleted=client["rules"]
    )


def get(conn: apsw.Connection, name: str) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT c.id, c.name, c.created_at, (SELECT count(*) FROM rules r WHERE r.client_id=c.id)"
        " FROM clients c WHERE c.name = ? COLLATE NOCASE",
        (name,),
    ).fetchall()
    if not rows:
        raise NotFound(f"no client named {name!r}", field="name")
    return _client(rows[0])


def list_all(conn: apsw.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT c.id, c.name, c.created_at, (SELECT count(*) FROM rules r WHERE r.client_id=c.id)"
        " FROM clients c ORDER BY c.name COLLATE NOCASE"
    ).fetchall()
    return [_client(row) for row in rows]


def find_id(conn: apsw.Connection, name: str) -> int | None:
    found = find(conn, name)
    return found[0] if found else None


def find(conn: apsw.Connection, name: str) -> tuple[int, str] | None:
    """(id, stored name) of the client called ``name``, in any case."""
    rows = conn.execute(
        "SELECT id, name FROM clients WHERE name = ? COLLATE NOCASE", (name,)
    ).fetchall()
    return rows[0] if rows else None


def principal_for(conn: apsw.Connection, token_hash: bytes) -> Principal | None:
    rows = conn.execute("SELECT id, name FROM clients WHERE token_hash=?", (token_hash,)).fetchall()
    return Principal("client", rows[0][0], rows[0][1], "client") if rows else None


def _client(row: tuple) -> dict[str, Any]:
    client_id, name, created_at, rules = row
    return {"id": client_id, "name": name, "created_at": created_at, "rules": rules}
