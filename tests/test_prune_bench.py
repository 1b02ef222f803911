"""bench/prune_bench.py runs end to end (timings are printed, never asserted)."""

from __future__ import annotations

import subprocess
import sys

from tests.support import REPO


def test_the_quick_prune_benchmark_prints_its_table(tmp_path):
    """--quick: 1,000 backups, every row present, the goal line, no leftovers."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.prune_bench", "--quick", "--workdir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + 6
    assert "`portunus-server config show`" in run.stdout
    assert "Goal: plan for 1,000 backups under 1 s:" in run.stdout
    assert list(tmp_path.iterdir()) == []
