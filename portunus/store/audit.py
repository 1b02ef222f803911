"""The append-only audit log: one row per mutation, written in the same
transaction as the mutation it records."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import apsw


def record(conn: apsw.Connection, actor: str, action: str, resource: str, **details: Any) -> None:
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, resource, details) VALUES (?, ?, ?, ?, ?)",
        (now_rfc3339(), actor, action, resource, json.dumps(details, sort_keys=True)),
    )


def now_rfc3339() -> str:
    return stored_time(datetime.now(UTC))


def stored_time(at: datetime) -> str:
    """The one format of every stored timestamp: RFC3339 UTC, milliseconds,
    ``Z``, so that text order is time order."""
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
