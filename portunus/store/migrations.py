"""Numbered ``.sql`` migrations and the schema handshake.

``schema_migrations`` records every applied version; the spec's verify
one-liner (``SELECT version FROM schema_migrations ORDER BY version DESC
LIMIT 1``) works on every store and every backup. All pending migrations are
applied in one ``BEGIN IMMEDIATE`` transaction: a failure leaves the store
exactly at the version it had.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import apsw
import structlog

from portunus.errors import MigrationFailed, NotAStateDatabase, SchemaTooNew
from portunus.store.sqlitefile import APPLICATION_ID

log = structlog.get_logger()

_MIGRATION_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


# NamedTuples, not frozen dataclasses: defining a dataclass costs about a
# millisecond at every start (docs/performance.md, "Cold start").
class Migration(NamedTuple):
    version: int
    name: str
    sql: str


class Handshake(NamedTuple):
    """What the schema handshake found and did."""

    path: Path
    from_version: int  # 0 for a store created just now
    to_version: int

    @property
    def migrated(self) -> bool:
        return self.to_version != self.from_version


@cache
def available_migrations() -> tuple[Migration, ...]:
    """Every migration shipped in this binary, in version order."""
    found = []
    for entry in _migrations_dir().iterdir():
        match = _MIGRATION_NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    assert [m.version for m in found] == list(range(1, len(found) + 1)), "gap in migrations"
    return tuple(found)


def _migrations_dir() -> Any:
    """The shipped ``.sql`` files: a directory beside this module in an
    installed package, read directly; importlib.resources where there is
    none (a zipped package). Its file readers load on first use, about
    1.5 ms of every `status` and `verify` (docs/performance.md, "Cold start")."""
    beside = Path(__file__).with_name("migrations")
    if beside.is_dir():
        return beside
    # Imported here: the newest invoke/structlog/apsw load it anyway, the
    # minimum versions do not (tests/test_cold_start.py runs on both).
    from importlib import resources

    return resources.files("portunus.store").joinpath("migrations")


def binary_schema_version() -> int:
    """The newest schema version this binary knows."""
    return available_migrations()[-1].version


def stored_schema_version(conn: apsw.Connection, path: Path, *, allow_empty: bool = False) -> int:
    """The store's schema version; 0 for a brand-new empty database when
    ``allow_empty`` (the live store being created), else an empty file is
    refused like any other foreign database.

    Raises NotAStateDatabase for a SQLite file that is not a Portunus store.
    """
    if allow_empty and _is_empty_database(conn):
        return 0
    app_id = conn.execute("PRAGMA application_id").fetchall()[0][0]
    if app_id != APPLICATION_ID or not _has_table(conn, "schema_migrations"):
        raise NotAStateDatabase(
            f"{path} is a SQLite database but not a Portunus state store",
            event="startup.not_portunus_store",
            hint="check the path; a Portunus store has application_id 0x5052544E "
            "and a schema_migrations table",
            path=str(path),
        )
    row = conn.execute("SELECT max(version) FROM schema_migrations").fetchall()[0]
    return int(row[0] or 0)


def refuse_if_too_new(version: int, path: Path) -> None:
    """Exit 78 when the store's schema is newer than this binary."""
    binary = binary_schema_version()
    if version > binary:
        raise SchemaTooNew(
            f"{path} has schema version {version}, newer than this binary's {binary}",
            hint="keep the older backup, or run the portunus-server version that wrote it",
            path=str(path),
            schema_version=version,
            binary_schema_version=binary,
        )


def usable_schema_version(conn: apsw.Connection, path: Path, *, allow_empty: bool = False) -> int:
    """The store's schema version, after the read-only refusals (7 not a
    Portunus store, 78 too new). Reads only: run it before the first write
    PRAGMA, and a refused file is left exactly as it was."""
    version = stored_schema_version(conn, path, allow_empty=allow_empty)
    refuse_if_too_new(version, path)
    return version


def handshake(conn: apsw.Connection, path: Path, *, allow_empty: bool = False) -> Handshake:
    """Check the schema and migrate it forward; emits the startup.* events.

    ``allow_empty`` lets a brand-new live store be created; a restore input
    must already be a Portunus store.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        before = usable_schema_version(conn, path, allow_empty=allow_empty)
        _apply_pending(conn, before, path)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    result = Handshake(path, before, binary_schema_version())
    if result.migrated:
        log.info(
            "startup.migrations_applied",
            msg="schema migrated",
            path=str(path),
            from_version=before,
            to_version=result.to_version,
        )
    log_store_opened(path, result.to_version)
    return result


def log_store_opened(path: Path, version: int, msg: str = "store open", **extra: str) -> None:
    """The handshake's ``startup.store_opened`` line: every command that opens
    the store says so (``mode``: how, when not migrated read-write)."""
    log.info("startup.store_opened", msg=msg, path=str(path), schema_version=version, **extra)


def _apply_pending(conn: apsw.Connection, current: int, path: Path) -> None:
    if current == 0:
        _create_bookkeeping(conn)
    for migration in available_migrations():
        if migration.version <= current:
            continue
        try:
            conn.execute(migration.sql)
        except apsw.Error as exc:
            raise MigrationFailed(
                f"migration {migration.version:04d}_{migration.name} failed on {path}: {exc}; "
                f"the store is unchanged at schema version {current}",
                hint="the store was left as it was; fix the data the error names "
                "(or restore a backup) and try again",
                path=str(path),
                version=migration.version,
                schema_version=current,
            ) from exc
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.name, _now()),
        )


def _create_bookkeeping(conn: apsw.Connection) -> None:
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute(
        "CREATE TABLE schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )


def _is_empty_database(conn: apsw.Connection) -> bool:
    return conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()[0][0] == 0


def _has_table(conn: apsw.Connection, name: str) -> bool:
    rows = conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type='table' AND name=?", (name,)
    ).fetchall()
    return bool(rows)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
