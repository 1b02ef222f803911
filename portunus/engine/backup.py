"""Online, WAL-aware backup of the live store into one standalone file.

The copy runs SQLite's Online Backup API from a read-only source connection
that holds one read transaction across every step: the snapshot cannot
change under the copy, so concurrent writers neither block it nor force it
to restart (the stepped copy without that held transaction, and the sqlite3
shell's ``.backup``, restart without end under a busy writer: see
docs/performance.md). The result is written under a temporary name, checked,
turned into a rollback-journal file, fsynced, and only then published under
its final name, which is never replaced, after its checksum sidecar: a
backup never exists without its sidecar.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import apsw
import structlog

from portunus import durable, testpoints
from portunus.datadir import DataDir
from portunus.engine import artefact, frozen, seal
from portunus.engine.checksum import TrailingSha256, sha256_file, sidecar_path, sidecar_text
from portunus.errors import (
    InputMissing,
    NotAStateDatabase,
    PortunusError,
    StorageIOError,
    UsageError,
    WouldOverwrite,
)
from portunus.store import migrations
from portunus.store.connection import close_quietly, describe_failure, open_readonly
from portunus.store.sqlitefile import has_sqlite_header, is_regular_file

log = structlog.get_logger()

BACKUP_PREFIX = "portunus-state-"
TEMP_PREFIX = ".portunus-backup-"
STEP_PAGES = 4096  # 16 MiB at 4 KiB pages: progress every fraction of a second
VERIFY_LEVELS = ("none", "quick", "full")
UNSIDECARABLE = frozenset("\n\r\\")
BACKGROUND_NICE = 10  # verification yields the cores to a server on the same machine
HELD_CHECK_NICE = 5  # a check that holds the snapshot yields less (see _copy)
NAME_ATTEMPTS = 100  # fresh names tried when concurrent backups share a directory
# An unlocked temporary file untouched this long was left by a killed backup.
STALE_TEMP_SECS = 60.0
_TEMP_NAME = re.compile(durable.exclusive_name_pattern(TEMP_PREFIX, ".tmp"))
# A sealed backup's plaintext copy is made and checked here, inside the
# data dir (0700), never in the destination: see :func:`_seal`.
STAGE_PREFIX = ".backup-stage-"
_STAGE_NAME = re.compile(durable.exclusive_name_pattern(STAGE_PREFIX, ".db"))
# What backup_name writes (seconds, or microseconds on a clash).
_BACKUP_NAME = re.compile(
    re.escape(BACKUP_PREFIX) + r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z\.db(\.age)?"
)
_SIDECAR_LINE = re.compile(r"[0-9a-f]{64}  [^\n]+\n")
SIDECAR_MAX = 4096  # a digest, two spaces and a file name (at most 255 bytes)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BackupResult:
    path: Path
    sidecar: Path | None
    bytes: int
    sha256: str
    schema_version: int
    pages: int
    restarts: int
    copy_method: str
    copy_seconds: float
    verify_seconds: float
    total_seconds: float

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "sidecar": str(self.sidecar) if self.sidecar else None,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "schema_version": self.schema_version,
            "pages": self.pages,
            "restarts": self.restarts,
            "copy_method": self.copy_method,
            "copy_seconds": round(self.copy_seconds, 3),
            "verify_seconds": round(self.verify_seconds, 3),
            "total_seconds": round(self.total_seconds, 3),
        }


# How the copy was made: the store's own file, held unchanged by a read
# transaction (engine/frozen.py), or SQLite's Online Backup API, where the
# file cannot be held (read-only access, a reader holding the WAL back).
COPY_FILE = "file"
COPY_BACKUP_API = "backup_api"


@dataclass(frozen=True)
class _Copy:
    schema_version: int
    pages: int
    restarts: int
    method: str
    # The copy's (sha256, size), computed as it was written, when it was.
    hashed: Callable[[], tuple[str, int]] | None = None
    # Checked already: the held file's bytes, while they were copied.
    checked: bool = False


def backup_name(at: datetime, *, precise: bool = False, sealed: bool = False) -> str:
    """``portunus-state-<RFC3339 UTC>.db`` (``.db.age`` when ``sealed``);
    ``precise`` adds microseconds."""
    spec = "microseconds" if precise else "seconds"
    stamp = at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec=spec)
    return f"{BACKUP_PREFIX}{stamp}Z.db" + (seal.SEALED_SUFFIX if sealed else "")


def backup(
    data_dir: DataDir,
    out: Path,
    *,
    verify: str = "quick",
    checksum: bool = True,
    progress: Progress | None = None,
    directory: bool = False,
    recipients: list[Any] | None = None,
) -> BackupResult:
    """Back the store in ``data_dir`` up to ``out`` (a new file, or a directory).

    ``directory``: ``out`` is meant as a directory (``[backup] dir``, an
    ``--out DIR/``), so if it is not one that is refused, never a file of its
    name. ``recipients`` (parsed by :mod:`portunus.engine.seal`) seal it:
    the held store's bytes are read by an encrypting child process while
    they are checked, or (where the file cannot be held) are copied and
    checked in the data dir first; only their age encryption is written to
    the destination."""
    started = time.monotonic()
    source = _checked_source(data_dir)
    final, named_here = _destination(out, directory, sealed=bool(recipients))
    sweep_stale_temps(final.parent)
    if recipients:
        sweep_stale_temps(data_dir.path, _STAGE_NAME)
    tmp = held = stage = stage_held = held_file = None
    checkpoint = _SourceCheckpoint(source)
    try:
        held_file = frozen.freeze(source)
        # A SIGTERM/SIGINT between creating the temp file and this try would
        # leave it behind: held off until both names are bound.
        with durable.signals_deferred():
            if recipients and held_file is None:
                stage, stage_held = _create_temp(data_dir.path, STAGE_PREFIX, ".db")
            tmp, held = _create_temp(final.parent)
        if recipients and held_file is not None:
            copied, digest, size = _seal_held(
                held_file, source, tmp, verify, recipients, progress, checkpoint.start
            )
            copy_seconds = time.monotonic() - started
        else:
            # The private staging copy is never written back early: it is
            # removed within seconds, mostly before it ever reaches the disk.
            copy_to, writeback = (stage, None) if recipients else (tmp, held)
            copied = _copy(
                source,
                copy_to,
                writeback,
                progress,
                on_snapshot_released=checkpoint.start,
                held_file=held_file,
                check_level=verify,
            )
            copy_seconds = time.monotonic() - started
            left_to_check = "none" if copied.checked else verify
            if recipients:
                digest, size = _seal(stage, tmp, left_to_check, source, recipients)
                durable.remove_if_present(*durable.sqlite_family(stage))
            else:
                digest, size = _verify_and_hash(tmp, left_to_check, source, copied.hashed)
        verify_seconds = time.monotonic() - started - copy_seconds
        final, sidecar = _publish(tmp, final, digest if checksum else None, named_here)
    except BaseException as exc:
        for leftover in (tmp, stage):
            if leftover is not None:
                durable.remove_if_present(*durable.sqlite_family(leftover))
        if isinstance(exc, apsw.Error | OSError):
            raise _io_error(exc, final, source) from exc
        raise
    finally:
        checkpoint.finish()
        # Last: closing any descriptor of a file drops the process's POSIX
        # locks on it, and SQLite's connections to it are all closed by now.
        if held_file is not None:
            held_file.close_file()
        for fd in (held, stage_held):
            if fd is not None:
                os.close(fd)
    result = BackupResult(
        final,
        sidecar,
        size,
        digest,
        copied.schema_version,
        copied.pages,
        copied.restarts,
        copied.method,
        copy_seconds,
        verify_seconds,
        time.monotonic() - started,
    )
    log.info("backup.completed", msg="backup written", **result.as_dict())
    return result


def _checked_source(data_dir: DataDir) -> Path:
    source = data_dir.state_db
    if not os.path.lexists(source):
        raise InputMissing(
            f"no state database at {source}",
            event="backup.source_missing",
            hint="check --data-dir (or data_dir in server.toml) points at the server's data dir",
            path=str(source),
        )
    try:
        # A directory (or device) named state.db is as wrong as a bad header:
        # 7, not an I/O error.
        ok = is_regular_file(source) and has_sqlite_header(source)
    except OSError as exc:
        if artefact.is_symlink_loop(exc):
            ok = False
        else:
            raise _io_error(exc, source) from exc
    if not ok:
        raise NotAStateDatabase(
            f"{source} is not a SQLite database (bad header, or not a regular file)",
            event="backup.source_not_sqlite",
            hint="check --data-dir; state.db must be the server's own SQLite file",
            path=str(source),
        )
    return source


def _seal(
    stage: Path, tmp: Path, level: str, source: Path, recipients: list[Any]
) -> tuple[str, int]:
    """Encrypt the private plaintext copy into the destination's temporary
    file (the only bytes the destination ever sees) while the copy is
    checked beside it: a failed check means the ciphertext is never
    published. Then hash (from the page cache) and fsync the ciphertext
    side by side. (sha256, size) of the sealed bytes."""
    with ThreadPoolExecutor(max_workers=2, initializer=lower_thread_priority) as pool:
        checked = pool.submit(_check_copy, stage, level, source)
        sealed = pool.submit(seal.encrypt, stage, tmp, recipients)
        checked.result()
        sealed.result()
    return _verify_and_hash(tmp, "none", source)


def _seal_held(
    held_file: frozen.Frozen,
    source: Path,
    tmp: Path,
    level: str,
    recipients: list[Any],
    progress: Progress | None,
    on_snapshot_released: Callable[[], None],
) -> tuple[_Copy, str, int]:
    """A sealed backup of the held file with no plaintext copy anywhere:
    its bytes (page 1 made a rollback-journal file, as a plain copy's) are
    read by the encrypting process (:func:`seal.encrypt_stream`) while
    SQLite checks the same held bytes and the ciphertext is hashed and
    written out as it grows. A failed check publishes nothing."""

    trail = TrailingSha256(tmp, lower_thread_priority)

    def encrypt(written: Callable[[int], None]) -> None:
        def grown(upto: int) -> None:
            trail.advance(upto)
            written(upto)

        first = frozen.first_page(held_file)
        seal.encrypt_stream(first, held_file.fd, held_file.size, tmp, recipients, grown)

    try:
        version = _write_held(
            held_file, source, tmp, level, progress, on_snapshot_released, encrypt
        )
        digest, size = trail.result(os.stat(tmp).st_size)
        durable.fsync_path(tmp)
    except BaseException:
        trail.cancel()
        raise
    return _Copy(version, held_file.pages, 0, COPY_FILE, checked=True), digest, size


def _second_taken(directory: Path, now: datetime) -> bool:
    """Whether any backup (plain or sealed, seconds or sub-second name) in
    ``directory`` is already dated within ``now``'s second. Then the new one
    takes a sub-second name: a seconds-only name would date it .000000,
    older than a sub-second sibling, and retention would take the newest
    backup for an old one (a name freed by pruning must not be reused)."""
    second = backup_name(now).removesuffix("Z.db")
    try:
        with os.scandir(directory) as entries:
            return any(e.name.startswith(second) for e in entries)
    except OSError:
        return False


def _destination(out: Path, directory: bool, *, sealed: bool = False) -> tuple[Path, bool]:
    """The final path, and whether we picked its name inside a directory."""
    if directory and not out.is_dir():
        problem = "is not a directory" if os.path.lexists(out) else "does not exist"
        raise StorageIOError(
            f"the backup directory {out} {problem}",
            event="backup.destination_dir_missing",
            hint="create it first (mkdir -p, writable by this user), or fix [backup] dir",
            path=str(out),
        )
    if out.is_dir():
        sweep_orphan_sidecars(out)
        now = datetime.now(UTC)
        precise = _second_taken(out, now)
        final = out / backup_name(now, precise=precise, sealed=sealed)
    else:
        final = out
        if set(final.name) & UNSIDECARABLE:
            # sha256sum -c would need its escaped form for such a name, and
            # a name with a newline in it is a typo, not a choice.
            raise UsageError(
                f"refusing the backup name {final.name!r}: it holds a newline, "
                "carriage return or backslash",
                hint="pick a plain name (date-stamped is the convention), or --out a directory",
            )
    if not final.parent.is_dir():
        raise StorageIOError(
            f"the destination directory {final.parent} does not exist",
            event="backup.destination_dir_missing",
            hint="create it first (mkdir -p), or pick another --out",
            path=str(final),
        )
    if not out.is_dir():
        sweep_orphan_sidecars(final.parent, only=final)
    for taken in (final, sidecar_path(final)):
        if os.path.lexists(taken):
            raise WouldOverwrite(
                f"{taken} already exists; refusing to overwrite it",
                event="backup.destination_exists",
                hint="pick a unique path (date-stamped is the convention) or a directory",
                path=str(taken),
            )
    return final, out.is_dir()


def _create_temp(
    directory: Path, prefix: str = TEMP_PREFIX, suffix: str = ".tmp"
) -> tuple[Path, int]:
    """The hidden file the copy goes to, and a descriptor holding an flock on
    it for the whole backup: what tells a live backup's file from one a
    killed backup left (see :func:`sweep_stale_temps`)."""
    try:
        path = durable.create_exclusive(directory, prefix, suffix)
        held = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _io_error(exc, directory) from exc
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # a filesystem without flock: the age rule alone protects it
    return path, held


def sweep_stale_temps(directory: Path, pattern: re.Pattern[str] = _TEMP_NAME) -> list[Path]:
    """Remove what killed backups left in ``directory``: a hidden
    ``.portunus-backup-*.tmp`` (and its ``-journal``) that no live backup
    holds locked and that nothing has written for ``STALE_TEMP_SECS``.

    A live backup holds an flock on its file from the moment it exists (the
    age rule covers that moment, and filesystems without flock); a killed
    one's lock went with its process. Only names of that exact pattern are
    ever touched. Best effort: whatever cannot be read or removed is left.
    """
    removed: list[Path] = []
    try:
        with os.scandir(directory) as scan:
            candidates = [e for e in scan if pattern.fullmatch(e.name)]
    except OSError:
        return removed
    now = time.time()
    for entry in candidates:
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or now - info.st_mtime < STALE_TEMP_SECS:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            durable.remove_if_present(*durable.sqlite_family(Path(entry.path)))
        except OSError:
            continue  # held by a live backup, or not ours to remove
        finally:
            os.close(fd)
        removed.append(Path(entry.path))
        log.warning(
            "backup.stale_temp_removed",
            msg="removed a temporary file an interrupted backup left behind",
            path=entry.path,
            bytes=info.st_size,
            age_secs=round(now - info.st_mtime),
        )
    return removed


def _copy(
    source: Path,
    tmp: Path,
    tmp_fd: int | None,
    progress: Progress | None,
    on_snapshot_released: Callable[[], None],
    held_file: frozen.Frozen | None = None,
    check_level: str = "none",
) -> _Copy:
    """Copy the store into ``tmp``: its file while ``held_file`` holds it
    unchanged (a plain backup's copy, hashed as it is written: see
    :class:`_Copy`), else through SQLite's Online Backup API (also a sealed
    backup's private staging copy). ``tmp_fd`` given: the kernel starts
    writing the copy out as it is made.

    The file copy is checked (``check_level``) while it is made: SQLite
    reads the held file, the very bytes copied (page for page, header bytes
    18-19 aside), on the other core; the sha256 in the sidecar is that of the
    bytes written, hashed on their way to the disk. A copy through SQLite is
    checked after."""
    if held_file is None:
        return _copy_through_sqlite(source, tmp, tmp_fd, progress, on_snapshot_released)
    digest = hashlib.sha256()

    def copy(written: Callable[[int], None]) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC)
        direct_fd = durable.open_direct(tmp)
        try:
            frozen.copy(held_file, fd, digest, written, direct_fd)
        finally:
            os.close(fd)
            if direct_fd is not None:
                os.close(direct_fd)

    version = _write_held(held_file, source, tmp, check_level, progress, on_snapshot_released, copy)
    size = held_file.size
    return _Copy(
        version, held_file.pages, 0, COPY_FILE, lambda: (digest.hexdigest(), size), checked=True
    )


def _write_held(
    held_file: frozen.Frozen,
    source: Path,
    tmp: Path,
    check_level: str,
    progress: Progress | None,
    on_snapshot_released: Callable[[], None],
    write: Callable[[Callable[[int], None]], None],
) -> int:
    """``write`` fills ``tmp`` from the held file, front to back, telling
    how far it got; meanwhile SQLite checks the held bytes (``check_level``)
    on the other core and what went through the page cache is written out
    to the disk. The snapshot is released once both are done. The schema
    version."""
    version = _checked_version(held_file.conn, source, "its file, held unchanged")
    writeback = durable.BackgroundWriteback(tmp)

    def written(upto: int) -> None:
        writeback.poke()
        if progress:
            # A ciphertext outgrows the pages it holds.
            progress(min(upto // held_file.page_size, held_file.pages), held_file.pages)

    try:
        # The check holds the snapshot (and the WAL's growth under writers)
        # as long as it runs, so it yields less than the hash, which holds
        # nothing: half way (docs/performance.md has both ends).
        with ThreadPoolExecutor(max_workers=1, initializer=_check_priority) as pool:
            checked = pool.submit(_check_held, held_file.conn, check_level, source)
            write(written)
            checked.result()
        held_file.release()
        on_snapshot_released()
    finally:
        writeback.close()
    return version


def _check_held(conn: apsw.Connection, level: str, source: Path) -> None:
    if level == "none":
        return
    with _store_damaged_if_failed(source, "the store {source} failed its check as it was copied"):
        artefact.check_connection_integrity(conn, source, level, "backup.verify_failed")


def _checked_version(conn: apsw.Connection, source: Path, how: str) -> int:
    version = migrations.stored_schema_version(conn, source)
    migrations.refuse_if_too_new(version, source)
    migrations.log_store_opened(
        source,
        version,
        f"store open for an online backup (a read-only snapshot: {how})",
        mode="read-only",
    )
    return version


def _copy_through_sqlite(
    source: Path,
    tmp: Path,
    tmp_fd: int | None,
    progress: Progress | None,
    on_snapshot_released: Callable[[], None],
) -> _Copy:
    src = dst = None
    try:
        src = _open_snapshot(source)
        version = _checked_version(src, source, "the Online Backup API")
        dst = apsw.Connection(str(tmp))
        # The temp file is ours alone until published; we fsync it ourselves.
        dst.execute("PRAGMA journal_mode=OFF")
        dst.execute("PRAGMA synchronous=OFF")
        pages, restarts = _step_until_done(dst, src, tmp_fd, progress)
        src.execute("COMMIT")
        on_snapshot_released()
        close_quietly(src)
        src = None
        # The copied header says WAL; a standalone artefact needs no -wal.
        dst.execute("PRAGMA journal_mode=DELETE")
        return _Copy(version, pages, restarts, COPY_BACKUP_API)
    finally:
        close_quietly(dst)
        close_quietly(src)


def _open_snapshot(source: Path) -> apsw.Connection:
    """A read-only connection to the store inside the read transaction the
    whole copy keeps. A failure here is the source's, not the destination's."""
    src = None
    try:
        # No mmap (SQLite's default): mapped pages count towards RSS, and
        # memory must stay flat whatever the store's size.
        src = open_readonly(source)
        src.execute("BEGIN")
        src.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()  # the snapshot starts here
        return src
    except (apsw.CorruptError, apsw.NotADBError):
        close_quietly(src)
        raise
    except apsw.Error as exc:
        close_quietly(src)
        raise StorageIOError(
            f"cannot read the store {source}: {describe_failure(exc)}",
            event="backup.io_error",
            hint="check permissions on the data dir and state.db (a stopped WAL store "
            "needs a writable data dir for its -shm file); nothing was written",
            path=str(source),
        ) from exc


def _step_until_done(
    dst: apsw.Connection, src: apsw.Connection, dst_fd: int | None, progress: Progress | None
) -> tuple[int, int]:
    """Copy ``STEP_PAGES`` at a time; after each step the kernel starts
    writing them out, so the final fsync finds a small backlog instead of
    the whole store, and a server's own syncs meanwhile (its WAL, its
    checkpoints) do not queue behind a GiB (docs/performance.md: writes
    during backups kept their p99 under 0.1 s instead of 0.2-0.6 s)."""
    restarts = 0
    copied_before = 0
    with dst.backup("main", src, "main") as step:
        while True:
            done = step.step(STEP_PAGES)
            copied = step.page_count - step.remaining
            if copied <= copied_before:
                # A step that restarts copies from page 1 again, so it never
                # gets past the previous one ("<" would miss the endless
                # restarts, where every step ends at STEP_PAGES). Cannot happen
                # while the read transaction is held; counted so tests and
                # benchmarks prove it.
                restarts += 1
            copied_before = copied
            if dst_fd is not None:
                durable.start_writeback(dst_fd)
            if progress:
                progress(copied, step.page_count)
            if done:
                return step.page_count, restarts


def _verify_and_hash(
    tmp: Path,
    level: str,
    source: Path,
    hashed_as_written: Callable[[], tuple[str, int]] | None = None,
) -> tuple[str, int]:
    """Integrity check, sha256 and fsync side by side: each reads or flushes
    the file once, on two cores. They run at a lower CPU priority: the
    snapshot is already released, so a slower check costs nothing, while a
    server on the same machine keeps its share of the cores. A hash begun
    as the copy was written (``hashed_as_written``) is awaited instead."""
    with ThreadPoolExecutor(max_workers=3, initializer=lower_thread_priority) as pool:
        checked = pool.submit(_check_copy, tmp, level, source)
        hashed = pool.submit(hashed_as_written or (lambda: sha256_file(tmp)))
        flushed = pool.submit(durable.fsync_path, tmp)
        checked.result()
        flushed.result()
        return hashed.result()


def _check_copy(copy: Path, level: str, source: Path) -> None:
    # The temp file is gone by the time this is read; what failed is
    # a page-for-page copy of the live store, so name the store.
    with _store_damaged_if_failed(source, "the copy of {source} failed its check"):
        artefact.check_integrity(copy, level, event="backup.verify_failed")


@contextlib.contextmanager
def _store_damaged_if_failed(source: Path, what: str) -> Iterator[None]:
    """A check's finding, told as what it means: the live store is damaged."""
    try:
        yield
    except NotAStateDatabase as found:
        raise NotAStateDatabase(
            f"{what.format(source=source)}: {found.message}",
            event="backup.verify_failed",
            hint="the live store is probably damaged: stop the server and restore a "
            "backup (if `verify` of a fresh backup elsewhere passes, suspect this disk); "
            "nothing was published",
            path=str(source),
        ) from found


