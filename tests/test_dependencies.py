"""pyproject.toml's lower bounds and .ci/minimum-versions.txt say the same.

CI installs the project a second time with that file as pip constraints and
runs the suite on it, which makes the bounds true only while the two agree.
"""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.support import REPO

MINIMUMS = REPO / ".ci" / "minimum-versions.txt"
# NAME[extras] >= VERSION; a constraints file names the package without extras.
_REQUIREMENT = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[A-Za-z0-9,._-]+\])?\s*(==|>=)\s*([0-9][0-9.]*)$"
)


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def _release(version: str) -> tuple[int, ...]:
    """3.51 and 3.51.0.0 are the same release (PEP 440 pads with zeros)."""
    parts = [int(p) for p in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def parse(line: str) -> tuple[str, str, str]:
    found = _REQUIREMENT.match(line.split(";")[0].split("#")[0].strip())
    assert found, f"not NAME>=VERSION or NAME==VERSION: {line!r}"
    return _name(found[1]), found[2], found[3]


def declared() -> dict[str, tuple[str, str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    return {name: (op, version) for name, op, version in map(parse, lines)}


def pinned() -> dict[str, str]:
    lines = [raw.strip() for raw in MINIMUMS.read_text().splitlines()]
    found = [parse(line) for line in lines if line and not line.startswith("#")]
    assert all(op == "==" for _, op, _ in found), "the constraints pin exact versions"
    return {name: version for name, _, version in found}


def test_the_constraints_name_every_dependency_and_nothing_else():
    assert sorted(pinned()) == sorted(declared())


@pytest.mark.parametrize("name", sorted(declared()))
def test_each_pin_is_the_declared_lower_bound(name):
    """A bound raised (or lowered) in pyproject.toml without the pin is caught."""
    _, version = declared()[name]
    assert _release(pinned()[name]) == _release(version), (name, pinned()[name], version)


def test_the_linter_is_pinned_exactly():
    """tests/test_lint.py runs ruff inside the suite: a new ruff release must
    not fail CI with no change to the code."""
    assert declared()["ruff"][0] == "=="


def test_the_parser_sees_a_disagreement():
    """Guard against a comparison that cannot fail."""
    assert _release("3.51") == _release("3.51.0.0")
    assert _release("3.51") != _release("3.5")
    assert _release("24.2.0") != _release("24.1")
    with pytest.raises(AssertionError):
        parse("apsw~=3.51")


def test_ci_runs_the_readme_command_then_the_suite_on_the_minimums():
    """The README's test command first (newest releases), then a fresh
    environment installed with the constraints, running pytest too."""
    script = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    command = ".venv/bin/pip install -q -e '.[dev]' && .venv/bin/python -m pytest"
    assert command in readme and command in script
    minimum = "-e '.[dev]' -c .ci/minimum-versions.txt"
    assert script.index(command) < script.index(minimum)
    assert ".venv-min/bin/python -m pytest" in script.split(minimum, 1)[1]
    assert "set -euo pipefail" in script
