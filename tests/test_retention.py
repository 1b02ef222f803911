"""portunus.engine.retention: names, each rule, the directory scan, removal."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from portunus.durations import parse_duration
from portunus.engine import retention
from portunus.engine.backup import backup_name
from portunus.engine.retention import Backup, Policy, plan
from portunus.errors import InputMissing, StorageIOError
from portunus.store.sqlitefile import SQLITE_HEADER
from tests import support


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def backups(*stamps: str) -> list[Backup]:
    return [Backup(backup_name(at(s), precise="." in s), at(s)) for s in stamps]


def kept_stamps(decided: retention.Plan) -> list[str]:
    return [d.backup.time.strftime("%Y-%m-%dT%H:%M") for d in decided.decisions if d.keep]


def write_backup(directory: Path, when: datetime, *, sidecar: bool = True, precise=False) -> Path:
    path = directory / backup_name(when, precise=precise)
    path.write_bytes(SQLITE_HEADER + b"\0" * 1008)
    if sidecar:
        Path(f"{path}.sha256").write_text(f"{'0' * 64}  {path.name}\n")
    return path


def test_time_is_read_from_both_name_forms_backup_writes():
    """Seconds and microsecond names round-trip through backup_name."""
    moment = datetime(2026, 11, 27, 12, 4, 9, 678475, tzinfo=UTC)
    assert retention.time_from_name(backup_name(moment, precise=True)) == moment
    assert retention.time_from_name(backup_name(moment)) == moment.replace(microsecond=0)


@pytest.mark.parametrize(
    "name",
    [
        "portunus-state-2026-13-01T00:00:00Z.db",  # month 13
        "portunus-state-2026-11-27T12:04:09+00:00.db",
        "portunus-state-2026-11-27T12:04:09.123Z.db",  # not the 6 digits backup writes
        "portunus-state-2026-11-27.db",
        "2026-11-27.db",
        "portunus-state-2026-11-27T12:04:09Z.db.sha256",
    ],
)
def test_names_that_are_not_backup_names_carry_no_time(name):
    """Only the exact names backup writes are candidates."""
    assert retention.time_from_name(name) is None


def test_keep_last_keeps_the_n_newest():
    """keep_last=2 keeps exactly the two newest, whatever the days."""
    decided = plan(backups("2026-01-01T10:00", "2026-01-03T10:00", "2026-01-02T10:00"), Policy(2))
    assert kept_stamps(decided) == ["2026-01-03T10:00", "2026-01-02T10:00"]


def test_keep_daily_keeps_the_newest_of_each_of_the_n_newest_days():
    """Several backups a day: the day's newest is the one kept."""
    decided = plan(
        backups(
            "2026-01-01T01:00",
            "2026-01-01T23:00",
            "2026-01-02T08:00",
            "2026-01-02T09:00",
            "2026-01-04T00:30",
        ),  # fmt: skip
        Policy(keep_daily=2),
    )
    assert kept_stamps(decided) == ["2026-01-04T00:30", "2026-01-02T09:00"]


def test_periods_count_only_periods_that_have_a_backup():
    """restic: a gap of empty days does not use up keep_daily."""
    decided = plan(backups("2026-01-01T10:00", "2026-03-01T10:00"), Policy(keep_daily=2))
    assert len(kept_stamps(decided)) == 2


def test_keep_weekly_uses_iso_weeks():
    """2026-01-04 (Sunday) and 2026-01-05 (Monday) are in different ISO weeks."""
    decided = plan(
        backups("2026-01-03T10:00", "2026-01-04T10:00", "2026-01-05T10:00"), Policy(keep_weekly=2)
    )
    assert kept_stamps(decided) == ["2026-01-05T10:00", "2026-01-04T10:00"]


