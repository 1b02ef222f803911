"""config/alerts/: the example rules parse, name only catalogued events and
metrics the code writes, and cover what the operator must be woken for."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from portunus.metrics_textfile import METRICS
from tests.support import REPO
from tests.test_events import catalogue

ALERTS = REPO / "config" / "alerts"
# Every Prometheus rules file, each with its promtool unit tests beside it
# (<name>.test.yaml).
PROM_RULE_FILES = sorted(
    p.name for p in ALERTS.glob("prometheus-*.yaml") if not p.name.endswith(".test.yaml")
)
MUST_ALERT_ON = {
    "startup.store_in_use",
    "startup.schema_version_too_new",
    "startup.unsupported_filesystem",
    "backup.failed",
    "replication.failed",
}


def rules(name: str) -> list[dict]:
    document = yaml.safe_load((ALERTS / name).read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def events_named(expr: str) -> set[str]:
    """Every event a LogQL expression matches on; only exact matchers allowed."""
    assert not re.search(r"event\s*(=~|!=|!~)", expr), f"use exact event= matchers: {expr}"
    return set(re.findall(r'event\s*=\s*"([^"]+)"', expr))


@pytest.mark.parametrize(
    "name", sorted(p.name for p in ALERTS.glob("*.yaml") if not p.name.endswith(".test.yaml"))
)
def test_every_rule_file_is_well_formed(name):
    """Prometheus-style rule groups: alert, expr, labels.severity, a summary."""
    found = rules(name)
    assert found
    for rule in found:
        assert re.match(r"^Portunus[A-Za-z]+$", rule["alert"])
        assert rule["expr"].strip()
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]
    assert len({r["alert"] for r in found}) == len(found)


def test_every_event_the_log_rules_name_is_in_the_catalogue():
    """A renamed event cannot silently disable an alert."""
    named = set().union(*(events_named(r["expr"]) for r in rules("loki-rules.yaml")))
    assert named and named <= catalogue(), named - catalogue()


def test_the_log_rules_cover_the_events_the_issue_requires():
    """Store in use, schema too new, unsupported filesystem, failed backup."""
    named = set().union(*(events_named(r["expr"]) for r in rules("loki-rules.yaml")))
    assert named >= MUST_ALERT_ON


def test_every_metric_the_prometheus_rules_name_is_written_by_the_code():
    """Metric names come from portunus.metrics_textfile.METRICS."""
    exprs = " ".join(r["expr"] for r in rules("prometheus-rules.yaml"))
    used = set(re.findall(r"\bportunus_[a-z_]+", exprs))
    assert used and used <= set(METRICS), used - set(METRICS)


def test_a_backup_older_than_26_hours_alerts():
    """time() - last success > 26 h, on the metric backups write."""
    (rule,) = [
        r
        for r in rules("prometheus-rules.yaml")
        if "portunus_backup_last_success_timestamp_seconds" in r["expr"] and "time()" in r["expr"]
    ]
    threshold = re.search(r">\s*(\d+)\s*\*\s*3600", rule["expr"])
    assert threshold and int(threshold[1]) == 26


def test_the_event_extractor_finds_matchers(tmp_path: Path):
    """Guard against an extractor that silently finds nothing."""
    assert events_named('{unit="x"} | logfmt | event="backup.failed" [5m]') == {"backup.failed"}
    with pytest.raises(AssertionError):
        events_named('{unit="x"} | logfmt | event=~"backup.*"')


# --- promtool: the rules checked and unit-tested by Prometheus's own tool ------

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian: apt-get install prometheus)",
)


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["promtool", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def unit_test_file(rules_name: str) -> Path:
    """prometheus-x.yaml is unit-tested by prometheus-x.test.yaml beside it."""
    return ALERTS / rules_name.replace(".yaml", ".test.yaml")


def unit_tests(rules_name: str) -> list[dict]:
    document = yaml.safe_load(unit_test_file(rules_name).read_text())
    assert document["rule_files"] == [rules_name]
    return [check for test in document["tests"] for check in test["alert_rule_test"]]


def test_every_prometheus_rules_file_has_its_unit_tests_beside_it():
    """A rules file without tests, or tests without their rules, fails here."""
    assert {"prometheus-rules.yaml", "prometheus-replication-rules.yaml"} <= set(PROM_RULE_FILES)
    test_files = {p.name for p in ALERTS.glob("*.test.yaml")}
    assert test_files == {unit_test_file(name).name for name in PROM_RULE_FILES}


@pytest.mark.parametrize(
    ("rules_name", "alert"),
    [(name, r["alert"]) for name in PROM_RULE_FILES for r in rules(name)],
)
def test_every_prometheus_alert_is_unit_tested_firing_and_silent(rules_name, alert):
    """At least one evaluation where it fires and one where it must not."""
    checks = [c for c in unit_tests(rules_name) if c["alertname"] == alert]
    assert any(c["exp_alerts"] for c in checks), f"{alert}: no test where it fires"
    assert any(not c["exp_alerts"] for c in checks), f"{alert}: no test where it is silent"


@pytest.mark.parametrize("rules_name", PROM_RULE_FILES)
def test_the_unit_tests_name_only_alerts_the_rules_define(rules_name):
    defined = {r["alert"] for r in rules(rules_name)}
    assert {c["alertname"] for c in unit_tests(rules_name)} <= defined


@needs_promtool
@pytest.mark.parametrize("rules_name", PROM_RULE_FILES)
def test_promtool_checks_the_rules(rules_name):
    done = promtool("check", "rules", ALERTS / rules_name)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
@pytest.mark.parametrize("rules_name", PROM_RULE_FILES)
def test_promtool_runs_the_unit_tests(rules_name):
    done = promtool("test", "rules", unit_test_file(rules_name))
    assert done.returncode == 0, done.stdout + done.stderr


BACKUPS, REPLICATION = "prometheus-rules.yaml", "prometheus-replication-rules.yaml"
# (rules file, alert, text in its rule, a change to it its tests must catch)
BROKEN_RULES = [
    (BACKUPS, "PortunusBackupTooOld", "> 26 * 3600", "> 25 * 3600"),
    (BACKUPS, "PortunusBackupLastAttemptFailed", "success == 0", "success == 2"),
    (BACKUPS, "PortunusBackupMetricsMissing", "for: 26h", "for: 20h"),
    (BACKUPS, "PortunusBackupsNoneKept", "count == 0", "count < 0"),
    (REPLICATION, "PortunusReplicaStale", "> 120", "> 240"),
    (REPLICATION, "PortunusReplicaStale", "for: 2m", "for: 1m"),
    (REPLICATION, "PortunusReplicationDown", "up == 0", "up == 1"),
    (REPLICATION, "PortunusReplicationDown", "for: 5m", "for: 3m"),
    (REPLICATION, "PortunusReplicationErrors", "[15m]) > 10", "[15m]) > 20"),
    (REPLICATION, "PortunusReplicationErrors", "[15m]) > 10", "[15m]) > 2"),
]


def test_every_prometheus_alert_has_a_broken_rule_case():
    """A new alert needs a case below showing its unit tests can fail."""
    defined = {(name, r["alert"]) for name in PROM_RULE_FILES for r in rules(name)}
    assert {(name, alert) for name, alert, _, _ in BROKEN_RULES} == defined


@needs_promtool
@pytest.mark.parametrize(("rules_name", "alert", "original", "broken"), BROKEN_RULES)
def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path, rules_name, alert, original, broken):
    """Each alert's tests fail when its rule is changed: they can fail."""
    text = (ALERTS / rules_name).read_text()
    assert text.count(original) == 1
    (tmp_path / rules_name).write_text(text.replace(original, broken))
    shutil.copy(unit_test_file(rules_name), tmp_path)
    done = promtool("test", "rules", tmp_path / unit_test_file(rules_name).name)
    assert done.returncode != 0
    assert f"alertname: {alert}," in done.stdout + done.stderr


def test_the_replication_rules_name_only_metrics_the_server_serves():
    """The stale-replica alert reads what GET /metrics renders."""
    from portunus.replication import metrics as replication_metrics

    class Replicator:
        up, failures, errors, last_sync = True, 0, 0, 1.0

    served = {
        line.split()[2]
        for line in replication_metrics.render(Replicator())
        if line.startswith("# TYPE")
    }
    exprs = " ".join(r["expr"] for r in rules("prometheus-replication-rules.yaml"))
    used = set(re.findall(r"\bportunus_[a-z_]+", exprs))
    assert "portunus_replication_last_sync_timestamp_seconds" in used
    assert used <= served, used - served
