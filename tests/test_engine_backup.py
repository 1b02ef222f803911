"""portunus.engine.backup in-process: naming, racing backups, publication on a full disk."""

from __future__ import annotations

import errno
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from portunus.engine import backup as backup_engine
from portunus.engine.checksum import sha256_file, sidecar_path
from portunus.errors import PortunusError
from tests.test_cli_backup import listing, parse_backup_name, tmpfs


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
