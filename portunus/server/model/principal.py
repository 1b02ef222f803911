"""Who is calling: an operator token (admin or viewer) or a client."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    kind: str  # "operator" or "client"
    id: int
    name: str
    role: str  # "admin", "viewer" or "client"

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"{self.kind}:{self.name}"
