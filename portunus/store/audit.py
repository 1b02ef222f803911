"""The append-only audit log: one row per mutation, written in the same
transaction as the mutation it records."""

from __future__ import annotations

import json
import re
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


# RFC 3339's date-time (section 5.6): a full date, T, a full time, a zone.
_NO_ZONE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?")
_DATE_TIME = re.compile(_NO_ZONE.pattern + r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})")


class NoTimeZone(ValueError):
    """An RFC 3339 time without its zone."""


def parse_time(text: str) -> datetime:
    """An RFC 3339 date-time as an aware UTC datetime; ValueError (NoTimeZone
    for a missing zone) for anything else, including ISO 8601 forms RFC 3339
    leaves out, a leap second, and times out of Python's range once in UTC."""
    if not _DATE_TIME.fullmatch(text):
        if _NO_ZONE.fullmatch(text):
            raise NoTimeZone(f"{text!r} has no time zone")
        raise ValueError(f"{text!r} is not an RFC 3339 time")
    try:
        return datetime.fromisoformat(text.upper()).astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{text!r} is out of range") from None
