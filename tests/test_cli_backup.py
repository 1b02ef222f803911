"""portunus-server backup: every sentence of the spec's Backup section, every exit code."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import apsw
import pytest

from portunus.datadir import DataDir
from portunus.engine import backup as backup_engine
from portunus.store import migrations
from portunus.store.connection import open_store
from portunus.store.lock import StoreLock
from tests import support

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
BACKUP_NAME = re.compile(r"^portunus-state-(?P<stamp>.+)\.db$")


def rows_by_table(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table, sorted: equal dicts mean equal content."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {t: sorted(conn.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables}
    finally:
        conn.close()


def listing(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


@contextlib.contextmanager
def tmpfs(mountpoint: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A real tmpfs at ``mountpoint`` (root only); skips the test when mount fails."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0700" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def parse_backup_name(path: Path) -> datetime:
    """The RFC3339 UTC instant in ``portunus-state-<RFC3339>.db``."""
    match = BACKUP_NAME.fullmatch(path.name)
    assert match, path.name
    stamp = match["stamp"]
    assert RFC3339_UTC.match(stamp), stamp
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset().total_seconds() == 0
    return parsed


def assert_backup_failed(run: support.Run, code: int, event: str) -> None:
    """The documented code, the specific event, and the backup.failed summary."""
    assert run.code == code, run.err
    assert run.has_event(event), run.err
    summary = [e for e in run.events if e["event"] == "backup.failed"]
    assert len(summary) == 1, run.err
    assert summary[0]["reason"] == event
    assert summary[0]["exit_code"] == code
    assert run.out == ""


def set_schema_version(state_db: Path, version: int) -> None:
    conn = open_store(state_db)
    conn.execute("INSERT INTO schema_migrations VALUES (?, 'future', 'x')", (version,))
    conn.close()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "backups"
    path.mkdir()
    return path


@pytest.fixture
def big_store(tmp_path: Path) -> DataDir:
    """A store of a few hundred KiB: bigger than the tiny filesystems below."""
    return support.make_store(DataDir(tmp_path / "big"), clients=400, rules_per_client=3)


# --- success -----------------------------------------------------------------


def test_backup_prints_its_path_and_writes_a_0600_file_and_sidecar(cli, store, dest):
    """The final path on stdout; the file and its .sha256 are mode 0600."""
    out = dest / "portunus-backup-2026-05-08.db"
    run = cli("--data-dir", str(store.path), "backup", "--out", str(out))
    assert run.code == 0, run.err
    assert run.out == f"{out}\n"
    assert out.stat().st_mode & 0o777 == 0o600
    assert Path(f"{out}.sha256").stat().st_mode & 0o777 == 0o600
    completed = [e for e in run.events if e["event"] == "backup.completed"]
    assert completed and completed[0]["restarts"] == 0


def test_sidecar_passes_sha256sum_check(cli, store, dest):
    """`sha256sum -c NAME.sha256` in the backup's directory says OK."""
    if shutil.which("sha256sum") is None:
        pytest.skip("sha256sum not installed")
    out = dest / "b.db"
    assert cli("--data-dir", str(store.path), "backup", "--out", str(out)).code == 0
    check = subprocess.run(
        ["sha256sum", "-c", "b.db.sha256"], cwd=dest, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "b.db: OK"


def test_spec_verify_one_liner_works_in_the_sqlite3_shell(cli, store, dest):
    """The spec's `sqlite3 FILE 'SELECT version FROM schema_migrations ...'` prints the version."""
    if shutil.which("sqlite3") is None:
        pytest.skip("sqlite3 shell not installed")
    out = dest / "b.db"
    assert cli("--data-dir", str(store.path), "backup", "--out", str(out)).code == 0
    shell = subprocess.run(
        [
            "sqlite3",
            str(out),
            "SELECT version FROM schema_migrations ORDER BY version DESC LIMIT 1;",
        ],
        capture_output=True,
        text=True,
    )
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.strip() == str(migrations.binary_schema_version())
    assert listing(dest) == {"b.db", "b.db.sha256"}


def test_backup_is_one_standalone_rollback_journal_file(cli, store, dest):
    """Header bytes 18-19 say rollback journal, journal_mode is delete, no -wal beside it."""
    out = dest / "b.db"
    assert cli("--data-dir", str(store.path), "backup", "--out", str(out)).code == 0
    header = out.read_bytes()[:100]
    assert header[:16] == b"SQLite format 3\x00"
    assert header[18:20] == b"\x01\x01"
    assert listing(dest) == {"b.db", "b.db.sha256"}
    conn = apsw.Connection(str(out), flags=apsw.SQLITE_OPEN_READONLY)
    assert conn.execute("PRAGMA journal_mode").fetchall() == [("delete",)]
    conn.close()
    assert listing(dest) == {"b.db", "b.db.sha256"}


def test_backup_content_equals_the_source(cli, store, dest):
    """Same tables, same row counts, same rows as the live store."""
    out = dest / "b.db"
    assert cli("--data-dir", str(store.path), "backup", "--out", str(out)).code == 0
    assert support.table_counts(out) == support.table_counts(store.state_db)
    assert rows_by_table(out) == rows_by_table(store.state_db)
    assert support.schema_version(out) == migrations.binary_schema_version()


def test_backup_includes_commits_still_in_the_wal(cli, store, dest):
    """WAL-aware: transactions not yet checkpointed into state.db are in the backup."""
    writer = open_store(store.state_db)
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        with writer:
            support.add_client_with_rules(writer, "only-in-wal", 2)
        assert store.wal.stat().st_size > 0
        out = dest / "b.db"
        run = cli("--data-dir", str(store.path), "backup", "--out", str(out))
    finally:
        writer.close()
    assert run.code == 0, run.err
    assert ("only-in-wal",) in [(r[1],) for r in rows_by_table(out)["clients"]]


def test_backup_runs_while_a_server_holds_the_store(cli, store, dest):
    """Backup never takes the lock; an open write transaction's rows are not in it."""
    committed = rows_by_table(store.state_db)
    writer = open_store(store.state_db)
    try:
        with StoreLock(store.lock, "serve"):
            writer.execute("BEGIN IMMEDIATE")
            support.add_client_with_rules(writer, "uncommitted", 1)
            run = cli("--data-dir", str(store.path), "backup", "--out", str(dest / "b.db"))
            writer.execute("ROLLBACK")
    finally:
        writer.close()
    assert run.code == 0, run.err
    assert rows_by_table(dest / "b.db") == committed


def test_directory_out_gets_an_rfc3339_utc_name(cli, store, dest):
    """--out DIR writes DIR/portunus-state-<RFC3339 UTC>.db, with its sidecar."""
    before = datetime.now(UTC).replace(microsecond=0)
    run = cli("--data-dir", str(store.path), "backup", "--out", str(dest))
    after = datetime.now(UTC)
    assert run.code == 0, run.err
    path = Path(run.out.strip())
    assert path.parent == dest
    assert before <= parse_backup_name(path) <= after
    assert listing(dest) == {path.name, f"{path.name}.sha256"}


def test_concurrent_backups_into_one_directory_all_get_distinct_names(cli, store, dest, env):
    """Backups started together (same second) all succeed, each under its own valid name."""
    argv = [sys.executable, "-m", "portunus", "--log-format", "json"]
    argv += ["--data-dir", str(store.path), "backup", "--out", str(dest)]
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0, 0, 0], results
    paths = {Path(out.strip()) for _, out, _ in results}
    assert len(paths) == 4
    for path in paths:
        parse_backup_name(path)
    assert listing(dest) == {p.name for p in paths} | {f"{p.name}.sha256" for p in paths}


