"""Fixtures: a private HOME, a data dir, a populated store, the CLI runner."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import structlog

from portunus import log
from portunus.datadir import DataDir
from tests import serving, support


@pytest.fixture(autouse=True)
def _quiet_logging():
    """Engine calls made in-process log every level, into a buffer, not stderr."""
    log.configure("json", "debug", stream=io.StringIO())
    yield
    structlog.reset_defaults()


@pytest.fixture(autouse=True)
def _servers_stopped_after_each_test():
    """A server a test (or its function-scoped fixtures) started is stopped
    at teardown whatever the outcome: an assertion failing before the test's
    own ``stop()`` leaves no server running. Module-scoped servers were
    started before this runs (pytest sets up wider scopes first) and are
    left to their own fixtures."""
    before = len(serving.STARTED)
    yield
    serving.stop_running(serving.STARTED[before:])


@pytest.fixture(scope="session", autouse=True)
def _no_server_outlives_the_session():
    """The last resort, should a module fixture fail before its finalizer."""
    yield
    serving.stop_running(serving.STARTED)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    return support.clean_env(home)


@pytest.fixture
def data_dir(tmp_path: Path) -> DataDir:
    return DataDir(tmp_path / "data")


@pytest.fixture
def store(data_dir: DataDir) -> DataDir:
    """A data dir holding a real, populated Portunus store."""
    return support.make_store(data_dir)


@pytest.fixture
def cli(env: dict[str, str]):
    """Run ``portunus-server`` in a subprocess with a clean environment."""

    def run(*args: str, **kwargs) -> support.Run:
        return support.run_cli(*args, env=kwargs.pop("env", env), **kwargs)

    return run


@pytest.fixture
def server_store(store: DataDir):
    """The running server's hold on a populated store (writer, readers,
    checkpointer), in-process; closed after the test."""
    from portunus.server.store import ServerStore
    from portunus.store.live import open_live_store

    conn, handshake = open_live_store(store)
    opened = ServerStore(store, conn, handshake.to_version)
    opened.start()
    yield opened
    opened.close()
