"""``server.toml``: one schema in code, read and edited with tomlkit.

Every key is optional with a built-in default. Unknown keys, wrong types,
out-of-range values and TOML syntax errors are refused (exit 78,
``startup.config_invalid``) naming the file, the line and the key.
``config set`` edits the file through tomlkit, so the operator's comments
and layout survive, and writes it only once the result validates.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, NamedTuple

import structlog

from portunus import lazy
from portunus.durable import write_atomically
from portunus.durations import parse_duration
from portunus.errors import RefusedByConfiguration, StorageIOError

# Imported when a server.toml is read or edited: a command on built-in
# defaults does not pay for tomlkit (docs/performance.md, "Cold start").
tomlkit = lazy.module("tomlkit")
tomlkit_exceptions = lazy.module("tomlkit.exceptions")
tomlkit_items = lazy.module("tomlkit.items")

log = structlog.get_logger()

Check = Callable[[Any], str | None]  # returns a complaint, or None when fine


# The value types here are NamedTuples, not frozen dataclasses: defining a
# dataclass costs about a millisecond at every start (docs/performance.md,
# "Cold start").
class Key(NamedTuple):
    """One setting: where it lives, what it accepts, what it defaults to."""

    table: str  # "" for the top level
    name: str
    kind: type
    default: Any
    doc: str
    check: Check | None = None
    allowed: str = ""  # the accepted range, in words, for docs and messages
    shown: Callable[[Any], Any] | None = None  # the value as a message may show it

    @property
    def dotted(self) -> str:
        return f"{self.table}.{self.name}" if self.table else self.name


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _between(low: int, high: int) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}"


def _absolute_path(value: str) -> str | None:
    if not value.startswith(("/", "~")):
        return "must be an absolute path (or start with ~)"
    return None


def _prom_file(value: str) -> str | None:
    if not value.endswith(".prom"):
        return "must end in .prom (node_exporter's textfile collector reads only *.prom)"
    return _absolute_path(value)


def _duration(value: str) -> str | None:
    try:
        length = parse_duration(value)
    except ValueError:
        return "must be a duration like '30d', '12h', '1w3d' (units s, m, h, d, w, y)"
    return None if length.total_seconds() > 0 else "must be longer than zero"


def _scope(value: list[Any]) -> str | None:
    if not all(isinstance(v, str) for v in value):
        return "must be an array of strings"
    bad = [v for v in value if v not in ("state", "tls", "legacy")]
    return f"unknown scope {bad}; allowed: state, tls, legacy" if bad else None


def _recipients(value: list[Any]) -> str | None:
    if not all(isinstance(v, str) for v in value):
        return "must be an array of strings"
    # Imported here: only a file that sets encrypt_to pays for loading pyrage.
    import pyrage
    from pyrage import ssh, x25519

    for text in value:
        parse = ssh.Recipient if text.strip().startswith("ssh-") else x25519.Recipient
        try:
            parse.from_str(text.strip())
        except (pyrage.RecipientError, ValueError):
            return f"{text!r} is not an age recipient (age1…) or ssh-ed25519/ssh-rsa public key"
    return None


def _listen(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "must be HOST:PORT, e.g. 127.0.0.1:7443 or [::1]:7443"
    return None


def _replica_url(value: str) -> str | None:
    # Imported here: the replication package imports this module.
    from portunus.replication.settings import url_complaint

    return url_complaint(value)


def _without_credentials(value: str) -> str:
    from portunus.replication.settings import public_url

    try:
        return public_url(value)
    except ValueError:
        return "(not shown)"


def _endpoint(value: str) -> str | None:
    from portunus.replication.settings import endpoint_complaint

    return endpoint_complaint(value)


KEEP = 1_000_000  # far more periods than anyone keeps; catches a typo'd huge number
_PATH = "absolute path"

SCHEMA: tuple[Key, ...] = (
    Key("", "data_dir", str, None, "data dir holding state.db (see the resolution order)",
        _absolute_path, _PATH),
    Key("", "listen", str, "127.0.0.1:7443", "HOST:PORT the HTTPS API listens on", _listen,
        "HOST:PORT, port 1-65535"),
    Key("", "tls", bool, True, "serve HTTPS (false only behind a TLS-terminating proxy)"),
    Key("", "tls_cert_path", str, None, "certificate (default <data-dir>/server.crt)",
        _absolute_path, _PATH),
    Key("", "tls_key_path", str, None, "private key, mode 0600 (default <data-dir>/server.key)",
        _absolute_path, _PATH),
    Key("", "log_format", str, "logfmt", "log line format", _one_of("logfmt", "json", "console"),
        "logfmt, json, console"),
    Key("", "log_level", str, "info", "lowest level logged",
        _one_of("debug", "info", "warning", "error"), "debug, info, warning, error"),
    Key("", "shutdown_drain_timeout_secs", int, 10, "seconds to finish in-flight requests",
        _between(0, 3600), "0-3600"),
    Key("backup", "dir", str, None, "where backups go when --out is not given", _absolute_path,
        _PATH),
    Key("backup", "verify", str, "quick", "check of each new backup: none, quick "
        "(quick_check) or full (integrity_check)", _one_of("none", "quick", "full"),
        "none, quick, full"),
    Key("backup", "checksum", bool, True, "write a <name>.sha256 sidecar"),
    Key("backup", "encrypt_to", list, [], "age recipients (age1…, ssh-ed25519/ssh-rsa public "
        "keys): seal every backup", _recipients, "array of age/SSH public keys"),
    Key("backup", "recipients_file", str, None, "file of age recipients (age's format; "
        "# comments) that seal every backup", _absolute_path, _PATH),
    Key("backup", "metrics_textfile", str, None, "node_exporter textfile updated by backup "
        "and prune", _prom_file, "absolute path ending in .prom"),
    Key("retention", "keep_last", int, 0, "keep the N newest backups", _between(0, KEEP),
        f"0-{KEEP}"),
    Key("retention", "keep_hourly", int, 0, "newest per hour, for the N newest hours",
        _between(0, KEEP), f"0-{KEEP}"),
    Key("retention", "keep_daily", int, 0, "newest per day, for the N newest days",
        _between(0, KEEP), f"0-{KEEP}"),
    Key("retention", "keep_weekly", int, 0, "newest per ISO week, for the N newest weeks",
        _between(0, KEEP), f"0-{KEEP}"),
    Key("retention", "keep_monthly", int, 0, "newest per month, for the N newest months",
        _between(0, KEEP), f"0-{KEEP}"),
    Key("retention", "keep_yearly", int, 0, "newest per year, for the N newest years",
        _between(0, KEEP), f"0-{KEEP}"),
    Key("retention", "keep_within", str, None, "keep every backup within this duration of "
        "the newest", _duration, "duration > 0, e.g. 30d, 12h, 1w3d"),
    Key("reset", "scope", list, ["state"], "what reset --confirm removes (state always)",
        _scope, "array of state, tls, legacy"),
    Key("replication", "url", str, None, "Litestream replica URL; setting it turns "
        "continuous replication on (credentials only from the environment)", _replica_url,
        "s3://, gs://, abs://, sftp://, file:///abs/path; no credentials", _without_credentials),
    Key("replication", "endpoint", str, None, "S3-compatible endpoint (MinIO, ...)", _endpoint,
        "http:// or https:// URL without credentials", _without_credentials),
    Key("replication", "region", str, None, "S3 region", None, "any"),
    Key("replication", "force_path_style", bool, False, "S3 path-style addressing (MinIO)"),
    Key("replication", "sync_interval", str, "1s", "how often new WAL frames are shipped",
        _duration, "duration > 0, e.g. 1s, 10s"),
    Key("replication", "snapshot_interval", str, "24h", "how often a full snapshot is written",
        _duration, "duration > 0, e.g. 24h"),
    Key("replication", "retention", str, "72h", "how far back a point-in-time restore "
        "can reach", _duration, "duration > 0, e.g. 72h, 7d"),
    Key("audit", "retain_days", int, 365, "audit prune removes rows older than this",
        _between(1, 36500), "1-36500"),
)  # fmt: skip

BY_DOTTED = {k.dotted: k for k in SCHEMA}
TABLES = sorted({k.table for k in SCHEMA if k.table})
TYPE_NAMES = {str: "string", int: "integer", bool: "boolean", list: "array", float: "float"}


class Problem(NamedTuple):
    """One thing wrong with a config file."""

    line: int | None
    key: str | None
    message: str

    def render(self, path: Path) -> str:
        where = f"{path}:{self.line}" if self.line else str(path)
        subject = f"key '{self.key}': " if self.key else ""
        return f"{where}: {subject}{self.message}"


class Settings(NamedTuple):
    """Effective settings: defaults overlaid with the file's values."""

    values: Mapping[str, Any]
    source: Path | None  # the file read, or None when there was none
    explicit: frozenset[str] = frozenset()  # keys the file sets

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
    text = read_text(path, required=required)
    if text is None:
        return defaults()
    values, problems = examine(text)
    if problems:
        raise invalid(path, problems)
    merged = {k.dotted: k.default for k in SCHEMA}
    merged.update(values)
    return Settings(merged, path, frozenset(values))


