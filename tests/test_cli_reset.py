"""portunus-server reset: the spec's Reset section, its dry run and its guards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from portunus.datadir import DataDir
from portunus.store.lock import StoreLock
from tests import support, unprivileged
from tests.test_cli_restore import leave_wal_behind, snapshot
from tests.unprivileged import run_as_nobody

shared_tmp = unprivileged.shared_tmp

STATE_FILES = ("state.db", "state.db-wal", "state.db-shm", "state.db.lock")
KEPT_FILES = {
    "server.crt": b"-----BEGIN CERTIFICATE-----\n",
    "server.key": b"-----BEGIN PRIVATE KEY-----\n",
    "server.toml": b'log_format = "logfmt"\n',
    "identity.json": b'{"id": "legacy"}\n',
}


@pytest.fixture
def crashed(store: DataDir) -> DataDir:
    """A data dir as a kill -9'd server leaves it: state.db, -wal, -shm, .lock,
    plus TLS material, server.toml and a legacy identity.json."""
    leave_wal_behind(store, "in-wal")
    for name, data in KEPT_FILES.items():
        (store.path / name).write_bytes(data)
    assert {n for n in STATE_FILES if (store.path / n).exists()} == set(STATE_FILES)
    return store


def reset(cli, data_dir: DataDir | Path, *extra: str) -> support.Run:
    path = data_dir.path if isinstance(data_dir, DataDir) else data_dir
    return cli("--data-dir", str(path), "reset", *extra)


def full_snapshot(directory: Path) -> dict[str, bytes]:
    """Every entry with its bytes, the lock file included (reset must not touch it either)."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def assert_refused_removing_nothing(run, code: int, event: str, before: dict, directory: Path):
    assert run.code == code, run.err
    matching = [e for e in run.events if e["event"] == event]
    assert matching and matching[0]["msg"], run.err
    assert full_snapshot(directory) == before


def test_dry_run_lists_every_target_removes_nothing_and_exits_0(cli, crashed):
    """No flag: every existing state file printed under `dry-run`, all still there."""
    before = full_snapshot(crashed.path)
    run = reset(cli, crashed)
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert all(line.startswith("dry-run") for line in lines), run.out
    assert sorted(line.rsplit(" ", 1)[1] for line in lines) == sorted(
        str(crashed.path / n) for n in STATE_FILES
    )
    assert full_snapshot(crashed.path) == before


def test_dry_run_json_names_the_paths_and_says_dry_run(cli, crashed):
    """--json: dry_run true and the same paths."""
    run = reset(cli, crashed, "--json")
    assert run.code == 0, run.err
    summary = json.loads(run.out)
    assert summary["dry_run"] is True
    assert sorted(summary["paths"]) == sorted(str(crashed.path / n) for n in STATE_FILES)


def test_confirm_removes_state_and_sidecars_and_keeps_the_rest(cli, crashed):
    """--confirm removes state.db, -wal, -shm, .lock, prints each, keeps TLS/toml/identity."""
    run = reset(cli, crashed, "--confirm")
    assert run.code == 0, run.err
    assert sorted(run.out.splitlines()) == sorted(
        f"removed {crashed.path / n}" for n in STATE_FILES
    )
    assert run.has_event("reset.completed")
    assert full_snapshot(crashed.path) == KEPT_FILES


def test_a_new_store_after_reset_starts_empty(cli, crashed):
    """No old WAL survives to be replayed: the next bootstrap sees a brand-new store."""
    assert reset(cli, crashed, "--confirm").code == 0
    run = cli("--data-dir", str(crashed.path), "bootstrap-admin", "--name", "fresh")
    assert run.code == 0, run.err
    counts = support.table_counts(crashed.state_db)
    assert counts["clients"] == 0 and counts["operator_tokens"] == 1


def test_reset_scope_tls_also_removes_the_tls_files(cli, crashed):
    """[reset] scope = ["state", "tls"] in server.toml: server.crt and server.key go too."""
    config = '[reset]\nscope = ["state", "tls"]\n'
    (crashed.path / "server.toml").write_text(config)
    run = reset(cli, crashed, "--confirm")
    assert run.code == 0, run.err
    assert f"removed {crashed.path / 'server.key'}" in run.out.splitlines()
    left = full_snapshot(crashed.path)
    assert left == {"server.toml": config.encode(), "identity.json": KEPT_FILES["identity.json"]}


