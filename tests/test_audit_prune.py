"""Audit retention: portunus.engine.audit_prune and ``portunus-server audit prune``."""

from __future__ import annotations

import shutil
import subprocess
import threading
from datetime import UTC, datetime, timedelta

import apsw
import pytest

from portunus.datadir import DataDir
from portunus.engine.audit_prune import prune_audit, to_stored_time
from portunus.errors import InputMissing, NotAStateDatabase
from portunus.store.connection import open_store
from tests.test_cli_backup import tmpfs

NOW = datetime.now(UTC)


def add_audit_rows(data_dir: DataDir, ages_in_days: list[float]) -> None:
    conn = open_store(data_dir.state_db)
    try:
        with conn:
            for age in ages_in_days:
                conn.execute(
                    "INSERT INTO audit_log (at, actor, action, resource) "
                    "VALUES (?, 'test', 'x', 'y')",
                    (to_stored_time(NOW - timedelta(days=age)),),
                )
    finally:
        conn.close()


def audit_rows(data_dir: DataDir) -> list[tuple[str, str]]:
    conn = open_store(data_dir.state_db)
    try:
        return [tuple(r) for r in conn.execute("SELECT at, action FROM audit_log ORDER BY id")]
    finally:
        conn.close()


def test_rows_older_than_the_cutoff_go_in_batches_and_the_rest_stay(store):
    """Batches of batch_rows; newer rows untouched; the prune itself is audited."""
    add_audit_rows(store, [400.0] * 50 + [10.0] * 5)
    before = len(audit_rows(store))
    result = prune_audit(store, NOW - timedelta(days=365), batch_rows=7)
    assert (result.matched, result.deleted, result.batches) == (50, 50, 8)
    rows = audit_rows(store)
    assert len(rows) == before - 50 + 1
    assert rows[-1][1] == "audit.prune"
    cutoff = to_stored_time(NOW - timedelta(days=365))
    assert all(at >= cutoff for at, _ in rows)


def test_dry_run_counts_and_deletes_nothing(store):
    """--dry-run reports the count and the oldest row."""
    add_audit_rows(store, [500.0, 450.0, 1.0])
    before = audit_rows(store)
    result = prune_audit(store, NOW - timedelta(days=365), dry_run=True)
    assert (result.matched, result.deleted) == (2, 0)
    assert result.oldest == to_stored_time(NOW - timedelta(days=500))
    assert audit_rows(store) == before


def test_nothing_old_enough_writes_nothing(store):
    """No matching rows: no batches, no audit row about it."""
    before = audit_rows(store)
    result = prune_audit(store, NOW - timedelta(days=365))
    assert (result.deleted, result.batches) == (0, 0)
    assert audit_rows(store) == before


def test_a_concurrent_writer_commits_throughout_a_large_prune(store):
    """Runs beside a live writer (no data dir lock): every one of the writer's
    commits lands, none fails busy, and the prune still deletes every old row."""
    add_audit_rows(store, [400.0] * 20_000)
    done = threading.Event()
    outcome: dict[str, object] = {"commits": 0, "error": None}

    def writer() -> None:
        conn = open_store(store.state_db)
        try:
            while not done.is_set() or outcome["commits"] < 50:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO audit_log (at, actor, action, resource) "
                    "VALUES (?, 'server', 'rule.update', 'rule:1')",
                    (to_stored_time(datetime.now(UTC)),),
                )
                conn.execute("COMMIT")
                outcome["commits"] += 1
        except apsw.Error as exc:  # a BusyError here is the starvation this guards against
            outcome["error"] = exc
        finally:
            conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = prune_audit(store, NOW - timedelta(days=365), batch_rows=500)
    finally:
        done.set()
        thread.join()
    assert outcome["error"] is None
    assert result.deleted == 20_000 and result.batches == 41
    assert len([r for r in audit_rows(store) if r[1] == "rule.update"]) == outcome["commits"]


def test_a_missing_store_is_input_missing(data_dir):
    """Exit 5: nothing to prune is not silently 'done'."""
    with pytest.raises(InputMissing) as caught:
        prune_audit(data_dir, NOW)
    assert caught.value.event == "audit.store_missing"


