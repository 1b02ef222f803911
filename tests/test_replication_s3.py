"""Replication to an S3 API: moto's server on 127.0.0.1 (plain HTTP), with
credentials in the environment only, and this machine's AWS_CA_BUNDLE."""

from __future__ import annotations

import json
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portunus.datadir import DataDir
from portunus.engine import tokens
from tests import serving, support
from tests.serving import free_port, start_server, write_config
from tests.test_replication import (  # noqa: F401 (the fixture applies here too)
    _no_server_left_behind,
    client_names,
    create_clients,
    replicated,
    wait_until_gone,
    wait_until_shipped,
)

serve_tmp = serving.serve_tmp
ACCESS_KEY = "AKIAPORTUNUSTESTKEY7"
SECRET_KEY = "portunus-test-secret-0d5e8c2b9a7f"  # must never appear in any output
BUCKET = "portunus-replica"


@pytest.fixture
def s3(tmp_path_factory):
    """moto_server on a free loopback port, with one bucket; stopped after."""
    moto = Path(sys.executable).parent / "moto_server"
    if not moto.exists():
        pytest.skip("moto[server] is not installed (pip install -e '.[dev]')")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _create_bucket(endpoint)
        yield endpoint
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _create_bucket(endpoint: str) -> None:
    import boto3

    deadline = time.monotonic() + 30
    while True:
        try:
            boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                region_name="us-east-1",
            ).create_bucket(Bucket=BUCKET)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    return support.clean_env(
        home,
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        # What this machine sets, and Litestream 0.5.17 refuses outright.
        AWS_CA_BUNDLE="/etc/ssl/certs/ca-certificates.crt",
    )


