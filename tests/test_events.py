"""The event catalogue (docs/events.md) and the code stay in step."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.support import REPO

EVENT_NAME = re.compile(r"^[a-z_]+(\.[a-z_]+)*$")
LOG_METHODS = {"debug", "info", "warning", "error", "critical", "exception", "msg"}


def catalogue() -> set[str]:
    text = (REPO / "docs" / "events.md").read_text()
    return set(re.findall(r"^\| `([a-z_.]+)` \|", text, flags=re.M))


def _strings_named_as_events(tree: ast.AST) -> set[str]:
    """Event names in the code: the first argument of log.<level>(...),
    ``event=...`` keywords, and ``default_event = ...`` class attributes."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr in LOG_METHODS
                and isinstance(func.value, ast.Name)
                and func.value.id in ("log", "logger")
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.add(node.args[0].value)
            for kw in node.keywords:
                if kw.arg in (
                    "event",
                    "failure_event",
                    "missing_event",
                    "not_sqlite_event",
                    "io_event",
                    "live_wal_event",
                    "mismatch_event",
                    "absent_event",
                ) and isinstance(kw.value, ast.Constant):
                    found.add(kw.value.value)
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and any(isinstance(t, ast.Name) and t.id == "default_event" for t in node.targets)
        ):
            found.add(node.value.value)
    return {name for name in found if isinstance(name, str)}


def events_in_code() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "portunus").rglob("*.py"):
        names |= _strings_named_as_events(ast.parse(path.read_text(), str(path)))
    return names


def test_every_event_the_code_emits_is_in_the_catalogue():
    missing = events_in_code() - catalogue()
    assert not missing, f"add these to docs/events.md: {sorted(missing)}"


def test_every_catalogued_event_is_emitted_somewhere():
    stale = catalogue() - events_in_code()
    assert not stale, f"docs/events.md lists events no code emits: {sorted(stale)}"


def test_event_names_are_dotted_lowercase():
    bad = [n for n in events_in_code() if not EVENT_NAME.match(n)]
    assert not bad


def test_the_scanner_finds_events_it_should(tmp_path: Path):
    """Guard against a scanner that silently finds nothing."""
    tree = ast.parse(
        'log.info("a.b", x=1)\nraise E("m", event="c.d")\nclass X:\n    default_event = "e.f"\n'
    )
    assert _strings_named_as_events(tree) == {"a.b", "c.d", "e.f"}


def test_runtime_events_of_a_successful_backup_are_catalogued(store):
    """Events really emitted by an engine run are in the catalogue too."""
    from portunus.engine.backup import backup

    with capture_logs() as logs:
        backup(store, store.path.parent / "b.db")
    names = {entry["event"] for entry in logs}
    assert "backup.completed" in names
    assert names <= catalogue()


def test_runtime_events_of_a_refused_backup_are_catalogued(store):
    """A backup refused by the engine (its destination exists), reported the
    way the CLI reports it (``tasks.report``, the one place an error becomes
    a log line): the error event it logs is in the catalogue."""
    from portunus.engine.backup import backup
    from portunus.errors import WouldOverwrite
    from portunus.tasks import report

    taken = store.path.parent / "taken.db"
    taken.write_bytes(b"an operator's file")
    with capture_logs() as logs:
        with pytest.raises(WouldOverwrite) as refused:
            backup(store, taken)
        report(refused.value)
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["backup.destination_exists"]
    assert errors[0]["exit_code"] == 6
    assert {entry["event"] for entry in logs} <= catalogue()
    assert taken.read_bytes() == b"an operator's file"