def _check_priority() -> None:
    lower_thread_priority(HELD_CHECK_NICE)


def lower_thread_priority(increment: int = BACKGROUND_NICE) -> None:
    """Renice the calling thread (on Linux nice is per thread, and threads it
    starts inherit it). Best effort: elsewhere, or when refused, a no-op."""
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(current + increment, 19))
    except (AttributeError, OSError):
        pass


class _SourceCheckpoint:
    """Checkpoints the live store's WAL the moment the snapshot is released.

    Holding the snapshot let the WAL grow (hundreds of MiB under a busy
    writer); left alone, the server's next commit would cross the
    auto-checkpoint threshold and stall for the whole checkpoint. A PASSIVE
    checkpoint started first never blocks writers, and their own
    auto-checkpoint skips while it runs. Best effort: a backup with
    read-only access to the store skips it.
    """

    def __init__(self, source: Path) -> None:
        self._thread: threading.Thread | None = None
        try:
            # Opened before the snapshot is released, so nothing delays the start.
            self._conn: apsw.Connection | None = apsw.Connection(
                str(source), flags=apsw.SQLITE_OPEN_READWRITE
            )
        except apsw.Error as exc:
            self._conn = None
            _log_checkpoint_skipped(exc)

    def start(self) -> None:
        if self._conn is not None:
            self._thread = threading.Thread(target=self._run, name="portunus-checkpoint")
            self._thread.start()

    def finish(self) -> None:
        if self._thread is not None:
            self._thread.join()
        close_quietly(self._conn)
        self._conn = None

    def _run(self) -> None:
        try:
            _, wal_frames, done = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
            log.debug(
                "backup.source_checkpointed",
                msg="checkpointed the live store's WAL",
                wal_frames=wal_frames,
                checkpointed=done,
            )
        except apsw.Error as exc:
            _log_checkpoint_skipped(exc)


