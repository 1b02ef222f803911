"""``portunus-server serve``: the start-up guards, the lock held while
serving, and the clean stop. Real server subprocesses on loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import stat
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import apsw
import httpx
import pytest
from cryptography import x509

from portunus.datadir import LEGACY_FILES, DataDir
from portunus.engine import tokens
from portunus.serve import Listen
from portunus.store.connection import open_store
from portunus.store.lock import probe_holder
from portunus.tls import generate_self_signed
from tests import serving, support
from tests.serving import START_TIMEOUT, free_port, start_server, write_config

serve_tmp = serving.serve_tmp


def serve_cli(run, data: Path, config: Path):
    """``serve`` expected to refuse: it must exit on its own, and quickly."""
    return run("--data-dir", str(data), "--config", str(config), "serve", timeout=60)


# --- one server for the tests that need it running --------------------------


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A populated store served for the whole module, with [backup] dir set."""
    root = tmp_path_factory.mktemp("serving")
    home = root / "home"
    home.mkdir()
    data = DataDir(root / "data")
    admin = tokens.bootstrap_admin(data, "ops")
    conn = open_store(data.state_db)
    with conn:
        support.add_client_with_rules(conn, "edge0", 3)
    conn.close()
    (root / "backups").mkdir()
    config = write_config(root / "server.toml", free_port(), backup={"dir": str(root / "backups")})
    env = support.clean_env(home)
    server = start_server(data.path, config, env)
    yield SimpleNamespace(server=server, data=data, config=config, env=env, root=root, admin=admin)
    server.stop()


def test_second_serve_exits_75_naming_the_first_pid_while_the_first_keeps_serving(running):
    """Two servers on one data dir: the second is refused, the first unharmed."""
    second = support.run_cli(
        "--data-dir",
        str(running.data.path),
        "--config",
        str(running.config),
        "serve",
        env=running.env,
        timeout=60,
    )
    assert second.code == 75
    refusal = second.events[-1]
    assert refusal["event"] == "startup.store_in_use"
    assert refusal["pid"] == running.server.proc.pid
    assert refusal["holder"] == "serve"
    assert running.server.client().get("/readyz").status_code == 200


def test_backup_cli_works_while_serving_and_restore_is_refused_75(running, tmp_path):
    """backup reads beside the server; restore --force would swap the file
    under it, so it refuses with 75 and the state stays."""
    out = tmp_path / "b.db"
    backup = support.run_cli(
        "--data-dir", str(running.data.path), "backup", "--out", str(out), env=running.env
    )
    assert backup.code == 0, backup.err
    assert support.run_cli("verify", str(out), env=running.env).code == 0
    before = support.table_counts(running.data.state_db)

    restore = support.run_cli(
        "--data-dir",
        str(running.data.path),
        "restore",
        "--in",
        str(out),
        "--force",
        env=running.env,
    )
    assert restore.code == 75
    assert restore.has_event("startup.store_in_use")
    assert support.table_counts(running.data.state_db) == before
    assert running.server.client().get("/readyz").status_code == 200


def test_reset_confirm_is_refused_75_while_serving(running):
    """reset --confirm removes nothing while a server holds the store."""
    reset = support.run_cli(
        "--data-dir", str(running.data.path), "reset", "--confirm", env=running.env
    )
    assert reset.code == 75
    assert reset.has_event("startup.store_in_use")
    assert running.data.state_db.exists()
    assert running.server.client().get("/readyz").json()["status"] == "ready"


def test_the_lock_names_the_server_while_it_runs(running):
    """status and dry runs can tell who holds the store."""
    assert probe_holder(running.data.lock) == (running.server.proc.pid, "serve")


def test_the_loop_and_the_writer_share_one_cpu_and_other_threads_keep_them_all(running):
    """The two GIL-bound threads are pinned together (portunus.server.affinity);
    the checkpointer, at least, may still run anywhere."""
    everywhere = frozenset(os.sched_getaffinity(0))  # what the server inherited
    if len(everywhere) < 2:
        pytest.skip("one CPU: nothing to pin")
    tasks = Path(f"/proc/{running.server.proc.pid}/task")
    # On Linux, a thread id names that thread's own affinity.
    main = frozenset(os.sched_getaffinity(running.server.proc.pid))
    assert len(main) == 1 and main <= everywhere
    allowed = [frozenset(os.sched_getaffinity(int(task.name))) for task in tasks.iterdir()]
    assert allowed.count(main) >= 2  # the loop and the writer
    assert everywhere in allowed
    assert set(allowed) <= {main, everywhere}


