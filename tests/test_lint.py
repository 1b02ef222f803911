"""ruff, the one linter and formatter, run as part of the suite (CI runs it too)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO

TARGETS = ["portunus", "tests", "bench", "tasks.py"]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff_is_clean(command):
    """The tree passes `ruff check` and `ruff format --check` (what `invoke lint` runs)."""
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *command, *TARGETS],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
