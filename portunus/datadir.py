"""Where the state lives: data dir resolution and the names inside it."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import structlog

from portunus.errors import RefusedByConfiguration, StorageIOError

STATE_DB = "state.db"
# SQLite's own sidecars plus our lock; reset and restore treat them as one unit.
STATE_SIDECARS = ("state.db-wal", "state.db-shm", "state.db.lock")
TLS_FILES = ("server.crt", "server.key")
LEGACY_FILES = ("identity.json", "tokens.json", "rules.json")
CONFIG_FILE = "server.toml"


# NamedTuples, not frozen dataclasses: defining a dataclass costs about a
# millisecond at every start (docs/performance.md, "Cold start").
class DataDir(NamedTuple):
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
        self.refuse_a_non_directory()
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageIOError(
                f"cannot create the data dir {self.path}: {exc.strerror}",
                event="startup.data_dir_create_failed",
                hint="create it yourself with mode 0700, owned by the server's user",
                path=str(self.path),
            ) from exc

    def prepare_for_store(self) -> list[Path]:
        """What every command that can create ``state.db`` does first (serve,
        restore, bootstrap-admin): refuse a network or volatile filesystem
        (78) before anything exists on it, then create the data dir (0700).
        Returns the directories it created, deepest first (empty when the
        data dir was there), so that a refusal can remove them again."""
        check_supported_filesystem(self.path)
        self.refuse_a_non_directory()
        missing = _missing_dirs(self.path)
        self.ensure()
        return missing

    def refuse_a_non_directory(self) -> None:
        """78 when the path exists and is not a directory (a missing one is fine)."""
        if self.path.exists() and not self.path.is_dir():
            raise RefusedByConfiguration(
                f"the data dir {self.path} exists but is not a directory",
                event="startup.data_dir_not_directory",
                hint="check --data-dir (or data_dir in server.toml)",
                path=str(self.path),
            )


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist, deepest first."""
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def remove_created_dirs(created: list[Path]) -> None:
    """Undo :meth:`DataDir.prepare_for_store`: remove the directories it
    created, deepest first, as long as each is empty again (an rmdir never
    removes a file; another process's new file keeps its directory)."""
    for path in created:
        try:
            os.rmdir(path)
        except OSError:
            return


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
    return DataDir(_home() / ".local" / "state" / "portunus")


def _home() -> Path:
    try:
        return Path.home()
    except RuntimeError:
        # A uid with no passwd entry and no $HOME (a container's arbitrary
        # user): there is no default to fall back on, and guessing one could
        # point reset at the wrong store.
        raise RefusedByConfiguration(
            "no data dir given and no home directory to find the default in "
            "(this user has no $HOME and no passwd entry)",
            event="startup.data_dir_unresolved",
            hint="pass --data-dir, set data_dir in server.toml, or set $STATE_DIRECTORY",
        ) from None


def _absolute(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))


# --- Filesystem probe -------------------------------------------------------
log = structlog.get_logger()

# SQLite's locking and its WAL shared memory need a local filesystem; a
# volatile one loses the state at reboot. Magic numbers from linux/magic.h.
_UNSUPPORTED_MAGIC = {
    0x6969: "nfs",
    0x517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x564C: "ncpfs",
    0x73757245: "coda",
    0x5346414F: "afs",
    0x6B414653: "afs",
    0x00C36400: "ceph",
    0x01021997: "9p",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0x20030528: "orangefs",
    0x01021994: "tmpfs",
    0x858458F6: "ramfs",
}
_LOCAL_MAGIC = {
    0xEF53: "ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x2FC12FC1: "zfs",
    0xF2F52010: "f2fs",
    0xCA451A4E: "bcachefs",
    0x3153464A: "jfs",
    0x52654973: "reiserfs",
    0x3434: "nilfs2",
}
_FUSE_MAGIC = 0x65735546
# Names as /proc/self/mountinfo spells them, for what the magic cannot tell
# apart (FUSE subtypes) or does not list.
_UNSUPPORTED_NAMES = {
    *_UNSUPPORTED_MAGIC.values(),
    "nfs4",
    "smb3",
    "smbfs",
    "glusterfs",
    "beegfs",
    "ocfs2",
    "gfs2",
    "fuse.sshfs",
    "fuse.glusterfs",
    "fuse.ceph-fuse",
    "fuse.s3fs",
    "fuse.rclone",
    "fuse.gcsfuse",
    "fuse.goofys",
    "fuse.juicefs",
    "fuse.smbnetfs",
    "fuse.curlftpfs",
    "fuse.davfs",
    "fuse.blobfuse",
    "fuse.blobfuse2",
}
_LOCAL_NAMES = {*_LOCAL_MAGIC.values(), "ext2", "ext3"}


