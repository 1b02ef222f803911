"""The data dir's lock: an exclusive, non-blocking flock on state.db.lock.

Whoever holds it owns the store's file set: a running server for its whole
life, or a restore / reset / bootstrap-admin for theirs. ``backup`` never
takes it: it only reads, through SQLite's own locking.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from portunus.errors import StorageIOError, StoreInUse
from portunus.ownership import give_to_directory_owner


class StoreLock:
    """Context manager around the flock; ``release()`` is idempotent.

    A command that fails or refuses leaves no lock file where there was none
    (a refusal changes nothing): leaving the ``with`` block on an exception
    unlinks the file if this lock created it, while still holding it, as
    reset does; the next taker makes a new one."""

    def __init__(self, path: Path, purpose: str) -> None:
        self.path = path
        self.purpose = purpose
        self.created = False
        self._fd: int | None = None

    def acquire(self) -> StoreLock:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, purpose = _read_holder(fd)
            os.close(fd)
            raise StoreInUse(
                f"the store in {self.path.parent} is in use by {describe_holder(pid, purpose)}",
                hint="stop the running server (systemctl stop portunus-server) and try again",
                pid=pid,
                holder=purpose,
                lock=str(self.path),
            ) from None
        # Record who holds it, for the message a second process prints.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.purpose}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is not None and self.created and self._fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass  # best effort: a lock file left behind is harmless
        self.release()

    def _open(self) -> int:
        try:
            # O_NOFOLLOW: a planted symlink must not make us create or
            # truncate a file elsewhere.
            fd = self._open_or_create()
        except OSError as exc:
            raise StorageIOError(
                f"cannot open the lock file {self.path}: {exc.strerror}",
                event="startup.lock_failed",
                hint="check that the data dir exists, is writable, and the lock is a plain file",
                path=str(self.path),
            ) from exc
        try:
            give_to_directory_owner(self.path, fd)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _open_or_create(self) -> int:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return os.open(self.path, flags)
        self.created = True
        return fd


def _read_holder(fd: int) -> tuple[int | None, str]:
    """(pid, purpose) as the holder recorded them: the pid a number (a JSON
    number in ``status --json`` and json logs), None and "unknown" in the
    instant between the holder's flock and its write."""
    fields = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    pid = int(fields[0]) if fields and fields[0].isdigit() else None
    purpose = fields[1] if len(fields) > 1 else "unknown"
    return pid, purpose


def describe_holder(pid: int | None, purpose: str) -> str:
    """'pid 812 (serve)', as messages and status print it."""
    return f"pid {pid if pid is not None else 'unknown'} ({purpose})"


def probe_holder(path: Path) -> tuple[int | None, str] | None:
    """(pid, purpose) of the process holding the lock, or None when free.

    Never creates the lock file, so dry runs and status stay read-only.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