def test_a_state_db_that_is_not_sqlite_is_refused(data_dir):
    """Exit 7 and nothing written."""
    data_dir.ensure()
    data_dir.state_db.write_bytes(b"not a database")
    with pytest.raises(NotAStateDatabase):
        prune_audit(data_dir, NOW)
    assert data_dir.state_db.read_bytes() == b"not a database"


# --- the command ---------------------------------------------------------------------


def test_cli_before_deletes_older_rows(cli, store):
    """--before RFC3339 with Z."""
    add_audit_rows(store, [800.0, 700.0, 2.0])
    cutoff = (NOW - timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    run = cli("--data-dir", str(store.path), "audit", "prune", "--before", cutoff)
    assert run.code == 0, run.err
    assert run.out.startswith("deleted 2 audit rows older than ")
    (pruned,) = [e for e in run.events if e["event"] == "audit.pruned"]
    assert pruned["deleted"] == 2


def test_cli_dry_run_logs_the_plan_and_deletes_nothing(cli, store):
    """--dry-run: audit.prune_planned with the count and the oldest row, no
    audit.pruned, every row still there."""
    add_audit_rows(store, [800.0, 700.0, 2.0])
    before = audit_rows(store)
    cutoff = (NOW - timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    run = cli("--data-dir", str(store.path), "audit", "prune", "--before", cutoff, "--dry-run")
    assert run.code == 0, run.err
    (planned,) = [e for e in run.events if e["event"] == "audit.prune_planned"]
    assert (planned["matched"], planned["dry_run"]) == (2, True), run.err
    assert planned["oldest"] == to_stored_time(NOW - timedelta(days=800))
    assert "audit.pruned" not in run.event_names
    assert audit_rows(store) == before


def test_cli_defaults_to_retain_days_from_the_config(cli, store):
    """Without --before: now - [audit].retain_days."""
    add_audit_rows(store, [40.0, 35.0, 20.0])
    (store.path / "server.toml").write_text("[audit]\nretain_days = 30\n")
    run = cli("--data-dir", str(store.path), "audit", "prune", "--dry-run", "--json")
    assert run.code == 0, run.err
    assert '"matched": 2' in run.out and '"deleted": 0' in run.out


def test_cli_takes_a_bare_date_and_offsets(cli, store):
    """2020-01-01 is midnight UTC; +02:00 offsets are converted."""
    for before in ("2020-01-01", "2020-01-01T02:00:00+02:00"):
        run = cli("--data-dir", str(store.path), "audit", "prune", "--before", before, "--json")
        assert run.code == 0, run.err
        assert '"before": "2020-01-01T00:00:00.000Z"' in run.out


@pytest.mark.parametrize(
    "before",
    [
        "yesterday",
        "2020-01-01T00:00:00",
        "2999-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",  # RFC 3339, but before year 1 in UTC
        "20200101T000000Z",  # ISO 8601's basic form is not RFC 3339
        "2020-01-01T00:00:60Z",
    ],
)
def test_cli_refuses_an_unusable_cutoff_with_exit_2(cli, store, before):
    """No zone, not a time, or in the future (would wipe the log): 2, and
    every row stays, the oldest (2015) and the newest included."""
    add_audit_rows(store, [4000.0, 400.0, 1.0])
    before_rows = audit_rows(store)
    run = cli("--data-dir", str(store.path), "audit", "prune", "--before", before)
    assert run.code == 2
    assert audit_rows(store) == before_rows
    assert run.event_names == ["cli.usage_error"], run.err


def test_cli_on_an_empty_data_dir_is_exit_5(cli, tmp_path):
    """No state.db, no prune."""
    run = cli("--data-dir", str(tmp_path), "audit", "prune")
    assert run.code == 5 and run.has_event("audit.store_missing")


def test_cli_on_a_read_only_store_is_exit_74_not_a_bug(cli, store, tmp_path):
    """A store SQLite cannot open for writing (read-only filesystem): 74 with
    audit.prune_failed, no traceback; the store is as it was."""
    add_audit_rows(store, [400, 1])
    with tmpfs(tmp_path / "ro", "4m") as mount:
        shutil.copy(store.state_db, mount / "state.db")
        before = (mount / "state.db").read_bytes()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        run = cli("--data-dir", str(mount), "audit", "prune", "--before", "2026-01-01")
        assert run.code == 74, run.err
        assert run.has_event("audit.prune_failed"), run.err
        assert "internal_error" not in run.err
        assert (mount / "state.db").read_bytes() == before
