"""The server's store access: one serialized writer, read-only readers, and
a close that leaves an empty WAL. In-process, on a real store."""

from __future__ import annotations

import asyncio
import threading

import apsw
import pytest

from portunus.server.store import Writer
from portunus.store import audit
from portunus.store.live import open_live_store
from tests.support import table_counts


def insert_client(conn: apsw.Connection, name: str) -> int:
    conn.execute(
        "INSERT INTO clients (name, token_hash, created_at) VALUES (?, randomblob(32), 'now')",
        (name,),
    )
    audit.record(conn, "test", "client.create", f"client:{name}")
    return conn.last_insert_rowid()


def test_writes_run_one_at_a_time_on_one_thread_in_submission_order(server_store):
    """Whatever thread submits, every write runs on the writer thread, serially."""
    seen: list[tuple[str, int]] = []

    def write(conn: apsw.Connection, n: int) -> int:
        seen.append((threading.current_thread().name, n))
        return insert_client(conn, f"c{n}")

    futures = [server_store.writer.submit(write, n) for n in range(50)]
    ids = [f.result() for f in futures]
    assert [n for _, n in seen] == list(range(50))
    assert {name for name, _ in seen} == {"portunus-writer"}
    assert ids == sorted(ids)


def test_a_failing_write_rolls_back_everything_it_did(server_store, store):
    """The mutation and its audit row commit together or not at all."""
    before = table_counts(store.state_db)

    def half_then_fail(conn: apsw.Connection) -> None:
        insert_client(conn, "doomed")
        raise ValueError("refused after the insert")

    with pytest.raises(ValueError):
        server_store.writer.submit(half_then_fail).result()
    assert server_store.writer.submit(lambda conn: None).result() is None
    assert table_counts(store.state_db) == before
    assert server_store.writer.rolled_back == 1


def test_each_write_holds_the_write_lock_from_its_start(server_store, store):
    """BEGIN IMMEDIATE: while a write runs, no other connection can start one."""

    def probe(conn: apsw.Connection) -> bool:
        other = apsw.Connection(str(store.state_db))
        other.setbusytimeout(0)
        try:
            other.execute("BEGIN IMMEDIATE")
        except apsw.BusyError:
            return conn.in_transaction
        finally:
            other.close()
        return False

    assert server_store.writer.submit(probe).result() is True


def test_stop_finishes_the_queued_writes_then_refuses_new_ones(store):
    """Nothing submitted before stop is lost; nothing after it is accepted."""
    conn, _ = open_live_store(store)
    writer = Writer(conn)
    writer.start()
    futures = [writer.submit(insert_client, f"q{n}") for n in range(20)]
    writer.stop()
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(RuntimeError):
        writer.submit(insert_client, "late")
    conn.close()


def test_readers_are_read_only(server_store):
    """A read can never write, whatever the function tries."""
    with pytest.raises(apsw.ReadOnlyError):
        server_store.readers.submit(insert_client, "sneaky").result()


# Only a deadlock breaker: a free loop releases the held call at once.
RELEASE_TIMEOUT_S = 10


async def held_until_the_loop_answers(call, work):
    """Run ``call(fn)`` where ``fn`` runs ``work(conn)`` only after the event
    loop has run another task while ``fn`` was in flight; ``(work's result,
    whether the loop answered)``. If ``call`` ran ``fn`` on the loop's thread
    or made the loop wait for it, that other task could not run: ``fn``
    gives up after RELEASE_TIMEOUT_S and reports that the loop never answered."""
    loop = asyncio.get_running_loop()
    in_flight = asyncio.Event()
    released = threading.Event()

    def fn(conn: apsw.Connection):
        loop.call_soon_threadsafe(in_flight.set)
        answered = released.wait(RELEASE_TIMEOUT_S)
        return work(conn), answered

    async def release() -> None:
        await in_flight.wait()
        released.set()

    releaser = asyncio.ensure_future(release())
    result = await call(fn)
    await releaser
    return result


def test_async_reads_and_writes_do_not_block_the_loop(server_store):
    """The awaitable forms used by the handlers: while a write or a read is
    in flight the loop keeps serving other tasks (here: the one that lets
    that write or read finish), and many of them can be awaited at once."""

    def count(conn: apsw.Connection) -> int:
        return conn.execute("SELECT count(*) FROM clients").fetchall()[0][0]

    async def main():
        written = await held_until_the_loop_answers(
            server_store.write, lambda conn: insert_client(conn, "held")
        )
        read = await held_until_the_loop_answers(server_store.read, count)
        ids = await asyncio.gather(*(server_store.write(insert_client, f"a{n}") for n in range(20)))
        return written, read, list(ids), await server_store.read(count)

    (held_id, write_answered), (_, read_answered), ids, total = asyncio.run(main())
    assert write_answered, "the loop was blocked while a write was in flight"
    assert read_answered, "the loop was blocked while a read was in flight"
    assert len({held_id, *ids}) == 21
    assert total >= 21


def test_close_checkpoints_and_truncates_the_wal_and_is_idempotent(server_store, store):
    """After close the WAL is empty (or gone); a second close is a no-op."""
    for n in range(30):
        server_store.writer.submit(insert_client, f"w{n}").result()
    assert store.wal.stat().st_size > 0
    server_store.close()
    server_store.close()
    assert not store.wal.exists() or store.wal.stat().st_size == 0
    assert table_counts(store.state_db)["clients"] >= 30


def test_a_write_whose_waiter_is_cancelled_before_it_runs_is_skipped(server_store, store):
    """A request that went away while its write was still queued writes nothing."""
    gate = threading.Event()

    async def main() -> tuple[bool, int]:
        blocker = server_store.writer.submit(lambda conn: gate.wait(10))
        queued = asyncio.ensure_future(server_store.write(insert_client, "abandoned"))
        await asyncio.sleep(0.05)
        queued.cancel()
        await asyncio.sleep(0.05)
        gate.set()
        blocker.result(10)
        done = await server_store.write(insert_client, "after")
        return queued.cancelled(), done

    cancelled, after_id = asyncio.run(main())
    assert cancelled and after_id > 0
    names = {row[0] for row in _client_names(store)}
    assert "after" in names and "abandoned" not in names


def _client_names(store):
    conn = apsw.Connection(str(store.state_db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT name FROM clients").fetchall()
    finally:
        conn.close()
