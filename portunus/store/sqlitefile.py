"""Facts about a file on disk that may or may not be a SQLite database."""

from __future__ import annotations

import os
from pathlib import Path

SQLITE_HEADER = b"SQLite format 3\x00"
# PRAGMA application_id of every Portunus store ("PRTN"), set by migration 1.
APPLICATION_ID = 0x5052544E


def has_sqlite_header(path: Path) -> bool:
    """True when the first 16 bytes are the SQLite magic string.

    Opens with O_NOFOLLOW so a symlink is never followed; the caller decides
    what a symlink means. Raises OSError when the file cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.pread(fd, 16, 0) == SQLITE_HEADER
    finally:
        os.close(fd)


def is_regular_file(path: Path) -> bool:
    """True for a regular file that is not a symlink."""
    return path.is_file() and not path.is_symlink()


def is_sqlite_file(path: Path) -> bool:
    """A regular file (not a symlink) starting with the SQLite header; False
    when it cannot be read."""
    try:
        return is_regular_file(path) and has_sqlite_header(path)
    except OSError:
        return False


def uses_wal_format(path: Path) -> bool:
    """True when the header's read/write versions say WAL (bytes 18-19 == 2)."""
    with open(path, "rb") as f:
        f.seek(18)
        return f.read(2) == b"\x02\x02"
