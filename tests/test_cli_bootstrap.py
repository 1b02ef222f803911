"""portunus-server bootstrap-admin: the first admin token, printed once, stored hashed."""

from __future__ import annotations

import hashlib
import os

import apsw
import pytest

from portunus.datadir import DataDir
from portunus.store import migrations
from portunus.store.lock import StoreLock
from tests import support
from tests.test_cli_backup import tmpfs


def bootstrap(cli, data_dir, name: str = "ops-admin") -> support.Run:
    return cli("--data-dir", str(data_dir.path), "bootstrap-admin", "--name", name)


def database_bytes(data_dir) -> bytes:
    """state.db and whatever SQLite left beside it, as raw bytes."""
    return b"".join(
        p.read_bytes() for p in data_dir.path.iterdir() if p.name.startswith("state.db")
    )


def admin_rows(data_dir) -> list[tuple]:
    conn = apsw.Connection(str(data_dir.state_db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT name, role, token_hash FROM operator_tokens").fetchall()
    finally:
        conn.close()


def test_creates_the_data_dir_0700_and_a_current_store(cli, tmp_path):
    """On a fresh machine: the data dir (nested) is created 0700 with a migrated state.db."""
    data_dir = DataDir(tmp_path / "var" / "lib" / "portunus")
    run = bootstrap(cli, data_dir)
    assert run.code == 0, run.err
    assert data_dir.path.stat().st_mode & 0o777 == 0o700
    assert support.schema_version(data_dir.state_db) == migrations.binary_schema_version()
    assert run.has_event("startup.store_opened")
    assert run.has_event("bootstrap.admin_created")


def test_prints_exactly_one_token_and_never_logs_it(cli, data_dir):
    """stdout is the token alone on one line; stderr does not contain it."""
    run = bootstrap(cli, data_dir)
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert len(lines) == 1
    token = lines[0]
    assert token.startswith("ptk_") and len(token) > 40
    assert token not in run.err


def test_only_the_tokens_sha256_is_stored(cli, data_dir):
    """The token's bytes appear nowhere in the database files; its sha256 does."""
    token = bootstrap(cli, data_dir).out.strip()
    assert token.encode() not in database_bytes(data_dir)
    assert admin_rows(data_dir) == [("ops-admin", "admin", hashlib.sha256(token.encode()).digest())]


def test_two_runs_mint_different_tokens_in_different_stores(cli, tmp_path):
    """256 random bits each time: two fresh stores never share a token."""
    first = bootstrap(cli, DataDir(tmp_path / "a")).out.strip()
    second = bootstrap(cli, DataDir(tmp_path / "b")).out.strip()
    assert first and second and first != second


def test_second_run_exits_6_and_prints_no_token(cli, data_dir):
    """An admin already exists: 6, nothing on stdout, still one admin."""
    assert bootstrap(cli, data_dir).code == 0
    rows = admin_rows(data_dir)
    run = bootstrap(cli, data_dir, "someone-else")
    assert run.code == 6, run.err
    assert run.has_event("bootstrap.admin_exists")
    assert run.out == ""
    assert admin_rows(data_dir) == rows


@pytest.mark.parametrize(
    "name", ["-leading-dash", "has space", "x" * 65, "semi;colon", "ümlaut", ".hidden"]
)
def test_invalid_name_exits_2_and_creates_nothing(cli, data_dir, name):
    """A name outside [A-Za-z0-9._-]{1,64} (starting alnum): 2, no data dir created."""
    run = cli("--data-dir", str(data_dir.path), "bootstrap-admin", f"--name={name}")
    assert run.code == 2, run.err
    assert run.has_event("cli.usage_error")
    assert run.out == ""
    assert not data_dir.path.exists()


def test_missing_name_exits_2(cli, data_dir):
    """bootstrap-admin without --name: 2."""
    run = cli("--data-dir", str(data_dir.path), "bootstrap-admin")
    assert run.code == 2, run.err
    assert run.has_event("cli.usage_error")
    assert not data_dir.path.exists()


def test_while_a_server_holds_the_store_exits_75_and_mints_nothing(cli, data_dir):
    """The lock is held: 75, no token printed, no store created."""
    data_dir.ensure()
    with StoreLock(data_dir.lock, "serve"):
        run = bootstrap(cli, data_dir)
    assert run.code == 75, run.err
    assert run.has_event("startup.store_in_use")
    assert run.out == ""
    assert not data_dir.state_db.exists()


def test_store_too_new_for_the_binary_exits_78(cli, store):
    """bootstrap-admin opens the store through the handshake: a newer schema is 78."""
    conn = apsw.Connection(str(store.state_db))
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'x')")
    conn.close()
    run = bootstrap(cli, store)
    assert run.code == 78, run.err
    assert run.has_event("startup.schema_version_too_new")
    assert run.out == ""


def test_state_db_that_is_not_sqlite_exits_7_untouched(cli, data_dir):
    """A damaged state.db is refused, not replaced by a new store."""
    data_dir.ensure()
    data_dir.state_db.write_text("garbage")
    run = bootstrap(cli, data_dir)
    assert run.code == 7, run.err
    assert data_dir.state_db.read_text() == "garbage"


@pytest.mark.parametrize("exists", [False, True], ids=["new-data-dir", "empty-data-dir"])
def test_a_data_dir_on_tmpfs_is_refused_78_and_nothing_is_created(cli, tmp_path, exists):
    """The filesystem check serve runs: a store made here is one serve would
    refuse. 78, startup.unsupported_filesystem, no token, no file made."""
    with tmpfs(tmp_path / "volatile", "1m") as volatile:
        data_dir = DataDir(volatile / "data")
        if exists:
            data_dir.ensure()
        run = bootstrap(cli, data_dir)
        assert run.code == 78, run.err
        refusal = [e for e in run.events if e["event"] == "startup.unsupported_filesystem"]
        assert refusal and refusal[0]["filesystem"] == "tmpfs", run.err
        assert run.out == ""
        assert sorted(os.listdir(volatile)) == (["data"] if exists else [])
        assert not exists or os.listdir(data_dir.path) == []
