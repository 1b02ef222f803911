"""A full disk under a serving store: writes are refused with a 503, never
half-written, reads keep working, and writes resume once there is room.
A real, small ext4 image mounted on a loop device (as root; skipped where
that is not possible)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from portunus.datadir import DataDir
from portunus.engine import tokens
from tests import support
from tests.serving import free_port, start_server, write_config

IMAGE_MIB = 8
LONG_HOST = ("a" * 60 + ".") * 4 + "example"  # 251 characters: fills the disk quickly


@pytest.fixture
def small_disk(tmp_path: Path):
    image, mount_point = tmp_path / "disk.img", tmp_path / "disk"
    mount_point.mkdir()
    with open(image, "wb") as f:
        f.truncate(IMAGE_MIB * 1024 * 1024)
    for argv in (
        ["mkfs.ext4", "-q", "-F", str(image)],
        ["mount", "-o", "loop", str(image), str(mount_point)],
    ):
        try:
            done = subprocess.run(argv, capture_output=True)
        except FileNotFoundError:
            pytest.skip(f"{argv[0]} is not installed")
        if done.returncode != 0:
            pytest.skip(f"cannot {argv[0]} here: {done.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def rule(n: int) -> dict:
    return {
        "client": "edge",
        "protocol": "tcp",
        "listen_start": n,
        "targets": [{"host": LONG_HOST, "port": 443, "priority": p} for p in range(8)],
    }


def test_a_full_disk_refuses_writes_with_503_and_recovers(small_disk, tmp_path):
    """No 500, no half-written rule, reads unaffected, writes back once freed."""
    data = small_disk / "data"
    admin = tokens.bootstrap_admin(DataDir(data), "ops")
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (1024 * 1024))
    (tmp_path / "home").mkdir()
    config = write_config(tmp_path / "server.toml", free_port())
    server = start_server(data, config, support.clean_env(tmp_path / "home"))
    client = server.client(admin)
    assert client.post("/v1/clients", json={"name": "edge"}).status_code == 201

    statuses, port, refused = [], 1, None
    while refused is None and port < 20000:
        response = client.post("/v1/rules", json=rule(port))
        statuses.append(response.status_code)
        if response.status_code == 503:
            refused = response
        port += 1
    assert set(statuses) == {201, 503}, set(statuses)
    assert refused.json()["error"] == "api.store_unavailable"
    # Whether the next write fits is the filesystem's and SQLite's call (a
    # checkpoint may let the WAL start over in blocks it already has): each
    # is either made (201) or refused whole (503), never a 500.
    for _ in range(5):
        statuses.append(client.post("/v1/rules", json=rule(port)).status_code)
        port += 1
    assert set(statuses) == {201, 503}, set(statuses)
    assert client.get("/readyz").status_code == 200
    assert client.get("/v1/rules", params={"limit": 1}).status_code == 200

    ballast.unlink()
    assert client.post("/v1/rules", json=rule(port)).status_code == 201
    rules_served = statuses.count(201) + 1
    listed = client.get("/v1/rules", params={"limit": 1000}).json()
    audit = client.get("/v1/audit", params={"limit": 1000}).json()["entries"]
    created = [e for e in audit if e["action"] == "rule.create"]
    assert len(listed["rules"]) == len(created) == rules_served
    assert server.stop() == 0
    assert "internal_error" not in server.event_names()
