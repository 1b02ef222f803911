"""A command that refuses a store leaves it exactly as it found it: the
checks that refuse come before the first write PRAGMA (the switch to WAL),
so a foreign or too-new ``state.db`` keeps its bytes, its journal mode and
its directory (no ``-wal``/``-shm``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import apsw
import pytest

from portunus.datadir import DataDir, probe_filesystem
from portunus.store.connection import open_artefact, open_standalone
from tests import support, unprivileged
from tests.serving import free_port, write_config
from tests.unprivileged import nobody_ids, run_as_nobody

shared_tmp = unprivileged.shared_tmp


def foreign_store(data_dir: DataDir) -> None:
    """Another program's SQLite file, in rollback-journal mode (SQLite's default)."""
    data_dir.ensure()
    conn = apsw.Connection(str(data_dir.state_db))
    conn.execute("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine')")
    conn.close()


def too_new_store(data_dir: DataDir) -> None:
    """A Portunus store from a newer binary, left in rollback-journal mode
    (as a restore or a copy made with the sqlite3 shell may leave it)."""
    support.make_store(data_dir)
    conn = open_standalone(data_dir.state_db)
    conn.execute("INSERT INTO schema_migrations VALUES (999, 'from_the_future', 'x')")
    conn.close()


STORES = {"foreign": (foreign_store, 7), "too-new": (too_new_store, 78)}
COMMANDS = {
    "serve": ("serve",),
    "bootstrap-admin": ("bootstrap-admin", "--name", "ops2"),
    "audit-prune-dry-run": ("audit", "prune", "--dry-run", "--before", "2020-01-01"),
}


def snapshot(data_dir: DataDir) -> dict[str, object]:
    header = data_dir.state_db.read_bytes()[:100]
    return {
        "sha256": hashlib.sha256(data_dir.state_db.read_bytes()).hexdigest(),
        # Bytes 18-19 of the header: 1 = rollback journal, 2 = WAL.
        "journal": (header[18], header[19]),
        "files": sorted(os.listdir(data_dir.path)),
    }


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
@pytest.mark.parametrize("kind", STORES.keys())
def test_a_refused_store_is_left_byte_for_byte_in_its_journal_mode(
    kind, command, data_dir, cli, tmp_path: Path
):
    make, code = STORES[kind]
    make(data_dir)
    # The lock file belongs to the data dir once any command has locked it;
    # it is not part of what a refusal may change.
    data_dir.lock.touch()
    before = snapshot(data_dir)
    assert before["journal"] == (1, 1)
    config = write_config(tmp_path / "s.toml", free_port())
    run = cli("--data-dir", str(data_dir.path), "--config", str(config), *command, timeout=60)
    assert run.code == code, run.err
    assert snapshot(data_dir) == before


def test_serve_on_a_state_db_it_cannot_read_is_an_io_error_74_not_7(shared_tmp: Path):
    """The service user's data dir holding a state.db it may not read (left
    by a root shell, say): that is permissions, not a foreign file."""
    if probe_filesystem(shared_tmp).verdict == "unsupported":
        pytest.skip(f"serve refuses {shared_tmp}'s filesystem")
    data = support.make_store(DataDir(shared_tmp / "data"))
    uid, gid = nobody_ids()
    os.chown(data.path, uid, gid)
    os.chown(data.lock, uid, gid)
    config = write_config(shared_tmp / "s.toml", free_port())
    before = data.state_db.read_bytes()
    run = run_as_nobody(
        "--data-dir", str(data.path), "--config", str(config), "serve", home=shared_tmp
    )
    assert run.code == 74, run.err
    assert not run.has_event("startup.not_sqlite")
    (refusal,) = [e for e in run.events if e["event"] == "startup.store_open_failed"]
    assert refusal["path"] == str(data.state_db)
    assert "Permission denied" in refusal["msg"]
    assert data.state_db.read_bytes() == before


def damage_table(state_db: Path, table: str) -> None:
    """Overwrite the root b-tree page of ``table`` with garbage, in place, as
    a failing disk or a stray write would (its rows live on that page in a
    small store). The database header and the schema stay readable."""
    conn = open_artefact(state_db)  # creates no -wal/-shm
    try:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_schema WHERE name=?", (table,)
        ).fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    finally:
        conn.close()
    with open(state_db, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xa5" * page_size)
        f.flush()
        os.fsync(f.fileno())


@pytest.mark.parametrize("command", [("serve",), ("bootstrap-admin", "--name", "ops2")])
def test_a_damaged_store_is_refused_7_at_start_up_with_a_hint_to_restore(
    command, store, cli, tmp_path: Path
):
    """PRAGMA quick_check before serving: a damaged store is never served."""
    damage_table(store.state_db, "rules")
    before = snapshot(store)
    config = write_config(tmp_path / "s.toml", free_port())
    run = cli("--data-dir", str(store.path), "--config", str(config), *command, timeout=60)
    assert run.code == 7, run.err
    (refusal,) = [e for e in run.events if e["event"] == "startup.store_corrupt"]
    assert refusal["path"] == str(store.state_db)
    assert "restore" in refusal["hint"]
    assert snapshot(store) == before
    assert not (store.path / "server.crt").exists()


def test_a_data_dir_the_user_cannot_read_is_an_io_error_74_naming_server_toml(shared_tmp: Path):
    """The service user meets a data dir it may not enter (a root-owned 0700
    dir): reading the default <data-dir>/server.toml fails first, and that is
    an I/O error (74, startup.config_unreadable, the path named), not an
    invalid config (78)."""
    data = support.make_store(DataDir(shared_tmp / "data"))
    data.path.chmod(0o700)  # root's; nobody may not look inside
    run = run_as_nobody("--data-dir", str(data.path), "status", home=shared_tmp)
    assert run.code == 74, run.err
    assert not run.has_event("startup.config_invalid")
    (refusal,) = [e for e in run.events if e["event"] == "startup.config_unreadable"]
    assert refusal["path"] == str(data.path / "server.toml")
    assert "Permission denied" in refusal["msg"]
