"""Litestream's log lines as ``replication.*`` events.

Litestream (0.5, ``logging.type: text``) writes Go slog lines:
``time=... level=INFO msg="snapshot complete" db=state.db txid=...``. Each
becomes one event: its level kept, its wording in ``msg``, its fields
beside it. Known messages get their own name; anything else is
``replication.log`` (or ``replication.warning`` / ``replication.error`` by
level), so no line is lost and the catalogue stays finite. A line that is
not slog (Litestream's fatal ``Error: ...``) is ``replication.error``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PAIR = re.compile(r'([\w.\-]+)=("(?:[^"\\]|\\.)*"|\S*)')
LEVELS = {"TRACE": "debug", "DEBUG": "debug", "INFO": "info", "WARN": "warning", "ERROR": "error"}
_OURS = {"event", "msg", "level", "ts", "hint", "exit_code", "timestamp"}


@dataclass(frozen=True)
class Kind:
    """An event name for one of Litestream's messages."""

    event: str
    message: str


KNOWN = (
    Kind(event="replication.replicating", message="replicating to"),
    Kind(event="replication.snapshot_written", message="snapshot complete"),
    Kind(event="replication.compacted", message="compaction complete"),
    Kind(event="replication.uploaded", message="ltx file uploaded"),
    Kind(event="replication.synced", message="replica sync"),
    Kind(event="replication.shut_down", message="litestream shut down"),
    Kind(event="replication.sync_recovered", message="replica sync recovered"),
)
BY_MESSAGE = {k.message: k.event for k in KNOWN}
BY_LEVEL = (
    Kind(event="replication.log", message="debug"),
    Kind(event="replication.log", message="info"),
    Kind(event="replication.warning", message="warning"),
    Kind(event="replication.error", message="error"),
)
FALLBACK = {k.message: k.event for k in BY_LEVEL}


@dataclass(frozen=True)
class Line:
    event: str
    level: str
    msg: str
    fields: dict[str, str]


def translate(raw: str) -> Line | None:
    """One of Litestream's stderr lines as an event; None for a blank line."""
    text = raw.strip()
    if not text:
        return None
    pairs = {k: _unquote(v) for k, v in _PAIR.findall(text)}
    if "level" not in pairs or "msg" not in pairs:
        return Line("replication.error", "error", text, {})
    level = LEVELS.get(pairs.pop("level").upper(), "info")
    msg = pairs.pop("msg")
    pairs.pop("time", None)
    event = BY_MESSAGE.get(msg) or FALLBACK[level]
    fields = {(f"ls_{k}" if k in _OURS else k.replace("-", "_").replace(".", "_")): v
              for k, v in pairs.items()}  # fmt: skip
    return Line(event, level, msg, fields)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value