# --- a server's whole life ----------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_server_checkpointing_the_wal_and_releasing_the_lock(
    sig, serve_tmp, env
):
    """First start creates the data dir 0700 and a 0600 key; the stop leaves
    an empty WAL, a free lock and server.stopped as the last word."""
    data = serve_tmp / "fresh" / "data"
    config = write_config(serve_tmp / "server.toml", free_port())
    server = start_server(data, config, env)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "server.key").stat().st_mode) == 0o600
    assert server.client().get("/healthz").json() == {"status": "ok"}
    assert (data / "state.db-wal").stat().st_size > 0  # something to checkpoint

    assert server.stop(sig) == 0
    wal = data / "state.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    assert probe_holder(data / "state.db.lock") is None
    names = server.event_names()
    assert names.index("server.listening") < names.index("server.stopping")
    assert names[-1] == "server.stopped"
    assert "internal_error" not in names and "server.framework_log" not in names
    # Logs are an API: every line on stderr is an event (no stray warnings).
    strays = [line for line in server.stderr().splitlines() if not line.startswith("{")]
    assert strays == [], strays


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize(
    ("after", "delay"),
    [
        ("startup.store_opened", 0.0),
        ("startup.tls_generated", 0.0),
        ("startup.tls_generated", 0.02),
    ],
)
def test_a_signal_during_start_up_is_a_clean_stop_too(sig, after, delay, serve_tmp, env):
    """A stop while migrating, loading TLS or starting sanic: exit 0,
    server.stopped last, no error logged, the WAL checkpointed, the lock free.
    (Where exactly it lands varies run to run; every landing must be clean.)"""
    data = serve_tmp / "data"
    server = start_server(data, write_config(serve_tmp / "s.toml", free_port()), env, wait=False)
    deadline = time.monotonic() + START_TIMEOUT
    while after not in server.stderr():
        assert server.proc.poll() is None and time.monotonic() < deadline, server.stderr()
        time.sleep(0.002)
    time.sleep(delay)
    assert server.stop(sig) == 0, server.stderr()
    names = server.event_names()
    assert names[-1] == "server.stopped", names
    assert not [e for e in server.events() if e["level"] == "error"], server.stderr()
    wal = data / "state.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    assert probe_holder(data / "state.db.lock") is None


