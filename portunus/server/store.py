"""The running server's hold on the store: one writer thread, a pool of
read-only readers, a thread for online backups.

Writes are serialized on one thread that owns the read-write connection
(datasette's model): each runs in ``BEGIN IMMEDIATE`` and commits with its
audit row, so no two writes contend for SQLite's lock and the event loop
never waits on it. Reads use read-only connections, which in WAL mode
never wait for the writer either: point lookups (a token or a rule by its
key: one statement, one row) run on the event loop's own connection,
cheaper than a hop to a thread and back; reads whose cost grows with the
data (lists, pages, a client with its rule count) run in a small thread
pool, so a slow query never stalls the loop. Checkpoints run on a thread of their own
(:class:`Checkpointer`), so no commit ever pays for one.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import apsw
import structlog

from portunus.datadir import DataDir
from portunus.engine.backup import lower_thread_priority
from portunus.server import affinity
from portunus.server.errors import StoreDamaged
from portunus.server.metrics import Histogram
from portunus.store.connection import close_quietly, open_readonly, open_store

log = structlog.get_logger()

T = TypeVar("T")
READ_THREADS = 4
_STOP = object()
CHECKPOINT_PAGES = 1000  # SQLite's own auto-checkpoint threshold (4 MiB at 4 KiB pages)
CHECKPOINT_GAP_SECONDS = 0.1  # at most ten futile attempts a second
# On the first commit after a complete checkpoint, SQLite truncates a WAL
# that grew past this (say while a backup held its snapshot) back to it.
WAL_SIZE_LIMIT_BYTES = 16 * 2**20
# Past this, under writes that never pause, the writer finishes the
# checkpointer's work itself between two transactions (see Checkpointer).
CATCH_UP_PAGES = 4 * CHECKPOINT_PAGES


class Writer:
    """A thread that runs each submitted function in its own transaction."""

    def __init__(
        self,
        conn: apsw.Connection,
        after_commit: Callable[[apsw.Connection], None] | None = None,
        thread_init: Callable[[], None] | None = None,
    ) -> None:
        self._conn = conn
        self._after_commit = after_commit
        self._thread_init = thread_init
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="portunus-writer", daemon=True)
        self._accepting = False
        # Nothing may be queued behind the stop marker: it would never run.
        self._gate = threading.Lock()
        self.committed = 0
        self.rolled_back = 0
        self.durations = Histogram()  # BEGIN to COMMIT (or ROLLBACK), per write

    def start(self) -> None:
        self._accepting = True
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(conn, *args)``; for a thread to wait on."""
        future: Future[T] = Future()

        def deliver(ok: bool, value: Any) -> None:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

        self._put((fn, args, future.set_running_or_notify_cancel, deliver))
        return future

    def submit_to_loop(
        self, loop: asyncio.AbstractEventLoop, fn: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        """Queue ``fn(conn, *args)``; for ``loop`` to await. Resolved with one
        ``call_soon_threadsafe``, cheaper than chaining a thread's future to
        the loop. A write whose waiter was cancelled before it ran is skipped."""
        future = loop.create_future()

        def deliver(ok: bool, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(_resolve, future, ok, value)
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more

        self._put((fn, args, lambda: not future.cancelled(), deliver))
        return future

    def _put(self, item: tuple) -> None:
        with self._gate:
            if not self._accepting:
                raise RuntimeError("the writer is stopped")
            self._queue.put(item)

    def pending(self) -> int:
        return self._queue.qsize()

    def stop(self) -> None:
        """Finish every write already queued, then end the thread."""
        with self._gate:
            if not self._accepting:
                return
            self._accepting = False
            self._queue.put(_STOP)
        self._thread.join()

    def _serve(self) -> None:
        if self._thread_init:
            self._thread_init()
        while (item := self._queue.get()) is not _STOP:
            fn, args, wanted, deliver = item
            if wanted():
                ok, value = self._run_one(fn, args)
                deliver(ok, value)  # the waiter first, then the bookkeeping
                if ok and self._after_commit:
                    self._after_commit(self._conn)

    def _run_one(self, fn: Callable, args: tuple) -> tuple[bool, Any]:
        """(True, result) once committed, (False, exception) once rolled back."""
        conn = self._conn
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = fn(conn, *args)
            conn.execute("COMMIT")
        except BaseException as exc:
            # Nothing half-written: the mutation and its audit row go together.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.durations.observe(time.perf_counter() - started)
            self.rolled_back += 1
            return False, exc
        self.durations.observe(time.perf_counter() - started)
        self.committed += 1
        return True, result


def _resolve(future: asyncio.Future, ok: bool, value: Any) -> None:
    if not future.done():  # the waiter may have gone (cancelled)
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class Checkpointer:
    """Folds the WAL into the database on a thread and connection of its own.

    With SQLite's auto-checkpoint, the commit that crosses the threshold runs
    the checkpoint itself; while a backup holds a snapshot, *every* commit
    retries one that cannot get past the backup's read mark, after sorting
    the whole WAL. Here the writer's connection never checkpoints: a WAL hook
    (which replaces auto-checkpoint) wakes this thread once the WAL holds
    ``threshold`` pages, and it runs a PASSIVE checkpoint, which never blocks
    the writer; after an attempt a reader held back it pauses ``gap``
    seconds, so futile attempts are rate-limited.

    A checkpoint from another connection only ever reaches the frames that
    existed when it began; under writes that never pause it never catches
    up, and SQLite starts the WAL over only once every frame is in the
    database. So when a checkpoint got all it could while the WAL has passed
    ``CATCH_UP_PAGES``, :meth:`catch_up`, called by the writer between two
    transactions, checkpoints the (at most ``CATCH_UP_PAGES``) frames
    committed meanwhile: bounded work, never while a backup's snapshot holds
    the checkpoint back. Should the writer fall idle first, the thread takes
    that turn back.
    """

    def __init__(
        self,
        path: Path,
        threshold: int = CHECKPOINT_PAGES,
        gap: float = CHECKPOINT_GAP_SECONDS,
    ) -> None:
        self._path = path
        self._threshold = threshold
        self._gap = gap
        self._due = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name="portunus-checkpointer", daemon=True
        )
        self._conn: apsw.Connection | None = None
        self.attempts = 0
        self.completed = 0
        self.wal_pages = 0  # as of the writer's last commit
        self.last_checkpoint: tuple[int, int] | None = None  # (WAL pages, pages backfilled)
        self.catch_ups = 0
        self._catch_up_due = False
        # While Litestream replicates it owns checkpointing (see
        # portunus.replication.serving): this thread and the writer stand down.
        self.stand_down: Callable[[], bool] = lambda: False

    def watch(self, writer_conn: apsw.Connection) -> None:
        """Turn the writer's auto-checkpoint off and wake this thread instead."""
        writer_conn.execute("PRAGMA wal_autocheckpoint=0")
        writer_conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        # Set after the pragma: sqlite3_wal_autocheckpoint() replaces any WAL hook.
        writer_conn.set_wal_hook(self._after_commit)

    def start(self) -> None:
        self._conn = open_store(self._path)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """End the thread (an attempt in progress finishes first); idempotent."""
        self._stopping.set()
        self._due.set()
        if self._thread.is_alive():
            self._thread.join()
        close_quietly(self._conn)
        self._conn = None

    def catch_up(self, writer_conn: apsw.Connection) -> None:
        """On the writer's thread, outside any transaction: checkpoint the
        frames committed since the last complete background checkpoint."""
        if not self._catch_up_due or self.stand_down():
            return
        self._catch_up_due = False
        self.catch_ups += 1
        try:
            writer_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except apsw.BusyError:
            pass  # the thread (or a backup) is checkpointing: it will come round again
        except apsw.Error as exc:
            # Never let a failed checkpoint take the writer thread down.
            _log_checkpoint_failed(exc)

    def _after_commit(self, conn: apsw.Connection, dbname: str, wal_pages: int) -> int:
        self.wal_pages = wal_pages
        if wal_pages >= self._threshold:
            self._due.set()
        return apsw.SQLITE_OK

    def _serve(self) -> None:
        while True:
            self._due.wait()
            if self._stopping.is_set():
                return
            self._due.clear()
            progressed = self._checkpoint()
            if self._catch_up_due:
                # The writer's turn, at its next commit (leave it the locks);
                # should it be idle by then, take the turn back.
                if self._stopping.wait(self._gap):
                    return
                if self._catch_up_due:
                    self._catch_up_due = False
                    self._due.set()
            # Rate limit the futile attempts: while a backup holds its
            # snapshot, each one re-sorts a WAL that only grows. After one
            # that made progress, the next may go at once, to shrink the lag.
            elif not progressed and self._stopping.wait(self._gap):
                return

    def _checkpoint(self) -> bool:
        """One PASSIVE checkpoint; whether it got every frame it could see."""
        if self.stand_down():
            return False
        self.attempts += 1
        try:
            busy, wal_pages, moved = self._conn.execute(
                "PRAGMA wal_checkpoint(PASSIVE)"
            ).fetchall()[0]
        except apsw.BusyError:
            return False  # another checkpointer (a backup's) is at it: fine
        except apsw.Error as exc:
            _log_checkpoint_failed(exc)
            return False
        self.last_checkpoint = (wal_pages, moved)
        if busy or moved < wal_pages:
            return False
        self.completed += 1
        # The writer went on committing meanwhile, so the WAL cannot start
        # over; once few enough frames are left, the writer finishes the job.
        lag = self.wal_pages - wal_pages
        self._catch_up_due = self.wal_pages >= CATCH_UP_PAGES and 0 < lag <= CATCH_UP_PAGES
        return True


def _log_checkpoint_failed(exc: apsw.Error) -> None:
    log.debug(
        "server.wal_checkpoint_failed",
        msg="a WAL checkpoint failed; the next one retries",
        error=str(exc),
    )


class Readers:
    """Read-only connections, one per pool thread, each read in one snapshot."""

    def __init__(
        self,
        path: Path,
        threads: int = READ_THREADS,
        thread_init: Callable[[], None] | None = None,
    ) -> None:
        self._path = path
        self._local = threading.local()
        self._opened: list[apsw.Connection] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            threads, thread_name_prefix="portunus-read", initializer=thread_init
        )

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        return self._pool.submit(self._run_one, fn, args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for conn in self._opened:
                close_quietly(conn)
            self._opened.clear()

    def _run_one(self, fn: Callable[..., T], args: tuple) -> T:
        conn = self._connection()
        conn.execute("BEGIN")
        try:
            return fn(conn, *args)
        finally:
            conn.execute("COMMIT")

    def _connection(self) -> apsw.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = open_readonly(self._path)
            with self._lock:
                self._opened.append(conn)
        return conn


def _background_thread(unpinned: Callable[[], None]) -> Callable[[], None]:
    def init() -> None:
        unpinned()
        lower_thread_priority()

    return init


class ServerStore:
    """The store as the server uses it; opened by the start-up sequence
    (which holds the lock and ran the schema handshake), started and closed
    by the app's listeners. ``close()`` is idempotent."""

    def __init__(self, data_dir: DataDir, conn: apsw.Connection, schema_version: int) -> None:
        self.data_dir = data_dir
        self.schema_version = schema_version
        self._conn: apsw.Connection | None = conn
        # The loop and the writer share one CPU (see portunus.server.affinity);
        # threads that work mostly outside the GIL keep them all.
        every_cpu = affinity.allowed_cpus()
        self._gil_cpu = affinity.one_cpu(every_cpu)
        unpinned = functools.partial(affinity.pin_thread, every_cpu)
        self.checkpointer = Checkpointer(data_dir.state_db)
        self.checkpointer.watch(conn)
        self.writer = Writer(
            conn,
            after_commit=self.checkpointer.catch_up,
            thread_init=functools.partial(affinity.pin_thread, self._gil_cpu),
        )
        self.readers = Readers(data_dir.state_db, thread_init=unpinned)
        self._lookups: apsw.Connection | None = None
        self._backups = ThreadPoolExecutor(
            1, thread_name_prefix="portunus-backup", initializer=_background_thread(unpinned)
        )
        self._started = False
        self.damage: str | None = None  # SQLite's words, once it found state.db damaged
        # Run by close() once every write is committed, before the final
        # checkpoint (the replicator's final sync and stop).
        self.before_checkpoint: list[Callable[[], None]] = []

    def mark_damaged(self, detail: str) -> None:
        """From now on: /readyz is not ready and writes are refused (writing
        into a damaged b-tree can spread the damage). Said once, for alerting."""
        if self.damage is not None:
            return
        self.damage = detail
        log.error(
            "server.store_corrupt",
            msg="SQLite found state.db damaged; writes are refused and /readyz says not ready",
            hint="stop the server, keep a copy of state.db, restore the latest backup",
            path=str(self.data_dir.state_db),
            sqlite_error=detail,
        )

    @property
    def is_open(self) -> bool:
        return self._conn is not None and self._started

    def start(self) -> None:
        if not self._started:
            self._lookups = open_readonly(self.data_dir.state_db)
            self.checkpointer.start()
            self.writer.start()
            self._started = True

    def pin_loop_thread(self) -> None:
        """Put the calling thread (the event loop's) on the writer's CPU.
        Call it after :meth:`start`: threads inherit the affinity of the
        thread that starts them."""
        affinity.pin_thread(self._gil_cpu)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the writer, in one transaction."""
        if self.damage is not None:
            raise StoreDamaged()
        return await self.writer.submit_to_loop(asyncio.get_running_loop(), fn, *args)

    def lookup(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)``, a point lookup by key, on the loop's own
        read-only connection.

        Only for one statement returning at most a row (and its children):
        one statement reads one snapshot, needs no transaction around it,
        and takes tens of microseconds. Anything else goes through
        :meth:`read`."""
        return fn(self._lookups, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on a read-only connection, in one snapshot."""
        return await asyncio.wrap_future(self.readers.submit(fn, *args))

    async def in_backup_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a long job (an online backup) off the loop, one at a time."""
        return await asyncio.wrap_future(self._backups.submit(fn, *args))

    def close(self) -> None:
        """Finish queued writes and running backups, close the readers, fold the
        WAL into state.db and truncate it, close the writer's connection."""
        if self._conn is None:
            return
        self._backups.shutdown(wait=True)
        self.readers.close()
        close_quietly(self._lookups)
        self._lookups = None
        self.writer.stop()
        self.checkpointer.stop()
        conn, self._conn = self._conn, None
        try:
            for hook in self.before_checkpoint:
                hook()
            busy, wal_pages, moved = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0]
            if busy:
                log.warning(
                    "server.checkpoint_incomplete",
                    msg="another process was reading the store; the WAL was not truncated",
                    hint="harmless: the next start (or that reader) folds it in",
                    wal_pages=wal_pages,
                    checkpointed=moved,
                )
        finally:
            close_quietly(conn)
