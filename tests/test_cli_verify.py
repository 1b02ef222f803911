"""portunus-server verify: header, checksum, integrity, schema version, row counts; 0 or 7."""

from __future__ import annotations

import json
import os
from pathlib import Path

import apsw
import pytest

from portunus.datadir import DataDir
from portunus.engine import backup as backup_engine
from portunus.store import migrations
from tests import support
from tests.test_cli_backup import listing
from tests.test_cli_restore import (
    corrupt_a_table_page_in_the_middle,
    flip_a_byte_inside_a_row,
    leave_wal_behind,
    restore,
    write_sidecar,
)


@pytest.fixture
def backup_file(store, tmp_path: Path) -> Path:
    out = tmp_path / "backups"
    out.mkdir()
    return backup_engine.backup(store, out / "b.db").path


def file_state(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def assert_invalid(run: support.Run, code: int, event: str) -> None:
    assert run.code == code, run.err
    matching = [e for e in run.events if e["event"] == event]
    assert matching and matching[0]["msg"], run.err
    assert run.out == ""


def test_good_backup_exits_0_with_schema_version_and_row_counts(cli, backup_file):
    """stdout names the schema version and the row count of every table."""
    run = cli("verify", str(backup_file))
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert f"schema_version: {migrations.binary_schema_version()}" in run.out
    for table, count in support.table_counts(backup_file).items():
        assert f"rows.{table}: {count}" in lines
    assert "integrity: ok" in lines
    assert any(line.endswith("(sidecar: ok)") for line in lines)
    assert run.has_event("verify.completed")


def test_json_output_parses_and_matches_the_file(cli, backup_file):
    """--json: one object with the version, the checksum verdict and the counts."""
    run = cli("verify", str(backup_file), "--json")
    assert run.code == 0, run.err
    result = json.loads(run.out)
    assert result["schema_version"] == migrations.binary_schema_version()
    assert result["checksum"] == "ok"
    assert result["integrity"] == "ok"
    assert result["bytes"] == backup_file.stat().st_size
    assert result["rows"] == support.table_counts(backup_file)


def test_backup_without_a_sidecar_verifies_with_checksum_absent(cli, backup_file):
    """No .sha256: still 0, the output says the checksum was absent, and a
    verify.checksum_absent warning says the content could not be checked."""
    Path(f"{backup_file}.sha256").unlink()
    run = cli("verify", str(backup_file), "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["checksum"] == "absent"
    warning = [e for e in run.events if e["event"] == "verify.checksum_absent"]
    assert warning and warning[0]["level"] == "warning", run.err
    assert warning[0]["path"] == str(backup_file)
    assert ".sha256" in warning[0]["hint"]


def test_backup_with_its_sidecar_gives_no_checksum_warning(cli, backup_file):
    """The sidecar was checked: no verify.checksum_absent."""
    run = cli("verify", str(backup_file))
    assert run.code == 0, run.err
    assert not run.has_event("verify.checksum_absent")


def test_a_byte_flipped_inside_a_row_is_caught_only_by_the_sidecar(cli, backup_file):
    """SQLite has no page checksums: with the sidecar, 7; without it, verify
    passes (integrity_check cannot see it) and warns that it could not tell."""
    flip_a_byte_inside_a_row(backup_file)
    assert_invalid(cli("verify", str(backup_file)), 7, "verify.checksum_mismatch")
    Path(f"{backup_file}.sha256").unlink()
    run = cli("verify", str(backup_file))
    assert run.code == 0, run.err
    assert run.has_event("verify.checksum_absent")


def test_a_backup_missing_its_last_byte_beside_its_sidecar_exits_7(cli, backup_file):
    """A transfer that lost its last byte: the sidecar catches it, 7."""
    backup_file.write_bytes(backup_file.read_bytes()[:-1])
    assert_invalid(cli("verify", str(backup_file)), 7, "verify.checksum_mismatch")


def test_a_live_database_with_a_wal_is_refused_as_restore_refuses_it(cli, tmp_path):
    """A state.db whose -wal still holds commits is not a backup: verify says
    7 (verify.input_has_wal), as restore does, instead of passing it and
    counting rows that a restore would never bring back."""
    live = support.make_store(DataDir(tmp_path / "live"), clients=1)
    leave_wal_behind(live, "only-in-wal")
    before = {p.name: file_state(p) for p in live.path.iterdir()}
    run = cli("verify", str(live.state_db))
    assert_invalid(run, 7, "verify.input_has_wal")
    refusal = next(e for e in run.events if e["event"] == "verify.input_has_wal")
    assert refusal["path"] == str(live.state_db)
    assert refusal["wal"] == str(live.wal)
    assert {p.name: file_state(p) for p in live.path.iterdir()} == before
    assert restore(cli, DataDir(tmp_path / "target"), live.state_db).code == 7


def test_an_empty_wal_beside_the_file_is_not_a_live_database(cli, backup_file):
    """A zero-byte -wal holds no commit (a checkpointed, stopped store): verified."""
    Path(f"{backup_file}-wal").touch()
    run = cli("verify", str(backup_file))
    assert run.code == 0, run.err


def test_sidecar_mismatch_exits_7(cli, backup_file):
    """A sidecar recording another digest: 7, verify.checksum_mismatch."""
    sidecar = Path(f"{backup_file}.sha256")
    digest, name = sidecar.read_text().split()
    sidecar.write_text(f"{'0' if digest[0] != '0' else '1'}{digest[1:]}  {name}\n")
    assert_invalid(cli("verify", str(backup_file)), 7, "verify.checksum_mismatch")


def test_damaged_file_beside_its_sidecar_exits_7(cli, tmp_path):
    """Bytes flipped after the backup was written: the sidecar catches it, 7."""
    big = support.make_store(DataDir(tmp_path / "big"), clients=200)
    path = backup_engine.backup(big, tmp_path / "big.db").path
    corrupt_a_table_page_in_the_middle(path)
    assert_invalid(cli("verify", str(path)), 7, "verify.checksum_mismatch")


def test_damaged_file_without_sidecar_fails_the_integrity_check(cli, tmp_path):
    """The same damage with no sidecar: integrity_check catches it, 7."""
    big = support.make_store(DataDir(tmp_path / "big"), clients=200)
    path = backup_engine.backup(big, tmp_path / "big.db").path
    corrupt_a_table_page_in_the_middle(path)
    Path(f"{path}.sha256").unlink()
    assert_invalid(cli("verify", str(path)), 7, "verify.integrity_failed")


def test_missing_file_exits_5(cli, tmp_path):
    """A path that does not exist: 5."""
    assert_invalid(cli("verify", str(tmp_path / "nope.db")), 5, "verify.input_missing")


def test_not_sqlite_exits_7(cli, tmp_path):
    """A text file: 7, verify.not_sqlite."""
    text = tmp_path / "notes.db"
    text.write_text("hello\n" * 20)
    assert_invalid(cli("verify", str(text)), 7, "verify.not_sqlite")


def test_directory_exits_7(cli, tmp_path):
    """A directory: 7."""
    assert_invalid(cli("verify", str(tmp_path)), 7, "verify.not_sqlite")


def test_sqlite_file_that_is_not_a_portunus_store_exits_7(cli, tmp_path):
    """Another application's database: 7, verify.not_portunus_store."""
    foreign = tmp_path / "photos.db"
    conn = apsw.Connection(str(foreign))
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
    conn.close()
    assert_invalid(cli("verify", str(foreign)), 7, "verify.not_portunus_store")


def test_newer_schema_verifies_with_a_warning(cli, backup_file):
    """Valid but newer than this binary: 0, with verify.schema_newer_than_binary."""
    conn = apsw.Connection(str(backup_file))
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'x')")
    conn.close()
    write_sidecar(backup_file)
    run = cli("verify", str(backup_file), "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["schema_version"] == 99
    assert run.has_event("verify.schema_newer_than_binary")


def test_verify_never_modifies_the_file_or_its_directory(cli, backup_file):
    """Bytes and mtime unchanged, no -wal/-shm/-journal created beside it."""
    before = file_state(backup_file), file_state(Path(f"{backup_file}.sha256"))
    names = listing(backup_file.parent)
    assert cli("verify", str(backup_file)).code == 0
    assert (file_state(backup_file), file_state(Path(f"{backup_file}.sha256"))) == before
    assert listing(backup_file.parent) == names


def test_verify_of_a_wal_format_copy_leaves_its_directory_alone(cli, store, tmp_path):
    """A plain copy of a stopped server's state.db (WAL header) verifies, nothing created."""
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    copy = copy_dir / "state.db"
    copy.write_bytes(store.state_db.read_bytes())
    assert copy.read_bytes()[18:20] == b"\x02\x02"
    before = file_state(copy)
    run = cli("verify", str(copy))
    assert run.code == 0, run.err
    assert file_state(copy) == before
    assert os.listdir(copy_dir) == ["state.db"]