def test_the_generated_certificate_names_this_host(serve_tmp, env):
    """The self-signed pair is ECDSA P-256 with localhost, 127.0.0.1 and ::1."""
    data = serve_tmp / "data"
    server = start_server(data, write_config(serve_tmp / "s.toml", free_port()), env)
    server.stop()
    cert = x509.load_pem_x509_certificate((data / "server.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost"} <= set(names.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "::1"} <= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert cert.public_key().curve.name == "secp256r1"
    assert "startup.tls_generated" in server.event_names()


def test_a_store_without_an_admin_says_how_to_get_the_first_token(serve_tmp, env):
    """A fresh store serves, but the API would refuse every request: serve
    warns startup.no_admin_token with the bootstrap-admin command (never a
    token); once an admin exists it is quiet."""
    data = serve_tmp / "data"
    config = write_config(serve_tmp / "s.toml", free_port())
    server = start_server(data, config, env)
    server.stop()
    (warning,) = [e for e in server.events() if e["event"] == "startup.no_admin_token"]
    assert f"--data-dir {data} bootstrap-admin --name NAME" in warning["hint"]
    tokens.bootstrap_admin(DataDir(data), "ops")
    again = start_server(data, config, env)
    again.stop()
    assert "startup.no_admin_token" not in again.event_names()


def test_legacy_files_are_warned_about_one_by_one_and_stale_restores_swept(serve_tmp, env):
    """identity.json & co. are never loaded silently; a killed restore's
    staged file is removed under the lock."""
    data = serve_tmp / "data"
    data.mkdir(mode=0o700)
    for name in LEGACY_FILES:
        (data / name).write_text("{}")
    (data / ".restore-abc123abc123.db").write_bytes(b"partial")
    server = start_server(data, write_config(serve_tmp / "s.toml", free_port()), env)
    server.stop()
    warned = [e["path"] for e in server.events() if e["event"] == "startup.legacy_file_ignored"]
    assert sorted(warned) == sorted(str(data / n) for n in LEGACY_FILES)
    assert all((data / n).read_text() == "{}" for n in LEGACY_FILES)
    assert not (data / ".restore-abc123abc123.db").exists()
    assert "startup.stale_restore_removed" in server.event_names()


# --- start-up refusals ---------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A small, real tmpfs (we run as root); skipped where mounting is denied."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.parametrize("exists", [True, False], ids=["existing", "not-yet-created"])
def test_a_data_dir_on_tmpfs_is_refused_78_and_nothing_is_created(exists, tmpfs, cli, tmp_path):
    """The probe looks at the nearest existing ancestor, so a refused data
    dir is not even created."""
    data = tmpfs / "data"
    if exists:
        data.mkdir()
    run = serve_cli(cli, data, write_config(tmp_path / "s.toml", free_port()))
    assert run.code == 78
    refusal = [e for e in run.events if e["event"] == "startup.unsupported_filesystem"]
    assert refusal and refusal[0]["filesystem"] == "tmpfs"
    assert refusal[0]["path"] == str(data)
    assert sorted(os.listdir(tmpfs)) == (["data"] if exists else [])
    assert not exists or os.listdir(data) == []


def test_a_store_newer_than_the_binary_is_refused_78(store, cli, tmp_path):
    """Schema handshake: a newer store is never opened for writing."""
    conn = open_store(store.state_db)
    conn.execute("INSERT INTO schema_migrations VALUES (999, 'from_the_future', 'x')")
    conn.close()
    run = serve_cli(cli, store.path, write_config(tmp_path / "s.toml", free_port()))
    assert run.code == 78
    assert run.has_event("startup.schema_version_too_new")
    assert not (store.path / "server.crt").exists()  # refused before TLS


def test_a_failed_migration_exits_70_and_leaves_the_store_as_it_was(store, cli, tmp_path):
    """A schema-1 store that 0002 cannot migrate (two clients differing in
    case) stays at version 1."""
    conn = open_store(store.state_db)
    conn.execute("DROP INDEX clients_name_nocase; DELETE FROM schema_migrations WHERE version=2")
    with conn:
        support.add_client_with_rules(conn, "EDGE0", 0)
    conn.close()
    run = serve_cli(cli, store.path, write_config(tmp_path / "s.toml", free_port()))
    assert run.code == 70
    assert run.has_event("startup.migration_failed")
    assert support.schema_version(store.state_db) == 1


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_a_private_key_readable_by_group_or_others_is_refused_78(mode, store, cli, tmp_path):
    """The key must be 0600 (or stricter) before it is ever used."""
    key = store.path / "server.key"
    generate_self_signed(store.path / "server.crt", key, ())
    key.chmod(mode)
    run = serve_cli(cli, store.path, write_config(tmp_path / "s.toml", free_port()))
    assert run.code == 78
    refusal = [e for e in run.events if e["event"] == "startup.tls_key_permissions"]
    assert refusal and refusal[0]["mode"] == f"{mode:04o}"


def test_a_listen_address_in_use_is_refused_78(store, cli, tmp_path):
    """Something else on the port: a clear refusal, the lock released."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run = serve_cli(cli, store.path, write_config(tmp_path / "s.toml", port))
    assert run.code == 78
    assert run.has_event("startup.listen_failed")
    assert probe_holder(store.lock) is None


def test_a_damaged_config_is_refused_78_before_the_data_dir_is_touched(cli, tmp_path):
    """server.toml is read before anything else happens."""
    config = tmp_path / "s.toml"
    config.write_text('listen = "nowhere"\n')
    run = serve_cli(cli, tmp_path / "data", config)
    assert run.code == 78
    assert run.has_event("startup.config_invalid")
    assert not (tmp_path / "data").exists()


def test_half_a_configured_tls_pair_is_refused_as_config_before_anything(cli, tmp_path):
    """tls_cert_path alone was paired with <data-dir>/server.key, and the
    refusal's hint sent the operator to the data dir."""
    pki = tmp_path / "pki"
    pki.mkdir()
    generate_self_signed(pki / "api.crt", pki / "api.key", ())
    config = write_config(tmp_path / "s.toml", free_port())
    with open(config, "a") as f:
        f.write(f'tls_cert_path = "{pki / "api.crt"}"\n')
    run = serve_cli(cli, tmp_path / "data", config)
    assert run.code == 78
    (event,) = [e for e in run.events if e["event"] == "startup.config_invalid"]
    assert (event["file"], event["key"]) == (str(config), "tls_cert_path")
    assert "tls_key_path is not" in event["msg"]
    assert not (tmp_path / "data").exists()


def test_the_store_is_closed_after_a_refusal(store, cli, tmp_path):
    """A refused start (here: bad key permissions, checked after the store
    was opened) exits 78 and leaves no WAL behind, and the lock free."""
    generate_self_signed(store.path / "server.crt", store.path / "server.key", ())
    (store.path / "server.key").chmod(0o644)
    run = serve_cli(cli, store.path, write_config(tmp_path / "s.toml", free_port()))
    assert run.code == 78, run.err
    names = run.event_names
    assert names.index("startup.store_opened") < names.index("startup.tls_key_permissions")
    assert names[-1] == "startup.tls_key_permissions", names
    assert probe_holder(store.lock) is None
    wal = store.wal
    assert not wal.exists() or wal.stat().st_size == 0
    conn = apsw.Connection(str(store.state_db))
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


# --- other configurations -------------------------------------------------------


def test_plain_http_serves_from_state_directory_and_says_so(serve_tmp, env):
    """tls = false (behind a proxy) is served with a warning; the data dir
    comes from systemd's $STATE_DIRECTORY; no backup dir means 503."""
    data = serve_tmp / "state"
    admin = tokens.bootstrap_admin(DataDir(data), "ops")
    port = free_port()
    config = serve_tmp / "s.toml"
    config.write_text(f'listen = "127.0.0.1:{port}"\ntls = false\n')
    server = start_server(data, config, {**env, "STATE_DIRECTORY": str(data)}, data_dir_flag=False)
    try:
        assert server.wait_for("server.listening")["url"] == f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as plain:
            assert plain.get("/readyz").status_code == 200
            response = plain.post("/v1/admin/backup", headers={"Authorization": f"Bearer {admin}"})
        assert response.status_code == 503
        assert response.json()["error"] == "api.backup_not_configured"
    finally:
        server.stop()
    assert "startup.tls_disabled" in server.event_names()
    assert not (data / "server.crt").exists()


def test_a_configured_certificate_is_used_and_none_is_generated(serve_tmp, env):
    """tls_cert_path / tls_key_path point elsewhere: the data dir gets no pair."""
    pki = serve_tmp / "pki"
    pki.mkdir()
    generate_self_signed(pki / "api.crt", pki / "api.key", ())
    config = write_config(serve_tmp / "s.toml", free_port())
    with open(config, "a") as f:
        f.write(f'tls_cert_path = "{pki / "api.crt"}"\ntls_key_path = "{pki / "api.key"}"\n')
    data = serve_tmp / "data"
    server = start_server(data, config, env)
    try:
        context = ssl.create_default_context(cafile=str(pki / "api.crt"))
        with httpx.Client(base_url=server.url, verify=context) as client:
            assert client.get("/healthz").status_code == 200
    finally:
        server.stop()
    assert not (data / "server.crt").exists() and not (data / "server.key").exists()
    assert "startup.tls_generated" not in server.event_names()


@pytest.mark.parametrize(
    ("listen", "host", "url"),
    [
        ("127.0.0.1:7443", "127.0.0.1", "https://127.0.0.1:7443"),
        ("[::1]:7443", "::1", "https://[::1]:7443"),
        ("localhost:8443", "localhost", "https://localhost:8443"),
    ],
)
def test_listen_addresses_are_parsed_and_announced(listen, host, url):
    """IPv6 in brackets, as server.toml writes it."""
    parsed = Listen.parse(listen)
    assert parsed.host == host
    assert parsed.url(tls=True) == url
