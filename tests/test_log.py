"""Log values: logfmt scalars, never Python reprs; json keeps JSON types."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import structlog

from portunus import log as log_setup
from tests.support import table_counts


def logfmt_run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "portunus", "--log-format", "logfmt", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


def line_of(stderr: str, event: str) -> str:
    (line,) = [x for x in stderr.splitlines() if f" event={event} " in f" {x} "]
    return line


def fields(line: str) -> dict[str, str]:
    """key=value pairs of a logfmt line whose values hold no spaces."""
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def rendered(fmt: str, **values) -> str:
    stream = io.StringIO()
    log_setup.configure(fmt, stream=stream)
    structlog.get_logger().info("test.event", **values)
    return stream.getvalue()


def test_config_set_logs_a_list_comma_joined_in_logfmt(tmp_path: Path, env):
    """`new="['state', 'tls']"` was a Python repr; now new=state,tls."""
    path = tmp_path / "server.toml"
    path.write_text('[reset]\nscope = ["state"]\n')
    run = logfmt_run("--config", str(path), "config", "set", "reset.scope", "state,tls", env=env)
    assert run.returncode == 0, run.stderr
    line = line_of(run.stderr, "config.updated")
    assert "[" not in line and "'" not in line, line
    assert fields(line)["new"] == "state,tls"
    assert fields(line)["old"] == "state"


def test_config_set_logs_the_list_as_a_json_array(tmp_path: Path, cli):
    path = tmp_path / "server.toml"
    run = cli("--config", str(path), "config", "set", "reset.scope", "state,tls")
    assert run.code == 0, run.err
    (event,) = [e for e in run.events if e["event"] == "config.updated"]
    assert event["new"] == ["state", "tls"]
    assert event["created"] is True and event["old"] is None


def test_verify_logs_each_table_count_as_its_own_number(tmp_path: Path, store, env, cli):
    """`rows="{'audit_log': 7, ...}"` was a Python repr; now rows.audit_log=7 ..."""
    out = tmp_path / "b.db"
    assert cli("--data-dir", str(store.path), "backup", "--out", str(out)).code == 0
    run = logfmt_run("verify", str(out), env=env)
    assert run.returncode == 0, run.stderr
    line = line_of(run.stderr, "verify.completed")
    assert "{" not in line, line
    counts = {
        key.removeprefix("rows."): int(value)
        for key, value in fields(line).items()
        if key.startswith("rows.")
    }
    assert counts == table_counts(out)
    assert counts["audit_log"] > 0


def test_logfmt_flattens_nested_mappings_and_joins_sequences():
    line = rendered("logfmt", rows={"a": 1, "inner": {"b": 2}}, names=("x", "y"), none=[])
    assert fields(line) == {
        "level": "info",
        "event": "test.event",
        "rows.a": "1",
        "rows.inner.b": "2",
        "names": "x,y",
        "none": "",
        "ts": fields(line)["ts"],
    }


def test_a_secret_key_is_redacted_whole_before_flattening():
    line = rendered("logfmt", password={"a": "hunter2"})
    assert "hunter2" not in line and "password=[redacted]" in line


def test_a_newline_in_a_value_stays_on_one_logfmt_line():
    """One event per line, whatever a value holds (a traceback, a file name)."""
    out = rendered("logfmt", detail="first\nsecond")
    assert out.count("\n") == 1 and "first\\nsecond" in out


def test_json_keeps_json_types():
    (event,) = [json.loads(rendered("json", rows={"a": 1}, names=["x"], ok=True, gone=None))]
    assert event["rows"] == {"a": 1} and event["names"] == ["x"]
    assert event["ok"] is True and event["gone"] is None
