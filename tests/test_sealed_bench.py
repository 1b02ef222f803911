"""bench/sealed_bench.py runs end to end on a small store and prints its table."""

from __future__ import annotations

import subprocess
import sys

from tests.support import REPO


def test_the_sealed_benchmark_prints_both_kinds_side_by_side(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.sealed_bench", "--size-mib", "8", "--rounds", "1",
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if "|" in line}
    for name in ("backup plain", "backup sealed", "restore plain", "restore sealed"):
        assert name in rows, proc.stdout
    ratio = rows["backup sealed"].split("|")[4].strip()
    assert float(ratio) > 0
