"""Operator tokens: minted once, only their sha256 stored."""

from __future__ import annotations

import hashlib
import re
import secrets

import apsw
import structlog

from portunus.datadir import DataDir
from portunus.errors import UsageError, WouldOverwrite
from portunus.store import audit
from portunus.store.connection import close_quietly
from portunus.store.live import open_live_store
from portunus.store.lock import StoreLock

log = structlog.get_logger()

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
OPERATOR_TOKEN_PREFIX = "ptk_"


def new_token(prefix: str) -> str:
    """256 random bits, URL-safe, with a prefix that secret scanners can key on."""
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    # Tokens carry 256 bits of entropy: a plain sha256 cannot be brute-forced.
    return hashlib.sha256(token.encode("utf-8")).digest()


def validate_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name or ""):
        raise UsageError(
            f"invalid name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            hint="for example --name ops-admin",
        )
    return name


def create_operator_token(conn: apsw.Connection, name: str, role: str, actor: str) -> str:
    """Insert a token row and its audit entry; the caller owns the transaction."""
    token = new_token(OPERATOR_TOKEN_PREFIX)
    conn.execute(
        "INSERT INTO operator_tokens (name, role, token_hash, created_at) VALUES (?, ?, ?, ?)",
        (name, role, hash_token(token), audit.now_rfc3339()),
    )
    audit.record(conn, actor, "token.create", f"token:{name}", role=role)
    return token


def bootstrap_admin(data_dir: DataDir, name: str) -> str:
    """Create the store if needed and mint the first admin token (printed
    once by the caller). Refuses (78) a data dir on a filesystem serve
    refuses, before creating anything; (6) when an admin already exists."""
    validate_name(name)
    data_dir.prepare_for_store()
    with StoreLock(data_dir.lock, "bootstrap-admin"):
        conn, _ = open_live_store(data_dir)
        try:
            with conn:
                _refuse_if_admin_exists(conn)
                token = create_operator_token(conn, name, "admin", actor="bootstrap-admin")
        finally:
            close_quietly(conn)
    log.info("bootstrap.admin_created", msg="first admin token created", name=name)
    return token


def _refuse_if_admin_exists(conn: apsw.Connection) -> None:
    rows = conn.execute("SELECT name FROM operator_tokens WHERE role='admin' LIMIT 1").fetchall()
    if rows:
        raise WouldOverwrite(
            f"an admin token already exists ({rows[0][0]}); bootstrap-admin only mints the first",
            event="bootstrap.admin_exists",
            hint="create further tokens through the API (POST /v1/tokens) with an admin token",
        )
