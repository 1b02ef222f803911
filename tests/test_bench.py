"""The backup benchmark harness (bench/) runs end to end and caches its store.

These tests prove the harness works; they assert no timings (figures are
recorded in docs/performance.md, never asserted).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import store_gen
from bench.commands import LABELS
from tests.support import REPO

HEADINGS = (
    "## 1. Idle copies",
    "## 2. Under a concurrent writer",
    "## 3. Restore",
    "## 4. Goals",
    "## 5. Machine",
)
EXPECTED_RUNS = {
    ("idle", "cp_fsync"),
    ("idle", "sqlite3_backup"),
    ("idle", "vacuum_into"),
    ("idle", "portunus_backup"),
    ("load", "portunus_backup"),
    ("load", "sqlite3_backup"),
    ("load", "stepped_100"),
    ("restore", "portunus_restore"),
    ("restore", "cp_fsync"),
}


def run_bench(*args: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "bench.backup_bench", *args]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory):
    if shutil.which("sqlite3") is None:
        pytest.skip("the benchmark compares against the sqlite3 CLI, which is not installed")
    workdir = tmp_path_factory.mktemp("bench")
    proc = run_bench("--quick", "--size-mib", "16", "--cap", "2", "--workdir", str(workdir))
    assert proc.returncode == 0, proc.stderr
    [raw] = (workdir / "results").glob("backup-bench-*.jsonl")
    records = [json.loads(line) for line in raw.read_text().splitlines()]
    return workdir, proc.stdout, raw, records


def test_quick_run_prints_every_section_and_approach(quick_run):
    """A quick run prints the idle, writer, restore, goals and machine tables and every approach."""
    _, table, _, _ = quick_run
    for heading in HEADINGS:
        assert heading in table
    for label in LABELS.values():
        assert label in table
    assert "copy phase alone (JSON `copy_seconds`)" in table
    # The regression guard: every goal's ratio, the restore's among them.
    assert "| restore (process wall, every check) ÷ `cp` + fsync" in table
    assert "| backup (process wall) ÷ `sqlite3 SRC .backup DST`, idle |" in table
    for rate in ("| 500/s |", "| max |", "| max, server-like |"):
        assert rate in table


def test_quick_run_keeps_one_json_line_per_measured_run(quick_run):
    """The raw file opens with machine and store, holds every run, and closes with an end line."""
    _, _, _, records = quick_run
    assert records[0]["kind"] == "meta" and records[-1]["kind"] == "end"
    assert {"nproc", "cpu", "kernel", "filesystem", "apsw_sqlite"} <= set(records[0]["machine"])
    runs = [r for r in records if r["kind"] == "run"]
    assert {(r["phase"], r["approach"]) for r in runs} == EXPECTED_RUNS
    for r in runs:
        assert r["wall_s"] > 0
        if r["phase"] == "load":
            assert r["writer_baseline"]["commits"] > 0 and r["writer_during"]["commits"] > 0


def test_quick_run_backs_up_under_a_writer_that_checkpoints_like_the_server(quick_run):
    """The server-like rows ran a writer whose background checkpointer did checkpoint."""
    _, _, _, records = quick_run
    server_like = [r for r in records if r.get("rate") == "max, server-like"]
    assert [r["approach"] for r in server_like] == ["portunus_backup"]
    for r in server_like:
        assert r["server_like_writer"] and r["completed"]
        assert r["writer_checkpoints"]["completed"] > 0, r["writer_checkpoints"]
    generic = [r for r in records if r.get("phase") == "load" and r not in server_like]
    assert generic and all(r["writer_checkpoints"] is None for r in generic)


def test_quick_run_copies_and_restores_whole_stores(quick_run):
    """Every idle copy and restore finished and holds the generated store's rows."""
    _, _, _, records = quick_run
    for r in records:
        if r.get("phase") in ("idle", "restore"):
            assert r["completed"] and r["output_ok"], r


def test_quick_run_cleans_its_scratch_files_but_keeps_the_store(quick_run):
    """Only the cached store and the results remain in the workdir."""
    workdir, _, _, _ = quick_run
    assert sorted(p.name for p in workdir.iterdir()) == ["results", "store"]
    assert (workdir / "store" / "16mib" / "data" / "state.db").is_file()


def test_report_renders_a_results_file_exactly_as_printed(quick_run):
    """--report prints the same table from the raw file alone, and the .md beside it matches."""
    _, table, raw, _ = quick_run
    again = run_bench("--report", str(raw))
    assert again.returncode == 0, again.stderr
    assert again.stdout == table
    assert raw.with_suffix(".md").read_text() == table


def test_generated_store_is_a_portunus_store_reused_while_its_size_matches(tmp_path: Path):
    """A second request for the same size reuses the store; another size regenerates it."""
    data_dir, info, reused = store_gen.cached_store(tmp_path, 1, seed=5)
    assert not reused and info.rows["audit_log"] > 0 and info.rows["operator_tokens"] == 1
    assert store_gen.cached_store(tmp_path, 1, seed=5)[2] is True
    _, bigger, reused = store_gen.cached_store(tmp_path, 2, seed=5)
    assert not reused and bigger.bytes > info.bytes
    verify = subprocess.run(
        [sys.executable, "-m", "portunus", "verify", str(data_dir / "state.db")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr


def test_profile_times_every_phase_of_a_backup_and_a_restore(tmp_path: Path):
    """bench.backup_profile prints each phase alone and the commands' walls."""
    argv = [sys.executable, "-m", "bench.backup_profile", "--size-mib", "16", "--repeat", "1"]
    proc = subprocess.run(
        [*argv, "--workdir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    for phase in (
        "| backup | hold the file (checkpoint, write lock, snapshot) |",
        "| backup | copy, hashed on the way (O_DIRECT where the filesystem allows) |",
        "| backup | quick_check of the held file |",
        "| backup | fsync of the copy |",
        "| restore | copy (copy_file_range) |",
        "| restore | integrity_check |",
        "| restore | migration handshake (none due) |",
        "| commands | ↳ start-up (wall − in-process) |",
        "| commands | `portunus-server restore` process wall |",
    ):
        assert phase in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
