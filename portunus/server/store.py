"""The running server's hold on the store: one writer thread, a pool of
read-only readers, a thread for online backups.

Writes are serialized on one thread that owns the read-write connection
(datasette's model): each runs in ``BEGIN IMMEDIATE`` and commits with its
audit row, so no two writes contend for SQLite's lock and the event loop
never waits on it. Reads run on read-only connections in a small thread
pool, so a slow query never stalls the loop either.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import apsw
import structlog

from portunus.datadir import DataDir
from portunus.engine.backup import lower_thread_priority
from portunus.store.connection import close_quietly, open_readonly

log = structlog.get_logger()

T = TypeVar("T")
READ_THREADS = 4
_STOP = object()


class Writer:
    """A thread that runs each submitted function in its own transaction."""

    def __init__(self, conn: apsw.Connection) -> None:
        self._conn = conn
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="portunus-writer", daemon=True)
        self._accepting = False
        # Nothing may be queued behind the stop marker: it would never run.
        self._gate = threading.Lock()
        self.committed = 0
        self.rolled_back = 0

    def start(self) -> None:
        self._accepting = True
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._gate:
            if not self._accepting:
                raise RuntimeError("the writer is stopped")
            self._queue.put((fn, args, future))
        return future

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
        while (item := self._queue.get()) is not _STOP:
            fn, args, future = item
            if future.set_running_or_notify_cancel():
                self._run_one(fn, args, future)

    def _run_one(self, fn: Callable, args: tuple, future: Future) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = fn(conn, *args)
            conn.execute("COMMIT")
        except BaseException as exc:
            # Nothing half-written: the mutation and its audit row go together.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.rolled_back += 1
            future.set_exception(exc)
        else:
            self.committed += 1
            future.set_result(result)


class Readers:
    """Read-only connections, one per pool thread, each read in one snapshot."""

    def __init__(self, path: Path, threads: int = READ_THREADS) -> None:
        self._path = path
        self._local = threading.local()
        self._opened: list[apsw.Connection] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="portunus-read")

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


class ServerStore:
    """The store as the server uses it; opened by the start-up sequence
    (which holds the lock and ran the schema handshake), started and closed
    by the app's listeners. ``close()`` is idempotent."""

    def __init__(self, data_dir: DataDir, conn: apsw.Connection, schema_version: int) -> None:
        self.data_dir = data_dir
        self.schema_version = schema_version
        self._conn: apsw.Connection | None = conn
        self.writer = Writer(conn)
        self.readers = Readers(data_dir.state_db)
        self._backups = ThreadPoolExecutor(
            1, thread_name_prefix="portunus-backup", initializer=lower_thread_priority
        )
        self._started = False

    @property
    def is_open(self) -> bool:
        return self._conn is not None and self._started

    def start(self) -> None:
        if not self._started:
            self.writer.start()
            self._started = True

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the writer, in one transaction."""
        return await asyncio.wrap_future(self.writer.submit(fn, *args))

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
        self.writer.stop()
        conn, self._conn = self._conn, None
        try:
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