def test_state_db_without_the_sqlite_header_exits_7_and_removes_nothing(cli, crashed):
    """A state.db that is not SQLite: 7, and not even the sidecars are removed."""
    crashed.state_db.write_bytes(b"SQLite format 2\x00 but not really")
    before = full_snapshot(crashed.path)
    run = reset(cli, crashed, "--confirm")
    assert_refused_removing_nothing(run, 7, "reset.not_sqlite", before, crashed.path)


def test_short_state_db_exits_7(cli, data_dir):
    """Fewer than 16 bytes cannot hold the header: 7."""
    data_dir.ensure()
    data_dir.state_db.write_bytes(b"SQLite")
    before = full_snapshot(data_dir.path)
    run = reset(cli, data_dir, "--confirm")
    assert_refused_removing_nothing(run, 7, "reset.not_sqlite", before, data_dir.path)


def test_symlinked_state_db_exits_7_and_its_target_is_untouched(cli, store, tmp_path):
    """state.db -> a real store elsewhere: 7, the link and its target both stay."""
    linked = DataDir(tmp_path / "linked")
    linked.ensure()
    linked.state_db.symlink_to(store.state_db)
    target_before = store.state_db.read_bytes()
    run = reset(cli, linked, "--confirm")
    assert run.code == 7, run.err
    assert run.has_event("reset.not_regular_file")
    assert linked.state_db.is_symlink()
    assert store.state_db.read_bytes() == target_before


def test_symlinked_sidecar_exits_7_and_removes_nothing(cli, store, tmp_path):
    """A state.db-wal symlink to someone else's file: 7, nothing removed anywhere."""
    victim = tmp_path / "victim.log"
    victim.write_text("keep me\n")
    store.wal.symlink_to(victim)
    run = reset(cli, store, "--confirm")
    assert run.code == 7, run.err
    assert run.has_event("reset.not_regular_file")
    assert store.state_db.exists() and store.wal.is_symlink()
    assert victim.read_text() == "keep me\n"


def test_state_db_that_is_a_directory_exits_7(cli, data_dir):
    """A directory named state.db is refused, and left as it is."""
    data_dir.state_db.mkdir(parents=True)
    (data_dir.state_db / "inside").write_text("x")
    run = reset(cli, data_dir, "--confirm")
    assert run.code == 7, run.err
    assert run.has_event("reset.not_regular_file")
    assert (data_dir.state_db / "inside").read_text() == "x"


def test_reset_while_a_server_holds_the_store_exits_75_removing_nothing(cli, crashed):
    """The lock is held: 75 naming the holder, every file still there."""
    before = snapshot(crashed)
    with StoreLock(crashed.lock, "serve"):
        run = reset(cli, crashed, "--confirm")
    assert run.code == 75, run.err
    assert run.has_event("startup.store_in_use")
    assert snapshot(crashed) == before
    assert crashed.lock.exists()


def test_dry_run_while_a_server_holds_the_store_warns_and_exits_0(cli, crashed):
    """The dry run still lists the files, and says --confirm would refuse."""
    with StoreLock(crashed.lock, "serve"):
        run = reset(cli, crashed)
    assert run.code == 0, run.err
    assert run.has_event("reset.dry_run_store_in_use")
    assert len(run.out.splitlines()) == len(STATE_FILES)


def test_dry_run_of_a_refused_reset_says_why_and_exits_0(cli, data_dir):
    """The dry run warns when --confirm would refuse (bad header)."""
    data_dir.ensure()
    data_dir.state_db.write_text("not sqlite")
    run = reset(cli, data_dir)
    assert run.code == 0, run.err
    assert run.has_event("reset.dry_run_refusal")
    assert data_dir.state_db.read_text() == "not sqlite"


def test_empty_data_dir_is_a_no_op(cli, data_dir):
    """Nothing to remove: exit 0, says so, the directory stays."""
    data_dir.ensure()
    for extra in ((), ("--confirm",)):
        run = reset(cli, data_dir, *extra)
        assert run.code == 0, run.err
        assert "nothing to remove" in run.out
        assert data_dir.path.is_dir() and list(data_dir.path.iterdir()) == []


def test_data_dir_with_only_tls_and_config_is_a_no_op(cli, data_dir):
    """TLS material and server.toml alone: nothing of the state to remove, exit 0."""
    data_dir.ensure()
    for name in ("server.crt", "server.key", "server.toml"):
        (data_dir.path / name).write_bytes(KEPT_FILES[name])
    run = reset(cli, data_dir, "--confirm")
    assert run.code == 0, run.err
    assert full_snapshot(data_dir.path) == {
        n: KEPT_FILES[n] for n in ("server.crt", "server.key", "server.toml")
    }


