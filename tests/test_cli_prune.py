"""``portunus-server prune``: retention over a directory of real backups, black-box."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from portunus.durations import parse_duration
from portunus.engine.backup import backup, backup_name
from portunus.engine.retention import Backup, Policy, time_from_name
from tests.test_retention_properties import reference_kept

FIRST = datetime(2024, 12, 1, 2, 0, tzinfo=UTC)
# Foreign files, impostors and leftovers prune must never touch.
UNTOUCHABLE = {
    "2026-05-08.db": b"SQLite format 3\x00 the spec's old cron name",
    "portunus-state-2025-03-01T03:00:00Z.db": b"not a database, only the name",
    "portunus-state-2025-13-01T02:00:00Z.db": b"SQLite format 3\x00 impossible month",
    "portunus-state-notes.db": b"SQLite format 3\x00 no time in the name",
    "portunus-state-2024-12-05T03:00:00Z.db.sha256": b"orphaned sidecar\n",
    ".portunus-backup-0123456789ab.tmp": b"a backup in progress",
    "README.txt": b"backups of host x",
}


@pytest.fixture(scope="module")
def one_real_backup(tmp_path_factory) -> Path:
    """A genuine backup of a populated store, made once for the module."""
    from portunus.datadir import DataDir
    from tests.support import make_store

    root = tmp_path_factory.mktemp("source")
    store = make_store(DataDir(root / "data"))
    return backup(store, root / "real.db", checksum=False).path


def backup_times() -> list[datetime]:
    """Two years, a backup every two days at 02:00, a second one at 14:00 every
    tenth day: about 430 backups."""
    times = []
    for day in range(0, 730, 2):
        times.append(FIRST + timedelta(days=day))
        if day % 10 == 0:
            times.append(FIRST + timedelta(days=day, hours=12))
    return times


@pytest.fixture
def backup_dir(tmp_path: Path, one_real_backup: Path) -> Path:
    """The real backup under ~430 names, sidecars included, plus everything
    in UNTOUCHABLE and a directory named like a backup."""
    directory = tmp_path / "backups"
    directory.mkdir()
    digest = hashlib.sha256(one_real_backup.read_bytes()).hexdigest()
    for when in backup_times():
        name = backup_name(when)
        # Hard links: the same genuine backup under each name, without
        # copying ~26 MB per test. Each name is removed on its own.
        os.link(one_real_backup, directory / name)
        (directory / f"{name}.sha256").write_text(f"{digest}  {name}\n")
    for name, data in UNTOUCHABLE.items():
        (directory / name).write_bytes(data)
    (directory / "portunus-state-2025-01-01T03:00:00Z.db").mkdir()
    return directory


def write_config(tmp_path: Path, backup_dir: Path, retention: str, extra: str = "") -> Path:
    path = tmp_path / "server.toml"
    path.write_text(f'[backup]\ndir = "{backup_dir}"\n{extra}\n[retention]\n{retention}\n')
    return path


def backups_left(directory: Path) -> set[str]:
    names = set(os.listdir(directory)) - set(UNTOUCHABLE)
    return {n for n in names if time_from_name(n) and (directory / n).is_file()}


def expected(policy: Policy) -> set[str]:
    items = [Backup(backup_name(t), t) for t in backup_times()]
    return reference_kept(items, policy)


RULES = {
    "keep_last = 5": Policy(keep_last=5),
    "keep_hourly = 3": Policy(keep_hourly=3),
    "keep_daily = 10": Policy(keep_daily=10),
    "keep_weekly = 8": Policy(keep_weekly=8),
    "keep_monthly = 12": Policy(keep_monthly=12),
    "keep_yearly = 5": Policy(keep_yearly=5),
    'keep_within = "30d"': Policy(keep_within=parse_duration("30d")),
    "keep_daily = 7\nkeep_weekly = 4\nkeep_monthly = 12\nkeep_yearly = 3": Policy(
        keep_daily=7, keep_weekly=4, keep_monthly=12, keep_yearly=3
    ),
    'keep_last = 3\nkeep_within = "2w"\nkeep_monthly = 2': Policy(
        keep_last=3, keep_monthly=2, keep_within=parse_duration("2w")
    ),
}


@pytest.mark.parametrize("rules", list(RULES), ids=lambda r: r.replace("\n", ";"))
def test_prune_leaves_exactly_what_the_policy_keeps(cli, tmp_path, backup_dir, rules):
    """Each rule and some combinations, over two years of real backups."""
    config = write_config(tmp_path, backup_dir, rules)
    untouched = {n: (backup_dir / n).read_bytes() for n in UNTOUCHABLE}
    run = cli("--config", str(config), "prune")
    assert run.code == 0, run.err
    want = expected(RULES[rules])
    assert backups_left(backup_dir) == want
    sidecars = {n[: -len(".sha256")] for n in os.listdir(backup_dir) if n.endswith(".db.sha256")}
    assert sidecars == want | {"portunus-state-2024-12-05T03:00:00Z.db"}  # + the orphan
    assert {n: (backup_dir / n).read_bytes() for n in UNTOUCHABLE} == untouched
    assert (backup_dir / "portunus-state-2025-01-01T03:00:00Z.db").is_dir()
    completed = next(e for e in run.events if e["event"] == "prune.completed")
    assert completed["removed"] == len(backup_times()) - len(want)


def test_the_rule_counts_are_what_an_operator_expects(tmp_path, backup_dir, cli):
    """Spot checks by hand, independent of the reference: 3 years, 5 newest."""
    assert len(expected(Policy(keep_yearly=5))) == 3  # 2024, 2025, 2026
    config = write_config(tmp_path, backup_dir, "keep_last = 5")
    cli("--config", str(config), "prune")
    newest = sorted(backup_times())[-5:]
    assert backups_left(backup_dir) == {backup_name(t) for t in newest}


def test_dry_run_prints_every_backup_with_its_rules_and_changes_nothing(cli, tmp_path, backup_dir):
    """keep/remove and the deciding rules for each file; impostors reported."""
    config = write_config(tmp_path, backup_dir, "keep_daily = 2\nkeep_monthly = 2")
    before = sorted(os.listdir(backup_dir))
    run = cli("--config", str(config), "prune", "--dry-run")
    assert run.code == 0, run.err
    assert sorted(os.listdir(backup_dir)) == before
    lines = run.out.splitlines()
    decisions = [line.split() for line in lines if line.startswith(("keep", "remove"))]
    assert len(decisions) == len(backup_times())
    newest = backup_name(max(backup_times()))
    assert ["keep", newest, "daily,monthly"] in decisions
    assert sum(d[0] == "keep" for d in decisions) == len(
        expected(Policy(keep_daily=2, keep_monthly=2))
    )
    assert all(d[2] == "-" for d in decisions if d[0] == "remove")
    ignored = {line.split()[1] for line in lines if line.startswith("ignored")}
    assert ignored == {
        "portunus-state-2025-03-01T03:00:00Z.db",
        "portunus-state-2025-13-01T02:00:00Z.db",
        "portunus-state-notes.db",
        "portunus-state-2025-01-01T03:00:00Z.db",
    }
    assert lines[-1].startswith("dry-run: would remove ")
    assert run.event_names.count("prune.impostor") == 4
    assert "prune.completed" not in run.event_names


def test_json_summary_counts_and_bytes_freed(cli, tmp_path, backup_dir):
    """--json for scripts: counts, per-file decisions, bytes actually freed."""
    config = write_config(tmp_path, backup_dir, "keep_weekly = 4")
    sizes = {n: (backup_dir / n).stat().st_size for n in os.listdir(backup_dir)}
    run = cli("--config", str(config), "prune", "--json")
    assert run.code == 0, run.err
    summary = json.loads(run.out)
    removed = summary["removed"]
    assert summary["kept"] == 4 and summary["to_remove"] == len(removed) == len(backup_times()) - 4
    freed = sum(sizes[n] + sizes[f"{n}.sha256"] for n in removed)
    assert summary["bytes_freed"] == freed
    completed = next(e for e in run.events if e["event"] == "prune.completed")
    assert completed["bytes_freed"] == freed and completed["removed"] == len(removed)
    planned = next(e for e in run.events if e["event"] == "prune.planned")
    assert planned["keep"] == 4 and planned["impostors"] == 4 and planned["keep_weekly"] == 4


def test_an_empty_policy_removes_nothing_and_says_so(cli, tmp_path, backup_dir):
    """No [retention] rule: exit 0, every file stays, a warning explains."""
    config = write_config(tmp_path, backup_dir, "")
    before = sorted(os.listdir(backup_dir))
    run = cli("--config", str(config), "prune")
    assert run.code == 0
    assert sorted(os.listdir(backup_dir)) == before
    assert "nothing removed" in run.out
    assert run.has_event("prune.empty_policy")


def test_the_surviving_backups_still_verify(cli, tmp_path, backup_dir):
    """Prune leaves intact artefacts whose sidecars still match."""
    config = write_config(tmp_path, backup_dir, "keep_last = 1")
    assert cli("--config", str(config), "prune").code == 0
    (survivor,) = backups_left(backup_dir)
    assert cli("verify", str(backup_dir / survivor)).code == 0


def test_prune_updates_the_metrics_textfile_for_the_configured_dir(cli, tmp_path, backup_dir):
    """Backups kept and the last prune's removals, for node_exporter."""
    prom = tmp_path / "portunus.prom"
    config = write_config(
        tmp_path, backup_dir, "keep_last = 10", extra=f'metrics_textfile = "{prom}"'
    )
    assert cli("--config", str(config), "prune").code == 0
    text = prom.read_text()
    assert "portunus_backup_kept_count 10\n" in text
    assert f"portunus_prune_last_removed_count {len(backup_times()) - 10}\n" in text
    assert prom.stat().st_mode & 0o777 == 0o644


