"""Cold start: a light command imports only what it needs. ``--help``,
``status`` and ``verify`` import neither sanic (the server) nor
cryptography (TLS), pyrage (sealed backups), nor tomlkit when
there is no server.toml to read; no module they load defines a dataclass
(about a millisecond each to define); and ``status`` on an idle store
loads neither the retention engine, nor replication, nor ctypes.
Checked through ``python -X importtime``, which lists every module a
process imports, and through the process's own ``sys.modules`` at exit,
which also holds what portunus.lazy imported (importlib.import_module
escapes -X importtime); the figures themselves are bench/cold_start.py's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from portunus.datadir import _LOCAL_NAMES, _UNSUPPORTED_NAMES, _mountinfo_name
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


# Runs ``portunus-server ARGS`` as ``python -m portunus`` does and, at exit,
# reports every module loaded and every dataclass a portunus module defines.
LOADED = """
import atexit, runpy, sys

def report():
    import dataclasses, json

    modules = sorted(sys.modules)
    ours = [m for m in modules if m == "portunus" or m.startswith("portunus.")]
    classes = sorted(
        f"{name}.{attr}"
        for name in ours
        for attr, value in list(vars(sys.modules[name]).items())
        if isinstance(value, type) and dataclasses.is_dataclass(value)
        and value.__module__ == name
    )
    print("LOADED", json.dumps({"modules": modules, "dataclasses": classes}), file=sys.stderr)

atexit.register(report)
sys.argv = ["portunus-server", *sys.argv[1:]]
runpy.run_module("portunus", run_name="__main__", alter_sys=True)
"""


def loaded(args: list[str], env: dict[str, str]) -> tuple[set[str], list[str]]:
    """(modules loaded, portunus dataclasses defined) by one command."""
    proc = subprocess.run(
        [sys.executable, "-c", LOADED, *args], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("LOADED ")]
    found = json.loads(line.removeprefix("LOADED "))
    return set(found["modules"]), found["dataclasses"]


@pytest.mark.parametrize("command", ["--help", "status", "verify"])
def test_a_light_command_defines_no_dataclass(command, store, small_backup, env):
    """A frozen dataclass costs about 1 ms to define at every start (its
    methods are compiled from source then); the value types these commands
    load are NamedTuples. Make a new one a NamedTuple too, or load its
    module lazily (portunus/lazy.py)."""
    args = ["--data-dir", str(store.path), *command.split()]
    if command == "verify":
        args.append(str(small_backup))
    assert loaded(args, env)[1] == []


def test_status_on_an_idle_store_loads_no_retention_no_replication(store, env):
    """No backup dir and no replica configured: nothing to scan or ask, so
    neither engine loads."""
    modules, _ = loaded(["--data-dir", str(store.path), "status"], env)
    assert "portunus.engine.status" in modules
    assert "portunus.engine.retention" not in modules
    assert not [m for m in modules if m.startswith("portunus.replication")]


FLOOR = "import atexit, runpy, sys; import invoke, structlog, apsw; print(*sorted(sys.modules))"


@pytest.mark.parametrize("command", ["status", "verify"])
def test_status_and_verify_load_no_library_module_beyond_the_floor(
    command, store, small_backup, env
):
    """Beyond what invoke, structlog and apsw load anyway, only portunus's
    own modules, and hashlib for verify's sha256. Not ctypes: on a
    filesystem /proc/self/mountinfo names by the path's device, status needs
    no statfs; not importlib's resource readers: the migrations are read
    from their directory."""
    floor = set(
        subprocess.run(
            [sys.executable, "-c", FLOOR], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
    )
    args = ["--data-dir", str(store.path), command]
    if command == "verify":
        args.append(str(small_backup))
    modules, _ = loaded(args, env)
    beyond = {m for m in modules - floor if m.split(".")[0] != "portunus"}
    allowed = {"hashlib", "_hashlib", "_blake2"} if command == "verify" else set()
    name, by_device = _mountinfo_name(store.path)
    if not (by_device and name in _LOCAL_NAMES | _UNSUPPORTED_NAMES):
        allowed |= {"ctypes", "_ctypes", "ctypes._endian"}  # statfs is needed here
    assert beyond <= allowed, sorted(beyond - allowed)


def test_the_module_detector_sees_retention_and_its_dataclasses(store, tmp_path, env):
    """With a backup dir to scan, status does load the retention engine,
    and the detector sees it and the dataclasses it defines."""
    backups = tmp_path / "backups"
    backups.mkdir()
    store.config.write_text(f'[backup]\ndir = "{backups}"\n')
    modules, classes = loaded(["--data-dir", str(store.path), "status"], env)
    assert "portunus.engine.retention" in modules
    assert "portunus.engine.retention.Policy" in classes
