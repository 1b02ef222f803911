"""Validated restore: stage, check, migrate, and only then swap in.

The previous state stays untouched until the last step, a rename(2) inside
the data dir, so a failure (or a kill -9) at any moment leaves either the
old state or the new one, never a half-written file.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import structlog

from portunus import durable
from portunus.datadir import DataDir, remove_created_dirs
from portunus.engine import artefact, retention, seal
from portunus.engine.checksum import ensure_matches, sha256_file
from portunus.errors import (
    InputMissing,
    NotAStateDatabase,
    PortunusError,
    StorageIOError,
    UsageError,
    WouldOverwrite,
)
from portunus.ownership import give_to_directory_owner
from portunus.store import migrations
from portunus.store.connection import (
    close_quietly,
    describe_failure,
    open_artefact,
    open_standalone,
    open_store,
)
from portunus.store.lock import StoreLock
from portunus.store.sqlitefile import has_sqlite_header

log = structlog.get_logger()

STAGE_PREFIX = ".restore-"
_STAGE_NAME = re.compile(
    # .tmp: the file Litestream writes a restore from a replica into first.
    durable.exclusive_name_pattern(STAGE_PREFIX, ".db") + r"(?:-journal|-wal|-shm|\.tmp)?"
)


@dataclass(frozen=True)
class RestoreResult:
    path: Path
    source: Path
    bytes: int
    sha256: str
    checksum_verified: bool
    from_schema_version: int
    schema_version: int
    replaced_existing: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "source": str(self.source),
            "bytes": self.bytes,
            "sha256": self.sha256,
            "checksum_verified": self.checksum_verified,
            "from_schema_version": self.from_schema_version,
            "schema_version": self.schema_version,
            "replaced_existing": self.replaced_existing,
        }


def restore(
    data_dir: DataDir,
    source: Path,
    *,
    force: bool = False,
    adopt: bool = False,
    identities: list[Any] | None = None,
) -> RestoreResult:
    """Restore ``source`` into ``data_dir``. Checks, in order: input exists
    (5), SQLite header and no live -wal (7), the data dir's filesystem (78),
    no server holds the store (75), no state.db unless ``force`` (6); then
    stage, verify and migrate (7/78/70). A refusal leaves the data dir as it
    found it: what the restore created (the data dir itself, the lock file,
    the staged copy) is removed again.

    ``adopt``: ``source`` is already a staging file of this data dir (a
    replica restored by Litestream), checked and swapped in where it is
    rather than copied first; it is removed whatever the outcome.

    A sealed ``source`` (age) needs ``identities`` (engine.seal): it is
    decrypted straight into the staged copy inside the data dir, so its
    plaintext never lives anywhere else; a wrong identity or a damaged
    file is 7 ``restore.decrypt_failed``."""
    if _is_sealed(source):
        if not identities:
            raise UsageError(
                f"{source} is a sealed (age-encrypted) backup: restoring it needs --identity",
                event="restore.identity_required",
                hint="pass --identity FILE: the age identity (or SSH private key) it was sealed to",
                path=str(source),
            )
    else:
        identities = None  # a plain backup needs no key
        artefact.require_sqlite_file(
            source,
            op="restore",
            missing_event="restore.input_missing",
            not_sqlite_event="restore.not_sqlite",
            io_event="restore.io_error",
            live_wal_event="restore.input_has_wal",
        )
    created = data_dir.prepare_for_store()
    try:
        result = _restore_locked(data_dir, source, force, adopt, identities)
    except BaseException:
        remove_created_dirs(created)
        raise
    log.info("restore.completed", msg="state restored", **result.as_dict())
    return result


def _is_sealed(source: Path) -> bool:
    """Starts with age's header; a missing or unreadable file is left to
    the ordinary checks to report."""
    try:
        return os.path.isfile(source) and seal.is_sealed(source)
    except OSError:
        return False


def restore_latest(
    data_dir: DataDir,
    directory: Path,
    *,
    force: bool = False,
    identities: list[Any] | None = None,
) -> RestoreResult:
    """Restore the newest backup in ``directory`` that passes its checks. A
    newest one that fails them (7: damaged, a checksum mismatch, a wrong
    identity) is skipped with a warning naming it; any other refusal (6,
    75, 74, a sealed one without an identity: 2) stops here."""
    found = sorted(retention.scan(directory).backups, key=lambda b: b.time, reverse=True)
    for candidate in found:
        path = directory / candidate.name
        try:
            return restore(data_dir, path, force=force, identities=identities)
        except NotAStateDatabase as refused:
            log.warning(
                "restore.latest_skipped",
                msg=f"skipped {candidate.name}: it failed its checks ({refused.message})",
                path=str(path),
                reason=refused.event,
            )
    raise InputMissing(
        f"no backup in {directory} passes its checks ({len(found)} found)",
        event="restore.no_good_backup",
        hint="see the restore.latest_skipped warnings; restore an older copy with --in",
        path=str(directory),
        found=len(found),
    )


def _restore_locked(
    data_dir: DataDir, source: Path, force: bool, adopt: bool, identities: list[Any] | None
) -> RestoreResult:
    # A refusal leaves no lock file where there was none: StoreLock removes
    # the one it created when the block ends in an exception.
    with StoreLock(data_dir.lock, "restore"):
        return _restore_held(data_dir, source, force, adopt, identities)


def _restore_held(
    data_dir: DataDir, source: Path, force: bool, adopt: bool, identities: list[Any] | None
) -> RestoreResult:
    existed = os.path.lexists(data_dir.state_db)
    if existed and not force:
        raise WouldOverwrite(
            f"{data_dir.path} already holds a state.db; refusing to clobber it",
            event="restore.data_dir_not_empty",
            hint="run 'portunus-server reset --confirm' first, or pass --force",
            path=str(data_dir.state_db),
        )
    sweep_stale_stages(data_dir, keep=source)
    try:
        staged = source if adopt else durable.create_exclusive(data_dir.path, STAGE_PREFIX, ".db")
    except OSError as exc:
        raise _io_error(exc, source) from exc
    try:
        # Before SQLite opens it, so its -journal follows the owner too.
        give_to_directory_owner(staged)
        if adopt:
            result = _check_in_place(staged, data_dir, existed)
        else:
            result = _stage_and_check(source, staged, data_dir, existed, identities)
        _swap_in(staged, data_dir)
    except BaseException as exc:
        durable.remove_if_present(*durable.sqlite_family(staged))
        if isinstance(exc, OSError | apsw.Error) and not isinstance(exc, PortunusError):
            raise _io_error(exc, source) from exc
        raise
    return result


def _stage_and_check(
    source: Path, staged: Path, data_dir: DataDir, existed: bool, identities: list[Any] | None
):
    expected = artefact.expected_checksum(
        source, mismatch_event="restore.checksum_mismatch", absent_event="restore.checksum_absent"
    )
    if identities:
        # The sidecar covers the sealed bytes: hashed beside the decryption.
        digest, size = seal.decrypt_checked(
            source,
            staged,
            identities,
            expected,
            event="restore.decrypt_failed",
            checksum_event="restore.checksum_mismatch",
            name=source,
            not_sqlite_event="restore.not_sqlite",
        )
        with ThreadPoolExecutor(max_workers=1) as pool:
            flushed = pool.submit(durable.fsync_path, staged)  # beside the check
            _check_integrity(staged, source)
            flushed.result()
    else:
        _copy_file(source, staged)
        digest, size = _check_and_hash(staged, source, expected)
    before, after = _migrate(staged, source)
    durable.fsync_path(staged)
    return RestoreResult(
        data_dir.state_db, source, size, digest, expected is not None, before, after, existed
    )


def _check_in_place(staged: Path, data_dir: DataDir, existed: bool) -> RestoreResult:
    digest, size = _check_and_hash(staged, staged, None)
    before, after = _migrate(staged, staged)
    durable.fsync_path(staged)
    return RestoreResult(data_dir.state_db, staged, size, digest, False, before, after, existed)


def _copy_file(source: Path, staged: Path) -> None:
    """Copy in the kernel, starting the writeback after each chunk so the
    fsync that follows finds a small backlog (:func:`durable.copy_range`)."""
    with open(source, "rb") as src, open(staged, "wb") as dst:
        durable.copy_range(src.fileno(), dst.fileno(), 0, os.fstat(src.fileno()).st_size)


def _check_and_hash(staged: Path, source: Path, expected: str | None) -> tuple[str, int]:
    """integrity_check, sha256 and fsync of the staged copy side by side
    (one core checks, the other hashes, the disk flushes), on a read-only
    connection so nothing changes the bytes being hashed. A checksum
    mismatch is reported before any finding of the check, as a damaged
    transfer is the likelier cause of both."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        hashed = pool.submit(sha256_file, staged)
        flushed = pool.submit(durable.fsync_path, staged)
        failure = None
        try:
            _check_integrity(staged, source)
        except (PortunusError, apsw.Error) as exc:
            failure = exc
        digest, size = hashed.result()
        ensure_matches(source, expected, digest, event="restore.checksum_mismatch")
        if failure is not None:
            raise failure
        flushed.result()
        return digest, size