def read_text(path: Path, *, required: bool) -> str | None:
    """The file's text; None when it is absent and optional."""
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        if required:
            raise invalid(path, [Problem(None, None, "the file does not exist")]) from None
        return None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise invalid(path, [Problem(None, None, f"cannot read it: {exc}")]) from exc
    except OSError as exc:
        # Permissions or a failing disk: the environment, not the file's
        # content, so an I/O error (74) like every other one.
        raise StorageIOError(
            f"cannot read {path}: {exc.strerror or exc}",
            event="startup.config_unreadable",
            hint="check the owner and mode of the file and of the directories above it "
            "(the server's user must be able to read it)",
            path=str(path),
        ) from exc


def examine(text: str) -> tuple[dict[str, Any], list[Problem]]:
    """Every key the text sets (checked) and every problem found, in file order."""
    try:
        doc = tomlkit.parse(text)
    # ParseError carries the line; KeyAlreadyPresent does not
    except tomlkit_exceptions.TOMLKitError as exc:
        return {}, [Problem(getattr(exc, "line", None), None, f"not valid TOML: {exc}")]
    lines = key_lines(text)
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for dotted, value in _flatten(doc.unwrap()):
        line = line_of(lines, dotted)
        complaint = _complaint(dotted, value)
        if complaint:
            problems.append(Problem(line, dotted, complaint))
        else:
            values[dotted] = value
    problems.extend(_half_pairs(values, lines))
    problems.sort(key=lambda p: p.line or 0)
    return values, problems


