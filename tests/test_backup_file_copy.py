"""The backup's fast path (portunus/engine/frozen.py): the store's own file,
copied while a read transaction holds it unchanged, and the fallback to
SQLite's Online Backup API where the file cannot be held. Real stores, real
files; the artefact is opened by SQLite to prove what it holds."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import apsw
import pytest

from portunus import durable
from portunus.datadir import DataDir
from portunus.engine import backup as backup_engine
from portunus.engine import frozen
from portunus.engine.checksum import TrailingSha256, sha256_file
from tests import support, unprivileged
from tests.test_cli_backup import tmpfs
from tests.unprivileged import nobody_ids, run_as_nobody

shared_tmp = unprivileged.shared_tmp


def _writer(store) -> apsw.Connection:
    """A writer whose commits stay in the WAL (no checkpoint of its own)."""
    conn = apsw.Connection(str(store.state_db))
    conn.setbusytimeout(5000)
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


def _add_rows(conn: apsw.Connection, first: int, count: int) -> None:
    with conn:
        for i in range(first, first + count):
            conn.execute(
                "INSERT INTO audit_log (at, actor, action, resource, details) "
                "VALUES ('2026-12-04T00:00:00Z', 'test', 'x', ?, ?)",
                (f"row-{i}", "d" * 500),
            )


def _rows(path: Path) -> set[str]:
    conn = apsw.Connection(f"file:{path}?mode=ro&immutable=1", flags=apsw.SQLITE_OPEN_URI | 1)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return {r for (r,) in conn.execute("SELECT resource FROM audit_log")}
    finally:
        conn.close()


def test_a_wal_store_is_copied_as_its_file_with_the_walled_commits_in_it(store, tmp_path):
    """Commits still in the WAL are in the copy (the held file is checkpointed
    first); the artefact is a rollback-journal file (header bytes 18-19 are
    1), so opening it needs no -wal; its sidecar digest is the file's."""
    writer = _writer(store)
    try:
        _add_rows(writer, 0, 200)
        assert os.path.getsize(f"{store.state_db}-wal") > 0
        out = tmp_path / "out"
        out.mkdir()
        result = backup_engine.backup(store, out)
    finally:
        writer.close()
    assert result.copy_method == backup_engine.COPY_FILE
    assert result.restarts == 0
    header = result.path.read_bytes()[:100]
    assert header[18:20] == b"\x01\x01"
    assert {f"row-{i}" for i in range(200)} <= _rows(result.path)
    assert sha256_file(result.path)[0] == result.sha256
    assert result.bytes == result.path.stat().st_size == result.pages * 4096
    assert sorted(p.name for p in out.iterdir()) == [result.path.name, result.sidecar.name]


def test_a_reader_holding_the_wal_back_makes_it_copy_through_sqlite(store, tmp_path):
    """A reader on an older snapshot keeps the checkpoint from reaching the
    newest commit (Litestream holds one such): the file cannot be held
    complete, so the backup takes the Online Backup API, and still holds
    every commit."""
    writer = _writer(store)
    reader = apsw.Connection(str(store.state_db))
    try:
        _add_rows(writer, 0, 10)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM audit_log").fetchall()
        _add_rows(writer, 10, 10)
        result = backup_engine.backup(store, tmp_path / "b.db")
        reader.execute("COMMIT")
    finally:
        reader.close()
        writer.close()
    assert result.copy_method == backup_engine.COPY_BACKUP_API
    assert {f"row-{i}" for i in range(20)} <= _rows(result.path)
    assert sha256_file(result.path)[0] == result.sha256


def test_while_held_the_file_does_not_change_and_writers_still_commit(store):
    """The guarantee the copy rests on: during the read transaction writers
    commit (into the WAL) and even a checkpoint leaves the file's bytes as
    they were; once released, the checkpoint writes them.

    And the writers' checkpoints meanwhile are cheap: the read transaction
    holds a WAL read mark (it began before the WAL was all in the file), so
    a checkpoint stops at it (not busy, every frame up to it copied). On
    the file alone, each would index the whole WAL and report busy."""
    writer = _writer(store)
    try:
        _add_rows(writer, 0, 10)  # frames not yet in the file
        held = frozen.freeze(store.state_db)
        assert held is not None
        try:
            before = hashlib.sha256(store.state_db.read_bytes()).hexdigest()
            _add_rows(writer, 10, 300)
            busy, frames, done = writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
            assert busy == 0 and 0 < done < frames
            assert hashlib.sha256(store.state_db.read_bytes()).hexdigest() == before
            counted = "SELECT count(*) FROM audit_log WHERE resource LIKE 'row-%'"
            assert held.conn.execute(counted).fetchall() == [(10,)]
        finally:
            held.close_file()
        busy, frames, done = writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
        assert (busy, frames) == (0, done)
        assert hashlib.sha256(store.state_db.read_bytes()).hexdigest() != before
    finally:
        writer.close()


