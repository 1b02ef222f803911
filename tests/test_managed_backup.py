"""portunus.engine.managed: one managed backup (back up into [backup].dir,
prune per [retention], record the metrics textfile), whichever face starts
it: the CLI without --out, invoke, the systemd unit's command, the cron
script, the API. And what each face says when the backup was made but the
pruning or the metrics write after it failed."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from portunus import metrics_textfile, testpoints
from portunus.datadir import DataDir
from portunus.engine import backup as backup_engine
from portunus.engine import managed, retention, tokens
from portunus.engine.verify import verify
from portunus.errors import StorageIOError
from portunus.store.connection import open_store
from tests import serving, support
from tests.serving import free_port, start_server, write_config

DEPLOY = support.REPO / "deploy"
LOCAL_BINARY = Path(sys.executable).parent / "portunus-server"
SEEDED = 3  # old backups already in the directory
KEEP_LAST = 2  # so the face's backup and the newest seeded one stay

serve_tmp = serving.serve_tmp


@dataclass
class Site:
    """A store, its [backup].dir seeded with old backups, a server.toml
    naming both, [retention] keep_last = 2 and a metrics textfile."""

    root: Path
    data: DataDir
    backups: Path
    prom: Path
    config: Path
    env: dict[str, str]
    seeded: list[str]
    admin: str  # an admin API token


def seed_backups(data: DataDir, directory: Path) -> list[str]:
    """SEEDED real backups (with sidecars) under names from 2020, oldest first."""
    names = []
    for day in range(1, SEEDED + 1):
        name = backup_engine.backup_name(datetime(2020, 1, day, 2, 0, tzinfo=UTC))
        backup_engine.backup(data, directory / name)
        names.append(name)
    return names


@pytest.fixture
def site(serve_tmp: Path) -> Site:
    data = DataDir(serve_tmp / "data")
    admin = tokens.bootstrap_admin(data, "ops")
    conn = open_store(data.state_db)
    with conn:
        support.add_client_with_rules(conn, "edge-a", 2)
    conn.close()
    backups = serve_tmp / "backups"
    backups.mkdir(mode=0o700)
    prom = serve_tmp / "portunus.prom"
    config = write_config(
        serve_tmp / "server.toml",
        free_port(),
        backup={"dir": str(backups), "metrics_textfile": str(prom)},
        retention={"keep_last": KEEP_LAST},
    )
    # Every face logs JSON lines, the cron script's included.
    config.write_text('log_format = "json"\n' + config.read_text())
    (serve_tmp / "home").mkdir()
    env = {**support.clean_env(serve_tmp / "home"), "PORTUNUS_CONFIG": str(config)}
    return Site(serve_tmp, data, backups, prom, config, env, seed_backups(data, backups), admin)


# --- the faces: each takes one managed backup and returns what it reported ---


def via_cli(site: Site) -> support.Run:
    return support.run_cli("--data-dir", str(site.data.path), "backup", env=site.env)


def via_invoke(site: Site) -> support.Run:
    env = {**site.env, "STATE_DIRECTORY": str(site.data.path)}
    return _run([sys.executable, "-m", "invoke", "backup"], env, cwd=support.REPO)


def via_systemd_unit(site: Site) -> support.Run:
    """The unit's ExecStart, in the environment systemd gives it
    (Environment=, and $STATE_DIRECTORY from StateDirectory=)."""
    unit = (DEPLOY / "portunus-backup.service").read_text().splitlines()
    (exec_start,) = [line.split("=", 1)[1] for line in unit if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start)
    argv[0] = str(LOCAL_BINARY)
    env = {**site.env, "STATE_DIRECTORY": str(site.data.path)}
    return _run(argv, env)


def via_cron(site: Site) -> support.Run:
    me = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    env = {
        **site.env,
        "PORTUNUS_BIN": str(LOCAL_BINARY),
        "DATA_DIR": str(site.data.path),
        "RUN_AS": me,
    }
    return _run(["sh", str(DEPLOY / "portunus-backup.cron")], env)


def via_api(site: Site) -> support.Run:
    server = start_server(site.data.path, site.config, site.env)
    try:
        response = server.client(site.admin).post("/v1/admin/backup")
    finally:
        assert server.stop() == 0
    code = 0 if response.status_code == 201 else response.status_code
    return support.Run(code, response.text, server.stderr())


def _run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> support.Run:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    return support.Run(proc.returncode, proc.stdout, proc.stderr)


FACES: dict[str, Callable[[Site], support.Run]] = {
    "cli": via_cli,
    "invoke": via_invoke,
    "systemd-unit": via_systemd_unit,
    "cron": via_cron,
    "api": via_api,
}


def backups_in(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if retention.time_from_name(n))


@pytest.mark.parametrize("face", FACES.values(), ids=FACES.keys())
def test_every_face_backs_up_prunes_and_records(site: Site, face):
    """The new backup with its sidecar; the two oldest seeded backups pruned
    (keep_last = 2), sidecars with them; the metrics textfile says so."""
    started = time.time()
    run = face(site)
    assert run.code == 0, run.err
    left = backups_in(site.backups)
    assert len(left) == KEEP_LAST and left[0] == site.seeded[-1]
    new = site.backups / left[1]
    assert sorted(os.listdir(site.backups)) == sorted(left + [f"{n}.sha256" for n in left])
    assert verify(new).checksum == "ok"
    assert new.name in run.out  # the path, or the API's JSON naming it
    values = metrics_textfile.read(site.prom)
    assert values["portunus_backup_last_success_timestamp_seconds"] >= int(started)
    assert values["portunus_backup_last_attempt_success"] == 1
    assert values["portunus_backup_kept_count"] == KEEP_LAST
    assert values["portunus_prune_last_removed_count"] == SEEDED + 1 - KEEP_LAST


def test_the_api_answer_says_what_was_pruned(site: Site):
    """201 with the backup and the prune: removed and kept names, bytes freed."""
    run = via_api(site)
    assert run.code == 0, run.out
    body = json.loads(run.out)
    assert sorted(body["prune"]["removed"]) == site.seeded[: SEEDED + 1 - KEEP_LAST]
    assert body["prune"]["kept"] == [Path(body["path"]).name, site.seeded[-1]]
    assert body["prune"]["bytes_freed"] > 0


# --- made, but not pruned or not recorded ------------------------------------


def unremovable_oldest(site: Site) -> Path:
    """The oldest seeded backup, which keep_last = 2 removes."""
    return site.backups / site.seeded[0]


@pytest.mark.parametrize("face", [via_cli, via_cron], ids=["cli", "cron"])
def test_a_made_backup_whose_pruning_fails_is_reported_made_and_exits_74(site: Site, face):
    """The backup stands and its path is printed; backup.incomplete names it
    and the prune failure; exit 74; the success is still recorded."""
    before = set(backups_in(site.backups))
    with support.immutable(unremovable_oldest(site)):
        run = face(site)
    assert run.code == 74, run.err
    (new,) = set(backups_in(site.backups)) - before
    assert run.out.strip() == str(site.backups / new)
    assert verify(site.backups / new).checksum == "ok"
    (incomplete,) = [e for e in run.events if e["event"] == "backup.incomplete"]
    assert incomplete["path"] == str(site.backups / new)
    assert (incomplete["reason"], incomplete["failed"]) == ("prune.io_error", "prune")
    assert incomplete["exit_code"] == 74
    values = metrics_textfile.read(site.prom)
    assert values["portunus_backup_last_attempt_success"] == 1


def test_a_made_backup_whose_metrics_write_fails_exits_74(site: Site):
    """A textfile that cannot be written: the backup and pruning stand, but
    the job says it failed (monitoring would otherwise go blind unnoticed)."""
    text = site.config.read_text().replace(str(site.prom), str(site.root / "gone" / "p.prom"))
    site.config.write_text(text)
    run = via_cli(site)
    assert run.code == 74, run.err
    assert len(backups_in(site.backups)) == KEEP_LAST
    assert "metrics.write_failed" in run.event_names
    (incomplete,) = [e for e in run.events if e["event"] == "backup.incomplete"]
    assert (incomplete["reason"], incomplete["failed"]) == (
        "metrics.write_failed",
        "metrics",
    )
    failed = [e for e in run.events if e["event"] == "backup.failed"]
    assert [e["reason"] for e in failed] == ["backup.incomplete"]


def test_the_api_reports_a_made_but_unpruned_backup_as_503_with_the_backup(site: Site):
    """503 backup.incomplete, the body naming the backup made; audited."""
    before = set(backups_in(site.backups))
    with support.immutable(unremovable_oldest(site)):
        run = via_api(site)
    assert run.code == 503, run.out
    body = json.loads(run.out)
    (new,) = set(backups_in(site.backups)) - before
    assert body["error"] == "backup.incomplete"
    assert body["path"] == str(site.backups / new)
    assert "pruning failed" in body["message"]
    logged = [e for e in support.parse_events(run.err) if e["event"] == "backup.incomplete"]
    assert logged and logged[0]["reason"] == "prune.io_error"


def test_a_failed_backup_records_the_attempt_and_keeps_the_last_success(site: Site):
    """In-process: the engine records attempt_success 0, last success kept."""
    metrics_textfile.update(site.prom, {"portunus_backup_last_success_timestamp_seconds": 42})
    site.data.state_db.write_bytes(b"not a database")
    options = managed.ManagedOptions(site.backups, metrics_textfile=site.prom)
    with pytest.raises(Exception) as raised:
        managed.managed_backup(site.data, options)
    assert getattr(raised.value, "event", None) == "backup.source_not_sqlite"
    values = metrics_textfile.read(site.prom)
    assert values["portunus_backup_last_attempt_success"] == 0
    assert values["portunus_backup_last_success_timestamp_seconds"] == 42


def test_incomplete_carries_the_first_failures_exit_code():
    """The exit code and the reason come from the first failure."""
    made = managed.ManagedBackup(
        backup_engine.BackupResult(Path("/b/x.db"), None, 1, "0" * 64, 2, 1, 0, "file", 0, 0, 0),
        None,
        None,
    )
    failure = StorageIOError("disk gone", event="prune.io_error", hint="check it")
    error = managed.BackupIncomplete(made, [failure])
    assert (error.exit_code, error.event, error.hint) == (74, "backup.incomplete", "check it")
    assert error.fields["reason"] == "prune.io_error"
    assert "/b/x.db was made" in error.message


def test_a_managed_backup_stopped_while_pruning_still_records_its_success(site: Site):
    """SIGTERM (systemd stopping the unit) after the backup was published:
    exit 143, and the success is in the metrics on the way out. The backup
    stops itself at the start of pruning (test-only hook,
    portunus/testpoints.py) so the signal lands there."""
    env = {**site.env, testpoints.ENV: "managed.pruning"}
    argv = [sys.executable, "-m", "portunus", "--log-format", "json"]
    proc = subprocess.Popen(
        [*argv, "--data-dir", str(site.data.path), "backup"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not _stopped(proc.pid):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    new = [n for n in backups_in(site.backups) if n not in site.seeded]
    assert len(new) == 1 and (site.backups / f"{new[0]}.sha256").exists()
    values = metrics_textfile.read(site.prom)
    assert values["portunus_backup_last_attempt_success"] == 1
    assert values["portunus_backup_last_size_bytes"] == (site.backups / new[0]).stat().st_size


def _stopped(pid: int) -> bool:
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state in ("T", "t")
