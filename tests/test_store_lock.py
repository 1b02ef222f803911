"""portunus.store.lock: the state.db.lock flock that marks a store in use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from portunus.errors import StorageIOError, StoreInUse
from portunus.store.lock import StoreLock, probe_holder

# A second process that takes the lock the way a server does, says so, and
# keeps it until its stdin closes (or it is killed).
HOLDER = """
import sys
from pathlib import Path
from portunus.store.lock import StoreLock
StoreLock(Path(sys.argv[1]), "serve").acquire()
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """A separate process holding tmp_path/state.db.lock as "serve"."""
    lock = tmp_path / "state.db.lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.stdin.close()
        proc.wait(timeout=30)


def test_second_acquirer_gets_store_in_use_naming_the_holder(tmp_path, holder):
    """75 with startup.store_in_use, the holder's pid and its purpose."""
    with pytest.raises(StoreInUse) as raised:
        StoreLock(tmp_path / "state.db.lock", "restore").acquire()
    error = raised.value
    assert error.exit_code == 75
    assert error.event == "startup.store_in_use"
    assert error.fields["pid"] == holder.pid
    assert error.fields["holder"] == "serve"
    assert f"pid {holder.pid}" in error.message


def test_lock_is_free_again_once_the_holder_is_killed(tmp_path, holder):
    """A kill -9'd server leaves the file, not the lock: the next process gets it."""
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    lock = tmp_path / "state.db.lock"
    assert lock.exists()
    with StoreLock(lock, "restore"):
        assert lock.read_text().split() == [str(os.getpid()), "restore"]


def test_two_locks_in_one_process_also_exclude_each_other(tmp_path):
    """flock is per open file: a second StoreLock in the same process is refused."""
    lock = tmp_path / "state.db.lock"
    with StoreLock(lock, "serve"), pytest.raises(StoreInUse):
        StoreLock(lock, "reset").acquire()


def test_release_is_idempotent_and_frees_the_lock(tmp_path):
    """release() twice is harmless, and the lock can then be taken again."""
    lock = StoreLock(tmp_path / "state.db.lock", "serve").acquire()
    lock.release()
    lock.release()
    with StoreLock(tmp_path / "state.db.lock", "restore"):
        pass


def test_lock_file_is_created_0600(tmp_path):
    """The lock file records who holds it and is readable by its owner only."""
    with StoreLock(tmp_path / "state.db.lock", "serve"):
        assert (tmp_path / "state.db.lock").stat().st_mode & 0o777 == 0o600


def test_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    """A planted symlink never makes the lock truncate or write a file elsewhere."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "state.db.lock").symlink_to(victim)
    with pytest.raises(StorageIOError) as raised:
        StoreLock(tmp_path / "state.db.lock", "serve").acquire()
    assert raised.value.exit_code == 74
    assert raised.value.event == "startup.lock_failed"
    assert victim.read_text() == "precious\n"


def test_probe_holder_names_the_holder(tmp_path, holder):
    """probe_holder reports (pid, purpose) while another process holds the lock."""
    assert probe_holder(tmp_path / "state.db.lock") == (holder.pid, "serve")


def test_probe_holder_of_a_free_lock_is_none(tmp_path):
    """An existing but unheld lock file probes as free."""
    with StoreLock(tmp_path / "state.db.lock", "serve"):
        pass
    assert probe_holder(tmp_path / "state.db.lock") is None


def test_probe_holder_never_creates_the_lock_file(tmp_path):
    """A dry run probing an empty data dir leaves it empty."""
    lock: Path = tmp_path / "state.db.lock"
    assert probe_holder(lock) is None
    assert not os.path.lexists(lock)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_command_leaves_no_lock_file_where_there_was_none(tmp_path: Path):
    """A refusal changes nothing: the lock file a failed block created is
    removed; one that was there before stays, and so does the file after a
    block that succeeded."""
    lock = tmp_path / "state.db.lock"
    with pytest.raises(RuntimeError), StoreLock(lock, "serve"):
        raise RuntimeError("refused")
    assert not lock.exists()
    lock.write_text("")
    with pytest.raises(RuntimeError), StoreLock(lock, "serve"):
        raise RuntimeError("refused")
    assert lock.exists()
    lock.unlink()
    with StoreLock(lock, "serve"):
        pass
    assert lock.exists()
