"""Forwarding rules: a client's listen port (or range) on tcp or udp, and
the 1-8 targets it forwards to."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import apsw

from portunus.server.errors import Conflict, InvalidInput, NotFound
from portunus.server.model import clients
from portunus.store import audit

# A rule with its targets in one statement (so one consistent read, one
# trip into SQLite): the targets come back as a JSON array, in order.
RULE_SELECT = """
SELECT r.id, c.name, r.protocol, r.listen_start, r.listen_end, r.enabled,
       r.created_at, r.updated_at,
       (SELECT json_group_array(json_object('host', host, 'port', port, 'priority', priority)
                                ORDER BY position)
          FROM rule_targets WHERE rule_id = r.id)
  FROM rules r JOIN clients c ON c.id = r.client_id
"""
# One rule by id, the hot read: a row per target, also one statement (one
# snapshot), and a third cheaper than building the JSON array in SQL.
RULE_BY_ID = """
SELECT r.id, c.name, r.protocol, r.listen_start, r.listen_end, r.enabled,
       r.created_at, r.updated_at, t.host, t.port, t.priority
  FROM rules r JOIN clients c ON c.id = r.client_id
  LEFT JOIN rule_targets t ON t.rule_id = r.id
 WHERE r.id = ?
 ORDER BY t.position
"""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    priority: int = 0


@dataclass(frozen=True)
class RuleSpec:
    """A rule as a client asks for it, already validated field by field."""

    client: str
    protocol: str
    listen_start: int
    listen_end: int
    enabled: bool
    targets: tuple[Target, ...]

    def summary(self, client: str) -> dict[str, Any]:
        """For the audit row; ``client`` as stored (a request may spell it
        in another case: client names are case-insensitive)."""
        return {
            "client": client,
            "protocol": self.protocol,
            "listen_start": self.listen_start,
            "listen_end": self.listen_end,
            "enabled": self.enabled,
            "targets": [f"{t.host}:{t.port}" for t in self.targets],
        }


def create(conn: apsw.Connection, spec: RuleSpec, actor: str) -> dict[str, Any]:
    client_id, client = _client_without_clash(conn, spec, exclude=None)
    now = audit.now_rfc3339()
    conn.execute(
        "INSERT INTO rules (client_id, protocol, listen_start, listen_end, enabled, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (client_id, spec.protocol, spec.listen_start, spec.listen_end, spec.enabled, now, now),
    )
    rule_id = conn.last_insert_rowid()
    _insert_targets(conn, rule_id, spec.targets)
    audit.record(conn, actor, "rule.create", f"rule:{rule_id}", **spec.summary(client))
    # Built from what was just written rather than read back: one write is
    # one short stay on the writer thread.
    return _as_dict(rule_id, client, spec, now, now)


def replace(conn: apsw.Connection, rule_id: int, spec: RuleSpec, actor: str) -> dict[str, Any]:
    before = get(conn, rule_id)
    client_id, client = _client_without_clash(conn, spec, exclude=rule_id)
    now = audit.now_rfc3339()
    conn.execute(
        "UPDATE rules SET client_id=?, protocol=?, listen_start=?, listen_end=?, enabled=?,"
        " updated_at=? WHERE id=?",
        (client_id, spec.protocol, spec.listen_start, spec.listen_end, spec.enabled, now, rule_id),
    )
    conn.execute("DELETE FROM rule_targets WHERE rule_id=?", (rule_id,))
    _insert_targets(conn, rule_id, spec.targets)
    audit.record(
        conn,
        actor,
        "rule.update",
        f"rule:{rule_id}",
        before=_summary(before),
        **spec.summary(client),
    )
    return _as_dict(rule_id, client, spec, before["created_at"], now)


def delete(conn: apsw.Connection, rule_id: int, actor: str) -> None:
    before = get(conn, rule_id)
    conn.execute("DELETE FROM rules WHERE id=?", (rule_id,))
    audit.record(conn, actor, "rule.delete", f"rule:{rule_id}", **_summary(before))


def get(conn: apsw.Connection, rule_id: int) -> dict[str, Any]:
    rows = conn.execute(RULE_BY_ID, (rule_id,)).fetchall()
    if not rows:
        raise NotFound(f"no rule with id {rule_id}", field="id")
    targets = [
        {"host": host, "port": port, "priority": priority}
        for *_, host, port, priority in rows
        if host is not None
    ]
    return _rule((*rows[0][:8], targets))


def list_page(
    conn: apsw.Connection,
    *,
    client: str | None,
    protocol: str | None,
    after: int | None,
    limit: int,
) -> tuple[list[dict[str, Any]], int | None]:
    """Rules in id order, ``limit`` at a time; the cursor is the last id."""
    where, params = ["r.id > ?"], [after or 0]
    if client is not None:
        where.append("r.client_id = ?")
        params.append(_client(conn, client)[0])
    if protocol is not None:
        where.append("r.protocol = ?")
        params.append(protocol)
    rows = conn.execute(
        f"{RULE_SELECT} WHERE {' AND '.join(where)} ORDER BY r.id LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    more = len(rows) > limit
    rules = [_rule(row) for row in rows[:limit]]
    return rules, (rules[-1]["id"] if more else None)


def enabled_for_client(conn: apsw.Connection, client_id: int) -> list[dict[str, Any]]:
    """What an edge forwarder polls: its own enabled rules."""
    rows = conn.execute(
        f"{RULE_SELECT} WHERE r.client_id=? AND r.enabled=1 ORDER BY r.protocol, r.listen_start",
        (client_id,),
    ).fetchall()
    return [_rule(row) for row in rows]


def _client(conn: apsw.Connection, name: str) -> tuple[int, str]:
    found = clients.find(conn, name)
    if found is None:
        raise InvalidInput(f"no client named {name!r}", field="client")
    return found


# The client by name, and the one rule of that client and protocol that
# could overlap the new ports. Rules of one client and protocol never
# overlap (this check keeps it so), so only the one starting last at or
# below our end can overlap us: one index probe, however many rules the
# client has. Disabled rules count too: enabling one later must not create
# a clash. One statement, as every statement is a round trip on the writer.
CLIENT_AND_NEIGHBOUR = """
SELECT c.id, c.name, r.id, r.listen_start, r.listen_end
  FROM clients c
  LEFT JOIN rules r ON r.id = (
       SELECT id FROM rules
        WHERE client_id = c.id AND protocol = ? AND listen_start <= ? AND id IS NOT ?
        ORDER BY listen_start DESC LIMIT 1)
 WHERE c.name = ? COLLATE NOCASE