def test_dry_run_leaves_the_metrics_textfile_alone(cli, tmp_path, backup_dir):
    """A dry run changes nothing, the metrics included."""
    prom = tmp_path / "portunus.prom"
    config = write_config(
        tmp_path, backup_dir, "keep_last = 1", extra=f'metrics_textfile = "{prom}"'
    )
    assert cli("--config", str(config), "prune", "--dry-run").code == 0
    assert not prom.exists()


def test_dir_flag_prunes_another_directory(cli, tmp_path, backup_dir):
    """--dir overrides [backup].dir."""
    config = write_config(tmp_path, tmp_path / "elsewhere", "keep_last = 2")
    run = cli("--config", str(config), "prune", "--dir", str(backup_dir))
    assert run.code == 0, run.err
    assert len(backups_left(backup_dir)) == 2


def test_a_missing_backup_dir_is_exit_5(cli, tmp_path):
    """An unmounted backup disk is reported, not treated as empty."""
    config = write_config(tmp_path, tmp_path / "absent", "keep_last = 2")
    run = cli("--config", str(config), "prune")
    assert run.code == 5
    assert run.has_event("prune.dir_missing")


def test_prune_without_a_backup_dir_is_a_usage_error(cli, tmp_path):
    """Neither [backup].dir nor --dir: exit 2 with a hint."""
    run = cli("--data-dir", str(tmp_path / "data"), "prune")
    assert run.code == 2
    assert "[backup].dir" in run.events[-1]["msg"]
