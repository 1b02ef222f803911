"""Running the CLI as an unprivileged user, as the service user meets a
data dir it may not read or write. The tests run as root, whom file modes do
not stop, so the command drops to ``nobody`` with ``setpriv``."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import Run


@pytest.fixture
def shared_tmp() -> Path:
    """A directory ``nobody`` can reach (pytest's basetemp is root's, 0700)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command as nobody")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")
    path = Path(tempfile.mkdtemp(prefix="portunus-nobody-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def nobody_ids() -> tuple[int, int]:
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def run_as_nobody(*args: str, home: Path, timeout: float = 120) -> Run:
    """``portunus-server ARGS`` as the user nobody, logs as JSON lines."""
    uid, gid = nobody_ids()
    argv = [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        sys.executable,
        "-m",
        "portunus",
        "--log-format",
        "json",
        *args,
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PORTUNUS_CONFIG", "STATE_DIRECTORY", "XDG_STATE_HOME")
    }
    env["HOME"] = str(home)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, cwd=home)
    return Run(proc.returncode, proc.stdout, proc.stderr)
