"""Durations as operators write them in ``server.toml``: ``"30d"``, ``"1w3d"``.

A base module: the config schema and the engine's retention rules both
read durations, and the config must not import the engine.
"""

from __future__ import annotations

import re
from datetime import timedelta

DURATION_PART = re.compile(r"(\d+)([smhdwy])")
DURATION = re.compile(r"(\d+[smhdwy])+")
DURATION_UNITS = {
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
    "y": timedelta(days=365),
}


def parse_duration(text: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"1w3d"``: s, m (minutes), h, d, w, y (365 d).

    Raises ValueError for anything else."""
    if not DURATION.fullmatch(text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(
        (int(n) * DURATION_UNITS[unit] for n, unit in DURATION_PART.findall(text)), timedelta()
    )
