"""Where the state lives: data dir resolution and the names inside it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from portunus.errors import RefusedByConfiguration, StorageIOError

STATE_DB = "state.db"
# SQLite's own sidecars plus our lock; reset and restore treat them as one unit.
STATE_SIDECARS = ("state.db-wal", "state.db-shm", "state.db.lock")
TLS_FILES = ("server.crt", "server.key")
LEGACY_FILES = ("identity.json", "tokens.json", "rules.json")
CONFIG_FILE = "server.toml"


@dataclass(frozen=True)
class DataDir:
    """A data dir and the well-known paths in it."""

    path: Path

    @property
    def state_db(self) -> Path:
        return self.path / STATE_DB

    @property
    def wal(self) -> Path:
        return self.path / "state.db-wal"

    @property
    def shm(self) -> Path:
        return self.path / "state.db-shm"

    @property
    def lock(self) -> Path:
        return self.path / "state.db.lock"

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    def ensure(self) -> None:
        """Create the data dir (mode 0700) if it does not exist yet."""
        if self.path.exists() and not self.path.is_dir():
            raise RefusedByConfiguration(
                f"the data dir {self.path} exists but is not a directory",
                event="startup.data_dir_not_directory",
                hint="check --data-dir (or data_dir in server.toml)",
                path=str(self.path),
            )
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageIOError(
                f"cannot create the data dir {self.path}: {exc.strerror}",
                event="startup.data_dir_create_failed",
                hint="create it yourself with mode 0700, owned by the server's user",
                path=str(self.path),
            ) from exc


def resolve_data_dir(
    flag: str | os.PathLike[str] | None,
    configured: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None = None,
) -> DataDir:
    """First hit wins: --data-dir, config ``data_dir``, $STATE_DIRECTORY,
    $XDG_STATE_HOME/portunus, ~/.local/state/portunus."""
    env = os.environ if env is None else env
    if flag:
        return DataDir(_absolute(flag))
    if configured:
        return DataDir(_absolute(configured))
    if env.get("STATE_DIRECTORY"):
        # systemd passes a colon-separated list when several are configured.
        return DataDir(_absolute(env["STATE_DIRECTORY"].split(":")[0]))
    if env.get("XDG_STATE_HOME"):
        return DataDir(_absolute(env["XDG_STATE_HOME"]) / "portunus")
    return DataDir(Path.home() / ".local" / "state" / "portunus")


def _absolute(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))
