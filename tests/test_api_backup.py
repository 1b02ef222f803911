"""Online backups while the API takes writes: through ``POST /v1/admin/backup``
and through the CLI, with rule writes running from threads the whole time;
then a SIGTERM in the middle of such a load."""

from __future__ import annotations

import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import apsw
import httpx
import pytest

from portunus.datadir import DataDir
from portunus.engine import tokens
from portunus.engine.verify import verify
from portunus.store.connection import open_store
from tests import serving, support
from tests.serving import free_port, start_server, write_config

WRITER_THREADS = 6
MIN_WRITES = 300
MIN_BACKUPS = 2  # of each kind, all taken while the writes run
PAD_MIB = 24  # enough that each backup takes a while

serve_tmp = serving.serve_tmp


def padded_store(data: DataDir) -> str:
    """An admin token, two clients, and ~PAD_MIB of old audit rows."""
    admin = tokens.bootstrap_admin(data, "ops")
    conn = open_store(data.state_db)
    with conn:
        for name in ("edge-a", "edge-b"):
            support.add_client_with_rules(conn, name, 0)
        filler = json.dumps({"note": "x" * 4000})
        conn.executemany(
            "INSERT INTO audit_log (at, actor, action, resource, details)"
            " VALUES ('2020-01-01T00:00:00.000Z', 'seed', 'seed', 'seed', ?)",
            [(filler,)] * (PAD_MIB * 256),
        )
    conn.close()
    return admin


def rule_body(thread: int, n: int) -> dict:
    return {
        "client": "edge-a" if thread % 2 else "edge-b",
        "protocol": "tcp",
        "listen_start": 10000 + thread * 5000 + n,
        "targets": [{"host": f"10.0.{thread}.{n % 250 + 1}", "port": 8080}],
    }


@dataclass
class Load:
    """What one writer thread saw."""

    statuses: list[int] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def write_rules(server, token: str, thread: int, stop: threading.Event, load: Load) -> None:
    """Rule writes on one keep-alive connection until ``stop`` (or a dead server)."""
    with httpx.Client(
        base_url=server.url,
        verify=server.tls_context(),
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    ) as client:
        for n in range(5000):
            if stop.is_set():
                return
            try:
                response = client.post("/v1/rules", json=rule_body(thread, n))
            except httpx.TransportError as exc:
                load.errors.append(repr(exc))
                return
            load.statuses.append(response.status_code)
            if response.status_code == 201:
                load.acked.append(response.json()["id"])


def rules_match_their_audit_rows(path: Path) -> tuple[int, int]:
    """(rules, rule.create audit rows) in a backup: equal when every rule and
    its audit row went into the snapshot together."""
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rules = conn.execute("SELECT count(*) FROM rules").fetchall()[0][0]
        created = conn.execute(
            "SELECT count(*) FROM audit_log WHERE action='rule.create'"
        ).fetchall()[0][0]
        return rules, created
    finally:
        conn.close()


@pytest.fixture
def loaded(serve_tmp):
    data = DataDir(serve_tmp / "data")
    admin = padded_store(data)
    backups = serve_tmp / "backups"
    backups.mkdir()
    (serve_tmp / "home").mkdir()
    env = support.clean_env(serve_tmp / "home")
    config = write_config(serve_tmp / "server.toml", free_port(), backup={"dir": str(backups)})
    server = start_server(data.path, config, env)
    yield SimpleNamespace(server=server, admin=admin, data=data, backups=backups, env=env)
    server.stop()


def test_backups_through_the_api_and_the_cli_during_rule_writes_are_consistent(loaded, tmp_path):
    """Writes from threads run until every backup is done: 0 failed
    requests, every backup verifies, each one a consistent snapshot."""
    server = loaded.server
    stop = threading.Event()
    loads = [Load() for _ in range(WRITER_THREADS)]
    api_backups: list[Path] = []
    cli_backups: list[Path] = []

    def through_the_api() -> None:
        with server.client(loaded.admin) as admin:
            while len(api_backups) < MIN_BACKUPS:
                response = admin.post("/v1/admin/backup")
                assert response.status_code == 201, response.text
                api_backups.append(Path(response.json()["path"]))

    def through_the_cli() -> None:
        while len(cli_backups) < MIN_BACKUPS:
            out = tmp_path / f"cli-{len(cli_backups)}.db"
            run = support.run_cli(
                "--data-dir", str(loaded.data.path), "backup", "--out", str(out), env=loaded.env
            )
            assert run.code == 0, run.err
            cli_backups.append(out)

    with ThreadPoolExecutor(WRITER_THREADS + 2) as pool:
        writers = [
            pool.submit(write_rules, server, loaded.admin, t, stop, loads[t])
            for t in range(WRITER_THREADS)
        ]
        backups = [pool.submit(through_the_api), pool.submit(through_the_cli)]
        for job in backups:
            job.result()
        while sum(len(load.statuses) for load in loads) < MIN_WRITES:
            assert not any(w.done() for w in writers), [load.errors for load in loads]
        stop.set()
        for w in writers:
            w.result()

    assert [load.errors for load in loads] == [[]] * WRITER_THREADS
    statuses = [s for load in loads for s in load.statuses]
    assert set(statuses) == {201} and len(statuses) >= MIN_WRITES
    rule_counts = []
    for path in api_backups + cli_backups:
        assert verify(path).integrity == "ok"
        rules, created = rules_match_their_audit_rows(path)
        assert rules == created
        rule_counts.append(rules)
    # Every backup finished while the writes still ran.
    assert max(rule_counts) < len(statuses)
    events = server.event_names()
    assert "internal_error" not in events and "backup.failed" not in events


def test_sigterm_under_write_load_loses_no_acknowledged_write(loaded):
    """In-flight requests finish during the drain; every 201 the clients saw
    is in the store after the stop, and the WAL is empty."""
    server = loaded.server
    stop = threading.Event()
    loads = [Load() for _ in range(WRITER_THREADS)]
    with ThreadPoolExecutor(WRITER_THREADS) as pool:
        writers = [
            pool.submit(write_rules, server, loaded.admin, t, stop, loads[t])
            for t in range(WRITER_THREADS)
        ]
        while sum(len(load.acked) for load in loads) < 50:
            assert not any(w.done() for w in writers), [load.errors for load in loads]
        assert server.stop(signal.SIGTERM) == 0
        stop.set()
        for w in writers:
            w.result()

    acked = {rule_id for load in loads for rule_id in load.acked}
    assert {s for load in loads for s in load.statuses} == {201}
    wal = loaded.data.wal
    assert not wal.exists() or wal.stat().st_size == 0
    conn = apsw.Connection(str(loaded.data.state_db), flags=apsw.SQLITE_OPEN_READONLY)
    stored = {row[0] for row in conn.execute("SELECT id FROM rules")}
    conn.close()
    assert acked <= stored
    assert server.event_names()[-1] == "server.stopped"
