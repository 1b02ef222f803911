"""Offline verification of a backup (or any state database file)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import apsw
import structlog

from portunus.engine import artefact, seal
from portunus.engine.checksum import ensure_matches, sha256_file
from portunus.errors import NotAStateDatabase, StorageIOError
from portunus.store import migrations
from portunus.store.connection import open_artefact

log = structlog.get_logger()


# A NamedTuple, not a frozen dataclass: defining a dataclass costs about a
# millisecond at every start (docs/performance.md, "Cold start").
class VerifyResult(NamedTuple):
    path: Path
    bytes: int
    sha256: str
    checksum: str  # "ok" or "absent"
    integrity: str  # "ok", or "not checked" (a sealed backup without an identity)
    schema_version: int | None
    binary_schema_version: int
    rows: dict[str, int]
    sealed: bool = False

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
            "sealed": self.sealed,
            "content_checked": self.integrity == "ok",
        }


def verify(
    path: Path, *, identities: list[Any] | None = None, stage_in: Path | None = None
) -> VerifyResult:
    """Header, no live -wal, checksum sidecar (a warning when absent),
    integrity_check, schema version, row counts. Never writes to ``path``.

    A sealed ``path`` (age): its checksum, then with ``identities`` every
    other check on a decrypted copy in a private (0700) directory made
    inside ``stage_in`` (the data dir, when there is one) and removed
    after; without them, the checksum only, said plainly."""
    if _is_sealed(path):
        return _verify_sealed(path, identities, stage_in)
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
    return _report(path, size, digest, expected, version, rows)


def _report(
    path: Path,
    size: int,
    digest: str,
    expected: str | None,
    version: int,
    rows: dict[str, int],
    sealed: bool = False,
) -> VerifyResult:
    result = VerifyResult(
        path,
        size,
        digest,
        "ok" if expected else "absent",
        "ok",
        version,
        migrations.binary_schema_version(),
        rows,
        sealed,
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


def _is_sealed(path: Path) -> bool:
    try:
        return os.path.isfile(path) and seal.is_sealed(path)
    except OSError:
        return False  # the ordinary checks report it


def _checked_sealed(path: Path) -> tuple[str, int, str | None]:
    expected = artefact.expected_checksum(
        path, mismatch_event="verify.checksum_mismatch", absent_event="verify.checksum_absent"
    )
    try:
        digest, size = sha256_file(path)
    except OSError as exc:
        raise StorageIOError(
            f"cannot read {path}: {exc.strerror}",
            event="verify.io_error",
            hint="check the file's permissions",
            path=str(path),
        ) from exc
    ensure_matches(path, expected, digest, event="verify.checksum_mismatch")
    return digest, size, expected


def _verify_sealed(path: Path, identities: list[Any] | None, stage_in: Path | None) -> VerifyResult:
    if not identities:
        digest, size, expected = _checked_sealed(path)
        result = VerifyResult(
            path,
            size,
            digest,
            "ok" if expected else "absent",
            "not checked",
            None,
            migrations.binary_schema_version(),
            {},
            True,
        )
        log.warning(
            "verify.content_unchecked",
            msg="sealed backup: only its checksum was checked; its content was NOT checked",
            hint="pass --identity FILE to decrypt it and check everything",
            **result.as_dict(),
        )
        return result
    expected = artefact.expected_checksum(
        path, mismatch_event="verify.checksum_mismatch", absent_event="verify.checksum_absent"
    )
    import tempfile  # here: only a sealed backup's verify needs it (cold start)

    private = Path(tempfile.mkdtemp(prefix=".verify-", dir=stage_in))  # mode 0700
    try:
        plain = private / "decrypted.db"
        # The sidecar covers the sealed bytes: hashed beside the decryption.
        digest, size = seal.decrypt_checked(
            path,
            plain,
            identities,
            expected,
            event="verify.decrypt_failed",
            checksum_event="verify.checksum_mismatch",
            name=path,
            not_sqlite_event="verify.not_sqlite",
        )
        version, rows = _inspect(plain, name=path)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return _report(path, size, digest, expected, version, rows, sealed=True)


def _inspect(path: Path, name: Path | None = None) -> tuple[int, dict[str, int]]:
    """Checks of the database at ``path``; findings name ``name`` (the
    operator's file, when ``path`` is its decrypted copy)."""
    name = name or path
    try:
        conn = open_artefact(path)
    except apsw.Error as exc:
        raise NotAStateDatabase(
            f"{name} cannot be opened: {exc}",
            event="verify.integrity_failed",
            hint="the file is damaged; use another backup",
            path=str(name),
        ) from exc
    try:
        artefact.check_connection_integrity(conn, name, "full", "verify.integrity_failed")
        version = artefact.portunus_schema_version(conn, name, event="verify.not_portunus_store")
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
