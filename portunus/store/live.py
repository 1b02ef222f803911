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
from portunus.store.connection import (
    CORRUPTION,
    close_quietly,
    describe_failure,
    open_as_found,
    use_wal,
)
from portunus.store.sqlitefile import has_sqlite_header

log = structlog.get_logger()


def open_live_store(data_dir: DataDir) -> tuple[apsw.Connection, migrations.Handshake]:
    """Open (creating if absent) and migrate ``state.db``; 7, 70, 74 or 78 on refusal.

    Every refusal comes before the first write (the switch to WAL): a
    foreign, damaged or too-new file is left exactly as it was found.
    """
    state_db = data_dir.state_db
    if os.path.lexists(state_db):
        require_state_file(state_db)
    else:
        _drop_orphan_wal(data_dir)
        _create_private(state_db)
    conn = None
    try:
        conn = open_as_found(state_db)
        migrations.usable_schema_version(conn, state_db, allow_empty=True)
        refuse_if_damaged(conn, state_db)
        use_wal(conn)
        return conn, migrations.handshake(conn, state_db, allow_empty=True)
    except CORRUPTION as exc:
        close_quietly(conn)
        raise _damaged(state_db, describe_failure(exc)) from exc
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


def require_state_file(state_db: Path) -> None:
    """7 unless ``state.db`` is a regular file with the SQLite header (or
    empty); 74 when it cannot be read at all (permissions, I/O)."""
    try:
        ok = (
            not state_db.is_symlink()
            and state_db.is_file()
            # Empty: created by _create_private, killed before SQLite wrote.
            and (state_db.stat().st_size == 0 or has_sqlite_header(state_db))
        )
    except OSError as exc:
        raise StorageIOError(
            f"cannot read {state_db}: {exc.strerror}",
            event="startup.store_open_failed",
            hint="check the file's owner and mode (the server's user must read and "
            "write it) and the disk",
            path=str(state_db),
        ) from exc
    if not ok:
        raise NotAStateDatabase(
            f"{state_db} is not a SQLite database (bad header, symlink or not a regular file)",
            event="startup.not_sqlite",
            hint="check --data-dir; restore a backup if state.db was damaged",
            path=str(state_db),
        )


def refuse_if_damaged(conn: apsw.Connection, state_db: Path) -> None:
    """``PRAGMA quick_check``: every page of every b-tree is readable and well
    formed (not the index-to-table cross-check of integrity_check). It reads
    the whole file once, about 0.5 s per GiB; serving a damaged store would
    instead answer reads with errors, one request at a time."""
    problems = [row[0] for row in conn.execute("PRAGMA quick_check") if row[0] != "ok"]
    if problems:
        raise _damaged(state_db, "; ".join(problems[:5]))


def _damaged(state_db: Path, detail: str) -> NotAStateDatabase:
    return NotAStateDatabase(
        f"{state_db} is damaged: {detail}",
        event="startup.store_corrupt",
        hint="keep a copy of the damaged state.db for diagnosis, then restore the "
        "latest backup (portunus-server restore --in BACKUP --force)",
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
