"""Offline verification of a backup (or any state database file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import apsw
import structlog

from portunus.engine import artefact
from portunus.engine.checksum import ensure_matches, sha256_file
from portunus.errors import NotAStateDatabase
from portunus.store import migrations
from portunus.store.connection import open_artefact

log = structlog.get_logger()


@dataclass(frozen=True)
class VerifyResult:
    path: Path
    bytes: int
    sha256: str
    checksum: str  # "ok" or "absent"
    integrity: str
    schema_version: int
    binary_schema_version: int
    rows: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "bytes": self.bytes,
            "sha256": self.sha256,
            "checksum": self.checksum,
            "integrity": self.integrity,
            "schema_version": self.schema_version,
            "binary_schema_version": self.binary_schema_version,
            "rows": self.rows,
        }


def verify(path: Path) -> VerifyResult:
    """Header, no live -wal, checksum sidecar (a warning when absent),
    integrity_check, schema version, row counts. Never writes to ``path``."""
    artefact.require_sqlite_file(
        path,
        op="verify",
        missing_event="verify.input_missing",
        not_sqlite_event="verify.not_sqlite",
        io_event="verify.io_error",
        live_wal_event="verify.input_has_wal",
    )
    expected = artefact.expected_checksum(
        path, mismatch_event="verify.checksum_mismatch", absent_event="verify.checksum_absent"
    )
    digest, size = sha256_file(path)
    ensure_matches(path, expected, digest, event="verify.checksum_mismatch")
    version, rows = _inspect(path)
    result = VerifyResult(
        path,
        size,
        digest,
        "ok" if expected else "absent",
        "ok",
        version,
        migrations.binary_schema_version(),
        rows,
    )
    if version > result.binary_schema_version:
        log.warning(
            "verify.schema_newer_than_binary",
            msg="valid, but this binary cannot restore it",
            path=str(path),
            schema_version=version,
            binary_schema_version=result.binary_schema_version,
            hint="restore it with the portunus-server version that wrote it",
        )
    log.info("verify.completed", msg="backup verified", **result.as_dict())
    return result


def _inspect(path: Path) -> tuple[int, dict[str, int]]:
    try:
        conn = open_artefact(path)
    except apsw.Error as exc:
        raise NotAStateDatabase(
            f"{path} cannot be opened: {exc}",
            event="verify.integrity_failed",
            hint="the file is damaged; use another backup",
            path=str(path),
        ) from exc
    try:
        artefact.check_connection_integrity(conn, path, "full", "verify.integrity_failed")
        version = artefact.portunus_schema_version(conn, path, event="verify.not_portunus_store")
        return version, _row_counts(conn)
    finally:
        conn.close()


def _row_counts(conn: apsw.Connection) -> dict[str, int]:
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]
    return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0] for t in tables}
