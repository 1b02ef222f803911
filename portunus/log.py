"""structlog set-up: one event per line on stderr, keyed by a stable ``event``.

Modules log through ``log = structlog.get_logger()``; only entry points call
:func:`configure`. Event names are a contract listed in docs/events.md.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog

LOG_FORMATS = ("logfmt", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")

# Keys whose values must never reach a log line, whatever a caller passes.
_SECRET_KEY = re.compile(r"(token|secret|password|passwd|private|credential|key_pem)", re.I)
REDACTED = "[redacted]"


def redact_secrets(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Replace the value of any secret-looking key with a fixed marker."""
    for key in event_dict:
        if key != "event" and _SECRET_KEY.search(key):
            event_dict[key] = REDACTED
    return event_dict


def logfmt_scalars(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """logfmt holds scalars only: a mapping becomes one key per entry,
    dotted (``rows.audit_log=7 rows.clients=3``, nested ones too), a list
    or tuple one comma-joined value (``new=state,tls``). Never a Python
    repr; the json format keeps the real structure."""
    flat: dict[str, Any] = {}
    for key, value in event_dict.items():
        _flatten_into(flat, key, value)
    return flat


def _flatten_into(flat: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(value, Mapping):
        for sub, sub_value in value.items():
            _flatten_into(flat, f"{key}.{sub}", sub_value)
    elif isinstance(value, list | tuple):
        flat[key] = ",".join(_scalar(item) for item in value)
    elif isinstance(value, set | frozenset):
        flat[key] = ",".join(sorted(_scalar(item) for item in value))
    else:
        flat[key] = value


def _scalar(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    return "" if item is None else str(item)


def _renderer(fmt: str, stream: Any) -> Any:
    if fmt == "json":
        return structlog.processors.JSONRenderer(sort_keys=False)
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=stream.isatty())
    # logfmt: lines read ``level=error event=startup.store_in_use msg=...``,
    # exactly as the spec prints them, so alerting can grep the prefix.
    return structlog.processors.LogfmtRenderer(
        key_order=["level", "event", "msg", "hint"], drop_missing=True, bool_as_flag=False
    )


def _exception_formatting(fmt: str) -> list[Any]:
    # ``exc_info=True`` becomes an ``exception`` field holding the traceback
    # (newlines escaped by logfmt); the console renderer prints it itself.
    return [] if fmt == "console" else [structlog.processors.format_exc_info]


def configure(fmt: str = "logfmt", level: str = "info", stream: Any = None) -> None:
    """Route every structlog logger to ``stream`` (stderr) in ``fmt``."""
    stream = stream or sys.stderr
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            redact_secrets,
            # After the redaction, which looks at the keys callers pass: a
            # count of tokens (rows.api_tokens) is no secret.
            *([logfmt_scalars] if fmt == "logfmt" else []),
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            *_exception_formatting(fmt),
            _renderer(fmt, stream),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def is_configured() -> bool:
    return structlog.is_configured()
