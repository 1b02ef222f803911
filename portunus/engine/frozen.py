"""A backup's fast path: the live store's own file, copied by the kernel
while a read transaction keeps it from changing.

In WAL mode SQLite writes committed pages into the database file only when
it checkpoints, and a checkpoint copies no frame past the snapshot of the
oldest reader still reading (none at all while a reader reads the file
alone, ignoring the WAL). So once every frame up to a read transaction's
snapshot is in the file, the file holds exactly that snapshot, and keeps it
until the transaction ends, while writers go on appending to the WAL. That
state is reached under one brief write lock: taken, the read transaction
starts, a PASSIVE checkpoint copies what the writers' own checkpoints left
(it must report every frame copied), and the lock is let go (milliseconds
at most of a writer's time). In rollback-journal mode the read
transaction's SHARED lock keeps every writer from committing: the same
guarantee.

The copy is then the file byte for byte, page 1 made a rollback-journal
file (header bytes 18-19, what ``PRAGMA journal_mode=DELETE`` writes: a
standalone artefact needs no -wal), hashed on its way to the disk and
written past the page cache where the filesystem allows
(:func:`portunus.durable.copy_hashed`).

Where that state cannot be had (read-only access to the store, so no
checkpoint; a reader holding an older snapshot that no checkpoint can pass,
such as Litestream's; a write lock not granted in time), :func:`freeze`
returns None and the backup takes SQLite's Online Backup API instead.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from portunus import durable
from portunus.store.connection import close_quietly

ATTEMPTS = 20  # a checkpoint running elsewhere, or one frame short: try again
# A snapshot that would read the file alone is refused until the WAL-index
# is seen unchanged across two attempts (an idle store), this many times
# at most (see _WalIndex).
FILE_ALONE_ATTEMPTS = 10
# A writer's own checkpoint running: wait this long for it, write lock held.
CHECKPOINT_WAIT_SECS = 0.05
LOCK_WAIT_SECS = 1.0  # for the write lock, per attempt; writers hold it for microseconds
RETRY_SLEEP_SECS = 0.002
_BUSY_SLEEP_SECS = 0.0005  # polled: SQLite's own busy handler sleeps up to 100 ms at a time
# Header bytes 18 and 19 (file format write/read version): 1 rollback journal, 2 WAL.
_FORMAT_VERSION_OFFSETS = (18, 19)
_ROLLBACK_FORMAT = 1


@dataclass
class Frozen:
    """A read transaction on the store during which its file does not change."""

    conn: apsw.Connection | None
    page_size: int
    pages: int
    fd: int = -1  # the store's file, read by :func:`copy`; see :meth:`close_file`

    @property
    def size(self) -> int:
        return self.page_size * self.pages

    def release(self) -> None:
        """End the read transaction: checkpoints may write the file again."""
        if self.conn is None:
            return
        try:
            # A read transaction: closing ends it too. Its COMMIT can only
            # repeat an error already raised (apsw reports a failed
            # statement again), which must not mask the one being handled.
            self.conn.execute("COMMIT")
        except apsw.Error:
            pass
        finally:
            close_quietly(self.conn)
            self.conn = None

    def close_file(self) -> None:
        """Close the descriptor :func:`copy` read. Closing any descriptor of a
        file drops every POSIX lock the process holds on it, SQLite's among
        them: so this comes last, once this process's connections to the
        store are closed (in a server process its own connections keep
        their locks on the shared memory, which is what other processes
        consult before taking the store for themselves)."""
        self.release()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def freeze(source: Path) -> Frozen | None:
    """A :class:`Frozen` store, or None where it cannot be had (the caller
    copies through SQLite instead). Damage found on the way is raised
    (apsw.CorruptError / NotADBError), like any reader would."""
    locker = snap = ckpt = None
    try:
        locker, snap, ckpt = (
            apsw.Connection(str(source), flags=apsw.SQLITE_OPEN_READWRITE) for _ in range(3)
        )
        snap.setbusytimeout(int(LOCK_WAIT_SECS * 1000))
        wal = snap.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
        index = _WalIndex(Path(f"{source}-shm")) if wal else None
        for _ in range(ATTEMPTS):
            if _try_freeze(locker, snap, ckpt, index):
                page_size = snap.execute("PRAGMA page_size").fetchall()[0][0]
                pages = snap.execute("PRAGMA page_count").fetchall()[0][0]
                fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
                frozen, snap = Frozen(snap, page_size, pages, fd), None
                return frozen
            time.sleep(RETRY_SLEEP_SECS)
        return None
    except (apsw.CorruptError, apsw.NotADBError):
        raise
    except (apsw.Error, OSError):
        return None  # read-only access, a lock not granted: the slower path copes
    finally:
        for conn in (snap, ckpt, locker):
            close_quietly(conn)


def _try_freeze(
    locker: apsw.Connection,
    snap: apsw.Connection,
    ckpt: apsw.Connection,
    index: _WalIndex | None,
) -> bool:
    """Under the write lock: the read transaction begins, then a checkpoint
    must copy every frame up to it into the file.

    The order matters to writers. Begun while the WAL holds frames not yet
    in the file, the read transaction takes a WAL read mark, and once the
    checkpoint reaches that mark every later checkpoint stops there at once.
    Begun after the WAL is all in the file, it would read the file alone,
    and then each checkpoint (an auto-checkpointing writer runs one per
    commit once the WAL passes its threshold) first builds its index of
    the whole growing WAL before finding it may copy nothing: a max-rate
    writer fell to 8 % of its rate during the backup (docs/performance.md).
    So no checkpoint runs first to shorten the locked one: it would leave the
    WAL all in the file whenever no commit came between. The locked one
    copies what the writers' own checkpoints left (up to their threshold,
    1000 pages by default: milliseconds).

    The write lock is mostly had while a writer checkpoints (it commits,
    lets the lock go and checkpoints without it). Had during that
    checkpoint, the read transaction takes a read mark at the WAL's end; the
    writer's checkpoint is waited for (``CHECKPOINT_WAIT_SECS`` at most,
    the write lock held) and has then put every frame up to the mark in the
    file. Had just after it, the whole WAL is in the file and the read
    transaction would read the file alone, as above: that attempt is given
    up, unless the store is idle (``index``, the WAL-index: None, not WAL;
    :class:`_WalIndex`). By the next attempt a busy writer has begun a new
    WAL."""
    deadline = time.monotonic() + LOCK_WAIT_SECS
    locker.setbusyhandler(lambda _tries: _wait_until(deadline))
    locker.execute("BEGIN IMMEDIATE")
    try:
        # The read transaction starts here, at the last commit: the write
        # lock is ours, so no frame is added until it is let go.
        snap.execute("BEGIN")
        snap.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()
        if index is not None:
            if index.file_alone_refused():
                snap.execute("ROLLBACK")
                return False
            busy, frames, backfilled = _checkpoint(ckpt)
            if busy or frames < 0 or frames != backfilled:
                # Another checkpoint ran, or a reader holds frames back: the
                # file is not yet the snapshot.
                snap.execute("ROLLBACK")
                return False
        return True
    finally:
        locker.execute("ROLLBACK")


def _checkpoint(ckpt: apsw.Connection) -> tuple[int, int, int]:
    """A PASSIVE checkpoint, tried again while another one runs (busy),
    for ``CHECKPOINT_WAIT_SECS`` at most: (busy, frames, backfilled)."""
    until = time.monotonic() + CHECKPOINT_WAIT_SECS
    while True:
        busy, frames, backfilled = ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
        if not busy or time.monotonic() >= until:
            return busy, frames, backfilled
        time.sleep(_BUSY_SLEEP_SECS)


class _WalIndex:
    """The WAL-index header as the freeze attempts see it.

    Read where this process's SQLite has the -shm mapped (/proc/self/maps,
    /proc/self/mem), never through a descriptor of the file: closing one
    would drop every POSIX lock the process holds on it, the read
    transaction's among them. The header (native byte order) holds
    ``mxFrame`` at byte 16, and the checkpoint info after the header's two
    copies ``nBackfill`` at byte 96 (https://sqlite.org/walformat.html). Not
    mapped, or not Linux: nothing is refused."""

    def __init__(self, shm: Path) -> None:
        self._shm = shm
        self._last: bytes | None = None
        self._refused = 0

    def file_alone_refused(self) -> bool:
        """Asked under the write lock, once the read transaction began: True
        if it must be given up, as the whole WAL is in the file (or the WAL
        is empty) and the store is not idle. Checkpoints only add to the
        count, so a WAL not all in the file now was not then either, and
        that reader took a WAL read mark. Idle: the header is what the last
        attempt saw (nothing committed or checkpointed since), or
        ``FILE_ALONE_ATTEMPTS`` were refused already."""
        header = _read_mapped(self._shm, 100)
        if header is None:
            return False
        (frames,) = struct.unpack_from("=I", header, 16)
        (backfilled,) = struct.unpack_from("=I", header, 96)
        if backfilled < frames:
            return False
        idle = header == self._last or self._refused >= FILE_ALONE_ATTEMPTS
        self._last = header
        self._refused += not idle
        return not idle


def _read_mapped(path: Path, size: int) -> bytes | None:
    address = _mapped_at(path)
    if address is None:
        return None
    try:
        with open("/proc/self/mem", "rb", buffering=0) as mem:
            data = os.pread(mem.fileno(), size, address)
    except OSError:
        return None
    return data if len(data) == size else None


def _mapped_at(path: Path) -> int | None:
    """The address this process maps ``path`` at from its first byte, if it does."""
    try:
        wanted = os.path.realpath(path)
        with open("/proc/self/maps", encoding="utf-8", errors="surrogateescape") as maps:
            for line in maps:
                fields = line.rstrip("\n").split(maxsplit=5)
                if len(fields) == 6 and fields[5] == wanted and int(fields[2], 16) == 0:
                    return int(fields[0].partition("-")[0], 16)
    except (OSError, ValueError):
        pass
    return None


def _wait_until(deadline: float) -> bool:
    if time.monotonic() >= deadline:
        return False
    time.sleep(_BUSY_SLEEP_SECS)
    return True


def first_page(frozen: Frozen) -> bytes:
    """Page 1 as a copy has it: a rollback-journal file's header."""
    first = bytearray(os.pread(frozen.fd, frozen.page_size, 0))
    if len(first) != frozen.page_size:
        raise apsw.CorruptError("the store is shorter than its first page")
    for offset in _FORMAT_VERSION_OFFSETS:
        first[offset] = _ROLLBACK_FORMAT
    return bytes(first)


def copy(
    frozen: Frozen,
    dst_fd: int,
    digest: Any,
    on_copied: Callable[[int], None],
    direct_fd: int | None = None,
) -> bool:
    """Copy the frozen store's pages into ``dst_fd`` (an empty file), page 1
    made a rollback-journal file and the rest as they are, feeding
    ``digest`` the bytes written; ``on_copied`` gets the offset written up
    to after each chunk (:func:`durable.copy_hashed`, past the page cache
    through ``direct_fd`` where given). True if the whole blocks went past it."""
    return durable.copy_hashed(
        frozen.fd,
        dst_fd,
        frozen.size,
        digest,
        on_copied,
        head=first_page(frozen),
        direct_fd=direct_fd,
    )
