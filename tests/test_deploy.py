"""deploy/: the systemd units verify, say what the contracts need, and the
cron script really backs up and prunes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from portunus.datadir import DataDir
from portunus.engine.retention import time_from_name
from tests.support import REPO, make_store

DEPLOY = REPO / "deploy"
UNITS = ("portunus-server.service", "portunus-backup.service", "portunus-backup.timer")
INSTALLED_BINARY = "/usr/local/bin/portunus-server"
# The console script of the environment running the tests.
LOCAL_BINARY = Path(sys.executable).parent / "portunus-server"


def directives(unit: str) -> dict[str, list[str]]:
    """KEY -> every value it is given (systemd allows repeats), comments skipped."""
    found: dict[str, list[str]] = {}
    for line in (DEPLOY / unit).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def one(unit: str, key: str) -> str:
    (value,) = directives(unit)[key]
    return value


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path):
    """No unknown keys, bad values or missing executables: not one warning."""
    for unit in UNITS:
        text = (DEPLOY / unit).read_text()
        # verify checks that ExecStart exists: point it at this checkout's binary.
        (tmp_path / unit).write_text(text.replace(INSTALLED_BINARY, str(LOCAL_BINARY)))
    run = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / u) for u in UNITS)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert (run.returncode, run.stdout + run.stderr) == (0, "")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_verify_would_catch_a_typo(tmp_path: Path):
    """The check above can fail: a misspelt key is reported."""
    text = (DEPLOY / UNITS[0]).read_text().replace(INSTALLED_BINARY, str(LOCAL_BINARY))
    (tmp_path / UNITS[0]).write_text(text.replace("RestartSec=", "RestartSecs="))
    run = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / UNITS[0])], capture_output=True, text=True
    )
    assert "RestartSecs" in run.stderr


def test_the_server_unit_keeps_its_contracts():
    """StateDirectory 0700, no restart loop on 78, runs serve as an unprivileged user."""
    unit = "portunus-server.service"
    assert one(unit, "StateDirectory") == "portunus"
    assert one(unit, "StateDirectoryMode") == "0700"
    assert "78" in one(unit, "RestartPreventExitStatus").split()
    assert one(unit, "Restart") == "on-failure"
    assert one(unit, "ExecStart") == f"{INSTALLED_BINARY} serve"
    assert one(unit, "User") == "portunus"
    assert one(unit, "ProtectSystem") == "strict"
    assert one(unit, "NoNewPrivileges") == "yes"
    assert one(unit, "CapabilityBoundingSet") == ""


def test_the_backup_service_and_timer():
    """A oneshot managed backup (no --out: prunes), daily, persistent, spread."""
    service = "portunus-backup.service"
    assert one(service, "Type") == "oneshot"
    assert one(service, "ExecStart") == f"{INSTALLED_BINARY} backup"
    assert one(service, "StateDirectory") == "portunus"
    assert one(service, "Environment") == one("portunus-server.service", "Environment")
    assert "/var/backups/portunus" in directives(service)["ReadWritePaths"]
    timer = "portunus-backup.timer"
    assert one(timer, "OnCalendar") == "daily"
    assert one(timer, "Persistent") == "true"
    assert one(timer, "RandomizedDelaySec")


def test_sysusers_and_tmpfiles_create_the_user_and_the_backup_dir(tmp_path: Path):
    """Applied to a scratch root: user portunus, /var/backups/portunus 0700 owned by it."""
    if not (shutil.which("systemd-sysusers") and shutil.which("systemd-tmpfiles")):
        pytest.skip("systemd-sysusers / systemd-tmpfiles not installed")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(DEPLOY / "portunus.sysusers")],
        check=True,
        capture_output=True,
    )
    passwd = (tmp_path / "etc" / "passwd").read_text()
    (entry,) = [line for line in passwd.splitlines() if line.startswith("portunus:")]
    uid = int(entry.split(":")[2])
    subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(DEPLOY / "portunus.tmpfiles")],
        check=True,
        capture_output=True,
    )
    made = (tmp_path / "var" / "backups" / "portunus").stat()
    assert (made.st_uid, made.st_mode & 0o777) == (uid, 0o700)


def test_the_cron_script_runs_a_managed_backup_not_find(tmp_path: Path, env):
    """The spec's script, rewritten: the service's own managed backup (no
    --out: [backup].dir, pruned, recorded), no find -delete."""
    script = DEPLOY / "portunus-backup.cron"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    commands = [
        line for line in script.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    assert not any("find " in line or "-delete" in line for line in commands)
    assert not any("--out" in line for line in commands)
    assert commands[-1].rstrip().endswith(" backup")
    assert os.access(script, os.X_OK)


def test_the_cron_script_really_backs_up_prunes_and_records(tmp_path: Path, env):
    """Run three times with keep_last = 2: two backups remain, each with its
    sidecar, and the metrics textfile holds the last success, which a cron
    host's PortunusBackupMetricsMissing alert needs."""
    data = make_store(DataDir(tmp_path / "data"))
    dest = tmp_path / "backups"
    dest.mkdir(mode=0o700)
    prom = tmp_path / "portunus.prom"
    config = tmp_path / "server.toml"
    config.write_text(
        f'[backup]\ndir = "{dest}"\nmetrics_textfile = "{prom}"\n[retention]\nkeep_last = 2\n'
    )
    run_env = {
        **env,
        "PORTUNUS_BIN": str(LOCAL_BINARY),
        "PORTUNUS_CONFIG": str(config),
        "DATA_DIR": str(data.path),
        "RUN_AS": subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip(),
    }
    for _ in range(3):
        run = subprocess.run(
            ["sh", str(DEPLOY / "portunus-backup.cron")], env=run_env, capture_output=True
        )
        assert run.returncode == 0, run.stderr
    made = sorted(n for n in os.listdir(dest) if time_from_name(n))
    assert len(made) == 2
    assert sorted(os.listdir(dest)) == sorted(made + [f"{n}.sha256" for n in made])
    metrics = prom.read_text()
    assert "portunus_backup_last_success_timestamp_seconds " in metrics
    assert "portunus_backup_kept_count 2\n" in metrics
    assert "portunus_prune_last_removed_count 1\n" in metrics


def test_the_cron_script_never_creates_a_missing_backup_dir(tmp_path: Path, env):
    """An unmounted backup disk is a failure cron reports (74), not a new
    directory on the root filesystem."""
    data = make_store(DataDir(tmp_path / "data"))
    config = tmp_path / "server.toml"
    config.write_text(f'[backup]\ndir = "{tmp_path / "mnt" / "backups"}"\n')
    run_env = {
        **env,
        "PORTUNUS_BIN": str(LOCAL_BINARY),
        "PORTUNUS_CONFIG": str(config),
        "DATA_DIR": str(data.path),
        "RUN_AS": subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip(),
    }
    run = subprocess.run(
        ["sh", str(DEPLOY / "portunus-backup.cron")], env=run_env, capture_output=True
    )
    assert run.returncode == 74, run.stderr
    assert not (tmp_path / "mnt").exists()


def test_the_deploy_readme_covers_every_file_in_deploy():
    """Install steps name each unit, script and snippet."""
    readme = (DEPLOY / "README.md").read_text()
    for path in DEPLOY.iterdir():
        if path.name != "README.md":
            assert path.name in readme, path.name
