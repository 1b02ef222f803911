"""Cold start: a light command imports only what it needs. ``--help``,
``status`` and ``verify`` import neither sanic (the server) nor
cryptography (TLS), pyrage (sealed backups), nor tomlkit when
there is no server.toml to read.
Checked through ``python -X importtime``, which lists every module a
process imports; the figures themselves are bench/cold_start.py's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests import support

HEAVY = ("sanic", "cryptography", "tomlkit", "pyrage")


def imported(argv: list[str], env: dict[str, str], cwd=None) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        env=env,
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip())
    assert "portunus" in names or "-c" in argv
    return names


def heavy_in(names: set[str]) -> list[str]:
    return sorted({n.split(".")[0] for n in names} & set(HEAVY))


@pytest.fixture
def small_backup(store, tmp_path, env):
    target = tmp_path / "small.db"
    run = support.run_cli("--data-dir", str(store.path), "backup", "--out", str(target), env=env)
    assert run.code == 0, run.err
    return target


@pytest.mark.parametrize("command", ["--help", "status", "verify", "verify --json"])
def test_a_light_command_imports_no_server_no_tls_no_toml(command, store, small_backup, env):
    argv = ["-m", "portunus", "--data-dir", str(store.path), *command.split()]
    if command.startswith("verify"):
        argv.append(str(small_backup))
    assert not store.config.exists()
    assert heavy_in(imported(argv, env)) == []


def test_a_command_reading_server_toml_imports_tomlkit_and_nothing_heavier(store, env):
    """The detector sees an import when there is one: server.toml is read
    with tomlkit (its messages carry line numbers), sanic still stays out."""
    store.config.write_text('log_level = "info"\n')
    names = imported(["-m", "portunus", "--data-dir", str(store.path), "status"], env)
    assert heavy_in(names) == ["tomlkit"]


def test_the_detector_sees_sanic_and_cryptography_when_imported(env):
    names = imported(["-c", "import portunus.serve"], env)
    assert {"sanic", "cryptography"} <= set(heavy_in(names))


def test_the_cold_start_benchmark_prints_its_table(tmp_path):
    """bench/cold_start.py runs end to end (timings printed, never asserted)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cold_start", "--runs", "1", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=support.REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for label in ("python -c pass", "(floor)", "--help", "status (idle store)", "verify"):
        assert label in proc.stdout, label
    assert "HEAVY" not in proc.stdout
    assert not (tmp_path / "cold-start").exists()