def test_backup_in_the_same_second_as_an_existing_one_gets_its_own_name(cli, store, dest):
    """A backup already holds this second's name: the new one takes a sub-second
    RFC3339 name, and the existing file is left alone."""
    now = datetime.now(UTC)
    # Occupy every second-precision name the run could pick over the next minute.
    taken = {backup_engine.backup_name(now + timedelta(seconds=s)) for s in range(-1, 60)}
    for name in taken:
        (dest / name).write_bytes(b"an earlier backup")
    run = cli("--data-dir", str(store.path), "backup", "--out", str(dest))
    assert run.code == 0, run.err
    path = Path(run.out.strip())
    assert path.name not in taken
    parse_backup_name(path)
    assert all((dest / name).read_bytes() == b"an earlier backup" for name in taken)


def test_backup_dir_from_the_config_file_is_used_without_out(cli, store, tmp_path, dest):
    """[backup].dir in a --config server.toml is where a bare `backup` writes."""
    config = tmp_path / "server.toml"
    config.write_text(f'data_dir = "{store.path}"\n\n[backup]\ndir = "{dest}"\n')
    run = cli("--config", str(config), "backup")
    assert run.code == 0, run.err
    path = Path(run.out.strip())
    assert path.parent == dest
    parse_backup_name(path)


