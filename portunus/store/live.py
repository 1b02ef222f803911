"""Opening the live store in a data dir: guards, then the schema handshake.

Callers hold the data dir's StoreLock first.
"""

from __future__ import annotations

import os
from pathlib import Path

import apsw
import structlog

from portunus import durable
from portunus.datadir import DataDir
from portunus.errors import NotAStateDatabase, StorageIOError
from portunus.ownership import give_to_directory_owner
from portunus.store import migrations
from portunus.store.connection import close_quietly, open_store
from portunus.store.sqlitefile import has_sqlite_header

log = structlog.get_logger()


def open_live_store(data_dir: DataDir) -> tuple[apsw.Connection, migrations.Handshake]:
    """Open (creating if absent) and migrate ``state.db``; 7, 70 or 78 on refusal."""
    state_db = data_dir.state_db
    if os.path.lexists(state_db):
        _require_state_file(data_dir)
    else:
        _drop_orphan_wal(data_dir)
        _create_private(state_db)
    conn = None
    try:
        conn = open_store(state_db)
        return conn, migrations.handshake(conn, state_db, allow_empty=True)
    except apsw.Error as exc:
        close_quietly(conn)
        raise StorageIOError(
            f"cannot open {state_db}: {exc}",
            event="startup.store_open_failed",
            hint="check permissions and free space in the data dir",
            path=str(state_db),
        ) from exc
    except BaseException:
        close_quietly(conn)
        raise


def _require_state_file(data_dir: DataDir) -> None:
    state_db = data_dir.state_db
    try:
        ok = (
            not state_db.is_symlink()
            and state_db.is_file()
            # Empty: created by _create_private, killed before SQLite wrote.
            and (state_db.stat().st_size == 0 or has_sqlite_header(state_db))
        )
    except OSError:
        ok = False
    if not ok:
        raise NotAStateDatabase(
            f"{state_db} is not a SQLite database (bad header, symlink or not a regular file)",
            event="startup.not_sqlite",
            hint="check --data-dir; restore a backup if state.db was damaged",
            path=str(state_db),
        )


def _create_private(state_db: Path) -> None:
    """Create state.db 0600 before SQLite opens it: SQLite would use the
    umask (0644), and gives its -wal and -shm the database file's mode."""
    try:
        fd = os.open(state_db, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    try:
        give_to_directory_owner(state_db, fd)
    finally:
        os.close(fd)


def _drop_orphan_wal(data_dir: DataDir) -> None:
    # A WAL without its database would be replayed onto the new, empty store.
    for orphan in (data_dir.wal, data_dir.shm):
        if os.path.lexists(orphan):
            log.warning(
                "startup.orphan_wal_removed",
                msg="removed a WAL left without state.db",
                path=str(orphan),
            )
            durable.remove_if_present(orphan)