def _check_integrity(staged: Path, source: Path) -> None:
    conn = open_artefact(staged)
    try:
        # Every finding names the operator's --in file, not the staged copy:
        # that name means nothing to them and is gone once the command ends.
        artefact.check_connection_integrity(conn, source, "full", "restore.integrity_failed")
    finally:
        close_quietly(conn)


def _migrate(staged: Path, source: Path) -> tuple[int, int]:
    conn = None
    try:
        conn = open_standalone(staged)
        before = artefact.portunus_schema_version(conn, source, event="restore.not_portunus_store")
        # The handshake refuses a too-new schema (78) and migrates forward in
        # one transaction (70 on failure), emitting the startup.* events.
        done = migrations.handshake(conn, source)
        return before, done.to_version
    finally:
        close_quietly(conn)


def _swap_in(staged: Path, data_dir: DataDir) -> None:
    _checkpoint_previous(data_dir.state_db)
    # Delete the old WAL before the rename: SQLite would replay it onto the
    # new file. The checkpoint above emptied it, so no old transaction dies.
    durable.remove_if_present(data_dir.wal, data_dir.shm)
    os.replace(staged, data_dir.state_db)
    durable.fsync_dir(data_dir.path)


def _checkpoint_previous(state_db: Path) -> None:
    """Fold the previous store's WAL into state.db, so that a crash between
    removing the WAL and the rename still leaves the whole old state."""
    try:
        if not has_sqlite_header(state_db):
            return
    except OSError:
        return  # missing, a symlink, unreadable: nothing of ours to keep
    conn = None
    try:
        conn = open_store(state_db)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except apsw.Error as exc:
        log.warning(
            "restore.previous_state_unreadable",
            msg="the state being replaced could not be checkpointed",
            path=str(state_db),
            error=str(exc),
        )
    finally:
        close_quietly(conn)


def sweep_stale_stages(data_dir: DataDir, keep: Path | None = None) -> list[Path]:
    """Remove the staged copies killed restores left in the data dir; the
    caller holds the store lock, so none of them belongs to a live restore.
    Only names a restore makes (``.restore-<12 hex>.db`` and SQLite's files
    beside it), never ``keep`` (a restore's own input)."""
    leftovers = []
    for path in sorted(data_dir.path.iterdir()):
        if not _STAGE_NAME.fullmatch(path.name) or (keep and _same_file(path, keep)):
            continue
        durable.remove_if_present(path)
        leftovers.append(path)
    return leftovers


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _io_error(exc: BaseException, source: Path) -> PortunusError:
    if isinstance(exc, apsw.CorruptError | apsw.NotADBError):
        return NotAStateDatabase(
            f"{source} cannot be read as a database: {exc}",
            event="restore.integrity_failed",
            hint="the file is damaged; use another backup",
            path=str(source),
        )
    detail = describe_failure(exc)
    return StorageIOError(
        f"restore of {source} failed: {detail}; the previous state is intact",
        event="restore.io_error",
        hint="check free space and permissions in the data dir",
        path=str(source),
    )