def _log_checkpoint_skipped(exc: apsw.Error) -> None:
    log.debug(
        "backup.source_checkpoint_skipped",
        msg="could not checkpoint the live store",
        error=str(exc),
    )


def _publish(
    tmp: Path, final: Path, digest: str | None, named_here: bool
) -> tuple[Path, Path | None]:
    """Publish the checked copy (and its sidecar) under a free final name."""
    for attempt in range(NAME_ATTEMPTS):
        try:
            return final, _publish_as(tmp, final, digest)
        except WouldOverwrite:
            if not named_here or attempt == NAME_ATTEMPTS - 1:
                raise
            # A concurrent backup into the same directory took the name since
            # we chose it. The operator named only the directory, so a clash
            # is ours to resolve: take a fresher (sub-second) name.
            sealed = final.name.endswith(seal.SEALED_SUFFIX)
            final = final.parent / backup_name(datetime.now(UTC), precise=True, sealed=sealed)
    raise AssertionError("unreachable")


def _publish_as(tmp: Path, final: Path, digest: str | None) -> Path | None:
    """The sidecar first, under its final name, then the backup: a backup's
    final name never exists without its sidecar, whatever kills us (a kill
    in between leaves a lone sidecar, which ``sha256sum -c`` reports as
    missing its file and the next backup sweeps: :func:`sweep_orphan_sidecars`).
    The sidecar stays flock-ed until the backup is published, so no sweep
    takes it for an orphan meanwhile."""
    if digest is None:
        durable.publish_no_replace(tmp, final, event="backup.destination_exists")
        durable.fsync_dir(final.parent)
        return None
    sidecar, held = _publish_sidecar(digest, final)
    published = False
    try:
        # The sidecar's name is durable before the backup's can be.
        durable.fsync_dir(final.parent)
        testpoints.reached("backup.sidecar_published")
        durable.publish_no_replace(tmp, final, event="backup.destination_exists")
        published = True
        durable.fsync_dir(final.parent)
    except BaseException:
        if not published:
            # All or nothing: the sidecar of a backup never published goes.
            durable.remove_if_present(sidecar)
        raise
    finally:
        os.close(held)
    return sidecar