# Set together or not at all: one alone would pair the operator's file with
# the data dir's server.crt/server.key, never what anyone means.
PAIRS = (("tls_cert_path", "tls_key_path"),)


def _half_pairs(values: Mapping[str, Any], lines: Mapping[str, int]) -> list[Problem]:
    problems = []
    for pair in PAIRS:
        present = [name for name in pair if values.get(name) is not None]
        if len(present) == 1:
            (name,) = present
            (partner,) = [other for other in pair if other != name]
            problems.append(Problem(line_of(lines, name), name, _half_pair(name, partner)))
    return problems


def _half_pair(name: str, partner: str) -> str:
    return (
        f"{name} is set but {partner} is not: set both (your own certificate and key) "
        f"or neither (the data dir's server.crt and server.key, generated when absent)"
    )


def _flatten(doc: dict[str, Any]):
    for name, value in doc.items():
        if name in TABLES and isinstance(value, dict):
            for sub, sub_value in value.items():
                yield f"{name}.{sub}", sub_value
        else:
            yield name, value


def _complaint(dotted: str, value: Any) -> str | None:
    key = BY_DOTTED.get(dotted)
    if key is None:
        return _unknown(dotted, value)
    # bool is an int in Python; TOML keeps them apart, and so do we.
    if not isinstance(value, key.kind) or (isinstance(value, bool) and key.kind is not bool):
        return f"must be {_a(TYPE_NAMES[key.kind])}, got {_toml_type(value)} {_show(value)}"
    complaint = key.check(value) if key.check else None
    shown = key.shown(value) if key.shown else value
    return f"{complaint} (got {_show(shown)})" if complaint else None


