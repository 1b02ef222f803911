"""Crash-safe file primitives: fsync, no-replace publication, atomic writes."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from portunus.errors import WouldOverwrite


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make renames and unlinks in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_exclusive(directory: Path, prefix: str, suffix: str, mode: int = 0o600) -> Path:
    """Create an empty file with a fresh random name; never reuses a name."""
    while True:
        path = directory / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            continue
        os.close(fd)
        return path


def publish_no_replace(tmp: Path, final: Path, *, event: str) -> None:
    """Give the complete file ``tmp`` its final name, refusing to replace
    anything there, even one created a moment ago by a racing process.

    link(2) fails with EEXIST instead of replacing, and the name appears
    with the whole file behind it, never a partial one.
    """
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise WouldOverwrite(
            f"{final} already exists; refusing to overwrite it",
            event=event,
            hint="pick a unique path (date-stamped is the convention)",
            path=str(final),
        ) from None
    os.unlink(tmp)


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file."""
    tmp = create_exclusive(path.parent, f".{path.name}.", ".tmp", mode)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_if_present(tmp)
        raise
    fsync_dir(path.parent)


def remove_if_present(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def sqlite_family(path: Path) -> list[Path]:
    """A database file and every sidecar SQLite may have created beside it."""
    return [path, *(Path(f"{path}{suffix}") for suffix in ("-journal", "-wal", "-shm"))]