def _publish_sidecar(digest: str, final: Path) -> tuple[Path, int]:
    """The sidecar under its final name, and a descriptor holding its flock."""
    sidecar_tmp = durable.create_exclusive(final.parent, TEMP_PREFIX, ".tmp")
    held = None
    try:
        held = os.open(sidecar_tmp, os.O_RDONLY | os.O_CLOEXEC)
        _try_flock(held)
        # Written only now that the final name is settled: the line names it.
        sidecar_tmp.write_text(sidecar_text(digest, final.name), "utf-8")
        durable.fsync_path(sidecar_tmp)
        durable.publish_no_replace(
            sidecar_tmp, sidecar_path(final), event="backup.destination_exists"
        )
    except BaseException:
        if held is not None:
            os.close(held)
        raise
    finally:
        # Also on a full disk mid-write: no temp file is ever left behind.
        durable.remove_if_present(sidecar_tmp)
    return sidecar_path(final), held


def _try_flock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass  # a filesystem without flock: the age rule alone protects it


def sweep_orphan_sidecars(directory: Path, only: Path | None = None) -> list[Path]:
    """Remove the sidecars that backups killed between publishing their
    sidecar and their backup left: ``<backup name>.sha256`` whose backup does
    not exist, holding exactly the line a backup writes for that name,
    unlocked (no live backup is publishing it) and ``STALE_TEMP_SECS`` old.
    In a directory only generated ``portunus-state-<RFC3339>.db`` names are
    considered; ``only`` names one explicit ``--out`` file's sidecar. Best
    effort, like :func:`sweep_stale_temps`."""
    if only is not None:
        candidates = [sidecar_path(only)]
    else:
        try:
            names = os.listdir(directory)
        except OSError:
            return []
        candidates = [
            directory / n
            for n in names
            if n.endswith(".sha256") and _BACKUP_NAME.fullmatch(n[: -len(".sha256")])
        ]
    return [path for path in candidates if _remove_if_orphan(path)]


