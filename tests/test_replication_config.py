"""``[replication]``: the keys, their checks, and what Litestream is given."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from portunus import config
from portunus.replication.settings import (
    child_environment,
    from_settings,
    public_url,
    render_config,
    write_private,
)

BAD_URLS = {
    "http://bucket/x": "must start with s3://",
    "s3://AKIDEXAMPLE:hunter2secret@bucket/x": "must not carry a password",
    "file://relative/path": "file:///absolute/path",
    "s3:///no-bucket": "must name the bucket",
}


@pytest.mark.parametrize("url", list(BAD_URLS))
def test_a_bad_replica_url_is_refused_with_78_naming_file_line_and_key(cli, tmp_path, url):
    path = tmp_path / "server.toml"
    path.write_text(f'listen = "127.0.0.1:7443"\n\n[replication]\nurl = "{url}"\n')
    run = cli("--config", str(path), "config", "check")
    assert run.code == 78
    (event,) = [e for e in run.events if e["event"] == "startup.config_invalid"]
    assert (event["line"], event["key"]) == (4, "replication.url")
    assert BAD_URLS[url] in event["msg"]
    assert "hunter2secret" not in run.out + run.err


def test_config_set_and_show_the_replication_keys(cli, tmp_path):
    path = tmp_path / "server.toml"
    path.write_text("# my comment\n")
    for key, value in (
        ("replication.url", "s3://bkt/portunus"),
        ("replication.sync_interval", "5s"),
    ):
        run = cli("--config", str(path), "config", "set", key, value)
        assert run.code == 0, run.err
    assert "# my comment" in path.read_text()
    run = cli("--config", str(path), "config", "show")
    assert any(
        line.split()[:2] == ["replication.url", '"s3://bkt/portunus"']
        for line in run.out.splitlines()
    )
    refused = cli("--config", str(path), "config", "set", "replication.retention", "forever")
    assert refused.code == 78
    assert "replication.retention" in refused.err


def settings(tmp_path: Path, text: str) -> config.Settings:
    path = tmp_path / "server.toml"
    path.write_text(text)
    return config.load(path, required=True)


def test_the_generated_litestream_config_carries_the_keys_and_no_credential(tmp_path):
    rep = from_settings(
        settings(
            tmp_path,
            """
[replication]
url = "s3://bkt/db"
endpoint = "http://127.0.0.1:9000"
region = "eu-west-1"
force_path_style = true
sync_interval = "2s"
retention = "3d"
""",
        )
    )
    text = render_config(rep, tmp_path / "state.db", socket_path=tmp_path / "s.sock")
    assert '"sync-interval": "2s"' not in text  # YAML keys are bare
    for line in ('url: "s3://bkt/db"', 'endpoint: "http://127.0.0.1:9000"', 'region: "eu-west-1"',
                 "force-path-style: true", 'sync-interval: "2s"', 'retention: "259200s"',
                 'interval: "86400s"'):  # fmt: skip
        assert line in text, line
    assert "secret" not in text.lower() and "access-key" not in text


def test_the_config_file_is_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        write_private(tmp_path / "litestream.yml", "x: 1\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "litestream.yml").stat().st_mode) == 0o600


def test_aws_ca_bundle_is_dropped_for_plain_http_and_handed_over_for_https(tmp_path):
    """Litestream 0.5.17 refuses to start with AWS_CA_BUNDLE set at all."""
    base = {"AWS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt", "AWS_ACCESS_KEY_ID": "A"}
    plain = from_settings(settings(tmp_path, '[replication]\nurl = "s3://b/x"\n'
                                             'endpoint = "http://127.0.0.1:9"\n'))  # fmt: skip
    env, said = child_environment(plain, base)
    assert "AWS_CA_BUNDLE" not in env and env["AWS_ACCESS_KEY_ID"] == "A" and "dropped" in said
    tls = from_settings(settings(tmp_path, '[replication]\nurl = "s3://b/x"\n'))
    env, said = child_environment(tls, base)
    assert "AWS_CA_BUNDLE" not in env
    assert env["SSL_CERT_FILE"] == base["AWS_CA_BUNDLE"] and "SSL_CERT_FILE" in said


def test_the_public_url_has_no_user_info_or_query():
    assert (
        public_url("sftp://backup@host.example:2222/srv/x?key=1")
        == "sftp://host.example:2222/srv/x"
    )
