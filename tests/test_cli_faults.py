"""Faults an operator meets, produced for real through the CLI: a directory
that cannot be written, a store SQLite cannot open, a damaged source, a file
this user may not read, an environment the code does not expect. Each ends
in its documented event and exit code, and loses nothing.

Root ignores file modes, so the tests use what root cannot override: an
immutable inode (``chattr +i``), or the command run as an unprivileged user
(``setpriv``). They skip where neither is available.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from portunus import testpoints
from portunus.datadir import DataDir
from portunus.engine.backup import backup
from portunus.store.connection import open_store
from tests import support
from tests.serving import free_port, write_config


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[Path]:
    """``path`` cannot be changed, renamed or removed, nor entries added to
    it, even by root, until the block ends."""
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot make {path} immutable here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def as_user(uid: int | str, gid: int | str) -> list[str]:
    """The prefix that runs a command as another user, no supplementary groups."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv(1) to run a command as another user")
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]


def run_as(user: tuple[int | str, int | str], *args: str, env: dict, cwd: Path) -> support.Run:
    """``portunus-server ARGS`` as ``user``; skips when that user cannot run
    this checkout at all (a venv or clone under a private home)."""
    prefix = [*as_user(*user), sys.executable]
    probe = subprocess.run(
        [*prefix, "-c", "import os, portunus; os.listdir('.')"],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
    )
    if probe.returncode != 0:
        pytest.skip(f"{user} cannot run this checkout here: {probe.stderr.strip()[-200:]}")
    proc = subprocess.run(
        [*prefix, "-m", "portunus", "--log-format", "json", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )
    return support.Run(proc.returncode, proc.stdout, proc.stderr)


NOBODY = ("nobody", "nogroup")


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory another user can enter (pytest's tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="portunus-faults-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def refusal(run: support.Run, event: str, code: int) -> dict:
    """The run exited ``code`` with ``event`` (carrying that code) as its error."""
    assert run.code == code, run.err
    found = [e for e in run.events if e["event"] == event]
    assert found and found[0]["exit_code"] == code, run.err
    assert "internal_error" not in run.event_names, run.err
    return found[0]


# --- startup -------------------------------------------------------------------


def test_a_data_dir_that_cannot_be_created_is_74(cli, tmp_path):
    """bootstrap-admin under a directory nobody may add to: 74 naming the
    data dir, nothing created, no token printed."""
    parent = tmp_path / "srv"
    parent.mkdir()
    data = parent / "portunus"
    with immutable(parent):
        run = cli("--data-dir", str(data), "bootstrap-admin", "--name", "ops")
    failed = refusal(run, "startup.data_dir_create_failed", 74)
    assert failed["path"] == str(data)
    assert run.out == ""
    assert os.listdir(parent) == []


def test_a_store_sqlite_cannot_open_for_writing_is_74(cli, data_dir):
    """An empty state.db (a first start killed before SQLite wrote) that
    cannot be written: 74 naming it, the file untouched, no token."""
    data_dir.path.mkdir()
    data_dir.state_db.touch()
    with immutable(data_dir.state_db):
        run = cli("--data-dir", str(data_dir.path), "bootstrap-admin", "--name", "ops")
    failed = refusal(run, "startup.store_open_failed", 74)
    assert failed["path"] == str(data_dir.state_db)
    assert run.out == ""
    assert data_dir.state_db.stat().st_size == 0


# --- config set ------------------------------------------------------------------


def test_config_set_on_a_file_it_cannot_replace_is_74_and_leaves_it(cli, tmp_path):
    """The edited copy cannot take the file's place: 74, the operator's file
    byte for byte as it was, no temporary file left beside it."""
    config = tmp_path / "etc" / "server.toml"
    config.parent.mkdir()
    config.write_text('# mine\nlisten = "127.0.0.1:7443"\n')
    with immutable(config):
        run = cli("--config", str(config), "config", "set", "log_level", "debug")
    failed = refusal(run, "config.write_failed", 74)
    assert failed["path"] == str(config)
    assert config.read_text() == '# mine\nlisten = "127.0.0.1:7443"\n'
    assert os.listdir(config.parent) == ["server.toml"]


# --- backup, verify, prune ---------------------------------------------------------


def damage_a_table_page(data_dir: DataDir, table: str) -> None:
    """Zero the page-type byte of ``table``'s root page: SQLite's online
    backup copies the page as it is, quick_check then rejects it."""
    conn = open_store(data_dir.state_db)
    try:
        root = conn.execute(
            "SELECT rootpage FROM sqlite_schema WHERE type = 'table' AND name = ?", (table,)
        ).fetchall()[0][0]
        page_size = conn.execute("PRAGMA page_size").fetchall()[0][0]
    finally:
        conn.close()
    with open(data_dir.state_db, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\x00")


def test_a_backup_whose_copy_fails_its_check_is_7_and_publishes_nothing(cli, data_dir, tmp_path):
    """A store damaged where the copy does not look (the rules table): the
    written copy fails quick_check, so nothing is published, the temp file is
    removed, backup.failed names the reason."""
    support.make_store(data_dir, clients=200)
    damage_a_table_page(data_dir, "rules")
    source = data_dir.state_db.read_bytes()
    out = tmp_path / "backups"
    out.mkdir()
    run = cli("--data-dir", str(data_dir.path), "backup", "--out", str(out / "b.db"))
    failed = refusal(run, "backup.verify_failed", 7)
    # It names the live store (the copy is page for page, and the temp file
    # is already gone), with a hint to restore rather than "use another backup".
    assert failed["path"] == str(data_dir.state_db), failed
    assert "restore a backup" in failed["hint"], failed
    summary = [e for e in run.events if e["event"] == "backup.failed"]
    assert [(e["reason"], e["exit_code"]) for e in summary] == [("backup.verify_failed", 7)]
    assert os.listdir(out) == []
    assert data_dir.state_db.read_bytes() == source


def test_verify_of_a_file_this_user_cannot_read_is_74(store, public_dir):
    """verify run by a user the backup's mode shuts out: an I/O error (74)
    naming the file, not 'not a database'; the file untouched."""
    made = backup(store, public_dir / "b.db")
    for path in (made.path, made.sidecar):
        path.chmod(0o600)
    before = made.path.read_bytes()
    env = {"PATH": os.environ["PATH"], "HOME": str(public_dir)}
    run = run_as(
        NOBODY,
        "--data-dir",
        str(public_dir / "data"),
        "verify",
        str(made.path),
        env=env,
        cwd=public_dir,
    )
    failed = refusal(run, "verify.io_error", 74)
    assert failed["path"] == str(made.path)
    assert made.path.read_bytes() == before


def test_prune_that_cannot_remove_a_backup_is_74_and_removes_nothing(cli, store, tmp_path):
    """keep_last = 1 over two backups in a directory whose entries cannot be
    removed: 74 naming the file it stopped at; every file still there."""
    backups = tmp_path / "backups"
    backups.mkdir()
    for day in ("01", "02"):
        backup(store, backups / f"portunus-state-2026-01-{day}T02:00:00Z.db")
    before = sorted(os.listdir(backups))
    config = tmp_path / "server.toml"
    config.write_text(f'[backup]\ndir = "{backups}"\n[retention]\nkeep_last = 1\n')
    with immutable(backups):
        run = cli("--config", str(config), "prune")
    failed = refusal(run, "prune.io_error", 74)
    assert Path(failed["path"]).name.startswith("portunus-state-2026-01-01T02:00:00Z.db")
    assert sorted(os.listdir(backups)) == before


# --- exit 1 -----------------------------------------------------------------------


def uid_without_an_account() -> int:
    for uid in range(61000, 62000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    pytest.skip("no free uid in 61000-61999")


def test_an_unexpected_exception_is_exit_1_with_internal_error_and_its_traceback(
    cli, env, tmp_path
):
    """An exception no code path expects (injected at the task's start with
    the test-only PORTUNUS_TEST_FAIL_AT, see portunus/testpoints.py) ends as
    documented: exit 1, one internal_error line with the traceback and a hint
    to report it, nothing on stderr but events, nothing created."""
    data = tmp_path / "data"
    run = cli(
        "--data-dir", str(data), "status", env={**os.environ, testpoints.FAIL_ENV: "task.status"}
    )
    assert run.code == 1, run.err
    assert run.event_names == ["internal_error"], run.err
    bug = run.events[0]
    assert "this is a bug" in bug["hint"]
    assert "Traceback" in bug["exception"] and "InjectedFault" in bug["exception"]
    assert [line for line in run.err.splitlines() if not line.startswith("{")] == []
    assert not data.exists()


def test_a_user_without_a_home_must_name_the_data_dir_78(public_dir):
    """A uid with no passwd entry and no $HOME (a container's arbitrary uid)
    and no --data-dir: there is no default data dir to find. 78
    startup.data_dir_unresolved with a hint, never a traceback, nothing
    created (this was exit 1 with a traceback)."""
    uid = uid_without_an_account()
    run = run_as((uid, uid), "status", env={"PATH": os.environ["PATH"]}, cwd=public_dir)
    assert run.code == 78, run.err
    assert run.event_names == ["startup.data_dir_unresolved"], run.err
    assert "--data-dir" in run.events[0]["hint"]
    assert os.listdir(public_dir) == []


# --- warnings and refusals the other tests do not reach ---------------------------


def test_serve_refuses_a_state_db_that_is_not_sqlite_with_7(cli, tmp_path):
    """A file of another kind under the name state.db: 7 before any write,
    the file as it was, no TLS material generated."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "state.db").write_text("notes, not a database\n")
    config = write_config(tmp_path / "s.toml", free_port())
    run = cli("--data-dir", str(data), "--config", str(config), "serve", timeout=60)
    if run.has_event("startup.unsupported_filesystem"):
        pytest.skip("serve refuses this filesystem before it looks at state.db")
    failed = refusal(run, "startup.not_sqlite", 7)
    assert failed["path"] == str(data / "state.db")
    assert (data / "state.db").read_text() == "notes, not a database\n"
    assert not (data / "server.crt").exists()


def test_a_wal_left_without_its_database_is_removed_before_a_new_store(cli, data_dir):
    """A -wal and -shm with no state.db (the database deleted by hand) would
    be replayed into the new store: removed first, with a warning."""
    data_dir.path.mkdir(mode=0o700)
    data_dir.wal.write_bytes(b"stale frames")
    data_dir.shm.write_bytes(b"stale index")
    run = cli("--data-dir", str(data_dir.path), "bootstrap-admin", "--name", "ops")
    assert run.code == 0, run.err
    removed = [e for e in run.events if e["event"] == "startup.orphan_wal_removed"]
    assert removed and removed[0]["level"] == "warning", run.err
    assert support.table_counts(data_dir.state_db)["operator_tokens"] == 1


def test_a_metrics_textfile_that_cannot_be_written_warns_and_prune_succeeds(cli, store, tmp_path):
    """Monitoring trouble never fails the job: metrics.write_failed, exit 0."""
    backups = tmp_path / "backups"
    backups.mkdir()
    backup(store, backups / "portunus-state-2026-01-01T02:00:00Z.db")
    textfile = tmp_path / "no-such-dir" / "portunus.prom"
    config = tmp_path / "server.toml"
    config.write_text(
        f'[backup]\ndir = "{backups}"\nmetrics_textfile = "{textfile}"\n'
        "[retention]\nkeep_last = 1\n"
    )
    run = cli("--config", str(config), "prune")
    assert run.code == 0, run.err
    warned = [e for e in run.events if e["event"] == "metrics.write_failed"]
    assert warned and warned[0]["path"] == str(textfile), run.err
    assert not textfile.parent.exists()


def test_a_backup_checkpoints_the_source_wal_or_says_at_debug_why_not(cli, store, tmp_path):
    """After the copy the backup folds the live WAL in (debug:
    backup.source_checkpointed); on a store it may not write (immutable
    here), it says so (backup.source_checkpoint_skipped) and still succeeds,
    the WAL's rows included."""
    (store.path / "server.toml").write_text('log_level = "debug"\n')
    first = cli("--data-dir", str(store.path), "backup", "--out", str(tmp_path / "a.db"))
    assert first.code == 0, first.err
    assert first.has_event("backup.source_checkpointed"), first.err

    writer = open_store(store.state_db)
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        support.add_client_with_rules(writer, "only-in-the-wal", 0)
        with immutable(store.state_db):
            run = cli("--data-dir", str(store.path), "backup", "--out", str(tmp_path / "b.db"))
    finally:
        writer.close()
    assert run.code == 0, run.err
    assert run.has_event("backup.source_checkpoint_skipped"), run.err
    assert not run.has_event("backup.source_checkpointed"), run.err
    assert support.table_counts(tmp_path / "b.db")["clients"] == 4


def test_restore_force_over_a_state_it_cannot_read_warns_and_replaces_it(cli, store, tmp_path):
    """--force over a state.db with a SQLite header and nothing readable
    behind it: restore.previous_state_unreadable, then the backup is in."""
    made = backup(store, tmp_path / "b.db")
    target = DataDir(tmp_path / "target")
    target.path.mkdir(mode=0o700)
    target.state_db.write_bytes(b"SQLite format 3\x00" + bytes(4080))
    run = cli("--data-dir", str(target.path), "restore", "--in", str(made.path), "--force")
    assert run.code == 0, run.err
    warned = [e for e in run.events if e["event"] == "restore.previous_state_unreadable"]
    assert warned and warned[0]["path"] == str(target.state_db), run.err
    assert support.table_counts(target.state_db) == support.table_counts(made.path)