def test_keep_hourly_monthly_and_yearly():
    """Each period rule keeps its period's newest, for the N newest periods."""
    sample = backups(
        "2024-06-01T10:00", "2025-02-01T10:00", "2025-12-31T23:59", "2026-01-01T00:10",
        "2026-01-01T00:50", "2026-01-01T01:05",
    )  # fmt: skip
    assert kept_stamps(plan(sample, Policy(keep_hourly=2))) == [
        "2026-01-01T01:05",
        "2026-01-01T00:50",
    ]
    assert kept_stamps(plan(sample, Policy(keep_monthly=3))) == [
        "2026-01-01T01:05",
        "2025-12-31T23:59",
        "2025-02-01T10:00",
    ]
    assert kept_stamps(plan(sample, Policy(keep_yearly=3))) == [
        "2026-01-01T01:05",
        "2025-12-31T23:59",
        "2024-06-01T10:00",
    ]


def test_keep_within_counts_from_the_newest_backup_not_from_now():
    """Old backups of a host whose backups stopped are not all thrown away."""
    decided = plan(
        backups("2020-01-01T00:00", "2020-01-05T06:00", "2020-01-09T00:00"),
        Policy(keep_within=timedelta(days=4)),
    )
    assert kept_stamps(decided) == ["2020-01-09T00:00", "2020-01-05T06:00"]


def test_keep_within_keeps_strictly_less_than_its_duration():
    """keep_within = "2d" (restic's meaning): a backup exactly 48 h older than
    the newest is removed; one second younger than that is kept."""
    decided = plan(
        [
            *backups("2026-03-03T12:00"),
            Backup(backup_name(at("2026-03-01T12:00:01")), at("2026-03-01T12:00:01")),
            Backup(backup_name(at("2026-03-01T12:00:00")), at("2026-03-01T12:00:00")),
        ],
        Policy(keep_within=parse_duration("2d")),
    )
    actions = {d.backup.time.isoformat(): d.keep for d in decided.decisions}
    assert actions == {
        "2026-03-03T12:00:00+00:00": True,
        "2026-03-01T12:00:01+00:00": True,
        "2026-03-01T12:00:00+00:00": False,
    }


def test_a_backup_kept_by_several_rules_lists_every_rule():
    """The dry run shows each rule that decided."""
    decided = plan(backups("2026-01-01T10:00"), Policy(1, keep_daily=1, keep_within=timedelta(1)))
    assert decided.decisions[0].reasons == ("last", "daily", "within")


def test_an_empty_policy_keeps_everything():
    """No rule set: nothing is removed, and the plan says why."""
    decided = plan(backups("2026-01-01T10:00", "2026-01-02T10:00"), Policy())
    assert all(d.keep and d.reasons == ("no-policy",) for d in decided.decisions)


