"""``portunus-server status``: what an operator sees at a glance; never writes."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from portunus.datadir import filesystem_type
from portunus.engine.backup import backup, backup_name
from portunus.store.lock import StoreLock
from portunus.store.migrations import binary_schema_version


def status_json(cli, *args: str) -> dict:
    run = cli(*args, "status", "--json")
    assert run.code == 0, run.err
    return json.loads(run.out)


def test_status_of_a_data_dir_that_does_not_exist_yet(cli, tmp_path):
    """Exit 0, says so, and creates nothing (not even the data dir)."""
    data = tmp_path / "data"
    found = status_json(cli, "--data-dir", str(data))
    assert found["data_dir"] == str(data) and found["data_dir_exists"] is False
    assert found["store"]["exists"] is False
    assert found["lock"] == {"held": False, "pid": None, "holder": None}
    assert found["backups"]["problem"] == "no [backup].dir configured"
    assert found["filesystem"] == filesystem_type(tmp_path)
    assert not data.exists()


def test_status_of_a_store_with_backups(cli, store, tmp_path):
    """Schema version, sizes, newest backup and its age."""
    backups = tmp_path / "backups"
    backups.mkdir()
    made = backup(store, backups).path
    older = backups / backup_name(datetime.now(UTC) - timedelta(days=3))
    older.write_bytes(made.read_bytes())
    (store.path / "server.toml").write_text(f'[backup]\ndir = "{backups}"\n')
    found = status_json(cli, "--data-dir", str(store.path))
    assert found["store"]["schema_version"] == binary_schema_version()
    assert found["store"]["bytes"] == store.state_db.stat().st_size
    assert found["config_file"] == str(store.path / "server.toml")
    assert found["backups"]["count"] == 2
    assert found["backups"]["newest"] == made.name
    assert 0 <= found["backups"]["newest_age_seconds"] < 3600
    run = cli("--data-dir", str(store.path), "status")
    assert f"newest backup: {made.name} (0h" in run.out
    assert f"schema version {binary_schema_version()}" in run.out


def test_status_leaves_a_store_at_rest_exactly_as_it_was(cli, store):
    """No -wal / -shm appear: a store at rest is read immutable."""
    before = sorted(os.listdir(store.path))
    assert {"state.db-wal", "state.db-shm"}.isdisjoint(before)
    status_json(cli, "--data-dir", str(store.path))
    assert sorted(os.listdir(store.path)) == before


def test_status_names_the_lock_holder(cli, store):
    """A running server (here: a held lock) shows with its pid and purpose."""
    with StoreLock(store.lock, "serve"):
        found = status_json(cli, "--data-dir", str(store.path))
        text = cli("--data-dir", str(store.path), "status").out
    assert found["lock"] == {"held": True, "pid": os.getpid(), "holder": "serve"}
    assert f"lock:          held by pid {os.getpid()} (serve)" in text


NUMBERS = {
    "lock.pid", "store.bytes", "store.wal_bytes", "store.shm_bytes", "store.schema_version",
    "binary_schema_version", "backups.count", "backups.total_bytes", "backups.impostors",
    "backups.newest_age_seconds",
}  # fmt: skip
BOOLEANS = {"data_dir_exists", "lock.held", "store.exists"}


def leaves(found: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in found.items():
        if isinstance(value, dict):
            flat.update(leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_status_json_values_are_json_types(cli, store, tmp_path):
    """Numbers are numbers (the pid was a string), booleans booleans, an
    absent value null; everything else a string."""
    backups = tmp_path / "backups"
    backups.mkdir()
    backup(store, backups)
    (store.path / "server.toml").write_text(f'[backup]\ndir = "{backups}"\n')
    with StoreLock(store.lock, "serve"):
        found = leaves(status_json(cli, "--data-dir", str(store.path)))
    assert set(found) >= NUMBERS | BOOLEANS
    for key, value in found.items():
        if key in NUMBERS:
            assert value is None or type(value) is int, (key, value)
        elif key in BOOLEANS:
            assert type(value) is bool, (key, value)
        else:
            assert value is None or type(value) is str, (key, value)
    assert found["lock.pid"] == os.getpid() and found["backups.count"] == 1
    assert type(found["store.bytes"]) is int and type(found["store.schema_version"]) is int


def test_a_lock_holder_that_has_not_written_its_pid_yet_is_null(cli, data_dir):
    """The instant between a holder's flock and its write: null, "pid unknown"."""
    data_dir.ensure()
    fd = os.open(data_dir.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        found = status_json(cli, "--data-dir", str(data_dir.path))
        text = cli("--data-dir", str(data_dir.path), "status").out
    finally:
        os.close(fd)
    assert found["lock"] == {"held": True, "pid": None, "holder": "unknown"}
    assert "lock:          held by pid unknown (unknown)" in text


def test_status_reports_a_state_db_that_is_not_a_store_without_failing(cli, data_dir):
    """status describes; it does not refuse."""
    data_dir.ensure()
    data_dir.state_db.write_bytes(b"garbage, not sqlite")
    found = status_json(cli, "--data-dir", str(data_dir.path))
    assert found["store"]["schema_version"] is None
    assert "not a SQLite database" in found["store"]["problem"]


def test_status_reports_a_missing_backup_dir(cli, store, tmp_path):
    """An unmounted backup disk shows up here too."""
    (store.path / "server.toml").write_text(f'[backup]\ndir = "{tmp_path / "gone"}"\n')
    found = status_json(cli, "--data-dir", str(store.path))
    assert "does not exist" in found["backups"]["problem"]


def test_status_names_an_unsupported_filesystem(cli, tmp_path):
    """A tmpfs data dir is shown as such (serve would refuse it)."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        found = status_json(cli, "--data-dir", str(mount_point / "data"))
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
    assert (found["filesystem"], found["filesystem_verdict"]) == ("tmpfs", "unsupported")


def test_status_json_has_every_field_documented(cli, tmp_path):
    """The keys scripts rely on."""
    found = status_json(cli, "--data-dir", str(tmp_path / "d"))
    assert set(found) == {
        "data_dir",
        "data_dir_exists",
        "filesystem",
        "filesystem_verdict",
        "config_file",
        "lock",
        "store",
        "binary_schema_version",
        "backups",
        "replication",
    }
    assert found["replication"] is None  # no [replication] url
    assert Path(found["data_dir"]).is_absolute()