@pytest.mark.parametrize("slash", ["", "/"])
def test_a_missing_backup_dir_exits_74_and_no_file_takes_its_name(cli, store, tmp_path, slash):
    """[backup] dir is a directory whatever its spelling: missing is 74, and
    neither it nor a file of its name (nor a sidecar) is created."""
    config = tmp_path / "server.toml"
    config.write_text(f'[backup]\ndir = "{tmp_path / "backups"}{slash}"\n')
    run = cli("--config", str(config), "--data-dir", str(store.path), "backup")
    assert_backup_failed(run, 74, "backup.destination_dir_missing")
    assert "does not exist" in run.err
    assert not os.path.lexists(tmp_path / "backups")
    assert not os.path.lexists(tmp_path / "backups.sha256")


def test_a_backup_dir_that_is_a_file_exits_74_and_the_file_is_untouched(cli, store, tmp_path):
    config = tmp_path / "server.toml"
    config.write_text(f'[backup]\ndir = "{tmp_path / "notes"}"\n')
    (tmp_path / "notes").write_text("not a directory")
    run = cli("--config", str(config), "--data-dir", str(store.path), "backup")
    assert_backup_failed(run, 74, "backup.destination_dir_missing")
    assert "is not a directory" in run.err
    assert (tmp_path / "notes").read_text() == "not a directory"
    assert not os.path.lexists(tmp_path / "notes.sha256")


def test_checksum_false_in_the_config_writes_no_sidecar(cli, store, tmp_path, dest):
    """[backup] checksum = false: the backup alone, no .sha256."""
    config = tmp_path / "server.toml"
    config.write_text("[backup]\nchecksum = false\n")
    run = cli("--config", str(config), "--data-dir", str(store.path), "backup", "--out", str(dest))
    assert run.code == 0, run.err
    assert listing(dest) == {Path(run.out.strip()).name}


def test_json_summary_describes_the_published_file(cli, store, dest):
    """--json prints one JSON object naming the file, its size, sha256 and 0 restarts."""
    out = dest / "b.db"
    run = cli("--data-dir", str(store.path), "backup", "--out", str(out), "--json")
    assert run.code == 0, run.err
    summary = json.loads(run.out)
    assert summary["path"] == str(out)
    assert summary["bytes"] == out.stat().st_size
    assert summary["restarts"] == 0
    assert Path(f"{out}.sha256").read_text() == f"{summary['sha256']}  b.db\n"


# --- refusals: the destination -----------------------------------------------


def test_existing_destination_exits_6_and_is_left_byte_for_byte(cli, store, dest):
    """Refuses to overwrite an existing file; the file keeps its exact bytes."""
    out = dest / "b.db"
    out.write_bytes(b"an older backup the operator wants to keep\n")
    run = cli("--data-dir", str(store.path), "backup", "--out", str(out))
    assert_backup_failed(run, 6, "backup.destination_exists")
    assert out.read_bytes() == b"an older backup the operator wants to keep\n"
    assert listing(dest) == {"b.db"}


def test_existing_real_backup_is_not_overwritten_by_a_newer_one(cli, store, dest):
    """A second backup to the same path exits 6 and the first stays valid."""
    out = dest / "b.db"
    assert cli("--data-dir", str(store.path), "backup", "--out", str(out)).code == 0
    before = out.read_bytes(), Path(f"{out}.sha256").read_bytes()
    run = cli("--data-dir", str(store.path), "backup", "--out", str(out))
    assert_backup_failed(run, 6, "backup.destination_exists")
    assert (out.read_bytes(), Path(f"{out}.sha256").read_bytes()) == before


