"""Every documented event and exit code is produced by some test.

docs/events.md and the exit-code table (portunus/errors.py) are contracts;
one that no test brings about can break unseen. These checks read the test
sources: an event counts when a test names it (``has_event("x")``,
``e["event"] == "x"``, ...) other than to assert it is absent; an exit code
counts when a test compares a code to it (``run.code == 74``,
``e["exit_code"] == 74``). A new event or code therefore needs a test that
produces it before this passes.
"""

from __future__ import annotations

import re
from pathlib import Path

from portunus.errors import EXIT_CODES
from tests.support import REPO
from tests.test_events import catalogue

# ``"x" not in names`` and ``not run.has_event("x")`` assert an absence.
_ABSENT_AFTER = re.compile(r"\s*not\s+in\b")
_ABSENT_BEFORE = re.compile(r"\bnot\s+[\w.]+\(\s*$")
_CODE_COMPARED = re.compile(r"\b(?:code|returncode|exit_code)\b[\"'\]]*\s*==\s*(\d+)\b")


def sources_of_the_tests() -> dict[Path, str]:
    here = Path(__file__).resolve()
    return {
        path: path.read_text()
        for path in sorted((REPO / "tests").glob("*.py"))
        if path.resolve() != here and path.name != "test_events.py"
    }


def produced(event: str, text: str) -> bool:
    """``event`` is named in ``text`` somewhere other than as an absence."""
    for quoted in (f'"{event}"', f"'{event}'"):
        start = text.find(quoted)
        while start != -1:
            end = start + len(quoted)
            if not _ABSENT_AFTER.match(text, end) and not _ABSENT_BEFORE.search(
                text, max(0, start - 40), start
            ):
                return True
            start = text.find(quoted, end)
    return False


def test_every_catalogued_event_is_produced_by_a_test():
    sources = sources_of_the_tests().values()
    unproduced = sorted(e for e in catalogue() if not any(produced(e, s) for s in sources))
    assert unproduced == [], f"no test produces these documented events: {unproduced}"


def test_every_exit_code_is_produced_by_a_test():
    texts = sources_of_the_tests().values()
    compared = {int(code) for text in texts for code in _CODE_COMPARED.findall(text)}
    unproduced = sorted(set(EXIT_CODES) - compared)
    assert unproduced == [], f"no test produces these documented exit codes: {unproduced}"


def test_the_scanner_tells_a_produced_event_from_an_absent_one():
    """Guard against a scanner that counts everything, or nothing."""
    assert produced("a.b", 'assert run.has_event("a.b")')
    assert produced("a.b", 'assert [e["event"] for e in run.events] == ["a.b"]')
    assert not produced("a.b", 'assert "a.b" not in run.event_names')
    assert not produced("a.b", 'assert not run.has_event("a.b"), run.err')
    assert produced("a.b", 'assert "a.b" not in x\nassert run.has_event("a.b")')
    assert produced("a.b", "assert e['event'] == 'a.b'")
    assert _CODE_COMPARED.findall('assert run.code == 74\nassert e["exit_code"] == 7') == [
        "74",
        "7",
    ]
    assert _CODE_COMPARED.findall("assert run.code != 1") == []
