"""The replicator's series on ``GET /metrics`` (absent without ``[replication]``)."""

from __future__ import annotations

import time

from portunus.replication.supervisor import Replicator


def render(replicator: Replicator | None, now: float | None = None) -> list[str]:
    if replicator is None:
        return []
    now = time.time() if now is None else now
    lines = [
        *_one("portunus_replication_up", "gauge",
              "1 while Litestream runs and reports the store as replicating.",
              int(replicator.up)),
        *_one("portunus_replication_failures_total", "counter",
              "Times the replicator exited while the server ran (replication.failed).",
              replicator.failures),
        *_one("portunus_replication_errors_total", "counter",
              "Error lines Litestream logged (failed syncs, uploads, compactions).",
              replicator.errors),
    ]  # fmt: skip
    if replicator.last_sync is not None:
        lines += _one(
            "portunus_replication_last_sync_timestamp_seconds", "gauge",
            "When Litestream last synced the store to the replica (Unix time).",
            round(replicator.last_sync, 3),
        )  # fmt: skip
        lines += _one(
            "portunus_replication_lag_seconds", "gauge",
            "Seconds since that sync: a write is off the host at most about this late.",
            round(max(0.0, now - replicator.last_sync), 3),
        )  # fmt: skip
    return lines


def _one(name: str, kind: str, help_text: str, value: float) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
