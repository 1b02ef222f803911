"""``invoke`` run from a checkout: the operator tasks read server.toml exactly
as ``portunus-server`` does, and the dev chores sit beside them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from portunus.engine.retention import time_from_name
from portunus.tasks import collection
from tests.support import REPO, Run, make_store


def invoke(*args: str, env: dict[str, str]) -> Run:
    """``invoke ARGS`` in the repository root, as a developer types it."""
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def deployment(tmp_path: Path, env: dict[str, str]):
    """A store, a backup dir and a server.toml naming both, via $PORTUNUS_CONFIG."""
    from portunus.datadir import DataDir

    data = make_store(DataDir(tmp_path / "data"))
    backups = tmp_path / "backups"
    backups.mkdir()
    config = tmp_path / "server.toml"
    config.write_text(
        f'data_dir = "{data.path}"\nlog_format = "json"\n'
        f'[backup]\ndir = "{backups}"\nmetrics_textfile = "{tmp_path / "portunus.prom"}"\n'
        "[retention]\nkeep_last = 2\n"
    )
    return {"env": {**env, "PORTUNUS_CONFIG": str(config)}, "backups": backups, "tmp": tmp_path}


def backups_in(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if time_from_name(n))


def test_list_shows_every_operator_task_with_its_help_and_the_dev_chores(env):
    """One screen: operator tasks first-line help, then test, lint, bench marked as such."""
    run = invoke("--list", env=env)
    assert run.code == 0, run.err
    listed = {
        line.split()[0]: " ".join(line.split()[1:])
        for line in run.out.splitlines()
        if line.startswith("  ") and line.split()
    }
    for name in collection().task_names:
        assert name in listed, name
        assert listed[name], f"{name} has no help line"
    for chore in ("test", "lint", "bench"):
        assert listed[chore].startswith("Development:"), chore


def test_invoke_backup_repeated_leaves_exactly_what_the_policy_keeps(deployment):
    """Four backups with keep_last = 2: the two newest remain, with sidecars,
    and the metrics textfile says so."""
    made = []
    for _ in range(4):
        run = invoke("backup", env=deployment["env"])
        assert run.code == 0, run.err
        made.append(Path(run.out.strip()).name)
    backups = deployment["backups"]
    assert backups_in(backups) == sorted(made[-2:])
    assert sorted(os.listdir(backups)) == sorted(made[-2:] + [f"{n}.sha256" for n in made[-2:]])
    metrics = (deployment["tmp"] / "portunus.prom").read_text()
    assert "portunus_backup_kept_count 2\n" in metrics
    assert "portunus_prune_last_removed_count 1\n" in metrics
    assert "portunus_backup_last_attempt_success 1\n" in metrics


def test_an_explicit_out_never_prunes(deployment):
    """--out names the destination; retention is for [backup].dir backups only."""
    for _ in range(3):
        assert (
            invoke("backup", "--out", str(deployment["backups"]), env=deployment["env"]).code == 0
        )
    assert len(backups_in(deployment["backups"])) == 3
    assert not (deployment["tmp"] / "portunus.prom").exists()


def test_a_failed_backup_is_recorded_in_the_metrics(deployment, tmp_path):
    """last_attempt_success 0; the time of the last good backup is kept."""
    env = deployment["env"]
    assert invoke("backup", env=env).code == 0
    prom = deployment["tmp"] / "portunus.prom"
    good = [line for line in prom.read_text().splitlines() if "last_success_timestamp" in line]
    (deployment["tmp"] / "data" / "state.db").write_bytes(b"now broken")
    run = invoke("backup", env=env)
    assert run.code == 7
    text = prom.read_text()
    assert "portunus_backup_last_attempt_success 0\n" in text
    assert [line for line in text.splitlines() if "last_success_timestamp" in line] == good


def test_invoke_reads_the_same_config_as_the_cli(deployment, cli):
    """Same file, same values, same sources (the CLI's --log-format aside)."""
    env = deployment["env"]
    by_invoke = json.loads(invoke("config.show", "--json", env=env).out)
    by_cli = json.loads(cli("config", "show", "--json", env=env).out)
    assert by_invoke["file"] == by_cli["file"] == env["PORTUNUS_CONFIG"]
    by_invoke["settings"].pop("log_format")
    by_cli["settings"].pop("log_format")
    assert by_invoke["settings"] == by_cli["settings"]


def test_invoke_finds_server_toml_in_the_data_dir_like_the_cli(tmp_path, env):
    """No $PORTUNUS_CONFIG: $STATE_DIRECTORY/server.toml is read."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "server.toml").write_text("[audit]\nretain_days = 30\n")
    run = invoke("status", "--json", env={**env, "STATE_DIRECTORY": str(state)})
    assert run.code == 0, run.err
    found = json.loads(run.out)
    assert found["data_dir"] == str(state) and found["config_file"] == str(state / "server.toml")


def test_invoke_prune_dry_run_and_exit_codes(deployment):
    """Task errors keep their exit codes under invoke."""
    env = deployment["env"]
    assert invoke("prune", "--dry-run", env=env).code == 0
    bad = deployment["tmp"] / "bad.toml"
    bad.write_text("[retention]\nkeep_last = 'two'\n")
    run = invoke("config.check", "--file", str(bad), env=env)
    assert run.code == 78
    assert "keep_last" in run.out


@pytest.mark.parametrize(
    "args", [["restore"], ["bootstrap-admin"], ["backup"]], ids=["restore", "bootstrap", "backup"]
)
def test_a_usage_error_a_task_finds_is_logfmt_on_stderr_and_exit_2(tmp_path, env, args):
    """No Program configured logging under invoke: the task does it, so the
    line is the same logfmt on stderr that portunus-server prints."""
    env = {**env, "STATE_DIRECTORY": str(tmp_path / "data")}
    run = invoke(*args, env=env)
    assert run.code == 2, run.err
    assert run.out == ""
    assert run.err.startswith("level=error event=cli.usage_error "), run.err
