"""The import graph points one way: adapters -> engine -> store -> base.

The base modules (config, tls, durable, durations, errors, ...) and the
store are below the engine: none of them imports anything under
``portunus.engine``, so the engine can grow without dragging the config
reader or the store into cycles (issue 10, item 6).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import REPO

PACKAGE = REPO / "portunus"
ADAPTERS = {"cli.py", "tasks.py", "serve.py", "__main__.py"}


def _below_the_engine() -> list[Path]:
    base = [p for p in PACKAGE.glob("*.py") if p.name not in ADAPTERS]
    return sorted(base + list((PACKAGE / "store").rglob("*.py")))


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", _below_the_engine(), ids=lambda p: str(p.relative_to(REPO)))
def test_base_and_store_modules_never_import_the_engine(path: Path):
    """An upward arrow here is a layering bug: move the helper down instead."""
    upward = sorted(n for n in _imported_modules(path) if n.startswith("portunus.engine"))
    assert upward == [], f"{path.relative_to(REPO)} imports {upward}"


def test_the_check_sees_every_base_module():
    """The list is not empty by accident (a moved package would make it so)."""
    names = {p.name for p in _below_the_engine()}
    assert {"config.py", "tls.py", "durable.py", "durations.py", "live.py"} <= names