def test_no_snapshot_is_taken_on_a_wal_all_in_the_file_while_a_writer_goes_on(store, monkeypatch):
    """A writer's own checkpoint often leaves the whole WAL in the file just
    as the write lock comes free. A read transaction begun then reads the
    file alone, and every checkpoint of the writer's after it would index
    the whole growing WAL and report busy (a max-rate writer fell to 10 %).
    So that attempt is given up, and the next one, after the writer has
    begun a new WAL, holds a WAL read mark that checkpoints stop at."""
    writer = _writer(store)
    attempts: list[bool] = []
    real = frozen._try_freeze

    def attempt(*args):
        if len(attempts) == 1:
            _add_rows(writer, 10, 5)  # the writer commits between two attempts
        held = real(*args)
        attempts.append(held)
        return held

    try:
        _add_rows(writer, 0, 10)
        assert writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0][0] == 0
        monkeypatch.setattr(frozen, "_try_freeze", attempt)
        held = frozen.freeze(store.state_db)
        assert held is not None
        try:
            assert attempts == [False, True]
            _add_rows(writer, 15, 300)
            busy, frames, done = writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
            assert busy == 0 and 0 < done < frames
            counted = "SELECT count(*) FROM audit_log WHERE resource LIKE 'row-%'"
            assert held.conn.execute(counted).fetchall() == [(15,)]
        finally:
            held.close_file()
    finally:
        writer.close()


def test_an_idle_store_with_its_wal_all_in_the_file_is_still_held(store, monkeypatch):
    """No writer begins a new WAL: the second attempt sees the WAL-index as
    the first did, takes the store to be idle and holds its file as it is,
    not copied the slow way."""
    writer = _writer(store)
    try:
        _add_rows(writer, 0, 10)
        writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        tries: list[bool] = []
        real = frozen._try_freeze
        monkeypatch.setattr(frozen, "_try_freeze", lambda *a: tries.append(real(*a)) or tries[-1])
        held = frozen.freeze(store.state_db)
        assert held is not None
        held.close_file()
        assert tries == [False, True]
        # Reading the WAL-index kept the read transaction's locks: nothing
        # was closed under them (the store still opens, whole).
        assert _rows(store.state_db) >= {f"row-{i}" for i in range(10)}
    finally:
        writer.close()


def test_the_checkpoint_is_asked_again_while_another_one_runs(store, monkeypatch):
    """The write lock is mostly had while a writer runs its own checkpoint
    (without the lock). The read transaction's mark is then at the WAL's
    end, and once that checkpoint is done every frame up to it is in the
    file: so the freeze's PASSIVE checkpoint, answered busy meanwhile, is
    asked again (``CHECKPOINT_WAIT_SECS`` at most) instead of the whole
    attempt starting over. Here another connection's FULL checkpoint holds
    the checkpoint lock while it waits 0.3 s for a reader."""
    writer = _writer(store)
    reader = apsw.Connection(str(store.state_db))
    blocker = apsw.Connection(str(store.state_db))
    ckpt = apsw.Connection(str(store.state_db))
    try:
        _add_rows(writer, 0, 1)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM audit_log").fetchall()  # an older snapshot
        _add_rows(writer, 1, 20)
        blocker.setbusytimeout(300)
        # SQLite takes the checkpoint lock without a busy handler: a FULL
        # checkpoint that meets our probe's lock gives up at once, so it is
        # started again until a probe finds it holding the lock.
        for _ in range(20):
            full = threading.Thread(
                target=lambda: blocker.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
            )
            full.start()
            time.sleep(0.03)
            if ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0][0]:
                break
            full.join()
        else:
            pytest.fail("the FULL checkpoint never held the checkpoint lock")
        monkeypatch.setattr(frozen, "CHECKPOINT_WAIT_SECS", 10.0)
        busy, frames, _done = frozen._checkpoint(ckpt)
        full.join()
        assert busy == 0 and frames > 0
    finally:
        reader.execute("ROLLBACK")
        for conn in (ckpt, blocker, reader, writer):
            conn.close()


@pytest.mark.parametrize("length", [0, 4096, 3 * (1 << 20) + 12345, 9 * (1 << 20)])
@pytest.mark.parametrize("direct", [True, False])
def test_copy_hashed_writes_and_hashes_every_byte_with_its_head(tmp_path, length, direct):
    """Through the buffers, past the page cache or not: the file is the
    source with its head replaced, the digest is the file's, whole blocks
    (all but an odd tail) went past the page cache where the filesystem
    allows, and the offsets reported grow to the end."""
    data = os.urandom(length)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    dst.write_bytes(b"")
    head = b"H" * 100 if length else b""
    digest = hashlib.sha256()
    seen: list[int] = []
    fd = os.open(dst, os.O_WRONLY)
    direct_fd = durable.open_direct(dst) if direct else None
    try:
        with open(src, "rb") as s:
            went_direct = durable.copy_hashed(
                s.fileno(), fd, length, digest, seen.append, head=head, direct_fd=direct_fd
            )
    finally:
        os.close(fd)
        if direct_fd is not None:
            os.close(direct_fd)
    expected = head + data[len(head) :]
    assert dst.read_bytes() == expected
    assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()
    assert went_direct == (direct_fd is not None)
    assert seen == sorted(seen) and (seen[-1] if seen else 0) == length