def test_durations():
    """Units and combinations; m is minutes, y is 365 days."""
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("1w3d") == timedelta(days=10)
    assert parse_duration("1y") == timedelta(days=365)
    for bad in ("", "30", "d", "3 d", "1.5h", "-1d", "30D"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_scan_classifies_backups_impostors_and_other_files(tmp_path: Path):
    """Candidates need the name and the header and a regular file."""
    real = write_backup(tmp_path, at("2026-01-01T00:00"))
    (tmp_path / backup_name(at("2026-01-02T00:00"))).write_bytes(b"not sqlite at all")
    (tmp_path / backup_name(at("2026-01-03T00:00"))).mkdir()
    (tmp_path / backup_name(at("2026-01-04T00:00"))).symlink_to(real)
    (tmp_path / "portunus-state-garbage.db").write_bytes(SQLITE_HEADER)
    (tmp_path / "2026-01-01.db").write_bytes(SQLITE_HEADER)  # the spec's old cron names
    (tmp_path / "notes.txt").write_text("x")
    found = retention.scan(tmp_path)
    assert [b.name for b in found.backups] == [real.name]
    assert found.backups[0].sidecar_bytes is not None
    assert {i.name for i in found.impostors} == {
        backup_name(at("2026-01-02T00:00")),
        backup_name(at("2026-01-03T00:00")),
        backup_name(at("2026-01-04T00:00")),
        "portunus-state-garbage.db",
    }
    assert found.others == 2  # the old cron name and notes.txt; sidecars are not counted


def test_scan_of_a_missing_directory_is_input_missing(tmp_path: Path):
    """Exit 5, prune.dir_missing: an unmounted backup disk is not 'nothing to do'."""
    with pytest.raises(InputMissing) as caught:
        retention.scan(tmp_path / "absent")
    assert caught.value.event == "prune.dir_missing"


def test_prune_removes_artefact_and_sidecar_together_and_nothing_else(tmp_path: Path):
    """The removed backups go with their sidecars; impostors, orphans and others stay."""
    days = [at("2026-01-01T00:00") + timedelta(days=n) for n in range(5)]
    paths = [write_backup(tmp_path, d) for d in days]
    impostor = tmp_path / backup_name(at("2025-01-01T00:00"))
    impostor.write_bytes(b"junk")
    orphan = tmp_path / (backup_name(at("2025-02-01T00:00")) + ".sha256")
    orphan.write_text("x")
    before = set(os.listdir(tmp_path))
    report = retention.prune(tmp_path, Policy(keep_last=2))
    gone = {p.name for p in paths[:3]} | {f"{p.name}.sha256" for p in paths[:3]}
    assert set(os.listdir(tmp_path)) == before - gone
    assert sorted(report.removed) == sorted(p.name for p in paths[:3])
    assert report.bytes_freed == sum(1024 + len(f"{'0' * 64}  {p.name}\n") for p in paths[:3])


def test_dry_run_removes_nothing(tmp_path: Path):
    """--dry-run plans, and leaves the directory exactly as it was."""
    for n in range(4):
        write_backup(tmp_path, at("2026-01-01T00:00") + timedelta(hours=n))
    before = sorted(os.listdir(tmp_path))
    report = retention.prune(tmp_path, Policy(keep_last=1), dry_run=True)
    assert len(report.plan.removed) == 3 and not report.removed
    assert sorted(os.listdir(tmp_path)) == before


def test_a_file_that_stopped_being_sqlite_after_planning_is_skipped(tmp_path: Path):
    """apply() re-checks the header before each removal."""
    old = write_backup(tmp_path, at("2026-01-01T00:00"))
    write_backup(tmp_path, at("2026-01-02T00:00"))
    decided = plan(retention.scan(tmp_path).backups, Policy(keep_last=1))
    old.write_bytes(b"replaced by something else")
    report = retention.PruneReport(tmp_path, decided, (), dry_run=False)
    with capture_logs() as logs:
        retention.apply(tmp_path, decided.decisions, report)
    assert old.exists() and report.skipped == [old.name] and not report.removed
    assert [(e["event"], e["path"]) for e in logs] == [("prune.skipped", str(old))]


def test_a_symlinked_sidecar_is_not_followed_or_removed(tmp_path: Path):
    """Only regular files are ever unlinked."""
    old = write_backup(tmp_path, at("2026-01-01T00:00"), sidecar=False)
    write_backup(tmp_path, at("2026-01-02T00:00"))
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    Path(f"{old}.sha256").symlink_to(precious)
    retention.prune(tmp_path, Policy(keep_last=1))
    assert not old.exists() and Path(f"{old}.sha256").is_symlink() and precious.exists()


def test_a_prune_that_cannot_remove_a_backup_leaves_it_with_its_sidecar(tmp_path):
    """The artefact goes before its sidecar: when it cannot be removed (here
    immutable), the backup is still whole with its checksum, never a
    backup without a sidecar (exit 74, prune.io_error)."""
    old = write_backup(tmp_path, at("2025-01-01T00:00:00"))
    write_backup(tmp_path, at("2025-01-02T00:00:00"))
    with support.immutable(old), pytest.raises(StorageIOError) as raised:
        retention.prune(tmp_path, Policy(keep_last=1))
    assert raised.value.event == "prune.io_error"
    assert old.exists() and Path(f"{old}.sha256").exists()
