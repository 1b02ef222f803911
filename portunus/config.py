"""``server.toml``: one schema in code, read with tomlkit.

Every key is optional with a built-in default. Unknown keys, wrong types,
out-of-range values and TOML syntax errors are refused (exit 78,
``startup.config_invalid``) naming the file, the line and the key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import ParseError as TomlParseError

from portunus.errors import RefusedByConfiguration

DURATION = re.compile(r"^(\d+)([smhdwy])$")


@dataclass(frozen=True)
class Key:
    """One setting: where it lives, what it accepts, what it defaults to."""

    table: str  # "" for the top level
    name: str
    kind: type | tuple[type, ...]
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None  # returns a complaint

    @property
    def dotted(self) -> str:
        return f"{self.table}.{self.name}" if self.table else self.name


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _at_least(low: int) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be >= {low}"


def _duration(value: Any) -> str | None:
    return None if DURATION.match(value) else "must be a duration like '30d', '12h', '90m'"


def _scope(value: Any) -> str | None:
    bad = [v for v in value if v not in ("state", "tls", "legacy")]
    return f"unknown scope {bad}; allowed: state, tls, legacy" if bad else None


def _listen(value: Any) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be HOST:PORT, e.g. 127.0.0.1:7443"
    return None


SCHEMA: tuple[Key, ...] = (
    Key("", "data_dir", str, None, "data dir holding state.db (see resolution order)"),
    Key("", "listen", str, "127.0.0.1:7443", "HOST:PORT the HTTPS API listens on", _listen),
    Key("", "tls", bool, True, "serve HTTPS (false only behind a TLS-terminating proxy)"),
    Key("", "tls_cert_path", str, None, "certificate path (default <data-dir>/server.crt)"),
    Key("", "tls_key_path", str, None, "private key path (default <data-dir>/server.key)"),
    Key(
        "",
        "log_format",
        str,
        "logfmt",
        "logfmt, json or console",
        _one_of("logfmt", "json", "console"),
    ),
    Key(
        "",
        "log_level",
        str,
        "info",
        "debug, info, warning or error",
        _one_of("debug", "info", "warning", "error"),
    ),
    Key(
        "",
        "shutdown_drain_timeout_secs",
        int,
        10,
        "seconds to finish in-flight requests",
        _at_least(0),
    ),
    Key("backup", "dir", str, None, "directory backups go to when --out is not given"),
    Key(
        "backup",
        "verify",
        str,
        "quick",
        "none, quick (quick_check) or full (integrity_check)",
        _one_of("none", "quick", "full"),
    ),
    Key("backup", "checksum", bool, True, "write a <name>.sha256 sidecar"),
    Key("backup", "metrics_textfile", str, None, "node_exporter textfile to update"),
    Key("retention", "keep_last", int, 0, "keep the N newest backups", _at_least(0)),
    Key("retention", "keep_hourly", int, 0, "newest per hour, N hours", _at_least(0)),
    Key("retention", "keep_daily", int, 0, "newest per day, N days", _at_least(0)),
    Key("retention", "keep_weekly", int, 0, "newest per ISO week, N weeks", _at_least(0)),
    Key("retention", "keep_monthly", int, 0, "newest per month, N months", _at_least(0)),
    Key("retention", "keep_yearly", int, 0, "newest per year, N years", _at_least(0)),
    Key(
        "retention",
        "keep_within",
        str,
        None,
        "keep all within this duration of the newest",
        _duration,
    ),
    Key(
        "reset",
        "scope",
        list,
        ["state"],
        "what reset --confirm removes: state, tls, legacy",
        _scope,
    ),
    Key("audit", "retain_days", int, 365, "audit rows older than this are pruned", _at_least(1)),
)

TABLES = sorted({k.table for k in SCHEMA if k.table})


@dataclass(frozen=True)
class Settings:
    """Effective settings: defaults overlaid with the file's values."""

    values: Mapping[str, Any]
    source: Path | None  # the file read, or None when there was none

    def get(self, dotted: str) -> Any:
        return self.values[dotted]


def defaults() -> Settings:
    return Settings({k.dotted: k.default for k in SCHEMA}, None)


def config_path(flag: str | None, env: Mapping[str, str], data_dir: Path | None) -> Path | None:
    """--config, then $PORTUNUS_CONFIG, then <data-dir>/server.toml."""
    if flag:
        return Path(flag)
    if env.get("PORTUNUS_CONFIG"):
        return Path(env["PORTUNUS_CONFIG"])
    return data_dir / "server.toml" if data_dir else None


def load(path: Path | None, *, required: bool = False) -> Settings:
    """Read and validate ``path``; a missing optional file means defaults."""
    if path is None:
        return defaults()
    try:
        text = path.read_text("utf-8")
    except (FileNotFoundError, NotADirectoryError):
        if required:
            raise _invalid(path, None, None, "the file does not exist") from None
        return defaults()
    except (OSError, UnicodeDecodeError) as exc:
        raise _invalid(path, None, None, f"cannot read it: {exc}") from exc
    return Settings(parse(text, path), path)


def parse(text: str, path: Path) -> dict[str, Any]:
    try:
        doc = tomlkit.parse(text)
    except TomlParseError as exc:
        raise _invalid(path, exc.line, None, f"not valid TOML: {exc}") from exc
    values = {k.dotted: k.default for k in SCHEMA}
    by_name = {k.dotted: k for k in SCHEMA}
    for dotted, value in _flatten(doc.unwrap(), path, text):
        key = by_name.get(dotted)
        if key is None:
            raise _invalid(path, _line_of(text, dotted), dotted, "unknown key")
        values[dotted] = _checked(key, value, path, text)
    return values


def _flatten(doc: dict[str, Any], path: Path, text: str):
    for name, value in doc.items():
        if name in TABLES:
            if not isinstance(value, dict):
                raise _invalid(path, _line_of(text, name), name, "must be a table")
            for sub, sub_value in value.items():
                yield f"{name}.{sub}", sub_value
        else:
            yield name, value


def _checked(key: Key, value: Any, path: Path, text: str) -> Any:
    line = _line_of(text, key.dotted)
    kinds = key.kind if isinstance(key.kind, tuple) else (key.kind,)
    # bool is an int in Python; TOML keeps them apart, and so do we.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise _invalid(path, line, key.dotted, f"must be {expected}, got {value!r}")
    complaint = key.check(value) if key.check else None
    if complaint:
        raise _invalid(path, line, key.dotted, f"{complaint} (got {value!r})")
    return value


def _line_of(text: str, dotted: str) -> int | None:
    """Best-effort line number of a key: inside its [table], or at top level."""
    table, _, name = dotted.rpartition(".")
    current = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        header = re.match(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]", line)
        if header:
            current = header[1]
            if not name and current == dotted:
                return number
            continue
        if current == table and re.match(rf"^{re.escape(name)}\s*=", line):
            return number
    return None


def _invalid(path: Path, line: int | None, key: str | None, problem: str):
    where = f"{path}:{line}" if line else str(path)
    subject = f"key '{key}' " if key else ""
    return RefusedByConfiguration(
        f"{where}: {subject}{problem}",
        event="startup.config_invalid",
        hint="fix the file (see config/server.toml for every key and its default)",
        file=str(path),
        line=line,
        key=key,
    )
