"""Backups taken while another process commits as fast as it can: every one
passes integrity_check, holds only whole transactions, and never restarts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import apsw
import pytest

from portunus.datadir import DataDir
from portunus.engine import backup as backup_engine
from portunus.store.connection import open_readonly, open_store
from tests import support, writer

pytestmark = pytest.mark.slow

# About 55 MiB: a backup spans several STEP_PAGES steps.
ACCOUNTS = 14_000
CLI_BACKUPS = 6
ENGINE_BACKUPS = 3
# A backup that restarts never finishes under this writer: fail instead of hanging.
MAX_STEPS = 20
CLI_TIMEOUT_S = 60
WRITER_SCRIPT = Path(writer.__file__)


@pytest.fixture(scope="module")
def load_store(tmp_path_factory: pytest.TempPathFactory) -> DataDir:
    """A real Portunus store plus the writer's accounts, ledger and counter."""
    data_dir = support.make_store(DataDir(tmp_path_factory.mktemp("load") / "data"))
    conn = open_store(data_dir.state_db)
    try:
        with conn:
            conn.execute(writer.LOAD_SCHEMA)
            conn.execute(
                writer.LOAD_ACCOUNTS,
                (ACCOUNTS, writer.ACCOUNT_BALANCE, writer.ACCOUNT_PAD_BYTES),
            )
    finally:
        conn.close()
    return data_dir


@dataclass
class Writer:
    """The ledger writer process (tests/writer.py)."""

    proc: subprocess.Popen

    def stop(self) -> dict:
        """SIGTERM, then the writer's own summary of what it committed."""
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err
        return json.loads(out.splitlines()[-1])


@pytest.fixture
def running_writer(load_store: DataDir):
    """The ledger writer, in its own process, committing from the moment it is ready."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER_SCRIPT), "ledger", str(load_store.state_db), "7"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        yield Writer(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def committed(state_db: Path) -> int:
    """How many transactions the live store holds right now."""
    conn = open_readonly(state_db)
    try:
        return conn.execute("SELECT commits FROM load_counter").fetchall()[0][0]
    finally:
        conn.close()


def fail_after(steps: int) -> backup_engine.Progress:
    """A progress callback that aborts a copy still running after ``steps`` steps."""
    seen = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        assert len(seen) <= steps, f"still copying after {steps} steps ({seen[-5:]}): restarts"

    return progress


def scalar(conn: apsw.Connection, sql: str) -> int:
    return conn.execute(sql).fetchall()[0][0]


def assert_whole_transactions(path: Path) -> int:
    """integrity_check passes and every writer invariant holds; returns the
    number of transactions the file holds."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert [r[0] for r in conn.execute("PRAGMA integrity_check")] == ["ok"], path
        commits, entries = conn.execute("SELECT commits, entries FROM load_counter").fetchall()[0]
        assert scalar(conn, "SELECT count(*) FROM load_ledger") == entries == 2 * commits
        batches = conn.execute(
            "SELECT count(DISTINCT batch), coalesce(min(batch), 0), coalesce(max(batch), 0),"
            " coalesce(sum(delta), 0) FROM load_ledger"
        ).fetchall()[0]
        assert batches == (commits, min(commits, 1), commits, 0), "a transaction was torn"
        total = scalar(conn, "SELECT sum(balance) FROM load_accounts")
        assert total == ACCOUNTS * writer.ACCOUNT_BALANCE, "value created or destroyed"
        # Every balance is its opening balance plus its ledger legs: ties the
        # account pages (all over the file) to the ledger pages (at its end).
        drifted = scalar(
            conn,
            "SELECT count(*) FROM load_accounts a LEFT JOIN"
            " (SELECT account, sum(delta) AS moved FROM load_ledger GROUP BY account) l"
            " ON l.account = a.id"
            f" WHERE a.balance != {writer.ACCOUNT_BALANCE} + coalesce(l.moved, 0)",
        )
        assert drifted == 0, f"{drifted} account(s) disagree with the ledger"
        return commits
    finally:
        conn.close()


def test_cli_backups_under_a_busy_writer_hold_whole_transactions_and_never_restart(
    cli, load_store: DataDir, running_writer: Writer, tmp_path: Path
):
    """Successive CLI backups during non-stop commits: consistent, growing, 0 restarts."""
    snapshots = []
    for i in range(CLI_BACKUPS):
        before = committed(load_store.state_db)
        out = tmp_path / f"under-load-{i}.db"
        run = cli(
            "--data-dir",
            str(load_store.path),
            "backup",
            "--out",
            str(out),
            "--json",
            timeout=CLI_TIMEOUT_S,
        )
        after = committed(load_store.state_db)
        assert run.code == 0, run.err
        summary = json.loads(run.out)
        assert summary["restarts"] == 0
        assert summary["pages"] > 2 * backup_engine.STEP_PAGES, "the copy must span steps"
        in_backup = assert_whole_transactions(out)
        # The snapshot was taken inside the run, and the writer kept committing
        # after it while the copy and the checks went on.
        assert before <= in_backup < after
        snapshots.append(in_backup)
    summary = running_writer.stop()
    assert summary["errors"] == []
    assert snapshots == sorted(set(snapshots)), "each backup must hold more commits"
    assert summary["commits"] > snapshots[-1] - snapshots[0]


def test_engine_backup_under_a_busy_writer_never_restarts(
    load_store: DataDir, running_writer: Writer, tmp_path: Path
):
    """backup() called in-process during non-stop commits reports 0 restarts."""
    snapshots = []
    for _ in range(ENGINE_BACKUPS):
        before = committed(load_store.state_db)
        result = backup_engine.backup(
            load_store, tmp_path, verify="full", progress=fail_after(MAX_STEPS)
        )
        after = committed(load_store.state_db)
        assert result.restarts == 0
        assert result.pages > 2 * backup_engine.STEP_PAGES
        in_backup = assert_whole_transactions(result.path)
        assert before <= in_backup < after
        snapshots.append(in_backup)
    summary = running_writer.stop()
    assert summary["errors"] == []
    assert snapshots == sorted(set(snapshots))
