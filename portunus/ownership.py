"""Files root creates in the service user's directories stay the service's.

The spec's runbook runs ``portunus-server restore`` (and operators run
``bootstrap-admin``) as root, against a data dir that belongs to the
service's own user. A state.db or state.db.lock left owned by root, mode
0600, would stop that service at its next start. So a file Portunus creates
in a directory some other user owns is given to that user (SQLite does the
same for the -wal, -shm and -journal files it creates as root: they follow
the database file's owner).
"""

from __future__ import annotations

import os
from pathlib import Path


def give_to_directory_owner(path: Path, fd: int | None = None) -> None:
    """As root, hand ``path`` (or the open ``fd`` of it) to the owner of its
    directory when that owner is not root; otherwise do nothing."""
    if os.geteuid() != 0:
        return
    directory = os.stat(path.parent)
    if directory.st_uid == 0:
        return
    if fd is not None:
        os.fchown(fd, directory.st_uid, directory.st_gid)
    else:
        os.chown(path, directory.st_uid, directory.st_gid, follow_symlinks=False)