def test_missing_data_dir_is_a_no_op_and_is_not_created(cli, tmp_path):
    """A data dir that does not exist: exit 0, and reset does not create it."""
    missing = tmp_path / "nowhere"
    run = reset(cli, missing, "--confirm")
    assert run.code == 0, run.err
    assert run.has_event("reset.nothing_to_do")
    assert not missing.exists()


def test_typod_data_dir_never_removes_foreign_files(cli, tmp_path):
    """--data-dir pointed at someone's home-like directory: nothing removed."""
    foreign = tmp_path / "home-of-someone"
    foreign.mkdir()
    files = {"notes.txt": b"notes\n", "photo.jpg": b"\xff\xd8\xff", "state.json": b"{}"}
    for name, data in files.items():
        (foreign / name).write_bytes(data)
    for extra in ((), ("--confirm",)):
        run = reset(cli, foreign, *extra)
        assert run.code == 0, run.err
        assert full_snapshot(foreign) == files


def test_typod_data_dir_with_a_foreign_state_db_is_refused(cli, tmp_path):
    """Another tool's text file called state.db: 7, it and its neighbours stay."""
    foreign = tmp_path / "other-app"
    foreign.mkdir()
    files = {"state.db": b"key=value\n" * 4, "state.db.lock": b"123\n", "data.bin": b"\0" * 64}
    for name, data in files.items():
        (foreign / name).write_bytes(data)
    run = reset(cli, foreign, "--confirm")
    assert_refused_removing_nothing(run, 7, "reset.not_sqlite", files, foreign)


# --- a data dir the user cannot read or write: 74 with the path, nothing lost ---


@pytest.fixture
def unprivileged(shared_tmp: Path):
    """A root-owned store in a directory ``nobody`` can reach, a config file
    nobody can read, and a runner for ``reset --confirm`` as nobody."""
    data = support.make_store(DataDir(shared_tmp / "data"))
    leave_wal_behind(data, "in-wal")
    config = shared_tmp / "server.toml"
    config.write_text("")

    def reset_as_nobody(*extra: str) -> support.Run:
        return run_as_nobody(
            "--data-dir", str(data.path), "--config", str(config), "reset", *extra, home=shared_tmp
        )

    return data, reset_as_nobody


def refused_with_74(run: support.Run, path: Path) -> dict:
    assert run.code == 74, run.err
    assert "internal_error" not in run.event_names and "Traceback" not in run.err
    (refusal,) = [e for e in run.events if e["event"] == "reset.io_error"]
    assert refusal["path"] == str(path)
    return refusal


def test_a_data_dir_the_user_cannot_write_exits_74_and_removes_nothing(unprivileged):
    data, reset_as_nobody = unprivileged
    before = full_snapshot(data.path)
    refused_with_74(reset_as_nobody("--confirm"), data.path)
    assert full_snapshot(data.path) == before


def test_a_data_dir_the_user_cannot_read_exits_74_not_nothing_to_do(unprivileged):
    data, reset_as_nobody = unprivileged
    data.path.chmod(0o700)
    before = full_snapshot(data.path)
    run = reset_as_nobody("--confirm")
    refused_with_74(run, data.path)
    assert not run.has_event("reset.nothing_to_do")
    assert full_snapshot(data.path) == before


def test_a_state_db_the_user_cannot_read_exits_74_not_7(unprivileged):
    """A writable data dir, but state.db's header cannot be checked."""
    data, reset_as_nobody = unprivileged
    data.path.chmod(0o777)
    data.state_db.chmod(0o600)
    before = full_snapshot(data.path)
    refused_with_74(reset_as_nobody("--confirm"), data.state_db)
    assert full_snapshot(data.path) == before


def test_a_file_the_user_cannot_remove_exits_74_naming_it(unprivileged):
    """A sticky data dir (like /tmp) lets nobody write it, but not remove
    root's files: the unlink itself fails, and says so."""
    data, reset_as_nobody = unprivileged
    data.path.chmod(0o1777)
    data.state_db.chmod(0o644)  # its header can be checked
    data.lock.chmod(0o666)  # and the lock taken (it records the holder: not compared)
    before = snapshot(data)
    refusal = refused_with_74(reset_as_nobody("--confirm"), data.wal)
    assert refusal["removed"] == 0
    assert snapshot(data) == before
