"""What an operator wants to see at a glance; reads only, never writes.

Reading the schema version without leaving files behind: a read-only
SQLite connection to a WAL database creates ``-wal`` and ``-shm`` when they
are missing (and cannot remove them again). When the store is at rest (no
``-wal``, nobody holding the lock) the file is opened ``immutable``, which
creates nothing; otherwise the sidecars exist already.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import apsw

from portunus import lazy
from portunus.datadir import DataDir, probe_filesystem
from portunus.errors import PortunusError
from portunus.store import migrations
from portunus.store.connection import close_quietly, open_artefact, open_readonly
from portunus.store.lock import probe_holder
from portunus.store.sqlitefile import is_sqlite_file

# Loaded when there is a backup dir to scan: with none configured, `status`
# does not pay for the retention engine (docs/performance.md, "Cold start").
retention = lazy.module("portunus.engine.retention")


# NamedTuples, not frozen dataclasses: defining a dataclass costs about a
# millisecond at every start (docs/performance.md, "Cold start").
class StoreStatus(NamedTuple):
    exists: bool
    bytes: int | None = None
    wal_bytes: int | None = None
    shm_bytes: int | None = None
    schema_version: int | None = None
    problem: str | None = None  # why the schema version could not be read


class BackupsStatus(NamedTuple):
    dir: Path | None
    problem: str | None = None
    count: int = 0
    total_bytes: int = 0
    impostors: int = 0
    newest: str | None = None
    newest_time: datetime | None = None
    newest_age_seconds: int | None = None


class Status(NamedTuple):
    data_dir: Path
    data_dir_exists: bool
    filesystem: str
    filesystem_verdict: str
    config_file: Path | None
    lock_holder: tuple[int | None, str] | None
    store: StoreStatus
    binary_schema_version: int
    backups: BackupsStatus

    def as_dict(self) -> dict[str, object]:
        holder = self.lock_holder
        return {
            "data_dir": str(self.data_dir),
            "data_dir_exists": self.data_dir_exists,
            "filesystem": self.filesystem,
            "filesystem_verdict": self.filesystem_verdict,
            "config_file": str(self.config_file) if self.config_file else None,
            "lock": {"held": bool(holder), "pid": holder[0], "holder": holder[1]}
            if holder
            else {"held": False, "pid": None, "holder": None},
            "store": {
                "exists": self.store.exists,
                "bytes": self.store.bytes,
                "wal_bytes": self.store.wal_bytes,
                "shm_bytes": self.store.shm_bytes,
                "schema_version": self.store.schema_version,
                "problem": self.store.problem,
            },
            "binary_schema_version": self.binary_schema_version,
            "backups": {
                "dir": str(self.backups.dir) if self.backups.dir else None,
                "problem": self.backups.problem,
                "count": self.backups.count,
                "total_bytes": self.backups.total_bytes,
                "impostors": self.backups.impostors,
                "newest": self.backups.newest,
                "newest_time": retention.rfc3339(self.backups.newest_time)
                if self.backups.newest_time
                else None,
                "newest_age_seconds": self.backups.newest_age_seconds,
            },
        }


def status(
    data_dir: DataDir,
    backup_dir: Path | None,
    config_file: Path | None,
    now: datetime | None = None,
) -> Status:
    probe = probe_filesystem(data_dir.path)
    holder = probe_holder(data_dir.lock)
    return Status(
        data_dir=data_dir.path,
        data_dir_exists=data_dir.path.is_dir(),
        filesystem=probe.name,  # what datadir.filesystem_type reports
        filesystem_verdict=probe.verdict,
        config_file=config_file,
        lock_holder=holder,
        store=store_status(data_dir, at_rest=holder is None),
        binary_schema_version=migrations.binary_schema_version(),
        backups=backups_status(backup_dir, now or datetime.now(UTC)),
    )


def store_status(data_dir: DataDir, *, at_rest: bool) -> StoreStatus:
    if not os.path.lexists(data_dir.state_db):
        return StoreStatus(exists=False)
    sizes = {
        "bytes": _size(data_dir.state_db),
        "wal_bytes": _size(data_dir.wal),
        "shm_bytes": _size(data_dir.shm),
    }
    version, problem = _schema_version(data_dir, at_rest=at_rest and sizes["wal_bytes"] is None)
    return StoreStatus(True, schema_version=version, problem=problem, **sizes)


def _size(path: Path) -> int | None:
    try:
        return os.lstat(path).st_size
    except FileNotFoundError:
        return None


def _schema_version(data_dir: DataDir, *, at_rest: bool) -> tuple[int | None, str | None]:
    path = data_dir.state_db
    if not is_sqlite_file(path):
        return None, "not a SQLite database (bad header, symlink, not a regular file, unreadable)"
    conn = None
    try:
        conn = open_artefact(path) if at_rest else open_readonly(path)
        return migrations.stored_schema_version(conn, path), None
    except PortunusError as exc:
        return None, exc.message
    except apsw.Error as exc:
        return None, f"cannot read it: {exc}"
    finally:
        close_quietly(conn)


def backups_status(backup_dir: Path | None, now: datetime) -> BackupsStatus:
    if backup_dir is None:
        return BackupsStatus(None, problem="no [backup].dir configured")
    try:
        found = retention.scan(backup_dir)
    except PortunusError as exc:
        return BackupsStatus(backup_dir, problem=exc.message)
    newest = retention.newest(found.backups)
    return BackupsStatus(
        backup_dir,
        count=len(found.backups),
        total_bytes=sum(b.bytes + (b.sidecar_bytes or 0) for b in found.backups),
        impostors=len(found.impostors),
        newest=newest.name if newest else None,
        newest_time=newest.time if newest else None,
        newest_age_seconds=int((now - newest.time).total_seconds()) if newest else None,
    )