def test_copy_hashed_of_a_source_shorter_than_promised_is_an_error(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"x" * 10_000)
    dst.write_bytes(b"")
    with open(src, "rb") as s, open(dst, "wb") as d, pytest.raises(OSError, match="ended at byte"):
        durable.copy_hashed(s.fileno(), d.fileno(), 20_000, hashlib.sha256())


def test_a_backup_writes_its_copy_past_the_page_cache(store, tmp_path, monkeypatch):
    """The backup's copy goes to the disk directly where the filesystem
    takes O_DIRECT: no GiB of dirty pages for everyone else's fsyncs to
    queue behind. The artefact is whole and its sidecar is its digest."""
    opened: list[int | None] = []
    real = durable.open_direct
    monkeypatch.setattr(durable, "open_direct", lambda p: opened.append(real(p)) or opened[-1])
    result = backup_engine.backup(store, tmp_path / "b.db")
    assert opened and opened[0] is not None  # ext4/xfs/btrfs here: taken
    assert result.copy_method == backup_engine.COPY_FILE
    assert sha256_file(result.path)[0] == result.sha256
    assert _rows(result.path)


def test_without_write_access_commits_left_in_the_wal_are_copied_through_sqlite(
    shared_tmp: Path,
):
    """A user who may read state.db but not write it, while commits sit in
    the WAL (a server of another user is writing): the WAL cannot be
    checkpointed into the file, so the file cannot be copied as it is; the
    backup copies through SQLite, every commit included."""
    data = support.make_store(DataDir(shared_tmp / "data"))
    uid, gid = nobody_ids()
    os.chown(data.path, uid, gid)
    os.chown(data.lock, uid, gid)
    out = shared_tmp / "out"
    out.mkdir()
    os.chown(out, uid, gid)
    writer = _writer(data)
    try:
        _add_rows(writer, 0, 50)
        data.state_db.chmod(0o644)
        for name in (f"{data.state_db}-wal", f"{data.state_db}-shm"):
            os.chmod(name, 0o666)  # SQLite's readers write the -shm
        run = run_as_nobody(
            "--data-dir",
            str(data.path),
            "backup",
            "--json",
            "--out",
            str(out / "b.db"),
            home=shared_tmp,
        )
    finally:
        writer.close()
    assert run.code == 0, run.err
    assert json.loads(run.out)["copy_method"] == backup_engine.COPY_BACKUP_API
    assert {f"row-{i}" for i in range(50)} <= _rows(out / "b.db")


def test_a_store_on_another_filesystem_is_copied_through_userspace(tmp_path):
    """copy_file_range refused between two filesystems (tmpfs and this one):
    the bytes go through one reused buffer instead, all of them."""
    with tmpfs(tmp_path / "mnt", "8m") as mnt:
        src = mnt / "src"
        data = os.urandom(3 * (1 << 20) + 12345)
        src.write_bytes(data)
        dst = tmp_path / "dst"
        seen: list[int] = []
        with open(src, "rb") as s, open(dst, "wb") as d:
            durable.copy_range(s.fileno(), d.fileno(), 4096, len(data), seen.append)
        copied = dst.read_bytes()
    assert copied[:4096] == b"\0" * 4096 and copied[4096:] == data[4096:]
    assert seen[-1] == len(data) and seen == sorted(seen)


def test_a_source_shorter_than_promised_is_an_error_not_a_short_copy(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"x" * 10_000)
    with open(src, "rb") as s, open(dst, "wb") as d, pytest.raises(OSError, match="ended at byte"):
        durable.copy_range(s.fileno(), d.fileno(), 0, 20_000)


def test_the_trailing_hash_reads_only_what_was_written_and_can_be_cancelled(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"")
    data = os.urandom(5 * (1 << 20) + 7)
    trail = TrailingSha256(path)
    with open(path, "r+b", buffering=0) as f:
        for start in range(0, len(data), 1 << 20):
            f.write(data[start : start + (1 << 20)])
            trail.advance(min(start + (1 << 20), len(data)))
    assert trail.result(len(data)) == (hashlib.sha256(data).hexdigest(), len(data))

    stopped = TrailingSha256(path)
    stopped.advance(1 << 20)
    stopped.cancel()  # returns: the thread ended, its descriptor closed
    assert not any(t.name == "portunus-sha256" and t.is_alive() for t in threading.enumerate())
