"""portunus.metrics_textfile: node_exporter's textfile format, merged and atomic."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from portunus.metrics_textfile import METRICS, read, render, update

SAMPLE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]* -?[0-9.e+]+$")


def test_render_is_the_prometheus_text_format():
    """HELP and TYPE before each sample; integers without a fraction."""
    text = render({"portunus_backup_kept_count": 7, "portunus_backup_last_duration_seconds": 1.25})
    lines = text.splitlines()
    duration_help = METRICS["portunus_backup_last_duration_seconds"]
    assert lines == [
        f"# HELP portunus_backup_last_duration_seconds {duration_help}",
        "# TYPE portunus_backup_last_duration_seconds gauge",
        "portunus_backup_last_duration_seconds 1.25",
        f"# HELP portunus_backup_kept_count {METRICS['portunus_backup_kept_count']}",
        "# TYPE portunus_backup_kept_count gauge",
        "portunus_backup_kept_count 7",
    ]
    assert all(SAMPLE.match(line) for line in lines if not line.startswith("#"))
    assert text.endswith("\n")


def test_update_merges_with_what_the_file_already_says(tmp_path: Path):
    """A failed attempt keeps the last success time written earlier."""
    path = tmp_path / "portunus.prom"
    update(path, {"portunus_backup_last_success_timestamp_seconds": 1700000000})
    update(path, {"portunus_backup_last_attempt_success": 0})
    assert read(path) == {
        "portunus_backup_last_success_timestamp_seconds": 1700000000.0,
        "portunus_backup_last_attempt_success": 0.0,
    }


def test_update_writes_0644_whatever_the_umask_and_leaves_no_temp_file(tmp_path: Path):
    """node_exporter runs as another user and must read it."""
    path = tmp_path / "portunus.prom"
    old = os.umask(0o077)
    try:
        assert update(path, {"portunus_backup_kept_count": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["portunus.prom"]


def test_an_unwritable_textfile_is_a_warning_not_a_failure(tmp_path: Path):
    """Monitoring trouble must not fail a backup: update returns False."""
    assert (
        update(tmp_path / "missing-dir" / "portunus.prom", {"portunus_backup_kept_count": 1})
        is False
    )


def test_unknown_metric_names_are_a_programming_error(tmp_path: Path):
    """Only the documented metrics, which the alert rules rely on."""
    with pytest.raises(ValueError):
        update(tmp_path / "p.prom", {"portunus_nonsense": 1})


def test_foreign_lines_in_the_file_are_dropped(tmp_path: Path):
    """The file is ours alone; read() keeps only our metrics."""
    path = tmp_path / "portunus.prom"
    path.write_text("other_metric 5\nportunus_backup_kept_count 3\ngarbage\n")
    assert read(path) == {"portunus_backup_kept_count": 3.0}
