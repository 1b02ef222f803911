"""The commands under test, as argv lists (a list of them when an approach
takes more than one process, such as ``cp`` then ``sync``)."""

from __future__ import annotations

import sys
from pathlib import Path

Commands = list[list[str]]

LABELS = {
    "cp_fsync": "`cp` + fsync (`sync FILE`)",
    "sqlite3_backup": "`sqlite3 SRC .backup DST`",
    "vacuum_into": "`sqlite3 SRC \"VACUUM INTO 'DST'\"`",
    "portunus_backup": "`portunus-server backup`",
    "stepped_100": "apsw backup, 100 pages a step, no held read txn (original Rust)",
    "portunus_restore": "`portunus-server restore`",
}


def portunus_server() -> list[str]:
    """The installed console script beside this interpreter, else ``-m portunus``."""
    script = Path(sys.executable).with_name("portunus-server")
    return [str(script)] if script.exists() else [sys.executable, "-m", "portunus"]


def cp_fsync(src: Path, dst: Path) -> Commands:
    # coreutils `sync FILE` is fsync(2) on that file: the copy is durable.
    return [["cp", str(src), str(dst)], ["sync", str(dst)]]


def sqlite3_backup(src: Path, dst: Path) -> Commands:
    return [["sqlite3", str(src), f".backup '{dst}'"]]


def vacuum_into(src: Path, dst: Path) -> Commands:
    return [["sqlite3", str(src), f"VACUUM INTO '{dst}'"]]


def portunus_backup(data_dir: Path, dst: Path) -> Commands:
    return [
        [*portunus_server(), "--data-dir", str(data_dir), "backup", "--out", str(dst), "--json"]
    ]


def portunus_restore(data_dir: Path, artefact: Path) -> Commands:
    return [
        [
            *portunus_server(),
            "--data-dir",
            str(data_dir),
            "restore",
            "--in",
            str(artefact),
            "--json",
        ]
    ]


def bootstrap_admin(data_dir: Path) -> list[str]:
    return [*portunus_server(), "--data-dir", str(data_dir), "bootstrap-admin", "--name", "bench"]


def stepped_backup(src: Path, dst: Path, pages: int, cap: float) -> Commands:
    return [
        [
            sys.executable,
            "-m",
            "bench.stepped_backup",
            "--src",
            str(src),
            "--dst",
            str(dst),
            "--pages",
            str(pages),
            "--cap",
            str(cap),
        ]
    ]


def writer(db: Path, rate: int, out: Path, server_like: bool = False) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.writer",
        "--db",
        str(db),
        "--rate",
        str(rate),
        "--out",
        str(out),
        *(["--server-like"] if server_like else []),
    ]
