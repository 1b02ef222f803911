"""Replication under ``serve`` and ``restore --from-replica``, black-box:
the real server, the real Litestream, a ``file://`` replica."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from portunus import testpoints
from portunus.datadir import DataDir
from portunus.engine import tokens
from tests import serving, support
from tests.serving import free_port, start_server, write_config

serve_tmp = serving.serve_tmp
SYNC = "1s"
_SERVERS: list[serving.Server] = []  # started by replicated(); killed if a test fails


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    while _SERVERS:
        server = _SERVERS.pop()
        if server.proc.poll() is None:
            server.stop(signal.SIGKILL)


def replicated(root: Path, replica_url: str, env: dict[str, str], **replication) -> SimpleNamespace:
    """A served store with an admin token and [replication] url set."""
    home = root / "home"
    home.mkdir(exist_ok=True)
    data = DataDir(root / "data")
    admin = tokens.bootstrap_admin(data, "ops")
    config = write_config(
        root / "server.toml",
        free_port(),
        replication={"url": replica_url, "sync_interval": SYNC, **replication},
    )
    server = start_server(data.path, config, env)
    _SERVERS.append(server)
    started = server.wait_for("replication.started")
    return SimpleNamespace(server=server, data=data, admin=admin, config=config, pid=started["pid"])


def create_clients(server: serving.Server, admin: str, names: list[str]) -> None:
    api = server.client(admin)
    for name in names:
        response = api.post("/v1/clients", json={"name": name})
        assert response.status_code == 201, response.text


def client_names(state_db: Path) -> set[str]:
    import apsw

    conn = apsw.Connection(str(state_db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM clients")}
    finally:
        conn.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: only its parent's wait() is missing.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def wait_until_gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def restore_into(cli, root: Path, replica_url: str, *extra: str) -> tuple[support.Run, DataDir]:
    fresh = DataDir(root / f"fresh-{time.monotonic_ns()}")
    run = cli(
        "--data-dir", str(fresh.path), "restore", "--from-replica", "--replica", replica_url, *extra
    )  # fmt: skip
    return run, fresh


def wait_until_shipped(
    restore: Callable[[Path], support.Run], root: Path, names: list[str], within=60.0
) -> None:
    """Until ``restore(data_dir)`` (from the replica, into a throwaway data
    dir under ``root``) holds ``names``: what a few sync intervals ship,
    without a fixed sleep that a loaded machine (Litestream runs at nice 10)
    can outlast."""
    deadline = time.monotonic() + within
    while True:
        fresh = root / f"probe-{time.monotonic_ns()}"
        run = restore(fresh)
        if run.code == 0 and set(names) <= client_names(fresh / "state.db"):
            return
        assert time.monotonic() < deadline, f"not in the replica after {within}s:\n{run.err}"
        time.sleep(0.5)


def from_replica(cli, replica_url: str) -> Callable[[Path], support.Run]:
    """``restore --from-replica --replica URL`` into a given data dir."""
    return lambda data: cli(
        "--data-dir", str(data), "restore", "--from-replica", "--replica", replica_url
    )


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    return support.clean_env(home)


def test_disaster_drill_kill_9_then_restore_on_a_fresh_data_dir(serve_tmp, env, cli):
    """Writes acknowledged a few sync intervals before a kill -9 are in the
    replica; the replicator dies with its server; the restored store serves
    with the same admin token."""
    replica = f"file://{serve_tmp / 'replica'}"
    first = replicated(serve_tmp, replica, env)
    names = [f"edge{i}" for i in range(20)]
    create_clients(first.server, first.admin, names)
    wait_until_shipped(from_replica(cli, replica), serve_tmp, names)  # by the periodic sync alone
    first.server.stop(signal.SIGKILL)
    assert wait_until_gone(first.pid), "Litestream outlived its kill -9'd server"

    run, fresh = restore_into(cli, serve_tmp, replica)
    assert run.code == 0, run.err
    assert run.has_event("restore.replica_fetched") and run.has_event("restore.completed")
    assert set(names) <= client_names(fresh.state_db)
    assert not [p for p in fresh.path.iterdir() if p.name.startswith(".restore-")]

    # The new host goes on replicating into the same replica.
    config = write_config(serve_tmp / "again.toml", free_port(), replication={"url": replica})
    again = start_server(fresh.path, config, env)
    _SERVERS.append(again)
    listed = again.client(first.admin).get("/v1/clients")
    assert listed.status_code == 200
    assert set(names) <= {c["name"] for c in listed.json()["clients"]}
    create_clients(again, first.admin, ["on-the-new-host"])
    assert again.stop() == 0
    run, newest = restore_into(cli, serve_tmp, replica)
    assert run.code == 0, run.err
    assert {*names, "on-the-new-host"} <= client_names(newest.state_db)


def test_clean_stop_ships_every_acknowledged_write(serve_tmp, env, cli):
    """sync_interval far longer than the test: only the stop's final sync can
    have shipped these writes."""
    replica = f"file://{serve_tmp / 'replica'}"
    first = replicated(serve_tmp, replica, env, sync_interval="1h")
    first.server.wait_for("replication.snapshot_written")
    names = [f"late{i}" for i in range(10)]
    create_clients(first.server, first.admin, names)
    assert first.server.stop() == 0
    events = first.server.events()
    (stopped,) = [e for e in events if e["event"] == "replication.stopped"]
    assert stopped["final_sync"] is True
    order = [e["event"] for e in events]
    assert order.index("replication.stopped") < order.index("server.stopped")
    assert wait_until_gone(first.pid)

    run, fresh = restore_into(cli, serve_tmp, replica)
    assert run.code == 0, run.err
    assert set(names) <= client_names(fresh.state_db)


def test_a_server_stopped_while_its_replicator_starts_still_ships_its_writes(serve_tmp, env, cli):
    """The replicator is frozen before it becomes Litestream (a test point in
    its shim): no control socket, nothing shipped. Writes are acknowledged,
    the server is told to stop, and only then does Litestream start. The
    stop waits for it and syncs, so the writes are in the replica; a stop
    that gave up at once left the replica empty."""
    replica = f"file://{serve_tmp / 'replica'}"
    frozen_env = {**env, testpoints.ENV: "replication.before_exec"}
    first = replicated(serve_tmp, replica, frozen_env)
    assert wait_for_state(first.pid, "T"), "the replicator's shim did not stop itself"
    names = ["early0", "early1"]
    create_clients(first.server, first.admin, names)
    first.server.proc.send_signal(signal.SIGTERM)
    first.server.wait_for("server.stopping")
    time.sleep(1.0)  # the stop is now waiting for a replicator that has not started
    os.kill(first.pid, signal.SIGCONT)
    assert first.server.stop() == 0
    (stopped,) = [e for e in first.server.events() if e["event"] == "replication.stopped"]
    assert stopped["final_sync"] is True
    assert "replication.final_sync_failed" not in first.server.event_names()

    run, fresh = restore_into(cli, serve_tmp, replica)
    assert run.code == 0, run.err
    assert set(names) <= client_names(fresh.state_db)


def wait_for_state(pid: int, state: str, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == state:
                return True
        time.sleep(0.02)
    return False


def test_point_in_time_restore_between_two_batches(serve_tmp, env, cli):
    replica = f"file://{serve_tmp / 'replica'}"
    first = replicated(serve_tmp, replica, env)
    create_clients(first.server, first.admin, ["before0", "before1"])
    wait_until_shipped(from_replica(cli, replica), serve_tmp, ["before0", "before1"])
    time.sleep(1.1)  # `between` (whole seconds) after the LTX file that shipped them
    between = datetime.now(UTC).replace(microsecond=0)
    time.sleep(2)
    create_clients(first.server, first.admin, ["after0", "after1"])
    assert first.server.stop() == 0

    run, fresh = restore_into(cli, serve_tmp, replica, "--at", between.isoformat())
    assert run.code == 0, run.err
    names = client_names(fresh.state_db)
    assert {"before0", "before1"} <= names and not names & {"after0", "after1"}

    run, latest = restore_into(cli, serve_tmp, replica)
    assert run.code == 0, run.err
    assert {"before0", "after1"} <= client_names(latest.state_db)

    run, _ = restore_into(cli, serve_tmp, replica, "--at", "2001-01-01T00:00:00Z")
    assert run.code == 5
    (event,) = [e for e in run.events if e["event"] == "restore.replica_point_unavailable"]
    assert event["oldest_restorable"] in event["msg"]


def test_an_empty_replica_is_5_and_nothing_is_created(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    run, fresh = restore_into(cli, tmp_path, f"file://{tmp_path / 'empty'}")
    assert run.code == 5
    assert run.has_event("restore.replica_empty")
    # Refused into a data dir that did not exist: left as found, not created.
    assert not fresh.path.exists()


def test_from_replica_keeps_the_ordinary_refusals(serve_tmp, env, cli):
    """75 while a server runs, 6 over a state.db without --force: nothing changed."""
    replica = f"file://{serve_tmp / 'replica'}"
    first = replicated(serve_tmp, replica, env)
    first.server.wait_for("replication.snapshot_written")
    before = first.data.state_db.read_bytes()
    run = cli("--data-dir", str(first.data.path), "restore", "--from-replica", "--replica", replica,
              "--force")  # fmt: skip
    assert run.code == 75, run.err
    assert first.server.stop() == 0
    other = DataDir(serve_tmp / "other")
    tokens.bootstrap_admin(other, "someone-else")
    kept = other.state_db.read_bytes()
    run = cli("--data-dir", str(other.path), "restore", "--from-replica", "--replica", replica)
    assert run.code == 6
    assert other.state_db.read_bytes() == kept
    run = cli("--data-dir", str(other.path), "restore", "--from-replica", "--replica", replica,
              "--force")  # fmt: skip
    assert run.code == 0, run.err
    assert other.state_db.read_bytes() != kept
    assert before  # the served store was never touched by the refused restore


def test_a_killed_replicator_is_reported_and_restarted_while_the_api_serves(serve_tmp, env):
    replica = f"file://{serve_tmp / 'replica'}"
    first = replicated(serve_tmp, replica, env)
    os.kill(first.pid, signal.SIGKILL)
    failed = first.server.wait_for("replication.failed")
    assert failed["level"] == "error" and failed["restart_in_secs"] > 0
    assert first.server.client(first.admin).get("/v1/clients").status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        starts = [e for e in first.server.events() if e["event"] == "replication.started"]
        if len(starts) == 2:
            break
        time.sleep(0.1)
    assert len(starts) == 2, first.server.stderr()
    assert starts[1]["pid"] != first.pid and alive(starts[1]["pid"])
    create_clients(first.server, first.admin, ["after-restart"])
    assert first.server.stop() == 0
    assert wait_until_gone(starts[1]["pid"])


def test_every_line_litestream_writes_becomes_a_replication_event(serve_tmp, env):
    replica = f"file://{serve_tmp / 'replica'}"
    first = replicated(serve_tmp, replica, env)
    first.server.wait_for("replication.snapshot_written")
    assert first.server.stop() == 0
    lines = first.server.stderr().splitlines()
    assert all(line.startswith("{") for line in lines), lines
    ours = [e for e in first.server.events() if e["event"].startswith("replication.")]
    replicating = [e for e in ours if e["event"] == "replication.replicating"]
    assert replicating[0]["msg"] == "replicating to" and replicating[0]["level"] == "info"


def test_metrics_and_status_show_the_replica_without_credentials(serve_tmp, env, cli):
    from prometheus_client.parser import text_string_to_metric_families

    replica = f"file://{serve_tmp / 'replica'}"
    first = replicated(serve_tmp, replica, env)
    first.server.wait_for("replication.snapshot_written")
    deadline = time.monotonic() + 30  # the server asks its replicator every second
    while True:
        body = first.server.client().get("/metrics").text
        families = text_string_to_metric_families(body)
        samples = {s.name: s.value for f in families for s in f.samples}
        if samples["portunus_replication_up"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert samples["portunus_replication_up"] == 1
    assert samples["portunus_replication_last_sync_timestamp_seconds"] > time.time() - 60
    assert samples["portunus_replication_lag_seconds"] >= 0
    assert samples["portunus_replication_failures_total"] == 0

    run = cli("--data-dir", str(first.data.path), "--config", str(first.config), "status", "--json")
    assert run.code == 0, run.err
    import json

    found = json.loads(run.out)["replication"]
    assert found["url"] == replica and found["up"] is True
    assert found["last_sync_age_seconds"] is not None and found["oldest_restorable"]
    text = cli("--data-dir", str(first.data.path), "--config", str(first.config), "status")
    assert f"{replica} (up)" in text.out
    assert first.server.stop() == 0
    assert not (first.data.path / "replication.json").exists()

    after = cli("--data-dir", str(first.data.path), "--config", str(first.config), "status",
                "--json")  # fmt: skip
    found = json.loads(after.out)["replication"]
    assert found["up"] is False and found["problem"] == "no server is replicating this store"
    assert found["oldest_restorable"]


def test_under_sustained_writes_the_replica_never_restarts_from_a_snapshot(serve_tmp, env):
    """Litestream owns checkpointing while it runs: under a write load that
    fills the WAL past its checkpoint threshold again and again, it only
    ever writes its first snapshot, never one because the WAL was truncated
    or restarted under it; the server's checkpointer stays out of its way."""
    import threading

    data = DataDir(serve_tmp / "data")
    admin = tokens.bootstrap_admin(data, "ops")
    config = write_config(serve_tmp / "server.toml", free_port(),
                          replication={"url": f"file://{serve_tmp / 'replica'}"})  # fmt: skip
    config.write_text('log_level = "debug"\n' + config.read_text())
    server = start_server(data.path, config, env)
    _SERVERS.append(server)
    server.wait_for("replication.snapshot_written")
    stop = threading.Event()
    written = []

    def load(worker: int) -> None:
        api = server.client(admin)
        n = 0
        while not stop.is_set():
            created = api.post("/v1/clients", json={"name": f"load-{worker}-{n}"})
            assert created.status_code == 201, created.text
            n += 1
        written.append(n)

    workers = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 120
    try:
        # Enough load for Litestream to checkpoint (and restart the WAL) a
        # few times; bounded by the deadline, not timed.
        while time.monotonic() < deadline:
            checkpoints = [
                e
                for e in server.events()
                if (e["event"], e.get("msg")) == ("replication.log", "checkpoint")
            ]
            if len(checkpoints) >= 3:
                break
            time.sleep(0.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert len(checkpoints) >= 3, "the load never made Litestream checkpoint"
    assert server.stop() == 0
    events = server.events()
    snapshots = [e for e in events if e["event"] == "replication.snapshot_written"]
    reasons = {e.get("reason") for e in events if e.get("msg") == "sync"} - {None}
    assert len(snapshots) == 1, snapshots
    assert not reasons, reasons
    assert sum(written) > 0


def replicate_once(db: Path, replica: Path) -> None:
    """Ship ``db`` to a file replica with Litestream alone (no server)."""
    import subprocess
    import sys

    binary = Path(sys.executable).parent / "litestream"
    done = subprocess.run([str(binary), "replicate", "-once", str(db), f"file://{replica}"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_replica_of_something_else_is_7_and_a_newer_schema_78(tmp_path, cli):
    import sqlite3

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
    replicate_once(foreign, tmp_path / "foreign-replica")
    run, fresh = restore_into(cli, tmp_path, f"file://{tmp_path / 'foreign-replica'}")
    assert run.code == 7, run.err
    assert not fresh.state_db.exists()

    newer = DataDir(tmp_path / "newer")
    tokens.bootstrap_admin(newer, "ops")
    with sqlite3.connect(newer.state_db) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'x')")
    replicate_once(newer.state_db, tmp_path / "newer-replica")
    run, fresh = restore_into(cli, tmp_path, f"file://{tmp_path / 'newer-replica'}")
    assert run.code == 78, run.err
    assert run.has_event("startup.schema_version_too_new")
    # Refused into a data dir that did not exist: not created, no staged copy.
    assert not fresh.path.exists()


def test_a_failed_restore_from_the_replica_leaves_the_old_state(tmp_path, cli):
    """A damaged replica, over an existing store with --force: refused,
    the old store byte for byte as it was, no staging file left."""
    source = DataDir(tmp_path / "source")
    tokens.bootstrap_admin(source, "ops")
    replicate_once(source.state_db, tmp_path / "replica")
    for ltx in (tmp_path / "replica").rglob("*.ltx"):
        ltx.write_bytes(ltx.read_bytes()[:100])  # truncated uploads
    target = DataDir(tmp_path / "target")
    tokens.bootstrap_admin(target, "someone-else")
    kept = target.state_db.read_bytes()
    run = cli("--data-dir", str(target.path), "restore", "--from-replica", "--replica",
              f"file://{tmp_path / 'replica'}", "--force")  # fmt: skip
    assert run.code == 74, run.err
    assert run.has_event("restore.replica_failed")
    assert target.state_db.read_bytes() == kept
    assert not [p for p in target.path.iterdir() if p.name.startswith(".restore-")]


def test_a_killed_replica_restore_s_leftovers_are_swept_and_the_old_state_kept(tmp_path, cli):
    """What a kill -9 during the download leaves (Litestream's .tmp, the
    staging file) goes at the next restore; the state was never touched."""
    source = DataDir(tmp_path / "source")
    tokens.bootstrap_admin(source, "ops")
    replicate_once(source.state_db, tmp_path / "replica")
    target = DataDir(tmp_path / "target")
    tokens.bootstrap_admin(target, "someone-else")
    kept = target.state_db.read_bytes()
    leftovers = [
        target.path / ".restore-0123456789ab.db.tmp",
        target.path / ".restore-ba9876543210.db",
    ]
    for leftover in leftovers:
        leftover.write_bytes(b"partial download")
    assert target.state_db.read_bytes() == kept
    run = cli("--data-dir", str(target.path), "restore", "--from-replica", "--replica",
              f"file://{tmp_path / 'replica'}", "--force")  # fmt: skip
    assert run.code == 0, run.err
    assert not any(p.exists() for p in leftovers)
    assert not [p for p in target.path.iterdir() if p.name.startswith(".restore-")]


@pytest.mark.parametrize(
    ("line", "event", "level"),
    [
        ('level=INFO msg="replicating to" type=file', "replication.replicating", "info"),
        ('level=INFO msg="snapshot complete" txid=1', "replication.snapshot_written", "info"),
        ('level=INFO msg="compaction complete" level=1', "replication.compacted", "info"),
        ('level=DEBUG msg="ltx file uploaded" filename=x', "replication.uploaded", "debug"),
        ('level=DEBUG msg="replica sync" txid=2', "replication.synced", "debug"),
        ('level=INFO msg="litestream shut down"', "replication.shut_down", "info"),
        ('level=INFO msg="replica sync recovered"', "replication.sync_recovered", "info"),
        ('level=INFO msg="something new"', "replication.log", "info"),
        ('level=WARN msg="slow upload" secs=3', "replication.warning", "warning"),
        ('level=ERROR msg="sync error" err="timeout"', "replication.error", "error"),
        ("Error: cannot open database", "replication.error", "error"),
    ],
)
def test_each_kind_of_litestream_line_has_its_catalogued_event(line, event, level):
    """Litestream's messages map to their catalogued names, with its level
    kept and its wording in msg; anything else falls back by level, so no
    line is lost (the live server test above sees the common ones)."""
    from portunus.replication.logs import translate

    translated = translate(f"time=2026-12-04T10:00:00Z {line}")
    assert (translated.event, translated.level) == (event, level)
