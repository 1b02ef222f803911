"""Run as root against a data dir the service's user owns (the spec's
restore runbook, bootstrap-admin): every file Portunus creates there is the
service user's, so the service still starts afterwards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from portunus import tls
from portunus.datadir import DataDir
from tests import support

SERVICE = 65534  # nobody / nogroup

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another user")


def service_data_dir(tmp_path: Path) -> DataDir:
    data_dir = DataDir(tmp_path / "data")
    data_dir.path.mkdir(mode=0o700)
    os.chown(data_dir.path, SERVICE, SERVICE)
    return data_dir


def owners(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.lstat().st_uid, p.lstat().st_gid) for p in directory.iterdir()}


def test_bootstrap_admin_as_root_leaves_the_service_users_files(cli, tmp_path):
    data_dir = service_data_dir(tmp_path)
    run = cli("--data-dir", str(data_dir.path), "bootstrap-admin", "--name", "ops")
    assert run.code == 0, run.err
    found = owners(data_dir.path)
    assert {"state.db", "state.db.lock"} <= set(found)
    assert set(found.values()) == {(SERVICE, SERVICE)}, found


def test_restore_force_as_root_leaves_the_service_users_files(cli, tmp_path):
    source = support.make_store(DataDir(tmp_path / "source"), clients=3)
    backup = tmp_path / "b.db"
    assert cli("--data-dir", str(source.path), "backup", "--out", str(backup)).code == 0
    data_dir = service_data_dir(tmp_path)
    support.make_store(data_dir, clients=1)
    for path in data_dir.path.iterdir():
        os.chown(path, SERVICE, SERVICE)
    run = cli("--data-dir", str(data_dir.path), "restore", "--in", str(backup), "--force")
    assert run.code == 0, run.err
    found = owners(data_dir.path)
    assert "state.db" in found
    assert set(found.values()) == {(SERVICE, SERVICE)}, found


def test_a_generated_tls_pair_is_the_directory_owners(tmp_path):
    data_dir = service_data_dir(tmp_path)
    tls.generate_self_signed(data_dir.path / "server.crt", data_dir.path / "server.key", ())
    assert set(owners(data_dir.path).values()) == {(SERVICE, SERVICE)}


def test_a_root_owned_data_dir_keeps_root_owned_files(cli, tmp_path):
    """Nothing is given away when the directory is root's own."""
    data_dir = DataDir(tmp_path / "data")
    run = cli("--data-dir", str(data_dir.path), "bootstrap-admin", "--name", "ops")
    assert run.code == 0, run.err
    assert {uid for uid, _ in owners(data_dir.path).values()} == {0}