def _remove_if_orphan(sidecar: Path) -> bool:
    backup = sidecar.with_name(sidecar.name[: -len(".sha256")])
    try:
        info = os.lstat(sidecar)
        if os.path.lexists(backup) or not stat.S_ISREG(info.st_mode):
            return False
        if time.time() - info.st_mtime < STALE_TEMP_SECS or info.st_size > SIDECAR_MAX:
            return False
        fd = os.open(sidecar, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        text = os.read(fd, SIDECAR_MAX).decode("utf-8", "replace")
        if not _SIDECAR_LINE.fullmatch(text) or not text.endswith(f"  {backup.name}\n"):
            return False  # not the line a backup writes: someone else's file
        os.unlink(sidecar)
    except OSError:
        return False
    finally:
        os.close(fd)
    log.warning(
        "backup.orphan_sidecar_removed",
        msg="removed a checksum sidecar whose backup an interrupted backup never published",
        path=str(sidecar),
        age_secs=round(time.time() - info.st_mtime),
    )
    return True


def _io_error(exc: BaseException, path: Path, source: Path | None = None) -> PortunusError:
    if isinstance(exc, PortunusError):
        return exc
    if isinstance(exc, apsw.CorruptError | apsw.NotADBError):
        # The destination is a file this backup wrote itself: the damage is the source's.
        return NotAStateDatabase(
            f"the source store is damaged: {exc}",
            event="backup.source_corrupt",
            hint="run portunus-server verify on state.db; restore from an older backup",
            path=str(source or path),
        )
    detail = describe_failure(exc)
    return StorageIOError(
        f"backup failed ({path}): {detail}",
        event="backup.io_error",
        hint="check free space and permissions at the destination; nothing was published",
        path=str(path),
    )
