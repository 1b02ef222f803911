"""portunus-server restore: the spec's Restore section, each refusal with its exit
code and the proof that nothing was lost."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from portunus.datadir import DataDir
from portunus.engine import backup as backup_engine
from portunus.engine import restore as restore_engine
from portunus.store import migrations
from portunus.store.lock import StoreLock
from tests import support
from tests.test_cli_backup import rows_by_table, tmpfs
from tests.test_store_migrations import build_v1_store

# Writes a client into the store's WAL and dies without a checkpoint, the way
# a kill -9'd server leaves state.db-wal behind.
CRASHING_WRITER = """
import os, sys
from pathlib import Path
from portunus.store.connection import open_store
from tests.support import add_client_with_rules
conn = open_store(Path(sys.argv[1]))
conn.execute("PRAGMA wal_autocheckpoint=0")
with conn:
    add_client_with_rules(conn, sys.argv[2], 1)
os._exit(0)
"""


def leave_wal_behind(data_dir: DataDir, client_name: str) -> None:
    """Commit ``client_name`` into state.db-wal only, then die like kill -9."""
    subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(data_dir.state_db), client_name],
        cwd=support.REPO,
        check=True,
    )
    assert data_dir.wal.stat().st_size > 0


def client_names(path: Path) -> set[str]:
    return {row[1] for row in rows_by_table(path)["clients"]}


def snapshot(data_dir: DataDir) -> dict[str, bytes]:
    """Every file in the data dir and its bytes (the lock file records a pid: skipped)."""
    if not data_dir.path.exists():
        return {}
    return {
        p.name: p.read_bytes()
        for p in data_dir.path.iterdir()
        if p.name != "state.db.lock" and p.is_file()
    }


def staged_leftovers(data_dir: DataDir) -> list[str]:
    if not data_dir.path.exists():
        return []
    return [p.name for p in data_dir.path.iterdir() if p.name.startswith(".restore-")]


def assert_refused_and_intact(
    run: support.Run, code: int, event: str, data_dir: DataDir, before: dict[str, bytes]
) -> None:
    """The documented code and event, a message, and the data dir exactly as it was."""
    assert run.code == code, run.err
    matching = [e for e in run.events if e["event"] == event]
    assert matching, run.err
    assert matching[0]["msg"]
    assert run.out == ""
    assert snapshot(data_dir) == before
    assert staged_leftovers(data_dir) == []


def write_sidecar(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")


def integrity_problems(path: Path) -> list[str]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [r[0] for r in conn.execute("PRAGMA integrity_check")]
    except apsw.Error as exc:
        return [str(exc)]
    finally:
        conn.close()


def corrupt_a_table_page_in_the_middle(path: Path) -> None:
    """Scramble the b-tree header of the table leaf page nearest the file's middle:
    the bytes integrity_check reads, not a value it would accept."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchall()[0][0]
        page_count = conn.execute("PRAGMA page_count").fetchall()[0][0]
        leaves = [
            r[0]
            for r in conn.execute(
                "SELECT pageno FROM dbstat WHERE pagetype='leaf'"
                " AND name IN ('clients', 'rules', 'rule_targets', 'audit_log')"
            )
        ]
    finally:
        conn.close()
    page = min(leaves, key=lambda p: abs(p - page_count // 2))
    data = bytearray(path.read_bytes())
    start = (page - 1) * page_size
    for i in range(start, start + 12):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def flip_a_byte_inside_a_row(path: Path) -> None:
    """Change one rule target's host from 10.0.0.1 to 10.0.0.0: a column no
    index covers, so integrity_check cannot tell (SQLite has no page checksums)."""
    data = bytearray(path.read_bytes())
    at = data.rfind(b"10.0.0.1")
    assert at > 0
    data[at + 7] ^= 0x01
    path.write_bytes(bytes(data))


def tree(path: Path) -> list[str] | None:
    """Every name under ``path``, relative to it; None when it does not exist."""
    if not os.path.lexists(path):
        return None
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def source(tmp_path: Path) -> DataDir:
    """The store the backups are taken from (differs from the `store` fixture)."""
    return support.make_store(DataDir(tmp_path / "source"), clients=5)


@pytest.fixture
def backup_file(source: DataDir, tmp_path: Path) -> Path:
    """A real backup of ``source`` with its .sha256 sidecar."""
    out = tmp_path / "backups"
    out.mkdir()
    return backup_engine.backup(source, out / "portunus-backup.db").path


@pytest.fixture
def big_backup(tmp_path: Path) -> Path:
    """A backup with enough pages that its middle holds table data."""
    big = support.make_store(DataDir(tmp_path / "big"), clients=200)
    return backup_engine.backup(big, tmp_path / "big-backup.db").path


def restore(cli, data_dir: DataDir, path: Path, *extra: str) -> support.Run:
    return cli("--data-dir", str(data_dir.path), "restore", "--in", str(path), *extra)


# --- success -------------------------------------------------------------------


def test_restore_into_a_new_data_dir_equals_the_backup_and_verifies(cli, data_dir, backup_file):
    """The data dir is created 0700, state.db equals the backup, verify passes."""
    run = restore(cli, data_dir, backup_file)
    assert run.code == 0, run.err
    assert str(data_dir.state_db) in run.out
    assert run.has_event("restore.completed")
    assert run.has_event("startup.store_opened")
    assert data_dir.path.stat().st_mode & 0o777 == 0o700
    assert rows_by_table(data_dir.state_db) == rows_by_table(backup_file)
    assert staged_leftovers(data_dir) == []
    assert cli("verify", str(data_dir.state_db)).code == 0


def test_restore_never_modifies_its_input(cli, data_dir, backup_file):
    """The backup and its sidecar keep their bytes and mtime; nothing appears beside them."""
    sidecar = Path(f"{backup_file}.sha256")
    before = [(p.read_bytes(), p.stat().st_mtime_ns) for p in (backup_file, sidecar)]
    names = sorted(p.name for p in backup_file.parent.iterdir())
    assert restore(cli, data_dir, backup_file).code == 0
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in (backup_file, sidecar)] == before
    assert sorted(p.name for p in backup_file.parent.iterdir()) == names


@pytest.mark.parametrize("name", [".restore-0123456789ab.db", ".restore-keepme.db"])
def test_an_input_inside_the_data_dir_named_like_a_stage_is_not_swept(
    cli, store, backup_file, name
):
    """The stale-stage sweep removes a killed restore's files, never the input."""
    own = store.path / name
    shutil.copy(backup_file, own)
    run = restore(cli, store, own, "--force")
    assert run.code == 0, run.err
    assert own.read_bytes() == backup_file.read_bytes()
    assert client_names(store.state_db) == client_names(backup_file)


def test_only_a_restores_own_stage_names_are_swept(cli, store, backup_file):
    """An operator's .restore-notes.txt stays; .restore-<12 hex>.db goes."""
    (store.path / ".restore-notes.txt").write_text("mine")
    (store.path / ".restore-0123456789ab.db").write_bytes(b"partial")
    run = restore(cli, store, backup_file, "--force")
    assert run.code == 0, run.err
    assert (store.path / ".restore-notes.txt").read_text() == "mine"
    assert not (store.path / ".restore-0123456789ab.db").exists()


def test_restored_store_opens_for_the_next_command(cli, data_dir, backup_file):
    """The restored store opens and migrates cleanly: bootstrap-admin finds its admin (6)."""
    assert restore(cli, data_dir, backup_file).code == 0
    run = cli("--data-dir", str(data_dir.path), "bootstrap-admin", "--name", "another")
    assert run.code == 6, run.err
    assert run.has_event("startup.store_opened")
    assert run.has_event("bootstrap.admin_exists")


def test_force_replaces_the_existing_state_with_the_backup(cli, store, backup_file):
    """--force: the old store is gone, the result equals the backup and verifies."""
    assert rows_by_table(store.state_db) != rows_by_table(backup_file)
    run = restore(cli, store, backup_file, "--force", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["replaced_existing"] is True
    assert rows_by_table(store.state_db) == rows_by_table(backup_file)
    assert staged_leftovers(store) == []
    assert cli("verify", str(store.state_db)).code == 0


def test_spec_runbook_reset_then_restore_keeps_tls_and_config(cli, store, backup_file):
    """reset --confirm then restore --in, as the spec's steps 2 and 3: TLS and server.toml stay."""
    kept = {"server.crt": b"CERT\n", "server.key": b"KEY\n", "server.toml": b"# config\n"}
    for name, data in kept.items():
        (store.path / name).write_bytes(data)
    assert cli("--data-dir", str(store.path), "reset", "--confirm").code == 0
    run = restore(cli, store, backup_file)
    assert run.code == 0, run.err
    assert rows_by_table(store.state_db) == rows_by_table(backup_file)
    for name, data in kept.items():
        assert (store.path / name).read_bytes() == data


def test_older_schema_backup_is_migrated_forward(cli, data_dir, tmp_path):
    """A schema-v1 backup is restored at the binary's version, its data kept."""
    v1 = build_v1_store(tmp_path / "v1-backup.db", ("edge1", "edge2"))
    run = restore(cli, data_dir, v1, "--json")
    assert run.code == 0, run.err
    summary = json.loads(run.out)
    assert summary["from_schema_version"] == 1
    assert summary["schema_version"] == migrations.binary_schema_version()
    assert run.has_event("startup.migrations_applied")
    assert support.schema_version(data_dir.state_db) == migrations.binary_schema_version()
    assert client_names(data_dir.state_db) == {"edge1", "edge2"}
    assert cli("verify", str(data_dir.state_db)).code == 0
    assert support.schema_version(v1) == 1, "the input itself was migrated"


@pytest.mark.parametrize("old_state_db", [True, False], ids=["with-force", "orphan-wal"])
def test_stale_wal_never_replays_onto_the_restored_file(cli, tmp_path, backup_file, old_state_db):
    """An old store's state.db-wal (holding a client the backup lacks) never reaches
    the restored file."""
    data_dir = support.make_store(DataDir(tmp_path / "crashed"), clients=1)
    leave_wal_behind(data_dir, "ghost")
    extra = ("--force",) if old_state_db else ()
    if not old_state_db:
        data_dir.state_db.unlink()
        # Proof the hazard is real: the same WAL beside a plain copy replays.
        control = tmp_path / "control"
        shutil.copytree(data_dir.path, control)
        shutil.copyfile(backup_file, control / "state.db")
        assert "ghost" in client_names(control / "state.db")
    run = restore(cli, data_dir, backup_file, *extra)
    assert run.code == 0, run.err
    assert not data_dir.wal.exists() and not data_dir.shm.exists()
    assert client_names(data_dir.state_db) == client_names(backup_file)
    assert rows_by_table(data_dir.state_db) == rows_by_table(backup_file)


# --- refusals, in the documented order -------------------------------------------------


def test_missing_input_exits_5_and_keeps_the_state(cli, store, tmp_path):
    """--in a path that does not exist: 5."""
    before = snapshot(store)
    run = restore(cli, store, tmp_path / "no-such-backup.db", "--force")
    assert_refused_and_intact(run, 5, "restore.input_missing", store, before)


def test_missing_input_exits_5_before_the_data_dir_is_looked_at(cli, store, tmp_path):
    """Order: input exists (5) is checked before the non-empty data dir (6)."""
    before = snapshot(store)
    run = restore(cli, store, tmp_path / "no-such-backup.db")
    assert_refused_and_intact(run, 5, "restore.input_missing", store, before)


def test_empty_file_exits_7(cli, store, tmp_path):
    """A zero-byte input is not a SQLite database: 7."""
    empty = tmp_path / "empty.db"
    empty.touch()
    before = snapshot(store)
    run = restore(cli, store, empty, "--force")
    assert_refused_and_intact(run, 7, "restore.not_sqlite", store, before)


def test_truncated_backup_exits_7(cli, store, backup_file, tmp_path):
    """The first half of a real backup (no sidecar): 7, state kept."""
    half = tmp_path / "half.db"
    data = backup_file.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    before = snapshot(store)
    run = restore(cli, store, half, "--force")
    assert_refused_and_intact(run, 7, "restore.integrity_failed", store, before)


def test_truncated_backup_with_its_sidecar_is_a_checksum_mismatch(cli, store, backup_file):
    """A real backup cut short in transit, beside its original sidecar: 7."""
    data = backup_file.read_bytes()
    backup_file.write_bytes(data[: len(data) // 2])
    before = snapshot(store)
    run = restore(cli, store, backup_file, "--force")
    assert_refused_and_intact(run, 7, "restore.checksum_mismatch", store, before)


def test_bit_flipped_backup_with_its_sidecar_is_a_checksum_mismatch(cli, store, big_backup):
    """Flipped bytes in the middle of a backup, sidecar kept: checksum mismatch, 7."""
    corrupt_a_table_page_in_the_middle(big_backup)
    before = snapshot(store)
    run = restore(cli, store, big_backup, "--force")
    assert_refused_and_intact(run, 7, "restore.checksum_mismatch", store, before)


def test_bit_flipped_backup_without_sidecar_fails_the_integrity_check(cli, store, big_backup):
    """The same damage without a sidecar: integrity_check catches it, 7."""
    corrupt_a_table_page_in_the_middle(big_backup)
    Path(f"{big_backup}.sha256").unlink()
    assert integrity_problems(big_backup) != ["ok"]
    before = snapshot(store)
    run = restore(cli, store, big_backup, "--force")
    assert_refused_and_intact(run, 7, "restore.integrity_failed", store, before)


def test_malformed_sidecar_exits_7(cli, store, backup_file):
    """A .sha256 that is not a sha256sum line is refused, not ignored."""
    Path(f"{backup_file}.sha256").write_text("checksum goes here\n")
    before = snapshot(store)
    run = restore(cli, store, backup_file, "--force")
    assert_refused_and_intact(run, 7, "restore.checksum_mismatch", store, before)


def test_non_sqlite_file_exits_7(cli, store, tmp_path):
    """A text file as --in: 7, with a message about the header."""
    text = tmp_path / "notes.db"
    text.write_text("these are not the bytes you are looking for\n" * 10)
    before = snapshot(store)
    run = restore(cli, store, text, "--force")
    assert_refused_and_intact(run, 7, "restore.not_sqlite", store, before)


def test_directory_as_input_exits_7(cli, store, tmp_path):
    """A directory as --in: 7."""
    before = snapshot(store)
    run = restore(cli, store, tmp_path, "--force")
    assert_refused_and_intact(run, 7, "restore.not_sqlite", store, before)


def test_sqlite_file_that_is_not_a_portunus_store_exits_7(cli, store, tmp_path):
    """Another application's SQLite database: 7, restore.not_portunus_store."""
    foreign = tmp_path / "photos.db"
    conn = apsw.Connection(str(foreign))
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
    conn.execute("INSERT INTO photos (path) VALUES ('/a.jpg')")
    conn.close()
    before = snapshot(store)
    run = restore(cli, store, foreign, "--force")
    assert_refused_and_intact(run, 7, "restore.not_portunus_store", store, before)


def test_live_database_with_a_wal_is_refused_as_input(cli, data_dir, tmp_path):
    """A live state.db whose -wal still holds commits is not a backup: 7."""
    live = support.make_store(DataDir(tmp_path / "live"), clients=1)
    leave_wal_behind(live, "only-in-wal")
    run = restore(cli, data_dir, live.state_db)
    assert_refused_and_intact(run, 7, "restore.input_has_wal", data_dir, {})
    assert not data_dir.state_db.exists()


def _too_new_backup(backup_file: Path) -> Path:
    conn = apsw.Connection(str(backup_file))
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'x')")
    conn.close()
    write_sidecar(backup_file)
    return backup_file


def test_backup_newer_than_the_binary_exits_78(cli, store, backup_file):
    """Schema 99 > the binary's: 78 with startup.schema_version_too_new, state kept."""
    _too_new_backup(backup_file)
    before = snapshot(store)
    run = restore(cli, store, backup_file, "--force")
    assert_refused_and_intact(run, 78, "startup.schema_version_too_new", store, before)


def test_too_new_backup_prints_the_spec_event_line(env, data_dir, backup_file):
    """In the default logfmt, stderr reads `event=startup.schema_version_too_new` as in the spec."""
    _too_new_backup(backup_file)
    argv = [sys.executable, "-m", "portunus", "--data-dir", str(data_dir.path)]
    proc = subprocess.run(
        [*argv, "restore", "--in", str(backup_file)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 78
    assert "level=error event=startup.schema_version_too_new " in proc.stderr
    assert not data_dir.state_db.exists()
    assert staged_leftovers(data_dir) == []


def test_non_empty_data_dir_without_force_exits_6_untouched(cli, store, backup_file):
    """A data dir holding state.db is not clobbered without --force."""
    before = snapshot(store)
    run = restore(cli, store, backup_file)
    assert_refused_and_intact(run, 6, "restore.data_dir_not_empty", store, before)


def test_restore_while_a_server_holds_the_store_exits_75(cli, data_dir, backup_file):
    """Another process holds state.db.lock: 75 naming its pid, nothing restored."""
    data_dir.ensure()
    with StoreLock(data_dir.lock, "serve"):
        run = restore(cli, data_dir, backup_file)
    assert_refused_and_intact(run, 75, "startup.store_in_use", data_dir, {})
    in_use = [e for e in run.events if e["event"] == "startup.store_in_use"][0]
    assert in_use["holder"] == "serve"
    assert in_use["pid"] == os.getpid()


def test_lock_is_checked_before_the_non_empty_data_dir(cli, store, backup_file):
    """Order: a held lock (75) wins over a non-empty data dir (6)."""
    before = snapshot(store)
    with StoreLock(store.lock, "serve"):
        run = restore(cli, store, backup_file)
    assert_refused_and_intact(run, 75, "startup.store_in_use", store, before)


def test_bad_header_is_checked_before_the_lock(cli, store, tmp_path):
    """Order: a non-SQLite input (7) is refused before the lock is even tried."""
    text = tmp_path / "notes.db"
    text.write_text("hello\n")
    before = snapshot(store)
    with StoreLock(store.lock, "serve"):
        run = restore(cli, store, text, "--force")
    assert_refused_and_intact(run, 7, "restore.not_sqlite", store, before)


def test_symlinked_lock_file_is_refused_and_its_target_untouched(
    cli, data_dir, backup_file, tmp_path
):
    """A planted state.db.lock symlink: 74, the file it points at keeps its bytes."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    data_dir.ensure()
    data_dir.lock.symlink_to(victim)
    run = restore(cli, data_dir, backup_file)
    assert run.code == 74, run.err
    assert run.has_event("startup.lock_failed")
    assert victim.read_text() == "precious\n"
    assert not data_dir.state_db.exists()


def test_migration_failure_exits_70_and_keeps_the_previous_state(cli, store, tmp_path):
    """A v1 backup holding "edge1" and "EDGE1" cannot take migration 0002: 70, old state intact."""
    v1 = build_v1_store(tmp_path / "v1-backup.db", ("edge1", "EDGE1"))
    before = snapshot(store)
    run = restore(cli, store, v1, "--force")
    assert_refused_and_intact(run, 70, "startup.migration_failed", store, before)
    assert cli("verify", str(store.state_db)).code == 0


def test_migration_failure_into_an_empty_data_dir_leaves_no_state_db(cli, data_dir, tmp_path):
    """The failed migration leaves no half-written state.db for the next start."""
    v1 = build_v1_store(tmp_path / "v1-backup.db", ("edge1", "EDGE1"))
    run = restore(cli, data_dir, v1)
    assert_refused_and_intact(run, 70, "startup.migration_failed", data_dir, {})
    assert not data_dir.state_db.exists()


@contextlib.contextmanager
def small_ext4(tmp_path: Path, mib: int) -> Iterator[Path]:
    """A real, small ext4 image on a loop device (restore refuses tmpfs, 78);
    root only, skipped where it cannot be made or mounted."""
    image, mount_point = tmp_path / "disk.img", tmp_path / "disk"
    mount_point.mkdir()
    with open(image, "wb") as f:
        f.truncate(mib * 1024 * 1024)
    for argv in (
        ["mkfs.ext4", "-q", "-F", "-m", "0", str(image)],
        ["mount", "-o", "loop", str(image), str(mount_point)],
    ):
        try:
            done = subprocess.run(argv, capture_output=True)
        except FileNotFoundError:
            pytest.skip(f"{argv[0]} is not installed")
        if done.returncode != 0:
            pytest.skip(f"cannot {argv[0]} here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def leave_free(directory: Path, free_bytes: int) -> None:
    """Fill ``directory``'s filesystem with a ballast file until about ``free_bytes`` are left."""
    stat = os.statvfs(directory)
    ballast = stat.f_bavail * stat.f_frsize - free_bytes
    if ballast > 0:
        (directory / "ballast").write_bytes(b"\0" * ballast)


def test_data_dir_filling_up_exits_74_and_keeps_the_previous_state(cli, tmp_path, big_backup):
    """No room to stage the copy: 74, the old store and nothing else in the data dir."""
    with small_ext4(tmp_path, 4) as disk:
        data_dir = support.make_store(DataDir(disk / "data"), clients=1)
        leave_free(disk, big_backup.stat().st_size // 2)
        free = os.statvfs(disk)
        assert big_backup.stat().st_size > free.f_bavail * free.f_frsize
        before = snapshot(data_dir)
        run = restore(cli, data_dir, big_backup, "--force")
        assert_refused_and_intact(run, 74, "restore.io_error", data_dir, before)
        assert cli("verify", str(data_dir.state_db)).code == 0


# --- a refusal leaves the data dir as it found it ---------------------------------


def _text_file(tmp_path: Path, backup: Path) -> Path:
    path = tmp_path / "notes.db"
    path.write_text("not a database\n")
    return path


def _live_store(tmp_path: Path, backup: Path) -> Path:
    live = support.make_store(DataDir(tmp_path / "live"), clients=1)
    leave_wal_behind(live, "only-in-wal")
    return live.state_db


def _truncated(tmp_path: Path, backup: Path) -> Path:
    half = tmp_path / "half.db"
    data = backup.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    return half


def _flipped_with_sidecar(tmp_path: Path, backup: Path) -> Path:
    flip_a_byte_inside_a_row(backup)
    return backup


def _foreign(tmp_path: Path, backup: Path) -> Path:
    path = tmp_path / "photos.db"
    conn = apsw.Connection(str(path))
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
    conn.close()
    return path


def _too_new(tmp_path: Path, backup: Path) -> Path:
    return _too_new_backup(backup)


def _unmigratable(tmp_path: Path, backup: Path) -> Path:
    return build_v1_store(tmp_path / "v1-backup.db", ("edge1", "EDGE1"))


REFUSED_INPUTS = {
    "missing": (5, "restore.input_missing", lambda tmp_path, backup: tmp_path / "no.db"),
    "not-sqlite": (7, "restore.not_sqlite", _text_file),
    "live-wal": (7, "restore.input_has_wal", _live_store),
    "truncated": (7, "restore.integrity_failed", _truncated),
    "checksum": (7, "restore.checksum_mismatch", _flipped_with_sidecar),
    "foreign": (7, "restore.not_portunus_store", _foreign),
    "too-new": (78, "startup.schema_version_too_new", _too_new),
    "migration": (70, "startup.migration_failed", _unmigratable),
}


@pytest.mark.parametrize("kind", REFUSED_INPUTS)
@pytest.mark.parametrize("found", ["missing", "empty", "config-only"])
def test_a_refused_restore_into_a_new_data_dir_leaves_it_as_it_was(
    cli, tmp_path, backup_file, kind, found
):
    """Each refusal (5, 7, 78, 70) into a data dir that did not exist (nor its
    parent), was empty, or held only server.toml: the same files afterwards,
    no state.db.lock, no directory created; and the refusal names the --in
    file, never the staged .restore-<hex>.db copy."""
    code, event, build = REFUSED_INPUTS[kind]
    given = build(tmp_path, backup_file)
    top = tmp_path / "new"
    data_dir = DataDir(top / "data")
    if found != "missing":
        data_dir.ensure()
    if found == "config-only":
        data_dir.config.write_text("# mine\n")
    before = tree(top)
    run = restore(cli, data_dir, given)
    assert run.code == code, run.err
    refusal = [e for e in run.events if e["event"] == event]
    assert refusal and refusal[0]["path"] == str(given), run.err
    assert str(given) in refusal[0]["msg"]
    assert ".restore-" not in run.err
    assert tree(top) == before


def test_a_refusal_for_a_non_empty_data_dir_creates_no_lock_file(cli, store, backup_file):
    """6 on a data dir holding state.db but no state.db.lock (a copied data
    dir): it is left without one."""
    store.lock.unlink()
    before = tree(store.path)
    run = restore(cli, store, backup_file)
    assert run.code == 6, run.err
    assert tree(store.path) == before


def test_a_refusal_keeps_a_lock_file_that_was_there(cli, store, tmp_path):
    """Only what the restore created goes: an existing state.db.lock stays."""
    v1 = build_v1_store(tmp_path / "v1-backup.db", ("edge1", "EDGE1"))
    run = restore(cli, store, v1, "--force")
    assert run.code == 70, run.err
    assert store.lock.exists()


def test_too_new_refusal_names_the_input_and_both_versions(cli, data_dir, backup_file):
    """78: the operator reads which file, its schema version and the binary's."""
    _too_new_backup(backup_file)
    run = restore(cli, data_dir, backup_file)
    assert run.code == 78, run.err
    refusal = next(e for e in run.events if e["event"] == "startup.schema_version_too_new")
    assert refusal["path"] == str(backup_file)
    assert refusal["msg"].startswith(f"{backup_file} has schema version 99")
    assert refusal["binary_schema_version"] == migrations.binary_schema_version()


# --- without a checksum sidecar, say that the content was not checked ----------------


def test_a_backup_without_its_sidecar_restores_with_a_warning(cli, data_dir, backup_file):
    """No .sha256: exit 0, and a restore.checksum_absent warning naming the input."""
    Path(f"{backup_file}.sha256").unlink()
    run = restore(cli, data_dir, backup_file, "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["checksum_verified"] is False
    warning = [e for e in run.events if e["event"] == "restore.checksum_absent"]
    assert warning and warning[0]["level"] == "warning", run.err
    assert warning[0]["path"] == str(backup_file)
    assert warning[0]["sidecar"] == f"{backup_file}.sha256"
    assert ".sha256" in warning[0]["hint"]


def test_a_backup_with_its_sidecar_restores_without_that_warning(cli, data_dir, backup_file):
    """The sidecar was checked: no warning."""
    run = restore(cli, data_dir, backup_file, "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["checksum_verified"] is True
    assert not run.has_event("restore.checksum_absent")


def test_a_byte_flipped_inside_a_row_is_caught_only_by_the_sidecar(cli, tmp_path, backup_file):
    """With its sidecar: 7. Without: integrity_check cannot see it, so the
    restore goes on and says the content was not checked."""
    flip_a_byte_inside_a_row(backup_file)
    with_sidecar = DataDir(tmp_path / "with")
    run = restore(cli, with_sidecar, backup_file)
    assert_refused_and_intact(run, 7, "restore.checksum_mismatch", with_sidecar, {})
    Path(f"{backup_file}.sha256").unlink()
    without = DataDir(tmp_path / "without")
    run = restore(cli, without, backup_file)
    assert run.code == 0, run.err
    assert run.has_event("restore.checksum_absent")


def test_a_backup_missing_its_last_byte_beside_its_sidecar_exits_7(cli, store, backup_file):
    """A transfer that lost one byte: the sidecar catches it, 7, state kept."""
    data = backup_file.read_bytes()
    backup_file.write_bytes(data[:-1])
    before = snapshot(store)
    run = restore(cli, store, backup_file, "--force")
    assert_refused_and_intact(run, 7, "restore.checksum_mismatch", store, before)


def test_a_backup_on_another_filesystem_restores_with_its_checksum_checked(
    cli, tmp_path, data_dir, backup_file
):
    """The kernel copy (copy_file_range) is refused between filesystems (EXDEV
    from a tmpfs to the data dir's disk): the restore copies through its own
    buffer instead, and the staged bytes still match the sidecar."""
    with tmpfs(tmp_path / "media", "4m") as media:
        for path in (backup_file, Path(f"{backup_file}.sha256")):
            shutil.copy(path, media / path.name)
        run = restore(cli, data_dir, media / backup_file.name, "--json")
    assert run.code == 0, run.err
    summary = json.loads(run.out)
    assert summary["checksum_verified"] is True
    assert summary["sha256"] == hashlib.sha256(backup_file.read_bytes()).hexdigest()
    assert rows_by_table(data_dir.state_db) == rows_by_table(backup_file)
    assert staged_leftovers(data_dir) == []


def test_a_wal_format_copy_with_its_sidecar_restores_and_its_checksum_holds(
    cli, tmp_path, source, data_dir
):
    """A stopped store copied with cp keeps a header that says WAL. The staged
    copy is hashed while it is checked, so the check must not rewrite that
    header (opening it read-write would switch it to rollback mode): the
    digest is of the bytes as given, and matches their sidecar."""
    copy = tmp_path / "cp-of-state.db"
    shutil.copy(source.state_db, copy)
    assert copy.read_bytes()[18:20] == b"\x02\x02"  # WAL
    write_sidecar(copy)
    run = restore(cli, data_dir, copy, "--json")
    assert run.code == 0, run.err
    summary = json.loads(run.out)
    assert summary["checksum_verified"] is True
    assert summary["sha256"] == hashlib.sha256(copy.read_bytes()).hexdigest()
    assert client_names(data_dir.state_db) == client_names(copy)
    assert staged_leftovers(data_dir) == []


def test_the_check_that_runs_beside_the_hash_leaves_the_staged_bytes_alone(tmp_path, source):
    """The integrity check runs while the staged copy is hashed: it must not
    write a byte, not even the header switch to rollback mode a read-write
    open makes on a WAL-format file, or the digest would depend on timing."""
    staged = tmp_path / "staged.db"
    shutil.copy(source.state_db, staged)
    before = staged.read_bytes()
    restore_engine._check_integrity(staged, tmp_path / "given.db")
    assert staged.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("staged")) == [
        "staged.db"
    ]


# --- the filesystem check every command that creates a store runs -------------------


@pytest.mark.parametrize("exists", [False, True], ids=["new-data-dir", "empty-data-dir"])
def test_a_data_dir_on_tmpfs_is_refused_78_and_nothing_is_created(
    cli, tmp_path, backup_file, exists
):
    """As serve refuses it: a restore onto tmpfs would build a store the server
    then refuses to open. 78, startup.unsupported_filesystem, no file made."""
    with tmpfs(tmp_path / "volatile", "4m") as volatile:
        data_dir = DataDir(volatile / "data")
        if exists:
            data_dir.ensure()
        before = tree(volatile)
        run = restore(cli, data_dir, backup_file)
        assert run.code == 78, run.err
        refusal = [e for e in run.events if e["event"] == "startup.unsupported_filesystem"]
        assert refusal and refusal[0]["filesystem"] == "tmpfs", run.err
        assert tree(volatile) == before


def test_no_room_in_a_new_data_dir_exits_74_and_leaves_no_data_dir(cli, tmp_path, big_backup):
    """74 while staging into a data dir the restore had to create: it is removed again."""
    with small_ext4(tmp_path, 4) as disk:
        leave_free(disk, big_backup.stat().st_size // 2)
        before = tree(disk)
        run = restore(cli, DataDir(disk / "data"), big_backup)
        assert run.code == 74, run.err
        assert run.has_event("restore.io_error")
        assert tree(disk) == before