def test_drill_against_s3_and_no_credential_in_any_output(serve_tmp, env, cli, s3):
    replica = f"s3://{BUCKET}/portunus"
    extra = {"endpoint": s3, "region": "us-east-1", "force_path_style": True}
    first = replicated(serve_tmp, replica, env, **extra)
    first.server.wait_for("replication.snapshot_written")
    assert first.server.wait_for("replication.ca_bundle_adjusted")
    # The generated Litestream config: private, and no credential in it.
    pointer = json.loads((first.data.path / "replication.json").read_text())
    generated = Path(pointer["socket"]).parent / "litestream.yml"
    assert stat.S_IMODE(generated.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(generated.stat().st_mode) == 0o600
    assert SECRET_KEY not in generated.read_text() and ACCESS_KEY not in generated.read_text()
    names = [f"s3-edge{i}" for i in range(10)]
    create_clients(first.server, first.admin, names)
    restore_config = write_config(serve_tmp / "restore.toml", free_port(),
                                  replication={"url": replica, **extra})  # fmt: skip

    def restored(fresh: Path) -> support.Run:
        return support.run_cli("--data-dir", str(fresh), "--config", str(restore_config),
                               "restore", "--from-replica", env=env)  # fmt: skip

    wait_until_shipped(restored, serve_tmp, names)  # by the periodic sync alone
    first.server.stop(signal.SIGKILL)
    assert wait_until_gone(first.pid)
    outputs = [first.server.stderr()]

    fresh = serve_tmp / "fresh"
    run = restored(fresh)
    assert run.code == 0, run.err
    assert set(names) <= client_names(fresh / "state.db")
    outputs += [run.out, run.err]
    status = support.run_cli("--data-dir", str(fresh), "--config", str(restore_config), "status",
                             "--json", env=env)  # fmt: skip
    outputs += [status.out, status.err]
    for text in outputs:
        assert SECRET_KEY not in text
        assert ACCESS_KEY not in text


def test_a_missing_bucket_is_reported_and_the_api_keeps_serving(serve_tmp, env, s3):
    """Litestream does not exit on a sync error: it retries with its own
    back-off and logs each one, which becomes replication.error."""
    replica = f"s3://no-such-bucket-{free_port()}/x"
    first = replicated(serve_tmp, replica, env, endpoint=s3, force_path_style=True)
    error = first.server.wait_for("replication.error", timeout=60)
    assert "NoSuchBucket" in error["error"] and error["level"] == "error"
    assert first.server.client(first.admin).get("/v1/clients").status_code == 200
    assert first.server.stop() == 0
    assert SECRET_KEY not in first.server.stderr()


def test_litestream_itself_refuses_aws_ca_bundle(tmp_path, s3):
    """Why the server adjusts the child's environment: with the variable as
    this machine sets it, Litestream 0.5.17 cannot build its S3 client."""
    binary = shutil.which("litestream", path=str(Path(sys.executable).parent))
    (tmp_path / "c.yml").write_text(
        f'dbs:\n  - path: "{tmp_path}/x.db"\n    replica:\n      url: "s3://{BUCKET}/y"\n'
        f'      endpoint: "{s3}"\n      force-path-style: true\n'
    )
    import sqlite3

    sqlite3.connect(tmp_path / "x.db").execute("PRAGMA journal_mode=WAL").close()
    done = subprocess.run(
        [binary, "replicate", "-config", str(tmp_path / "c.yml")],
        env={"AWS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt", "PATH": "/usr/bin:/bin",
             "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "RootCAs" in done.stderr


def test_a_ca_bundle_litestream_cannot_use_is_one_clear_failure(serve_tmp, env, s3, tmp_path):
    """ca_bundle in the AWS config file cannot be rewritten for Litestream:
    replication.failed says what to change, and the API keeps serving."""
    aws_config = tmp_path / "aws-config"
    aws_config.write_text("[default]\nca_bundle = /etc/ssl/certs/ca-certificates.crt\n")
    env["AWS_CONFIG_FILE"] = str(aws_config)
    replica = f"s3://{BUCKET}/ca"
    first = replicated(serve_tmp, replica, env, endpoint=s3, force_path_style=True)
    failed = first.server.wait_for("replication.failed", timeout=60)
    assert "RootCAs" in failed["reason"]
    assert "custom CA bundle" in failed["msg"]
    assert "ca_bundle" in failed["hint"] and "SSL_CERT_FILE" in failed["hint"]
    assert first.server.client(first.admin).get("/v1/clients").status_code == 200
    assert first.server.stop() == 0


def unreachable_replication() -> dict:
    """[replication] pointing at an S3 endpoint where nothing listens."""
    return {
        "url": f"s3://{BUCKET}/gone",
        "endpoint": f"http://127.0.0.1:{free_port()}",
        "force_path_style": True,
        "sync_interval": "1s",
    }


def test_a_replica_that_cannot_be_reached_is_74_and_nothing_is_created(env, cli, tmp_path):
    """restore --from-replica with the object store down: 74
    restore.replica_unreachable naming the URL (no credential), and the data
    dir is left as it was (here: not created)."""
    config = write_config(
        tmp_path / "server.toml", free_port(), replication=unreachable_replication()
    )
    data = tmp_path / "data"
    run = cli(
        "--config", str(config), "--data-dir", str(data), "restore", "--from-replica", env=env
    )
    assert run.code == 74, run.err
    (failed,) = [e for e in run.events if e["event"] == "restore.replica_unreachable"]
    assert failed["url"] == f"s3://{BUCKET}/gone"
    assert SECRET_KEY not in run.err + run.out
    assert not data.exists()


def test_a_final_sync_that_cannot_finish_is_reported_and_the_stop_stays_clean(
    serve_tmp, env, tmp_path
):
    """SIGTERM with the object store unreachable: the final sync is bounded by
    shutdown_drain_timeout_secs, replication.final_sync_failed says so, and
    the server still stops cleanly (exit 0, lock released)."""
    data = DataDir(serve_tmp / "data")
    tokens.bootstrap_admin(data, "ops")
    config = write_config(
        serve_tmp / "server.toml", free_port(), replication=unreachable_replication()
    )
    config.write_text("shutdown_drain_timeout_secs = 1\n" + config.read_text())
    server = start_server(data.path, config, env)
    server.wait_for("replication.started")
    assert server.stop() == 0
    names = server.event_names()
    assert "replication.final_sync_failed" in names, server.stderr()
    assert names[-1] == "server.stopped"
