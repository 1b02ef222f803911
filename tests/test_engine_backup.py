"""portunus.engine.backup in-process: naming, racing backups, publication on a full disk."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from portunus import durable
from portunus.engine import backup as backup_engine
from portunus.engine.checksum import CHUNK, sha256_file, sidecar_path
from portunus.errors import PortunusError
from tests.test_cli_backup import listing, parse_backup_name, tmpfs


@pytest.mark.parametrize("length", [0, 1, 4096, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7])
def test_sha256_file_reads_every_byte_whatever_the_size(tmp_path, length):
    """A file under a chunk is read through a buffer of its own size, a
    larger one in whole chunks: either way the digest and size are the file's."""
    path = tmp_path / "f"
    data = os.urandom(length)
    path.write_bytes(data)
    assert sha256_file(path) == (hashlib.sha256(data).hexdigest(), length)


def test_backup_name_is_rfc3339_utc_whatever_the_local_zone():
    """A +02:00 instant is named by its UTC time, with a trailing Z."""
    at = datetime(2026, 5, 8, 14, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    name = backup_engine.backup_name(at)
    assert name == "portunus-state-2026-05-08T12:30:05Z.db"
    assert parse_backup_name(Path(name)) == at.replace(microsecond=0)


def test_precise_backup_name_keeps_microseconds():
    """The sub-second name used on a clash is still RFC3339 UTC."""
    at = datetime(2026, 5, 8, 12, 30, 5, 123456, tzinfo=UTC)
    name = backup_engine.backup_name(at, precise=True)
    assert name == "portunus-state-2026-05-08T12:30:05.123456Z.db"
    assert parse_backup_name(Path(name)) == at


def test_a_backup_never_dates_itself_before_a_sibling_of_the_same_second(store, tmp_path):
    """Pruning can free the seconds-only name of a second that still holds a
    sub-second sibling; a backup that took it would be dated .000000, look
    older than that sibling, and be pruned as the oldest at once (seen as a
    flaky keep_last test). With any backup already in its second, a new one
    takes a sub-second name, so it sorts after it."""
    out = tmp_path / "backups"
    out.mkdir()
    start = datetime.now(UTC).replace(microsecond=0)
    for ahead in range(10):  # a sibling in the backup's own second, whenever it starts
        stamp = start + timedelta(seconds=ahead)
        (out / backup_engine.backup_name(stamp, precise=True)).write_bytes(b"")
    made = backup_engine.backup(store, out)
    when = parse_backup_name(made.path)
    sibling = out / backup_engine.backup_name(when.replace(microsecond=0), precise=True)
    assert sibling.exists() and sibling != made.path
    # Dated after its sibling (a seconds-only name would parse as .000000).
    assert when > parse_backup_name(sibling), made.path.name


def test_backups_racing_into_one_directory_all_publish(store, tmp_path):
    """Eight backups released at once into one directory: eight files, no refusal."""
    out = tmp_path / "backups"
    out.mkdir()
    start = threading.Barrier(8)
    outcomes: list[object] = []

    def one_backup() -> None:
        start.wait()
        try:
            outcomes.append(backup_engine.backup(store, out).path)
        except PortunusError as error:
            outcomes.append(error.event)

    threads = [threading.Thread(target=one_backup) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(o, Path) for o in outcomes), outcomes
    assert len(set(outcomes)) == 8
    for path in outcomes:
        parse_backup_name(path)
        digest, _ = sha256_file(path)
        assert sidecar_path(path).read_text() == f"{digest}  {path.name}\n"


def test_explicit_out_that_appears_mid_backup_is_never_renamed(store, tmp_path):
    """Only a name we picked inside a directory may change; an explicit --out is refused."""
    final = tmp_path / "b.db"
    tmp = tmp_path / ".portunus-backup-x.tmp"
    tmp.write_bytes(b"SQLite format 3\x00")
    final.write_bytes(b"appeared meanwhile")
    with pytest.raises(PortunusError) as raised:
        backup_engine._publish(tmp, final, None, named_here=False)
    assert raised.value.event == "backup.destination_exists"
    assert final.read_bytes() == b"appeared meanwhile"


def _fill(directory: Path) -> None:
    """Write until the filesystem says ENOSPC."""
    with open(directory / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_disk_filling_up_while_writing_the_sidecar_leaves_no_file_behind(store, tmp_path):
    """ENOSPC on the sidecar: the backup is withdrawn and no temp file stays."""
    with tmpfs(tmp_path / "small", "128k") as small:
        tmp = small / ".portunus-backup-test.tmp"
        tmp.write_bytes(store.state_db.read_bytes()[:4096])
        digest, _ = sha256_file(tmp)
        _fill(small)
        with pytest.raises(OSError) as raised:
            backup_engine._publish(tmp, small / "b.db", digest, named_here=False)
        assert raised.value.errno == errno.ENOSPC
        # backup() itself removes the temp copy it made; nothing else may be left.
        assert listing(small) - {tmp.name} == {"filler"}


# --- what killed backups leave behind ---------------------------------------------


def _leftover(directory: Path, name: str, *, age: float, journal: bool = False) -> Path:
    path = directory / name
    path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 4080)
    family = [path, Path(f"{path}-journal")] if journal else [path]
    if journal:
        family[1].write_bytes(b"\x00" * 512)
    old = time.time() - age
    for member in family:
        os.utime(member, (old, old))
    return path


def test_a_backup_sweeps_what_killed_backups_left_and_nothing_else(store, tmp_path):
    """Unlocked, untouched for a minute, named exactly like ours: removed with
    its journal. Fresh ones, locked ones and look-alikes stay."""
    out = tmp_path / "backups"
    out.mkdir()
    stale = _leftover(out, ".portunus-backup-0123456789ab.tmp", age=3600, journal=True)
    fresh = _leftover(out, ".portunus-backup-aaaaaaaaaaaa.tmp", age=5)
    locked = _leftover(out, ".portunus-backup-bbbbbbbbbbbb.tmp", age=3600)
    lookalikes = [
        _leftover(out, name, age=3600)
        for name in (".portunus-backup-XYZ.tmp", "portunus-backup-cccccccccccc.tmp", "notes.tmp")
    ]
    (out / ".portunus-backup-dddddddddddd.tmp").mkdir()  # not a regular file
    holder = os.open(locked, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as a live backup holds its file
    try:
        result = backup_engine.backup(store, out)
    finally:
        os.close(holder)
    names = {p.name for p in out.iterdir()}
    assert stale.name not in names and f"{stale.name}-journal" not in names
    assert {fresh.name, locked.name, ".portunus-backup-dddddddddddd.tmp"} <= names
    assert {p.name for p in lookalikes} <= names
    assert result.path.exists()


def test_a_running_backup_holds_its_temporary_file_locked(store, tmp_path):
    """What the sweep relies on: while the copy runs, its file cannot be locked."""
    out = tmp_path / "backups"
    out.mkdir()
    seen: list[bool] = []

    def progress(copied: int, total: int) -> None:
        (temp,) = [p for p in out.iterdir() if p.name.endswith(".tmp")]
        fd = os.open(temp, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(False)
        except BlockingIOError:
            seen.append(True)
        finally:
            os.close(fd)

    backup_engine.backup(store, out, progress=progress)
    assert seen and all(seen)
    assert backup_engine.sweep_stale_temps(out) == []  # and nothing was left to sweep


def test_the_copy_starts_writing_itself_out_as_it_goes(store, tmp_path, monkeypatch):
    """After each step of the copy the kernel is asked to start writing the
    temporary file out, so the final fsync (and every other fsync on the
    disk meanwhile) does not wait behind the whole store."""
    out = tmp_path / "backups"
    out.mkdir()
    started: list[tuple[str, bool]] = []
    real = durable.start_writeback

    def recorded(fd: int) -> bool:
        accepted = real(fd)
        started.append((os.readlink(f"/proc/self/fd/{fd}"), accepted))
        return accepted

    monkeypatch.setattr(durable, "start_writeback", recorded)
    result = backup_engine.backup(store, out)
    assert started, "the copy never started its writeback"
    for path, accepted in started:
        name = Path(path).name
        assert name.startswith(backup_engine.TEMP_PREFIX) and name.endswith(".tmp"), path
        assert Path(path).parent == out
        assert accepted  # Linux, a regular file: the kernel took it
    assert sha256_file(result.path)[0] == result.sha256


def test_start_writeback_is_best_effort():
    """A descriptor the call does not apply to (a pipe) is refused quietly."""
    read_end, write_end = os.pipe()
    try:
        assert durable.start_writeback(read_end) is False
    finally:
        os.close(read_end)
        os.close(write_end)


def _orphan(directory: Path, name: str, *, age: float, text: str | None = None) -> Path:
    """A sidecar as a backup killed before publishing itself leaves it."""
    path = directory / f"{name}.sha256"
    path.write_text(text if text is not None else f"{'ab' * 32}  {name}\n")
    old = time.time() - age
    os.utime(path, (old, old))
    return path


def test_a_backup_sweeps_lone_sidecars_killed_backups_left_and_nothing_else(store, tmp_path):
    """A stale, unlocked sidecar of a generated name, with exactly the line a
    backup writes and no backup beside it: removed. A fresh one, a locked one
    (a live backup about to publish), one whose backup exists, one with other
    content, and other names stay."""
    out = tmp_path / "backups"
    out.mkdir()
    stale = _orphan(out, "portunus-state-2026-01-01T00:00:00Z.db", age=3600)
    precise = _orphan(out, "portunus-state-2026-01-01T00:00:00.123456Z.db", age=3600)
    kept = [
        _orphan(out, "portunus-state-2026-01-02T00:00:00Z.db", age=5),
        _orphan(out, "portunus-state-2026-01-03T00:00:00Z.db", age=3600, text="mine\n"),
        _orphan(out, "notes.db", age=3600),
    ]
    locked = _orphan(out, "portunus-state-2026-01-04T00:00:00Z.db", age=3600)
    with_backup = _orphan(out, "portunus-state-2026-01-05T00:00:00Z.db", age=3600)
    (out / "portunus-state-2026-01-05T00:00:00Z.db").write_bytes(b"SQLite format 3\x00")
    holder = os.open(locked, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as a live backup holds its sidecar
    try:
        result = backup_engine.backup(store, out)
    finally:
        os.close(holder)
    names = {p.name for p in out.iterdir()}
    assert stale.name not in names and precise.name not in names
    assert {p.name for p in [*kept, locked, with_backup]} <= names
    assert sidecar_path(result.path).exists()


def test_a_lone_sidecar_of_an_explicit_out_name_is_swept_by_the_same_command(store, tmp_path):
    """backup --out b.db killed between its sidecar and itself, run again: the
    stale lone b.db.sha256 is removed and the backup made, not refused (6)."""
    _orphan(tmp_path, "b.db", age=3600)
    result = backup_engine.backup(store, tmp_path / "b.db")
    digest, _ = sha256_file(result.path)
    assert sidecar_path(result.path).read_text() == f"{digest}  b.db\n"


def test_a_fresh_lone_sidecar_of_an_explicit_out_name_is_still_refused(store, tmp_path):
    """Under a minute old it may be a live backup's: 6, nothing touched."""
    orphan = _orphan(tmp_path, "b.db", age=5)
    with pytest.raises(PortunusError) as raised:
        backup_engine.backup(store, tmp_path / "b.db")
    assert raised.value.event == "backup.destination_exists"
    assert orphan.exists() and not (tmp_path / "b.db").exists()


def test_the_sidecar_is_published_before_the_backup_and_held_until_then(
    store, tmp_path, monkeypatch
):
    """At the moment the backup's name appears, its sidecar is already there
    and locked (no sweep can take it for an orphan meanwhile)."""
    out = tmp_path / "backups"
    out.mkdir()
    seen: list[tuple[bool, bool]] = []
    real = durable.publish_no_replace

    def observed(tmp: Path, final: Path, *, event: str) -> None:
        if final.suffix == ".db":
            sidecar = sidecar_path(final)
            fd = os.open(sidecar, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = False
            except BlockingIOError:
                locked = True
            finally:
                os.close(fd)
            seen.append((sidecar.exists(), locked))
        real(tmp, final, event=event)

    monkeypatch.setattr(durable, "publish_no_replace", observed)
    backup_engine.backup(store, out)
    assert seen == [(True, True)]
