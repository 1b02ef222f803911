"""The server's background checkpointer: commits never checkpoint, the WAL
still gets folded in and cut back, a held reader costs no commit, and close
still leaves an empty WAL. In-process, on a real store."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import apsw
import pytest

from portunus.server.store import (
    CATCH_UP_PAGES,
    CHECKPOINT_PAGES,
    WAL_SIZE_LIMIT_BYTES,
    ServerStore,
)
from portunus.store.connection import open_readonly

PAD_BYTES = 100_000  # hex-encoded: about 50 WAL pages a commit
POLL_LIMIT_SECONDS = 60.0  # a hang guard for waiting on the thread, never a measurement


def append_padded_row(conn: apsw.Connection) -> None:
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, resource, details) "
        "VALUES ('2026-11-27T00:00:00Z', 'checkpoint-test', 'client.poll', 'client:pad', "
        "json_object('pad', hex(randomblob(?))))",
        (PAD_BYTES,),
    )


def append_small_row(conn: apsw.Connection) -> None:
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, resource, details) "
        "VALUES ('2026-11-27T00:00:00Z', 'checkpoint-test', 'client.poll', 'client:small', '{}')"
    )


def write_padded(server_store: ServerStore, commits: int) -> None:
    futures = [server_store.writer.submit(append_padded_row) for _ in range(commits)]
    for future in futures:
        future.result()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + POLL_LIMIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.01)


def wait_until_checkpointed_whole(checkpointer) -> None:
    """Until a checkpoint started after the last commit has backfilled every frame."""
    whole = (checkpointer.wal_pages, checkpointer.wal_pages)
    wait_until(lambda: checkpointer.last_checkpoint == whole, f"a checkpoint of {whole[0]} pages")


def wal_bytes(store) -> int:
    return store.wal.stat().st_size if store.wal.exists() else 0


def audit_rows(store) -> int:
    reader = open_readonly(store.state_db)
    try:
        return reader.execute(
            "SELECT count(*) FROM audit_log WHERE actor = 'checkpoint-test'"
        ).fetchall()[0][0]
    finally:
        reader.close()


def commits_for(pages: int) -> int:
    return pages // 40 + 1


def test_the_writer_connection_never_checkpoints_by_itself(server_store, store):
    """Auto-checkpoint is off: with the checkpointer stopped, every commit stays in the WAL."""
    assert server_store._conn.execute("PRAGMA wal_autocheckpoint").fetchall() == [(0,)]
    server_store.checkpointer.stop()
    before = wal_bytes(store)
    write_padded(server_store, commits_for(3 * CHECKPOINT_PAGES))
    # Auto-checkpoint would have reset the WAL after ~1000 pages.
    assert wal_bytes(store) - before >= 3 * CHECKPOINT_PAGES * 4096


def test_the_checkpointer_folds_the_wal_in_once_it_passes_the_threshold(server_store, store):
    """Past the threshold the thread checkpoints the WAL whole; the next commit starts it over."""
    commits = commits_for(2 * CHECKPOINT_PAGES)
    write_padded(server_store, commits)
    assert server_store.checkpointer.wal_pages >= CHECKPOINT_PAGES
    wait_until_checkpointed_whole(server_store.checkpointer)
    write_padded(server_store, 1)
    # Back at frame 1: only that commit's pages are in the WAL.
    assert server_store.checkpointer.wal_pages < CHECKPOINT_PAGES
    assert audit_rows(store) == commits + 1


def test_a_held_reader_leaves_every_commit_succeeding_and_checkpoints_futile(server_store, store):
    """While a snapshot is held the checkpointer tries in vain; every commit still succeeds."""
    checkpointer = server_store.checkpointer
    reader = open_readonly(store.state_db)
    try:
        reader.execute("BEGIN")
        seen = reader.execute("SELECT count(*) FROM audit_log").fetchall()
        attempts_before, completed_before = checkpointer.attempts, checkpointer.completed
        commits = commits_for(4 * CHECKPOINT_PAGES)
        write_padded(server_store, commits)
        wait_until(lambda: checkpointer.attempts > attempts_before, "a checkpoint attempt")
        assert server_store.writer.rolled_back == 0
        assert checkpointer.completed == completed_before
        assert checkpointer.wal_pages >= 4 * CHECKPOINT_PAGES
        # The snapshot is intact however far the writer got.
        assert reader.execute("SELECT count(*) FROM audit_log").fetchall() == seen
    finally:
        reader.close()
    assert audit_rows(store) == commits


def test_after_a_long_snapshot_the_wal_is_cut_back_to_the_size_limit(server_store, store):
    """A WAL grown past the limit behind a reader is truncated once it is checkpointed."""
    checkpointer = server_store.checkpointer
    reader = open_readonly(store.state_db)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM audit_log").fetchall()
        write_padded(server_store, commits_for(2 * WAL_SIZE_LIMIT_BYTES // 4096))
        grown = wal_bytes(store)
        assert grown > WAL_SIZE_LIMIT_BYTES
    finally:
        reader.close()
    write_padded(server_store, 1)  # the commit that wakes the checkpointer
    wait_until_checkpointed_whole(checkpointer)
    write_padded(server_store, 1)  # restarts the WAL, and truncates it to the limit
    assert wal_bytes(store) <= WAL_SIZE_LIMIT_BYTES


def test_writes_that_never_pause_still_let_the_wal_start_over(server_store, store):
    """With the writer never idle, its catch-up finishes each background checkpoint."""
    gate = threading.Event()
    held = server_store.writer.submit(lambda conn: gate.wait())
    commits = 10 * CATCH_UP_PAGES
    futures = [server_store.writer.submit(append_small_row) for _ in range(commits)]
    gate.set()  # the whole queue is waiting: the writer does not pause until it is done
    held.result()
    for future in futures:
        future.result()
    assert server_store.checkpointer.catch_ups >= 1
    # Never started over, the WAL would hold at least a page for each commit.
    assert wal_bytes(store) < commits * 4096 // 2


def test_close_stops_the_checkpointer_and_leaves_an_empty_wal(server_store, store):
    """After heavy writes close ends the thread first, then truncates the WAL to nothing."""
    write_padded(server_store, commits_for(3 * CHECKPOINT_PAGES))
    server_store.close()
    assert not server_store.checkpointer.running
    assert wal_bytes(store) == 0