class FilesystemProbe(NamedTuple):
    """What holds a path: the filesystem's name and whether the store may live there."""

    path: Path  # the nearest existing ancestor actually probed
    name: str
    verdict: str  # "local", "unsupported" or "unknown"


def filesystem_type(path: str | os.PathLike[str]) -> str:
    """Name of the filesystem holding ``path`` (``ext4``, ``tmpfs``, ``nfs4``,
    ``fuse.sshfs``...); ``unknown`` when it cannot be told. A path that does
    not exist yet is answered for its nearest existing ancestor."""
    return probe_filesystem(path).name


def check_supported_filesystem(path: str | os.PathLike[str]) -> FilesystemProbe:
    """Refuse (78, ``startup.unsupported_filesystem``) a network or volatile
    filesystem; warn (``startup.filesystem_unknown``) about one we cannot
    classify. Creates nothing."""
    probe = probe_filesystem(path)
    if probe.verdict == "unsupported":
        raise RefusedByConfiguration(
            f"the data dir {path} is on {probe.name}, which cannot hold the store "
            "(network filesystems break SQLite's locking; volatile ones lose it at reboot)",
            event="startup.unsupported_filesystem",
            hint="use a local writable filesystem (ext4, xfs, btrfs, zfs) for --data-dir",
            path=str(path),
            filesystem=probe.name,
            probed=str(probe.path),
        )
    if probe.verdict == "unknown":
        log.warning(
            "startup.filesystem_unknown",
            msg=f"the data dir is on {probe.name}, a filesystem not known to be local; "
            "starting anyway",
            hint="make sure it is a local disk (overlay in a container is fine "
            "when its upper layer is)",
            path=str(path),
            filesystem=probe.name,
        )
    return probe


def probe_filesystem(path: str | os.PathLike[str]) -> FilesystemProbe:
    probed = _nearest_existing(Path(os.path.abspath(path)))
    named, by_device = _mountinfo_name(probed)
    if by_device and (named in _LOCAL_NAMES or named in _UNSUPPORTED_NAMES):
        # The entry of the very device holding the path names a filesystem we
        # know, and statfs on that device could only agree (f_type comes from
        # the same superblock): skip it, and the ctypes it needs, a few
        # milliseconds of every `status` (docs/performance.md, "Cold start").
        return FilesystemProbe(probed, named, _verdict(None, named))
    magic = _statfs_magic(probed)
    name = named or _UNSUPPORTED_MAGIC.get(magic) or _LOCAL_MAGIC.get(magic)
    name = name or ("unknown" if magic is None else f"unknown(0x{magic:x})")
    return FilesystemProbe(probed, name, _verdict(magic, name))


def _verdict(magic: int | None, name: str) -> str:
    if magic in _UNSUPPORTED_MAGIC or name in _UNSUPPORTED_NAMES:
        return "unsupported"
    if magic == _FUSE_MAGIC:
        return "unknown"  # a FUSE subtype we do not know: could be anything
    if magic in _LOCAL_MAGIC or name in _LOCAL_NAMES:
        return "local"
    return "unknown"


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _statfs_magic(path: Path) -> int | None:
    """``f_type`` from statfs(2): the first field of struct statfs on Linux."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # here: only the commands that check a filesystem pay for it

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(512)  # struct statfs is 120 bytes on 64-bit
    if libc.statfs(os.fsencode(path), buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _mountinfo_name(path: Path) -> tuple[str | None, bool]:
    """The filesystem type /proc/self/mountinfo gives the mount holding
    ``path``: matched by device number, else by the longest mount point;
    and whether it was matched by device number."""
    try:
        text = Path("/proc/self/mountinfo").read_text("utf-8", "replace")
        device = os.stat(path).st_dev
    except OSError:
        return None, False
    mounts = [m for m in map(_parse_mountinfo_line, text.splitlines()) if m]
    by_device = [m for m in mounts if m[0] == (os.major(device), os.minor(device))]
    real = os.path.realpath(path)
    candidates = by_device or [m for m in mounts if _is_under(real, m[1])]
    if not candidates:
        return None, False
    # The longest mount point wins; among equals the last mounted (it shadows).
    return max(reversed(candidates), key=lambda m: len(m[1]))[2], bool(by_device)


def _parse_mountinfo_line(line: str) -> tuple[tuple[int, int], str, str] | None:
    """((major, minor), mount point, fstype) from one mountinfo line."""
    head, sep, tail = line.partition(" - ")
    fields = head.split()
    if not sep or len(fields) < 5 or not tail.split():
        return None
    major, _, minor = fields[2].partition(":")
    if not (major.isdigit() and minor.isdigit()):
        return None
    return (int(major), int(minor)), _unescape_octal(fields[4]), tail.split()[0]


def _unescape_octal(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo.
    if "\\" not in field:
        return field  # nearly every line: no pattern to compile at all
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _is_under(path: str, mount_point: str) -> bool:
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
