"""Request parsing: every value checked, every complaint naming its field.

Unknown fields are refused rather than ignored: a typo ("enabeld") must not
silently fall back to a default.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any

from sanic.request import Request

from portunus.engine.tokens import NAME_PATTERN
from portunus.server.errors import InvalidInput
from portunus.server.model.rules import RuleSpec, Target
from portunus.store import audit

ROLES = ("admin", "viewer")
PROTOCOLS = ("tcp", "udp")
MAX_TARGETS = 8
PRIORITY_MAX = 65535
DEFAULT_PAGE = 100
MAX_PAGE = 1000
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
# Dot-separated labels of 1-63 characters, an optional trailing dot: one match.
HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object."""
    if not body:
        raise InvalidInput("the request needs a JSON object body", field="body")
    try:
        value = json.loads(body, object_pairs_hook=_refuse_duplicate_keys)
    except DuplicateKey as exc:
        raise InvalidInput(
            f"{exc.key!r} is given twice in one object; give it once", field=exc.key
        ) from None
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}", field="body") from None
    if not isinstance(value, dict):
        raise InvalidInput("the body must be a JSON object", field="body")
    return value


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON allows a key twice and Python keeps the last: which one the
    client meant is a guess, so neither is taken."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return value


def token_request(body: dict[str, Any]) -> tuple[str, str]:
    only_fields(body, required=("name", "role"))
    return name(body, "name"), choice(body, "role", ROLES)


def client_request(body: dict[str, Any]) -> str:
    only_fields(body, required=("name",))
    return name(body, "name")


def rule_spec(body: dict[str, Any]) -> RuleSpec:
    only_fields(
        body,
        required=("client", "protocol", "listen_start", "targets"),
        optional=("listen_end", "enabled"),
    )
    start = integer(body, "listen_start", 1, 65535)
    end = integer(body, "listen_end", 1, 65535) if "listen_end" in body else start
    if end < start:
        raise InvalidInput(
            f"listen_end ({end}) must be >= listen_start ({start})", field="listen_end"
        )
    return RuleSpec(
        client=name(body, "client"),
        protocol=choice(body, "protocol", PROTOCOLS),
        listen_start=start,
        listen_end=end,
        enabled=boolean(body, "enabled") if "enabled" in body else True,
        targets=targets(body.get("targets")),
    )


def targets(value: Any) -> tuple[Target, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_TARGETS:
        raise InvalidInput(f"targets must be a list of 1 to {MAX_TARGETS} targets", field="targets")
    return tuple(target(item, f"targets[{i}]") for i, item in enumerate(value))


def target(value: Any, where: str) -> Target:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be an object with host and port", field=where)
    only_fields(value, required=("host", "port"), optional=("priority",), where=where)
    priority = (
        integer(value, "priority", 0, PRIORITY_MAX, where=where) if "priority" in value else 0
    )
    return Target(
        host=host(value, "host", where=where),
        port=integer(value, "port", 1, 65535, where=where),
        priority=priority,
    )


def only_fields(
    body: Mapping[str, Any],
    *,
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
    where: str = "",
) -> None:
    for key in body:
        if key not in required and key not in optional:
            allowed = ", ".join((*required, *optional))
            raise InvalidInput(
                f"unknown field {key!r}; allowed: {allowed}", field=_path(where, key)
            )
    for key in required:
        if key not in body:
            raise InvalidInput(f"missing field {key!r}", field=_path(where, key))


def integer(body: Mapping[str, Any], key: str, low: int, high: int, *, where: str = "") -> int:
    value = body[key]
    # JSON true/false are bools, which Python also counts as ints.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(
            f"{key} must be an integer from {low} to {high}, got {_show(value)}",
            field=_path(where, key),
        )
    return value


def boolean(body: Mapping[str, Any], key: str) -> bool:
    value = body[key]
    if not isinstance(value, bool):
        raise InvalidInput(f"{key} must be true or false, got {_show(value)}", field=key)
    return value


def choice(body: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = body[key]
    if value not in allowed or not isinstance(value, str):
        raise InvalidInput(
            f"{key} must be one of {', '.join(allowed)}, got {_show(value)}", field=key
        )
    return value


def name(body: Mapping[str, Any], key: str) -> str:
    value = body[key]
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise InvalidInput(
            f"{key} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            f"or digit, got {_show(value)}",
            field=key,
        )
    return value


def host(body: Mapping[str, Any], key: str, *, where: str = "") -> str:
    value = body[key]
    if not isinstance(value, str) or not is_host(value):
        raise InvalidInput(
            f"{key} must be a hostname or an IP address, got {_show(value)}",
            field=_path(where, key),
        )
    return value


def is_host(value: str) -> bool:
    # Names first: dotted IPv4 addresses pass as names too, and the regex
    # is several times cheaper than ipaddress (IPv6 needs the latter).
    if len(value) <= 253 and HOST_NAME.fullmatch(value):
        return True
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


# --- query strings -----------------------------------------------------------


def query(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """Query parameters as a dict; unknown or repeated ones are refused, and
    so are blank ones (``?client=`` must not mean "every client")."""
    seen: dict[str, str] = {}
    for key, value in request.get_query_args(keep_blank_values=True):
        if key not in allowed:
            raise InvalidInput(
                f"unknown query parameter {key!r}; allowed: {', '.join(allowed)}", field=key
            )
        if key in seen:
            raise InvalidInput(f"query parameter {key!r} given twice", field=key)
        seen[key] = value
    return seen


def page_limit(params: Mapping[str, str]) -> int:
    raw = params.get("limit")
    if raw is None:
        return DEFAULT_PAGE
    if not _digits(raw) or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE}", field="limit")
    return int(raw)


def cursor(params: Mapping[str, str]) -> int | None:
    raw = params.get("cursor")
    if raw is None:
        return None
    if not _digits(raw) or not 0 < int(raw) < 2**63:
        raise InvalidInput(
            "cursor must be a next_cursor value from a previous page", field="cursor"
        )
    return int(raw)


def timestamp(params: Mapping[str, str], key: str) -> str | None:
    """An RFC 3339 time, normalised to the audit log's UTC format so that
    string comparison is time comparison."""
    raw = params.get(key)
    if raw is None:
        return None
    try:
        return audit.stored_time(audit.parse_time(raw))
    except audit.NoTimeZone:
        raise InvalidInput(f"{key} needs a time zone (Z or +hh:mm)", field=key) from None
    except ValueError:
        raise InvalidInput(
            f"{key} must be an RFC 3339 time such as 2026-05-08T02:00:00Z", field=key
        ) from None


def resource_id(raw: str, what: str) -> int:
    if not _digits(raw) or not 0 < int(raw) < 2**63:
        raise InvalidInput(f"{what} id must be a positive integer", field="id")
    return int(raw)


def _digits(raw: str) -> bool:
    return raw.isascii() and raw.isdigit() and len(raw) <= 19


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
