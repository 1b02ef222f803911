"""While Litestream replicates, it owns checkpointing: the server's
checkpointer (whose PASSIVE checkpoints could never get past Litestream's
read lock) makes no attempt; the clean stop's TRUNCATE comes after the
replicator stopped. In-process: a real store, a real Litestream."""

from __future__ import annotations

import time
from pathlib import Path

from portunus import config
from portunus.replication.serving import start_replication
from portunus.server.store import CHECKPOINT_PAGES
from tests.test_server_checkpoint import commits_for, wal_bytes, write_padded


def replication_settings(tmp_path: Path) -> config.Settings:
    path = tmp_path / "server.toml"
    path.write_text(f'[replication]\nurl = "file://{tmp_path / "replica"}"\n')
    return config.load(path, required=True)


def test_the_checkpointer_stands_down_while_litestream_runs(server_store, store, tmp_path):
    replicator = start_replication(replication_settings(tmp_path), store, server_store)
    assert replicator is not None and replicator.running
    before = server_store.checkpointer.attempts
    write_padded(server_store, commits_for(3 * CHECKPOINT_PAGES))
    time.sleep(1)  # give the checkpointer thread its chances
    assert server_store.checkpointer.attempts == before
    assert server_store.checkpointer.catch_ups == 0
    server_store.close()  # final sync, replicator stopped, then TRUNCATE
    assert not replicator.running
    assert wal_bytes(store) == 0


def test_without_replication_the_checkpointer_works_as_before(server_store, store, tmp_path):
    path = tmp_path / "server.toml"
    path.write_text("")
    assert start_replication(config.load(path), store, server_store) is None
    write_padded(server_store, commits_for(2 * CHECKPOINT_PAGES))
    deadline = time.monotonic() + 60
    while server_store.checkpointer.attempts == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server_store.checkpointer.attempts > 0
