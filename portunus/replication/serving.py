"""Replication's place in ``serve``'s life.

Checkpointing: Litestream 0.5 keeps a read transaction open on the store
so that no checkpoint can move the WAL past what it has shipped, and
releases it only inside its own checkpoints, which it seals with a write
lock and follows up so that it never loses its place. A PASSIVE checkpoint
of ours could then never finish (it stops at Litestream's read mark), so
it would only burn the CPU re-sorting the WAL ten times a second; a
RESTART or TRUNCATE one would wait for that read lock and restart the WAL
behind Litestream's back, which makes it start over from a full snapshot.
So while the replicator runs, Litestream owns checkpointing (PASSIVE at
1000 pages, as ours) and the server's checkpointer stands down; it takes
over again while the replicator is down (a restarted Litestream then
notices a WAL that moved on, and snapshots), and at the clean stop the
TRUNCATE checkpoint runs only after the replicator has stopped.
"""

from __future__ import annotations

from portunus.config import Settings
from portunus.datadir import DataDir
from portunus.replication.settings import from_settings
from portunus.replication.supervisor import Replicator


def start_replication(settings: Settings, data_dir: DataDir, store) -> Replicator | None:
    """Start the replicator for a served store when ``[replication] url``
    is set; it stops (after a final sync) when the store closes."""
    rep = from_settings(settings)
    if rep is None:
        return None
    replicator = Replicator(
        rep,
        data_dir.state_db,
        log_level=settings.get("log_level"),
        drain_secs=settings.get("shutdown_drain_timeout_secs"),
    )
    store.checkpointer.stand_down = lambda: replicator.running
    store.before_checkpoint.append(replicator.stop)
    replicator.start()
    return replicator