def test_existing_sidecar_exits_6_and_nothing_is_written(cli, store, dest):
    """A stray NAME.sha256 blocks NAME too: the pair is published together or not at all."""
    sidecar = dest / "b.db.sha256"
    sidecar.write_text("0" * 64 + "  b.db\n")
    run = cli("--data-dir", str(store.path), "backup", "--out", str(dest / "b.db"))
    assert_backup_failed(run, 6, "backup.destination_exists")
    assert listing(dest) == {"b.db.sha256"}
    assert sidecar.read_text() == "0" * 64 + "  b.db\n"


@pytest.mark.parametrize("name", ["new\nline.db", "back\\slash.db", "cr\r.db"])
def test_a_name_a_sidecar_cannot_hold_is_a_usage_error(cli, store, dest, name):
    """sha256sum -c (and verify) could not read such a sidecar back: 2, nothing written."""
    run = cli("--data-dir", str(store.path), "backup", "--out", str(dest / name))
    assert_backup_failed(run, 2, "cli.usage_error")
    assert listing(dest) == set()


def test_out_in_a_missing_directory_exits_74_and_creates_nothing(cli, store, tmp_path):
    """--out in a directory that does not exist: 74, the directory is not created."""
    out = tmp_path / "no" / "such" / "dir" / "b.db"
    run = cli("--data-dir", str(store.path), "backup", "--out", str(out))
    assert_backup_failed(run, 74, "backup.destination_dir_missing")
    assert not (tmp_path / "no").exists()


def test_out_with_a_trailing_slash_means_a_directory(cli, store, tmp_path):
    """`--out DIR/` for a DIR that does not exist: 74, and no file named DIR appears."""
    run = cli("--data-dir", str(store.path), "backup", "--out", f"{tmp_path / 'later'}/")
    assert_backup_failed(run, 74, "backup.destination_dir_missing")
    assert not os.path.lexists(tmp_path / "later")
    assert not os.path.lexists(tmp_path / "later.sha256")


def test_read_only_destination_exits_74_and_leaves_nothing(cli, store, tmp_path):
    """A read-only filesystem at the destination: 74, no temp file, no backup."""
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        run = cli("--data-dir", str(store.path), "backup", "--out", str(ro / "b.db"))
        assert_backup_failed(run, 74, "backup.io_error")
        assert listing(ro) == set()


def test_full_destination_exits_74_with_no_partial_and_no_temp_file(cli, big_store, tmp_path):
    """A destination that fills up mid-copy: 74, nothing under the final name, no temp left."""
    assert big_store.state_db.stat().st_size > 4 * 64 * 1024
    with tmpfs(tmp_path / "full", "64k") as full:
        run = cli("--data-dir", str(big_store.path), "backup", "--out", str(full / "b.db"))
        assert_backup_failed(run, 74, "backup.io_error")
        assert listing(full) == set()
    # Said in words an operator acts on (apsw's own text can be "not an error").
    assert "disk is full" in run.err, run.err


def test_full_destination_directory_out_leaves_nothing_either(cli, big_store, tmp_path):
    """Same with --out DIR: no portunus-state-*.db, no .sha256, no temp."""
    with tmpfs(tmp_path / "full", "64k") as full:
        run = cli("--data-dir", str(big_store.path), "backup", "--out", str(full))
        assert_backup_failed(run, 74, "backup.io_error")
        assert listing(full) == set()


# --- refusals: the source ------------------------------------------------------


def test_missing_state_db_exits_5(cli, data_dir, dest):
    """An empty data dir has nothing to back up: 5, no file written."""
    data_dir.ensure()
    run = cli("--data-dir", str(data_dir.path), "backup", "--out", str(dest / "b.db"))
    assert_backup_failed(run, 5, "backup.source_missing")
    assert listing(dest) == set()
    assert listing(data_dir.path) == set()


