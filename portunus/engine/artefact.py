"""Checks shared by every operation that reads a database file it is handed:
restore's input, verify's path, a freshly written backup."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import apsw
import structlog

from portunus.engine.checksum import read_sidecar, sidecar_path
from portunus.errors import InputMissing, NotAStateDatabase, StorageIOError
from portunus.store import migrations
from portunus.store.connection import open_artefact
from portunus.store.sqlitefile import has_sqlite_header

log = structlog.get_logger()


def require_sqlite_file(
    path: Path,
    *,
    op: str,
    missing_event: str,
    not_sqlite_event: str,
    io_event: str,
    live_wal_event: str,
) -> None:
    """Exit 5 when ``path`` is missing, 7 unless it is a regular file whose
    first 16 bytes are the SQLite header and no live ``-wal`` sits beside it."""
    if not os.path.exists(path):
        raise InputMissing(
            f"{path} does not exist",
            event=missing_event,
            hint=f"check the path given to {op}",
            path=str(path),
        )
    if not os.path.isfile(path):
        raise NotAStateDatabase(
            f"{path} is not a regular file",
            event=not_sqlite_event,
            hint="point at a backup file (portunus-state-<time>.db), not a directory",
            path=str(path),
        )
    try:
        # Follow a symlinked input: it is only read, never written or removed.
        ok = has_sqlite_header(Path(os.path.realpath(path)))
    except OSError as exc:
        raise StorageIOError(
            f"cannot read {path}: {exc.strerror}",
            event=io_event,
            hint="check the file's permissions",
            path=str(path),
        ) from exc
    if not ok:
        raise NotAStateDatabase(
            f"{path} is not a SQLite database: its first 16 bytes are not 'SQLite format 3\\0'",
            event=not_sqlite_event,
            hint="check the path; this is not a Portunus backup",
            path=str(path),
        )
    _refuse_live_wal(path, live_wal_event)


def _refuse_live_wal(path: Path, event: str) -> None:
    """7 when a non-empty ``-wal`` sits beside the file (or beside the file a
    symlink names, where SQLite would look): committed transactions live
    there, which a byte copy drops and an integrity check of the file alone
    never sees. A backup is one standalone file."""
    for wal in {Path(f"{path}-wal"), Path(f"{os.path.realpath(path)}-wal")}:
        try:
            live = wal.stat().st_size > 0
        except OSError:
            continue  # no -wal: the usual case
        if live:
            raise NotAStateDatabase(
                f"{path} has a non-empty {wal.name} beside it: it is a live database, not a backup",
                event=event,
                hint="take a backup of it with 'portunus-server backup' and use that file",
                path=str(path),
                wal=str(wal),
            )


def expected_checksum(path: Path, *, mismatch_event: str, absent_event: str) -> str | None:
    """The digest ``<path>.sha256`` records (7 with ``mismatch_event`` when it
    is unreadable or malformed), or None with an ``absent_event`` warning:
    SQLite keeps no page checksums, so without the sidecar a flipped byte in
    a row, or a lost last byte, can pass every other check."""
    expected = read_sidecar(path, event=mismatch_event)
    if expected is None:
        log.warning(
            absent_event,
            msg=f"no checksum sidecar beside {path}: its content could not be checked "
            "against a checksum (damage inside a row would go unnoticed)",
            hint=f"copy {sidecar_path(path).name} along with the backup",
            path=str(path),
            sidecar=str(sidecar_path(path)),
        )
    return expected


def check_integrity(path: Path, level: str, event: str) -> None:
    """quick_check or integrity_check of the file at ``path`` (``level``
    quick|full; none skips); NotAStateDatabase on any finding."""
    if level == "none":
        return
    conn = open_artefact(path)
    try:
        check_connection_integrity(conn, path, level, event)
    finally:
        conn.close()


def check_connection_integrity(conn: apsw.Connection, path: Path, level: str, event: str) -> None:
    pragma = "integrity_check" if level == "full" else "quick_check"
    try:
        problems = [row[0] for row in conn.execute(f"PRAGMA {pragma}(20)")]
    except (apsw.CorruptError, apsw.NotADBError) as exc:
        problems = [str(exc)]
    if problems != ["ok"]:
        raise NotAStateDatabase(
            f"{pragma} failed on {path}: {'; '.join(problems[:3])}",
            event=event,
            hint="the file is damaged; use another backup",
            path=str(path),
        )


def portunus_schema_version(conn: apsw.Connection, path: Path, *, event: str) -> int:
    """The schema version of a Portunus store; 7 with ``event`` for anything else."""
    try:
        return migrations.stored_schema_version(conn, path)
    except NotAStateDatabase as exc:
        raise NotAStateDatabase(exc.message, event=event, hint=exc.hint, **exc.fields) from exc
    except (apsw.CorruptError, apsw.NotADBError) as exc:
        raise NotAStateDatabase(
            f"{path} cannot be read as a database: {exc}",
            event=event,
            hint="the file is damaged; use another backup",
            path=str(path),
        ) from exc


def is_symlink_loop(exc: OSError) -> bool:
    """O_NOFOLLOW met a symlink."""
    return exc.errno == errno.ELOOP