def _unknown(dotted: str, value: Any) -> str:
    if dotted in TABLES:
        return f"must be a table ([{dotted}]), got {_toml_type(value)}"
    if isinstance(value, dict) and "." not in dotted:
        near = difflib.get_close_matches(dotted, TABLES, n=1, cutoff=0.6)
        return "unknown table" + (f" (did you mean [{near[0]}]?)" if near else "")
    near = difflib.get_close_matches(dotted, list(BY_DOTTED), n=1, cutoff=0.75)
    return "unknown key" + (f" (did you mean '{near[0]}'?)" if near else "")


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    for kind, name in ((int, "integer"), (float, "float"), (str, "string"), (list, "array")):
        if isinstance(value, kind):
            return name
    if isinstance(value, datetime | date | time):
        return "date/time"
    return "table" if isinstance(value, dict) else type(value).__name__


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _show(value: Any) -> str:
    try:
        return tomlkit.item(value).as_string()
    except Exception:  # a value tomlkit cannot render back; repr is enough for a message
        return repr(value)


# --- where a key is written ---------------------------------------------------

# Pattern sources, compiled (by re, once, into its cache) when a file is
# scanned: a command on built-in defaults compiles none of them.
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_KEY_PATH = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER = rf"^\[\[?\s*({_KEY_PATH})\s*\]\]?"
_ASSIGNMENT = rf"^({_KEY_PATH})\s*=(.*)$"


def key_lines(text: str) -> dict[str, int]:
    """First line of every table header and key, by dotted path.

    A light scanner, not a parser (tomlkit keeps no positions): it follows
    table headers, dotted keys and quoted keys, and skips multi-line strings.
    A key inside an inline table is found through its table's line.
    """
    lines: dict[str, int] = {}
    table: list[str] = []
    in_string: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if in_string:
            if line.count(in_string) % 2 == 1:
                in_string = None
            continue
        header = re.match(_HEADER, line)
        if header:
            table = _parts(header[1])
            lines.setdefault(".".join(table), number)
            continue
        assignment = re.match(_ASSIGNMENT, line)
        if assignment:
            path = [*table, *_parts(assignment[1])]
            for depth in range(1, len(path) + 1):
                lines.setdefault(".".join(path[:depth]), number)
            in_string = _opens_multiline(assignment[2])
    return lines


def _parts(path: str) -> list[str]:
    return [part.strip("\"'") for part in re.findall(_KEY_PART, path)]


def _opens_multiline(value: str) -> str | None:
    for quote in ('"""', "'''"):
        if value.count(quote) % 2 == 1:
            return quote
    return None


def line_of(lines: Mapping[str, int], dotted: str) -> int | None:
    """The key's own line, else the line of its nearest enclosing table."""
    parts = dotted.split(".")
    for depth in range(len(parts), 0, -1):
        line = lines.get(".".join(parts[:depth]))
        if line:
            return line
    return None


# --- errors -------------------------------------------------------------------


def invalid(path: Path, problems: list[Problem]) -> RefusedByConfiguration:
    """startup.config_invalid (78) naming the first problem's file, line, key."""
    first = problems[0]
    more = f" (and {len(problems) - 1} more problem(s); run 'config check')" if problems[1:] else ""
    return RefusedByConfiguration(
        first.render(path) + more,
        event="startup.config_invalid",
        hint="fix the file (docs/configuration.md and config/server.toml list every key)",
        file=str(path),
        line=first.line,
        key=first.key,
        problems=len(problems),
    )


