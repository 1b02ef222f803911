"""portunus.store.migrations: numbered .sql files, schema_migrations, the handshake."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import apsw
import pytest

from portunus.errors import MigrationFailed, NotAStateDatabase, SchemaTooNew
from portunus.store import migrations
from portunus.store.connection import open_store
from portunus.store.sqlitefile import APPLICATION_ID

MIGRATIONS_DIR = resources.files("portunus.store").joinpath("migrations")


def build_v1_store(path: Path, client_names: tuple[str, ...] = ()) -> Path:
    """A store exactly as a schema-v1 binary left it: 0001_initial.sql applied,
    schema_migrations at version 1, the Portunus application_id."""
    conn = apsw.Connection(str(path))
    try:
        with conn:
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(
                "CREATE TABLE schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
            )
            conn.execute(MIGRATIONS_DIR.joinpath("0001_initial.sql").read_text("utf-8"))
            conn.execute(
                "INSERT INTO schema_migrations VALUES (1, 'initial', '2026-01-01T00:00:00+00:00')"
            )
            for name in client_names:
                conn.execute(
                    "INSERT INTO clients (name, token_hash, created_at) VALUES (?, ?, ?)",
                    (name, os.urandom(32), "2026-01-01T00:00:00.000Z"),
                )
    finally:
        conn.close()
    return path


def applied_versions(path: Path) -> list[tuple[int, str]]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute(
            "SELECT version, name FROM schema_migrations ORDER BY version"
        ).fetchall()
    finally:
        conn.close()


def schema_objects(path: Path) -> list[tuple]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT type, name, sql FROM sqlite_schema ORDER BY name").fetchall()
    finally:
        conn.close()


def run_handshake(path: Path, *, allow_empty: bool = False) -> migrations.Handshake:
    conn = open_store(path)
    try:
        return migrations.handshake(conn, path, allow_empty=allow_empty)
    finally:
        conn.close()


def shipped_versions() -> list[tuple[int, str]]:
    return [(m.version, m.name) for m in migrations.available_migrations()]


def test_every_shipped_sql_file_is_a_numbered_migration():
    """A misnamed .sql file would be skipped silently; every file must match NNNN_name.sql."""
    names = sorted(e.name for e in MIGRATIONS_DIR.iterdir() if e.name.endswith(".sql"))
    assert names, "no migrations shipped"
    assert len(names) == len(migrations.available_migrations())
    assert [int(n[:4]) for n in names] == list(range(1, len(names) + 1))
    assert migrations.binary_schema_version() == len(names)
    # Read straight from the directory (cold start), the same as importlib.resources gives.
    texts = [MIGRATIONS_DIR.joinpath(n).read_text("utf-8") for n in names]
    assert [m.sql for m in migrations.available_migrations()] == texts


def test_new_store_gets_every_migration_in_order(tmp_path):
    """A brand-new store records one schema_migrations row per migration, in order."""
    path = tmp_path / "state.db"
    done = run_handshake(path, allow_empty=True)
    assert (done.from_version, done.to_version) == (0, migrations.binary_schema_version())
    assert applied_versions(path) == shipped_versions()
    conn = apsw.Connection(str(path))
    assert conn.execute("PRAGMA application_id").fetchall()[0][0] == APPLICATION_ID
    conn.close()


def test_current_store_is_left_as_it_is(tmp_path):
    """Opening a current store applies nothing and adds no rows."""
    path = tmp_path / "state.db"
    run_handshake(path, allow_empty=True)
    before = applied_versions(path)
    done = run_handshake(path)
    assert not done.migrated
    assert applied_versions(path) == before


def test_v1_store_is_migrated_forward_recording_each_version(tmp_path):
    """A v1 store gets the later migrations applied and recorded, data kept."""
    path = build_v1_store(tmp_path / "v1.db", ("edge1", "edge2"))
    done = run_handshake(path)
    assert (done.from_version, done.to_version) == (1, migrations.binary_schema_version())
    assert applied_versions(path)[0] == (1, "initial")
    assert [v for v, _ in applied_versions(path)] == [v for v, _ in shipped_versions()]
    assert "clients_name_nocase" in {name for _, name, _ in schema_objects(path)}
    conn = apsw.Connection(str(path))
    assert conn.execute("SELECT name FROM clients ORDER BY name").fetchall() == [
        ("edge1",),
        ("edge2",),
    ]
    conn.close()


def test_failing_migration_leaves_the_store_exactly_at_its_version(tmp_path):
    """0002 fails on "edge1"/"EDGE1": exit 70, still version 1, schema unchanged."""
    path = build_v1_store(tmp_path / "v1.db", ("edge1", "EDGE1"))
    before = schema_objects(path)
    with pytest.raises(MigrationFailed) as raised:
        run_handshake(path)
    assert raised.value.exit_code == 70
    assert raised.value.event == "startup.migration_failed"
    assert applied_versions(path) == [(1, "initial")]
    assert schema_objects(path) == before


def test_failure_in_a_later_statement_undoes_the_earlier_ones(tmp_path):
    """When 0002's second statement fails, the index its first one built is gone too."""
    path = build_v1_store(tmp_path / "v1.db")
    conn = apsw.Connection(str(path))
    # Occupy the name 0002's second CREATE INDEX needs, so it fails mid-migration.
    conn.execute("CREATE TABLE rules_client_protocol (x)")
    conn.close()
    before = schema_objects(path)
    with pytest.raises(MigrationFailed):
        run_handshake(path)
    assert "clients_name_nocase" not in {name for _, name, _ in schema_objects(path)}
    assert schema_objects(path) == before
    assert applied_versions(path) == [(1, "initial")]


def test_schema_newer_than_the_binary_is_refused_untouched(tmp_path):
    """A store at a version this binary does not know: 78, nothing written."""
    path = tmp_path / "state.db"
    run_handshake(path, allow_empty=True)
    conn = apsw.Connection(str(path))
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'x')")
    conn.close()
    before = applied_versions(path)
    with pytest.raises(SchemaTooNew) as raised:
        run_handshake(path)
    assert raised.value.exit_code == 78
    assert raised.value.event == "startup.schema_version_too_new"
    assert raised.value.fields["schema_version"] == 99
    assert applied_versions(path) == before


def _foreign_database(path: Path, application_id: int, with_migrations_table: bool) -> Path:
    conn = apsw.Connection(str(path))
    conn.execute(f"PRAGMA application_id={application_id}")
    conn.execute("CREATE TABLE notes (body TEXT)")
    if with_migrations_table:
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)")
    conn.close()
    return path


@pytest.mark.parametrize(
    ("application_id", "with_migrations_table"),
    [(0, True), (0x12345678, True), (APPLICATION_ID, False)],
    ids=["no-application-id", "other-application-id", "no-schema_migrations"],
)
def test_database_of_another_application_is_refused(
    tmp_path, application_id, with_migrations_table
):
    """The application_id and schema_migrations both mark a Portunus store."""
    path = _foreign_database(tmp_path / "other.db", application_id, with_migrations_table)
    before = schema_objects(path)
    with pytest.raises(NotAStateDatabase) as raised:
        run_handshake(path, allow_empty=True)
    assert raised.value.exit_code == 7
    assert raised.value.event == "startup.not_portunus_store"
    assert schema_objects(path) == before


def test_empty_database_counts_as_a_store_only_when_creating_one(tmp_path):
    """An empty SQLite file is a new live store, but not a valid restore input."""
    path = tmp_path / "empty.db"
    apsw.Connection(str(path)).close()
    with pytest.raises(NotAStateDatabase):
        run_handshake(path)
    assert run_handshake(path, allow_empty=True).from_version == 0
