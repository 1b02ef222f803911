"""Running the real server in tests: a subprocess on a free loopback port,
driven over HTTPS with the certificate it generated."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from portunus.datadir import probe_filesystem
from tests.support import parse_events

START_TIMEOUT = 30.0


@pytest.fixture
def serve_tmp(tmp_path: Path) -> Path:
    """tmp_path, when serve accepts its filesystem (it refuses tmpfs, so a
    /tmp on tmpfs skips these tests: run pytest with --basetemp on a disk)."""
    probe = probe_filesystem(tmp_path)
    if probe.verdict == "unsupported":
        pytest.skip(f"{tmp_path} is on {probe.name}, where serve refuses to run")
    return tmp_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, port: int, **tables: dict) -> Path:
    """A server.toml with ``listen`` on ``port`` plus any [table] keys."""
    lines = [f'listen = "127.0.0.1:{port}"']
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Server:
    """A ``portunus-server serve`` subprocess and what it logged."""

    proc: subprocess.Popen
    data_dir: Path
    port: int
    log_path: Path
    clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def cert(self) -> Path:
        return self.data_dir / "server.crt"

    def events(self) -> list[dict]:
        return parse_events(self.log_path.read_text())

    def event_names(self) -> list[str]:
        return [e["event"] for e in self.events()]

    def stderr(self) -> str:
        return self.log_path.read_text()

    def tls_context(self) -> ssl.SSLContext:
        """Trusts exactly the certificate the server generated."""
        return ssl.create_default_context(cafile=str(self.cert))

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(
            base_url=self.url, verify=self.tls_context(), headers=headers, timeout=30.0
        )
        self.clients.append(client)
        return client

    def wait_for(self, event: str, timeout: float = START_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.events():
                if entry["event"] == event:
                    return entry
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited {self.proc.returncode} before {event}:\n{self.stderr()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no {event} within {timeout}s:\n{self.stderr()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait for the exit code; a server that is still
        running after ``timeout`` is killed (and the wait's error raised), so
        no stop leaves one behind. Stopping a stopped server returns its code."""
        for client in self.clients:
            client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


# Every server started here, so that a fixture finalizer can stop whatever a
# failing test left running (tests/conftest.py).
STARTED: list[Server] = []


def stop_running(servers: list[Server]) -> None:
    """Stop those of ``servers`` still running, whatever happens to the others."""
    for server in servers:
        if server.proc.poll() is None:
            try:
                server.stop()
            except subprocess.TimeoutExpired:
                pass  # killed by stop()


def start_server(
    data_dir: Path,
    config: Path,
    env: dict[str, str],
    *,
    wait: bool = True,
    data_dir_flag: bool = True,
) -> Server:
    """Start ``python -m portunus --data-dir D --config C serve`` and wait for
    ``server.listening`` (stderr goes to a file beside the config). Without
    ``data_dir_flag`` the server must find ``data_dir`` through ``env``."""
    log_path = config.parent / f"serve-{config.stem}-{time.monotonic_ns()}.log"
    flags = ["--data-dir", str(data_dir)] if data_dir_flag else []
    argv = [
        sys.executable,
        "-m",
        "portunus",
        "--log-format",
        "json",
        *flags,
        "--config",
        str(config),
        "serve",
    ]
    with open(log_path, "w") as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    server = Server(proc, data_dir, _port_of(config), log_path)
    STARTED.append(server)
    if wait:
        try:
            server.wait_for("server.listening")
        except BaseException:
            server.stop(signal.SIGKILL)
            raise
    return server


def _port_of(config: Path) -> int:
    for line in config.read_text().splitlines():
        if line.startswith("listen"):
            return int(line.rsplit(":", 1)[1].strip('" '))
    raise ValueError(f"no listen in {config}")