def check_file(path: Path) -> list[Problem]:
    """Every problem in the file at ``path`` (which must exist)."""
    text = read_text(path, required=True)
    return examine(text or "")[1]


# --- what config show prints ------------------------------------------------------


class Entry(NamedTuple):
    key: str
    value: Any
    source: str  # default, file, flag or env

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source}


def describe(settings: Settings, overrides: Mapping[str, tuple[Any, str]]) -> list[Entry]:
    """Each key's effective value and where it came from, in schema order.

    ``overrides`` are values decided outside the file (a flag, the
    environment): key -> (value, source).
    """
    entries = []
    for key in SCHEMA:
        if key.dotted in overrides:
            value, source = overrides[key.dotted]
        else:
            value = settings.get(key.dotted)
            source = "file" if key.dotted in settings.explicit else "default"
        entries.append(Entry(key.dotted, value, source))
    return entries


def render_value(value: Any) -> str:
    """A value as TOML writes it; "(unset)" for a key without a value."""
    return "(unset)" if value is None else tomlkit.item(value).as_string()


# --- config set ----------------------------------------------------------------


class Change(NamedTuple):
    path: Path
    key: str
    old: Any
    new: Any
    created: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "key": self.key,
            "old": self.old,
            "new": self.new,
            "created": self.created,
        }


def coerce(key: Key, raw: str) -> Any:
    """The command-line text ``raw`` as a value of ``key``'s type.

    TOML syntax first (``7``, ``true``, ``["state", "tls"]``, ``"x"``); a
    string key also takes bare text (``30d``), an array key a comma list
    (``state,tls``). Raises ValueError with the complaint.
    """
    try:
        value = tomlkit.parse(f"v = {raw}").unwrap()["v"]
    except Exception:  # not a TOML value: the bare-text forms below decide
        value = None
    if isinstance(value, key.kind) and not (isinstance(value, bool) and key.kind is not bool):
        return value
    if key.kind is str:
        return raw
    if key.kind is list:
        return [part.strip() for part in raw.split(",") if part.strip()]
    raise ValueError(f"must be {_a(TYPE_NAMES[key.kind])}, got {raw!r}")


def set_value(path: Path, dotted: str, raw: str) -> Change:
    """Set one key in the file at ``path`` (created if absent), keeping
    every comment and the layout; refused (78, file untouched) when the
    key is unknown, the value invalid, or the edited file would not load."""
    key = BY_DOTTED.get(dotted)
    if key is None:
        raise _refused(path, Problem(None, dotted, _unknown(dotted, raw)))
    try:
        value = coerce(key, raw)
    except ValueError as exc:
        raise _refused(path, Problem(None, dotted, str(exc))) from None
    complaint = _complaint(dotted, value)
    if complaint:
        raise _refused(path, Problem(None, dotted, complaint))
    target = Path(os.path.realpath(path))  # edit the file a symlink points at, keep the link
    text = read_text(target, required=False)
    edited, old = _edited(target, text or "", key, value)
    problems = examine(edited)[1]
    # The first of a pair, set one command at a time, is written; until its
    # partner is set too, every command refuses the file (78) and says why.
    partner = _awaited_partner(dotted, problems)
    problems = [p for p in problems if not partner or p.message != _half_pair(dotted, partner)]
    if problems:
        raise _refused(target, problems[0])
    _write_keeping_owner(target, edited, created=text is None)
    change = Change(target, dotted, old, value, text is None)
    log.info(
        "config.updated",
        msg="server.toml updated; a running server applies it at its next start",
        **change.as_dict(),
        **({"hint": f"set {partner} too: until then the file is refused"} if partner else {}),
    )
    return change


def _awaited_partner(dotted: str, problems: list[Problem]) -> str | None:
    for pair in PAIRS:
        if dotted in pair:
            (partner,) = [other for other in pair if other != dotted]
            if any(p.message == _half_pair(dotted, partner) for p in problems):
                return partner
    return None


