"""``status``'s replication section: the replica (without credentials),
whether the server's replicator is up, its last sync and that sync's age,
and the window a point-in-time restore can reach."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from portunus.datadir import DataDir
from portunus.errors import PortunusError
from portunus.replication.restore import replica_window
from portunus.replication.settings import Replication
from portunus.replication.supervisor import POINTER_NAME, last_sync


@dataclass(frozen=True)
class ReplicationStatus:
    url: str
    up: bool
    last_sync: str | None = None
    last_sync_age_seconds: int | None = None
    oldest_restorable: str | None = None
    newest_restorable: str | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def replication_status(
    rep: Replication, data_dir: DataDir, holder: tuple[str, str] | None
) -> ReplicationStatus:
    up, synced = _ask_the_server(data_dir, holder)
    problem = None
    oldest = newest = None
    try:
        window = replica_window(rep, data_dir.state_db)
    except PortunusError as exc:
        problem = exc.message
    else:
        if window is None:
            problem = "the replica holds nothing yet"
        else:
            oldest, newest = _rfc3339(window.oldest), _rfc3339(window.newest)
    if not up and problem is None:
        problem = (
            "no server is replicating this store"
            if holder is None
            else ("the server's replicator is not up")
        )
    return ReplicationStatus(
        url=rep.public_url,
        up=up,
        last_sync=_rfc3339(datetime.fromtimestamp(synced, UTC)) if synced else None,
        last_sync_age_seconds=int(time.time() - synced) if synced else None,
        oldest_restorable=oldest,
        newest_restorable=newest,
        problem=problem,
    )


def _ask_the_server(data_dir: DataDir, holder) -> tuple[bool, float | None]:
    """The running server's replicator, through the pointer it leaves in
    the data dir; trusted only when that server holds the lock."""
    if holder is None or holder[1] != "serve":
        return False, None
    try:
        pointer = json.loads((data_dir.path / POINTER_NAME).read_text())
        if str(pointer["pid"]) != str(holder[0]):
            return False, None
        return last_sync(Path(pointer["socket"]), data_dir.state_db)
    except (OSError, ValueError, KeyError, http.client.HTTPException):
        return False, None


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
