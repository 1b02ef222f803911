"""What a running server logs when the world around it misbehaves: another
process changing or reading its store, a client that hangs up. Real server
subprocesses on loopback ports (stopped at teardown whatever the outcome:
tests/conftest.py)."""

from __future__ import annotations

import socket
import ssl
import time
from types import SimpleNamespace

import apsw
import pytest

from portunus.datadir import DataDir
from portunus.engine import tokens
from tests import serving, support
from tests.serving import START_TIMEOUT, free_port, start_server, write_config
from tests.test_cli_faults import immutable

serve_tmp = serving.serve_tmp


@pytest.fixture
def served(serve_tmp):
    """A populated store, served; its admin token."""
    data = DataDir(serve_tmp / "data")
    admin = tokens.bootstrap_admin(data, "ops")
    (serve_tmp / "home").mkdir()
    config = write_config(serve_tmp / "server.toml", free_port())
    server = start_server(data.path, config, support.clean_env(serve_tmp / "home"))
    return SimpleNamespace(server=server, data=data, admin=admin)


def wait_for_event(server, match, timeout: float = START_TIMEOUT) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in server.events() if match(e)]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no matching event within {timeout}s:\n{server.stderr()}")


def test_readyz_is_503_while_the_store_is_newer_than_the_binary(served):
    """Another binary migrated the store under the running server: /readyz
    says not ready (api.unavailable), and ready again once it is undone."""
    client = served.server.client()
    assert client.get("/readyz").status_code == 200
    outsider = apsw.Connection(str(served.data.state_db))
    try:
        with outsider:
            outsider.execute("INSERT INTO schema_migrations VALUES (999, 'from_the_future', 'x')")
        response = client.get("/readyz")
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "api.unavailable"
        with outsider:
            outsider.execute("DELETE FROM schema_migrations WHERE version = 999")
    finally:
        outsider.close()
    assert client.get("/readyz").json()["status"] == "ready"
    assert "api.unavailable" in [
        e.get("error") for e in served.server.events() if e["event"] == "http.request"
    ]


def post_raw(server, token: str, path: str, body: bytes) -> ssl.SSLSocket:
    """Send one HTTPS request and leave its answer unread on the open socket."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    raw = socket.create_connection(("127.0.0.1", server.port))
    tls = server.tls_context().wrap_socket(raw, server_hostname="127.0.0.1")
    tls.sendall(head.encode() + body)
    return tls


def writer_queue(server) -> float:
    metrics = server.client().get("/metrics").text
    return float(metrics.split("\nportunus_writer_queue ", 1)[1].split()[0])


def test_a_client_that_hangs_up_while_its_write_waits_is_logged_499(served):
    """Another process holds the write lock, so of two writes one runs
    (waiting on it) and the other waits in the writer's queue; then one
    client hangs up, its handler certainly awaiting its write. The request
    is logged as 499 (api.client_closed_request) and the server goes on."""
    server = served.server
    outsider = apsw.Connection(str(served.data.state_db))
    outsider.execute("BEGIN IMMEDIATE")
    kept = post_raw(server, served.admin, "/v1/clients", b'{"name": "kept"}')
    try:
        gone = post_raw(server, served.admin, "/v1/clients", b'{"name": "gone"}')
        deadline = time.monotonic() + START_TIMEOUT
        while writer_queue(server) < 1:
            assert time.monotonic() < deadline, server.stderr()
            time.sleep(0.01)
        gone.close()
        closed = wait_for_event(
            server, lambda e: e["event"] == "http.request" and e["status"] == 499
        )
    finally:
        outsider.execute("ROLLBACK")
        outsider.close()
        kept.close()
    assert closed["error"] == "api.client_closed_request"
    assert closed["path"] == "/v1/clients"
    assert server.client().get("/readyz").status_code == 200


def test_a_stop_while_another_process_reads_leaves_the_wal_and_says_so(served):
    """A CLI backup (here: any reader) holds a snapshot when the server
    stops: the WAL cannot be truncated; a warning, not an error, exit 0."""
    server = served.server
    assert server.client(served.admin).post("/v1/clients", json={"name": "e"}).status_code == 201
    reader = apsw.Connection(str(served.data.state_db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM clients").fetchall()
        assert server.stop() == 0, server.stderr()
        assert served.data.wal.stat().st_size > 0
    finally:
        reader.close()
    names = server.event_names()
    assert "server.checkpoint_incomplete" in names
    assert names[-1] == "server.stopped"
    assert not [e for e in server.events() if e["level"] == "error"], server.stderr()


def immutable_stops_open_writers(directory) -> bool:
    """Whether this kernel refuses writes through a descriptor opened before
    the file became immutable (recent Linux kernels do)."""
    probe = directory / "immutable-probe"
    with open(probe, "wb") as f, immutable(probe):
        try:
            f.write(b"x")
            f.flush()
        except PermissionError:
            return True
    return False


def test_a_background_checkpoint_that_fails_is_logged_at_debug_and_serving_goes_on(serve_tmp):
    """state.db cannot be written (immutable here: a failing disk in real
    life) while writes fill the WAL past the checkpoint threshold: the
    checkpointer's failure is a debug line (server.wal_checkpoint_failed),
    every write still succeeds (they go to the WAL), and once the file is
    writable again the stop folds the WAL in as usual."""
    if not immutable_stops_open_writers(serve_tmp):
        pytest.skip("this kernel lets open descriptors write to an immutable file")
    data = DataDir(serve_tmp / "data")
    admin = tokens.bootstrap_admin(data, "ops")
    (serve_tmp / "home").mkdir()
    config = write_config(serve_tmp / "server.toml", free_port())
    with open(config, "a") as f:
        f.write('log_level = "debug"\n')
    server = start_server(data.path, config, support.clean_env(serve_tmp / "home"))
    client = server.client(admin)
    with immutable(data.state_db):
        n = 0
        while "server.wal_checkpoint_failed" not in server.event_names():
            assert n < 5000, "the WAL never reached the checkpoint threshold"
            assert client.post("/v1/clients", json={"name": f"c{n}"}).status_code == 201
            n += 1
    assert server.stop() == 0, server.stderr()
    assert not data.wal.exists() or data.wal.stat().st_size == 0
    assert support.table_counts(data.state_db)["clients"] == n
    failed = [e for e in server.events() if e["event"] == "server.wal_checkpoint_failed"]
    assert failed[0]["level"] == "debug" and failed[0]["error"], failed