def _edited(path: Path, text: str, key: Key, value: Any) -> tuple[str, Any]:
    try:
        doc = tomlkit.parse(text)
    except tomlkit_exceptions.TOMLKitError as exc:
        problem = Problem(getattr(exc, "line", None), None, f"not valid TOML: {exc}")
        raise _refused(path, problem) from None
    if not key.table:
        old = doc.get(key.name)
        return _set_top_level(doc, key.name, value), _unwrapped(old)
    if key.table not in doc:
        doc.add(key.table, tomlkit.table())
    table = doc[key.table]
    if not isinstance(table, dict):
        raise _refused(path, Problem(None, key.table, "must be a table"))
    old = table.get(key.name)
    table[key.name] = value
    return doc.as_string(), _unwrapped(old)


def _unwrapped(old: Any) -> Any:
    return tomlkit.item(old).unwrap() if old is not None else None


def _set_top_level(doc: tomlkit.TOMLDocument, name: str, value: Any) -> str:
    """Set a top-level key. A new one goes right after the last top-level
    key, never between a table's header and the comment that introduces it
    (tomlkit's own placement, which differs between its releases), so the
    edit is made in the text; the caller validates the result."""
    if name in doc or not any(_is_table(v) for v in doc.values()):
        doc[name] = value
        return doc.as_string()
    text = doc.as_string()
    at, gap = _end_of_top_level_keys(text)
    return f"{text[:at]}{name} = {tomlkit.item(value).as_string()}\n{gap}{text[at:]}"


def _is_table(item: Any) -> bool:
    inline = isinstance(item, tomlkit_items.InlineTable)
    return isinstance(item, dict) and not inline or isinstance(item, list)


_HEADER_START = r"(?m)^[ \t]*\["
_TRIVIA_LINE = r"[ \t]*(#[^\n]*)?\n"


def _end_of_top_level_keys(text: str) -> tuple[int, str]:
    """Where a new top-level key goes, and what follows it: just after the
    last top-level key, or, in a file of tables only, above the comment
    block that introduces the first table (so that comment stays with it)."""
    lines = text[: _first_header_offset(text)].splitlines(keepends=True)
    trailing = []
    while lines and re.fullmatch(_TRIVIA_LINE, lines[-1]):
        trailing.insert(0, lines.pop())
    if lines:
        return sum(len(line) for line in lines), ""
    while trailing and trailing[-1].lstrip().startswith("#"):
        trailing.pop()  # the header's own comment block
    return sum(len(line) for line in trailing), "\n"


def _first_header_offset(text: str) -> int:
    # A line that starts with "[" may sit inside a multi-line string: the
    # real first header is the first one whose prefix parses as keys only.
    for match in re.finditer(_HEADER_START, text):
        try:
            prefix = tomlkit.parse(text[: match.start()])
        except tomlkit_exceptions.TOMLKitError:
            continue
        if not any(_is_table(v) for v in prefix.values()):
            return match.start()
    return len(text)


def _write_keeping_owner(path: Path, text: str, *, created: bool) -> None:
    mode = 0o600
    try:
        st = path.parent.stat() if created else path.stat()
        mode = mode if created else st.st_mode & 0o777
        write_atomically(path, text.encode("utf-8"), mode=mode)
        os.chmod(path, mode)  # write_atomically's mode passes through the umask
        if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
            # root editing the service user's file must not leave it unreadable
            # to the server: keep (or, for a new file, inherit) the owner.
            os.chown(path, st.st_uid, st.st_gid)
    except OSError as exc:
        raise StorageIOError(
            f"cannot write {path}: {exc.strerror or exc}",
            event="config.write_failed",
            hint="check the permissions of the file and its directory",
            path=str(path),
        ) from exc


def _refused(path: Path, problem: Problem) -> RefusedByConfiguration:
    return RefusedByConfiguration(
        problem.render(path),
        event="config.set_refused",
        hint="nothing was written; see docs/configuration.md for every key and its range",
        file=str(path),
        line=problem.line,
        key=problem.key,
    )
