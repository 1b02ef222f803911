"""Deliberate reset: remove the SQLite state, and only that, by default.

Guards, checked before anything is removed: state.db must be a regular file
(not a symlink) whose first 16 bytes are the SQLite header, which protects
against a typo'd --data-dir; every other target must be a regular file; no
server may hold the store. TLS material and server.toml stay unless
``[reset].scope`` names them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from portunus import durable
from portunus.datadir import LEGACY_FILES, STATE_DB, TLS_FILES, DataDir
from portunus.errors import NotAStateDatabase, PortunusError, StorageIOError
from portunus.store.lock import StoreLock
from portunus.store.sqlitefile import has_sqlite_header

log = structlog.get_logger()

# Order matters: the WAL and shm go before state.db, so that an interrupted
# reset never leaves an old WAL that SQLite would replay onto a new store.
STATE_TARGETS = ("state.db-wal", "state.db-shm", STATE_DB, "state.db.lock")
SCOPES = {"state": STATE_TARGETS, "tls": TLS_FILES, "legacy": LEGACY_FILES}


@dataclass
class ResetPlan:
    data_dir: DataDir
    targets: list[Path] = field(default_factory=list)
    refusal: PortunusError | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "data_dir": str(self.data_dir.path),
            "paths": [str(p) for p in self.targets],
            "refused": self.refusal.message if self.refusal else None,
        }


def plan_reset(data_dir: DataDir, scope: Iterable[str] = ("state",)) -> ResetPlan:
    """Which existing files a reset would remove, and whether it would refuse."""
    plan = ResetPlan(data_dir)
    if not data_dir.path.is_dir():
        return plan
    names = [name for part in _scopes(scope) for name in SCOPES[part]]
    try:
        plan.targets = [data_dir.path / n for n in names if _exists(data_dir.path / n)]
    except OSError as exc:
        # Not "nothing to remove": we cannot see what is there.
        plan.refusal = _io_error(data_dir.path, exc, "cannot look into the data dir")
        return plan
    plan.refusal = _refusal(data_dir, plan.targets)
    return plan


def reset(data_dir: DataDir, scope: Iterable[str] = ("state",)) -> ResetPlan:
    """Remove what :func:`plan_reset` lists; refuse (removing nothing) when
    a guard fails or a server holds the store."""
    plan = plan_reset(data_dir, scope)
    if plan.refusal:
        raise plan.refusal
    if not plan.targets:
        log.info("reset.nothing_to_do", msg="nothing to remove", data_dir=str(data_dir.path))
        return plan
    with StoreLock(data_dir.lock, "reset"):
        # Re-plan under the lock: the files may have changed while we waited.
        plan = plan_reset(data_dir, scope)
        if plan.refusal:
            raise plan.refusal
        _remove(data_dir, plan.targets)
    log.info(
        "reset.completed",
        msg="state removed",
        data_dir=str(data_dir.path),
        removed=len(plan.targets),
    )
    return plan


def _remove(data_dir: DataDir, targets: list[Path]) -> None:
    removed = 0
    try:
        for target in targets:
            durable.remove_if_present(target)
            removed += 1
        durable.fsync_dir(data_dir.path)
    except OSError as exc:
        failed = Path(exc.filename or data_dir.path)
        raise _io_error(failed, exc, "cannot remove", removed) from exc


def _exists(path: Path) -> bool:
    """lexists, except that a path we may not look at is an error, not absent."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _scopes(scope: Iterable[str]) -> list[str]:
    # "state" is always part of a reset, whatever the config says.
    return ["state", *(s for s in scope if s != "state")]


def _refusal(data_dir: DataDir, targets: list[Path]) -> PortunusError | None:
    for target in targets:
        if target.is_symlink() or not target.is_file():
            return NotAStateDatabase(
                f"{target} is not a regular file (a symlink, directory or device); "
                "refusing to remove anything",
                event="reset.not_regular_file",
                hint="check --data-dir; remove the odd file by hand if it really is stale",
                path=str(target),
            )
    state_db = data_dir.state_db
    if not targets:
        return None
    if not os.access(data_dir.path, os.W_OK | os.X_OK, effective_ids=True):
        # Checked up front so a data dir we cannot change loses nothing, not
        # the first file or two before the first unlink fails.
        error = OSError(errno.EACCES, "not writable (permissions or a read-only filesystem)")
        return _io_error(data_dir.path, error, "cannot remove files from")
    try:
        has_header = state_db not in targets or has_sqlite_header(state_db)
    except OSError as exc:
        return _io_error(state_db, exc, "cannot read")
    if not has_header:
        return NotAStateDatabase(
            f"{state_db} does not start with the SQLite header; refusing to remove anything",
            event="reset.not_sqlite",
            hint="check --data-dir: this does not look like a Portunus data dir",
            path=str(state_db),
        )
    return None


def _io_error(path: Path, exc: OSError, doing: str, removed: int = 0) -> StorageIOError:
    outcome = f"{removed} file(s) removed before it" if removed else "nothing was removed"
    return StorageIOError(
        f"{doing} {path}: {exc.strerror or exc}; {outcome}",
        event="reset.io_error",
        hint="run reset as the data dir's owner (the server's user), on a writable "
        "filesystem, then run it again",
        path=str(path),
        removed=removed,
    )