def test_missing_data_dir_exits_5_and_is_not_created(cli, tmp_path, dest):
    """A typo'd --data-dir: 5, and backup does not create it."""
    typo = tmp_path / "var-lib-portunsu"
    run = cli("--data-dir", str(typo), "backup", "--out", str(dest / "b.db"))
    assert_backup_failed(run, 5, "backup.source_missing")
    assert not typo.exists()


def test_state_db_that_is_not_sqlite_exits_7(cli, data_dir, dest):
    """A state.db without the SQLite header is refused with 7."""
    data_dir.ensure()
    data_dir.state_db.write_text("not a database\n" * 100)
    run = cli("--data-dir", str(data_dir.path), "backup", "--out", str(dest / "b.db"))
    assert_backup_failed(run, 7, "backup.source_not_sqlite")
    assert listing(dest) == set()


def test_a_truncated_state_db_exits_7_naming_the_source(cli, big_store, dest):
    """Damage in state.db is the source's: 7, the path is state.db, nothing written."""
    with open(big_store.state_db, "r+b") as f:
        f.truncate(big_store.state_db.stat().st_size // 2)
    run = cli("--data-dir", str(big_store.path), "backup", "--out", str(dest / "b.db"))
    assert_backup_failed(run, 7, "backup.source_corrupt")
    failed = next(e for e in run.events if e["event"] == "backup.source_corrupt")
    assert failed["path"] == str(big_store.state_db)
    assert listing(dest) == set()


def test_a_store_on_a_read_only_filesystem_is_74_naming_the_source(cli, big_store, tmp_path, dest):
    """A stopped WAL store SQLite cannot open (no -shm on a read-only fs): the
    message and path are the source's, not the destination's."""
    with tmpfs(tmp_path / "ro", "4m") as mount:
        shutil.copy(big_store.state_db, mount / "state.db")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        run = cli("--data-dir", str(mount), "backup", "--out", str(dest / "b.db"))
        assert_backup_failed(run, 74, "backup.io_error")
        failed = next(e for e in run.events if e["event"] == "backup.io_error")
        assert failed["path"] == str(mount / "state.db")
        assert "cannot read the store" in failed["msg"]
    assert listing(dest) == set()


def test_symlinked_state_db_exits_7(cli, store, tmp_path, dest):
    """state.db as a symlink (even to a real store) is refused with 7."""
    linked = DataDir(tmp_path / "linked")
    linked.ensure()
    linked.state_db.symlink_to(store.state_db)
    run = cli("--data-dir", str(linked.path), "backup", "--out", str(dest / "b.db"))
    assert_backup_failed(run, 7, "backup.source_not_sqlite")
    assert listing(dest) == set()


def test_state_db_that_is_a_directory_exits_7(cli, data_dir, dest):
    """A directory named state.db is not a state database: 7."""
    data_dir.state_db.mkdir(parents=True)
    run = cli("--data-dir", str(data_dir.path), "backup", "--out", str(dest / "b.db"))
    assert_backup_failed(run, 7, "backup.source_not_sqlite")


def test_foreign_sqlite_state_db_exits_7(cli, data_dir, dest):
    """A SQLite state.db that is not a Portunus store: 7, nothing published."""
    data_dir.ensure()
    conn = apsw.Connection(str(data_dir.state_db))
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
    conn.close()
    run = cli("--data-dir", str(data_dir.path), "backup", "--out", str(dest / "b.db"))
    assert_backup_failed(run, 7, "startup.not_portunus_store")
    assert listing(dest) == set()


def test_source_schema_newer_than_binary_exits_78(cli, store, dest):
    """A store written by a newer binary: 78, startup.schema_version_too_new, no file."""
    set_schema_version(store.state_db, 99)
    run = cli("--data-dir", str(store.path), "backup", "--out", str(dest / "b.db"))
    assert_backup_failed(run, 78, "startup.schema_version_too_new")
    assert listing(dest) == set()


def test_no_out_and_no_backup_dir_is_a_usage_error(cli, store):
    """`backup` with neither --out nor [backup].dir: 2, with a hint."""
    run = cli("--data-dir", str(store.path), "backup")
    assert_backup_failed(run, 2, "cli.usage_error")
    usage = [e for e in run.events if e["event"] == "cli.usage_error"][0]
    assert "--out" in usage["msg"] and usage["hint"]
