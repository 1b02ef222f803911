"""Helpers shared by the tests: run the real CLI, read its events, build stores."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import apsw
import pytest

from portunus.datadir import DataDir
from portunus.engine import tokens
from portunus.store import audit
from portunus.store.connection import open_store

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    """A finished CLI process: exit code, stdout, stderr, parsed events."""

    code: int
    out: str
    err: str

    @property
    def events(self) -> list[dict]:
        return parse_events(self.err)

    @property
    def event_names(self) -> list[str]:
        return [e["event"] for e in self.events]

    def has_event(self, name: str) -> bool:
        return name in self.event_names


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without anything that steers Portunus."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PORTUNUS_CONFIG", "STATE_DIRECTORY", "XDG_STATE_HOME")
    }
    env["HOME"] = str(home)
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> Run:
    """``portunus-server ARGS`` as an operator runs it, logs as JSON lines."""
    argv = [sys.executable, "-m", "portunus", "--log-format", "json", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def parse_events(stderr: str) -> list[dict]:
    events = []
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def make_store(data_dir: DataDir, *, clients: int = 3, rules_per_client: int = 2) -> DataDir:
    """A real store with an admin token, clients, rules and audit rows."""
    tokens.bootstrap_admin(data_dir, "ops")
    conn = open_store(data_dir.state_db)
    try:
        with conn:
            for i in range(clients):
                add_client_with_rules(conn, f"edge{i}", rules_per_client)
    finally:
        conn.close()
    return data_dir


def add_client_with_rules(conn: apsw.Connection, name: str, rules: int) -> None:
    now = audit.now_rfc3339()
    conn.execute(
        "INSERT INTO clients (name, token_hash, created_at) VALUES (?, ?, ?)",
        (name, tokens.hash_token(tokens.new_token("pct_")), now),
    )
    client_id = conn.last_insert_rowid()
    for r in range(rules):
        conn.execute(
            "INSERT INTO rules (client_id, protocol, listen_start, listen_end, created_at,"
            " updated_at) VALUES (?, 'tcp', ?, ?, ?, ?)",
            (client_id, 10000 + r, 10000 + r, now, now),
        )
        rule_id = conn.last_insert_rowid()
        conn.execute(
            "INSERT INTO rule_targets (rule_id, position, host, port) "
            "VALUES (?, 1, '10.0.0.1', 80)",
            (rule_id,),
        )
    audit.record(conn, "test", "client.create", f"client:{name}")


def table_counts(path: Path) -> dict[str, int]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchall()[0][0] for n in names}
    finally:
        conn.close()


def schema_version(path: Path) -> int:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute(
            "SELECT version FROM schema_migrations ORDER BY version DESC LIMIT 1"
        ).fetchall()[0][0]
    finally:
        conn.close()


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """chattr +i: not even root may unlink it (ext4, xfs, btrfs); skips elsewhere."""
    if os.geteuid() != 0:
        pytest.skip("chattr +i needs root")
    try:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    except FileNotFoundError:
        pytest.skip("chattr is not installed")
    if done.returncode != 0:
        pytest.skip(f"chattr +i unsupported here: {done.stderr!r}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
