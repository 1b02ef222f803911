"""apsw connections with the store's policy applied.

One writer at a time, each write in ``BEGIN IMMEDIATE``; readers open
read-only. apsw's ``with conn:`` is a transaction (savepoints when nested).
"""

from __future__ import annotations

import errno
from pathlib import Path
from urllib.parse import quote

import apsw

BUSY_TIMEOUT_MS = 5000


def open_store(path: Path) -> apsw.Connection:
    """Read-write connection to the live store: WAL, synchronous=NORMAL."""
    return use_wal(open_as_found(path))


def open_as_found(path: Path) -> apsw.Connection:
    """Read-write connection that has not changed the file yet: its journal
    mode is as found. Checks made through it before :func:`use_wal` write
    nothing, so a store they refuse is left exactly as it was."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    _apply_common(conn)
    return conn


def use_wal(conn: apsw.Connection) -> apsw.Connection:
    """The live store's journal: WAL, synchronous=NORMAL (a write to the
    header of a file found in rollback mode)."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def open_readonly(path: Path) -> apsw.Connection:
    """Read-only connection: never writes the file, never creates it."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    _apply_common(conn)
    return conn


def open_artefact(path: Path) -> apsw.Connection:
    """Read-only connection to a file that nothing else writes (a backup).

    ``immutable=1`` keeps SQLite from creating -wal/-shm beside a WAL-format
    copy, so inspecting a file leaves its directory exactly as it was. When a
    non-empty -wal does sit beside it, the WAL is part of the content and the
    ordinary read-only mode reads it.
    """
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return open_readonly(path)
    uri = "file:" + quote(str(path.absolute())) + "?mode=ro&immutable=1"
    conn = apsw.Connection(uri, flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    _apply_common(conn)
    return conn


def open_standalone(path: Path) -> apsw.Connection:
    """Read-write connection to a single-file copy (a backup or a staged
    restore), kept in rollback-journal mode so no -wal is ever needed."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    _apply_common(conn)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _apply_common(conn: apsw.Connection) -> None:
    conn.setbusytimeout(BUSY_TIMEOUT_MS)
    conn.execute("PRAGMA foreign_keys=ON")
    # The query planner stability guarantee: a statement keeps the plan it
    # was prepared with, whatever values are bound. Without it SQLite
    # re-prepares (re-parses and re-plans) a cached statement each time a
    # parameter the planner looked at gets a new value, which for our point
    # lookups and the rule-clash probe is every execution: 2-3x their cost
    # (rule by id 30 -> 11 us, clash probe 28 -> 9 us on the development
    # VM). Our queries are planned on their shape alone (no LIKE on an
    # index, no ANALYZE statistics), so no plan is lost.
    conn.config(apsw.SQLITE_DBCONFIG_ENABLE_QPSG, 1)


def close_quietly(conn: apsw.Connection | None) -> None:
    """Close a connection; safe to call twice or on None."""
    if conn is not None:
        conn.close()


# SQLite found the file damaged (or no database at all) while reading it.
CORRUPTION = (apsw.CorruptError, apsw.NotADBError)

# What an operator should read for SQLite's storage errors: once SQLite has
# rolled back, the message an apsw error carries can be as unhelpful as
# "not an error" (SQLite's text for the connection's *current* state).
_STORAGE_WORDS = (
    (apsw.FullError, "the disk is full"),
    (apsw.ReadOnlyError, "the file or its filesystem is read-only"),
    (apsw.CantOpenError, "the file cannot be opened (missing, permissions, read-only filesystem)"),
    (apsw.IOError, "an I/O error"),
    (apsw.BusyError, "another process held the database locked"),
)


def describe_failure(exc: BaseException) -> str:
    """A short human account of a storage failure: SQLite's or the OS's."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "the disk is full"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    for kind, words in _STORAGE_WORDS:
        if isinstance(exc, kind):
            detail = str(exc).removeprefix(f"{type(exc).__name__}: ")
            if detail in ("", "not an error", "database or disk is full"):
                return words
            return f"{words} ({detail})"
    return str(exc)
