"""Modules imported on first use, so a command pays only for what it runs.

``portunus-server --help`` or ``status`` need neither the backup engine nor
tomlkit; importing every module at start-up cost more than the command
(docs/performance.md, "Cold start"). A name bound with :func:`module` is
imported the first time one of its attributes is read (through the normal,
thread-safe import machinery), then behaves as the module itself.
"""

from __future__ import annotations

import importlib
from typing import Any


class _LazyModule:
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def module(name: str) -> Any:
    """A stand-in for ``import name`` that imports on first attribute access."""
    return _LazyModule(name)