"""


def _client_without_clash(
    conn: apsw.Connection, spec: RuleSpec, exclude: int | None
) -> tuple[int, str]:
    """(id, stored name) of the rule's client; refuses a port clash (409)."""
    rows = conn.execute(
        CLIENT_AND_NEIGHBOUR, (spec.protocol, spec.listen_end, exclude, spec.client)
    ).fetchall()
    if not rows:
        raise InvalidInput(f"no client named {spec.client!r}", field="client")
    client_id, client, other, start, end = rows[0]
    if other is not None and end >= spec.listen_start:
        raise Conflict(
            f"listen port {_ports(spec.listen_start, spec.listen_end)}/{spec.protocol} clashes "
            f"with rule {other} ({_ports(start, end)}/{spec.protocol}) of client {spec.client!r}",
            field="listen_start",
            hint="pick free ports, or change or delete the other rule first",
        )
    return client_id, client


def _insert_targets(conn: apsw.Connection, rule_id: int, targets: tuple[Target, ...]) -> None:
    # One INSERT for all (1-8) targets: one statement, one round trip.
    rows = ", ".join(["(?, ?, ?, ?, ?)"] * len(targets))
    conn.execute(
        f"INSERT INTO rule_targets (rule_id, position, host, port, priority) VALUES {rows}",
        [v for i, t in enumerate(targets, 1) for v in (rule_id, i, t.host, t.port, t.priority)],
    )


def _rule(row: tuple) -> dict[str, Any]:
    rule_id, client, protocol, start, end, enabled, created, updated, targets = row
    return {
        "id": rule_id,
        "client": client,
        "protocol": protocol,
        "listen_start": start,
        "listen_end": end,
        "enabled": bool(enabled),
        "targets": json.loads(targets) if isinstance(targets, str) else targets,
        "created_at": created,
        "updated_at": updated,
    }


def _as_dict(
    rule_id: int, client: str, spec: RuleSpec, created: str, updated: str
) -> dict[str, Any]:
    """The API's view of a rule, from what was just written."""
    targets = [{"host": t.host, "port": t.port, "priority": t.priority} for t in spec.targets]
    row = (rule_id, client, spec.protocol, spec.listen_start, spec.listen_end, spec.enabled)
    return _rule((*row, created, updated, targets))


def _summary(rule: dict[str, Any]) -> dict[str, Any]:
    keys = ("client", "protocol", "listen_start", "listen_end", "enabled")
    return {
        **{k: rule[k] for k in keys},
        "targets": [f"{t['host']}:{t['port']}" for t in rule["targets"]],
    }


def _ports(start: int, end: int) -> str:
    return str(start) if start == end else f"{start}-{end}"
