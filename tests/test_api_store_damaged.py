"""A store damaged while the server runs: the request that meets the damage
gets a 503 with a stable error (never SQLite's text), the server logs it
once, /readyz says not ready from then on, and writes are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from portunus.datadir import DataDir
from portunus.engine import tokens as token_engine
from portunus.store.connection import open_store
from tests import serving, support
from tests.serving import free_port, start_server, write_config
from tests.test_store_refusals import damage_table

serve_tmp = serving.serve_tmp

SQLITE_WORDS = ("malformed", "disk image", "sqlite", "corrupterror", "btree")


@pytest.fixture
def damaged(serve_tmp: Path):
    """A served store whose ``rules`` table is overwritten on disk while it runs."""
    data = DataDir(serve_tmp / "data")
    admin_token = token_engine.bootstrap_admin(data, "ops")
    conn = open_store(data.state_db)
    with conn:
        support.add_client_with_rules(conn, "edge0", 3)
    conn.close()
    (serve_tmp / "home").mkdir()
    config = write_config(serve_tmp / "server.toml", free_port())
    server = start_server(data.path, config, support.clean_env(serve_tmp / "home"))
    try:
        admin = server.client(admin_token)
        assert admin.get("/readyz").status_code == 200
        damage_table(data.state_db, "rules")
        # A commit changes the WAL index, so every reader drops its page cache
        # and the next read of `rules` comes from the damaged file.
        assert admin.post("/v1/clients", json={"name": "edge1"}).status_code == 201
        yield server, admin
    finally:
        server.stop()


def test_damage_found_at_run_time_is_a_503_an_event_and_not_ready(damaged):
    server, admin = damaged
    response = admin.get("/v1/rules")
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "api.store_corrupt"
    assert "restore" in response.json()["hint"]
    assert not any(word in response.text.lower() for word in SQLITE_WORDS), response.text
    ready = admin.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["error"] == "api.store_corrupt"
    assert admin.get("/healthz").status_code == 200  # the process itself is fine
    refused = admin.post("/v1/clients", json={"name": "edge2"})
    assert refused.status_code == 503 and refused.json()["error"] == "api.store_corrupt"
    events = server.events()
    (found,) = [e for e in events if e["event"] == "server.store_corrupt"]
    assert "malformed" in found["sqlite_error"]
    statuses = [e["status"] for e in events if e["event"] == "http.request"]
    assert 500 not in statuses and statuses.count(503) == 3
    assert "internal_error" not in [e["event"] for e in events]
