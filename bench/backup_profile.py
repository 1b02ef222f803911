"""Where a backup's and a restore's time goes: each phase alone, then the whole.

    python -m bench.backup_profile [--quick] [--size-mib N] [--repeat N] [--workdir DIR]

Runs the product's own phase functions one after another in this process,
on the benchmark's generated store (``bench/store_gen.py``), and times each
alone: for a backup holding the store's file unchanged (a checkpoint, a
moment's write lock, a read transaction), its copy (hashed on the way, past
the page cache), ``quick_check`` of the held file, the fsync of the copy; for a
restore the copy into the data dir, its fsync, ``integrity_check``, sha256
and the migration handshake. Then the two commands as an operator runs them
(``portunus-server backup --json``, ``restore --json``), whose wall time
minus the in-process total is start-up (interpreter and imports). Inside
the commands the check, the hash and the fsync run side by side, so the
whole is shorter than the sum of its phases: the table shows both.
Repeats are interleaved; medians with min-max. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from bench import store_gen
from portunus import durable
from portunus.engine import artefact, backup, frozen, restore
from portunus.engine.checksum import sha256_file

SEED = 20261127


def _timed(fn: Callable[[], object]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def _settle() -> None:
    subprocess.run(["sync"], check=True)
    time.sleep(0.3)


def backup_phases(source: Path, scratch: Path) -> dict[str, float]:
    """The file path's phases alone (engine/frozen.py); in the command the
    copy (and its hash) and the check of the held file run side by side."""
    tmp, held = backup._create_temp(scratch)
    holding = None
    try:
        times: dict[str, float] = {}
        started = time.monotonic()
        holding = frozen.freeze(source)
        times["hold the file (checkpoint, write lock, snapshot)"] = time.monotonic() - started
        assert holding is not None, "the store could not be held"

        digest = hashlib.sha256()

        def copy() -> None:
            fd = os.open(tmp, os.O_WRONLY)
            direct_fd = durable.open_direct(tmp)
            try:
                frozen.copy(holding, fd, digest, lambda _upto: None, direct_fd)
            finally:
                os.close(fd)
                if direct_fd is not None:
                    os.close(direct_fd)

        times["copy, hashed on the way (O_DIRECT where the filesystem allows)"] = _timed(copy)
        times["quick_check of the held file"] = _timed(
            lambda: artefact.check_connection_integrity(
                holding.conn, source, "quick", "backup.verify_failed"
            )
        )
        times["fsync of the copy"] = _timed(lambda: durable.fsync_path(tmp))
        return times
    finally:
        if holding is not None:
            holding.close_file()
        os.close(held)
        durable.remove_if_present(*durable.sqlite_family(tmp))


def restore_phases(artefact_path: Path, scratch: Path) -> dict[str, float]:
    staged = scratch / "staged.db"
    try:
        copy = _timed(lambda: restore._copy_file(artefact_path, staged))
        times = {"copy (copy_file_range)": copy}
        times["fsync of the copy"] = _timed(lambda: durable.fsync_path(staged))
        times["integrity_check"] = _timed(lambda: restore._check_integrity(staged, artefact_path))
        times["sha256"] = _timed(lambda: sha256_file(staged))
        times["migration handshake (none due)"] = _timed(
            lambda: restore._migrate(staged, artefact_path)
        )
        return times
    finally:
        durable.remove_if_present(*durable.sqlite_family(staged))


def _cli(*args: str) -> tuple[float, dict]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "portunus", *args, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return time.monotonic() - started, json.loads(done.stdout)


def commands(data_dir: Path, scratch: Path) -> tuple[dict[str, float], Path]:
    out = scratch / "cli-backup.db"
    wall, summary = _cli("--data-dir", str(data_dir), "backup", "--out", str(out))
    times = {
        "`portunus-server backup` process wall": wall,
        "↳ in-process total (JSON)": summary["total_seconds"],
        "↳ start-up (wall − in-process)": wall - summary["total_seconds"],
    }
    _settle()
    target = scratch / "restored"
    wall, _ = _cli("--data-dir", str(target), "restore", "--in", str(out))
    times["`portunus-server restore` process wall"] = wall
    shutil.rmtree(target)
    return times, out


def _spread(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB, 1 run")
    parser.add_argument("--size-mib", type=int)
    parser.add_argument("--repeat", type=int)
    parser.add_argument("--workdir", type=Path, default=Path("bench/work"))
    args = parser.parse_args(argv)
    # The phases log as the commands do; only the table is wanted here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    size = args.size_mib or (64 if args.quick else 1024)
    repeat = args.repeat or (1 if args.quick else 3)
    workdir = args.workdir.resolve()
    data_dir, info, _ = store_gen.cached_store(workdir / "store" / f"{size}mib", size, SEED)
    scratch = workdir / "profile"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    load = os.getloadavg()[0]
    rows: dict[str, dict[str, list[float]]] = {"backup": {}, "restore": {}, "commands": {}}
    try:
        for _ in range(repeat):
            _settle()
            for name, t in backup_phases(data_dir / "state.db", scratch).items():
                rows["backup"].setdefault(name, []).append(t)
            _settle()
            timed, artefact_path = commands(data_dir, scratch)
            for name, t in timed.items():
                rows["commands"].setdefault(name, []).append(t)
            _settle()
            for name, t in restore_phases(artefact_path, scratch).items():
                rows["restore"].setdefault(name, []).append(t)
            durable.remove_if_present(artefact_path, Path(f"{artefact_path}.sha256"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"\n## Profile: each phase alone, {info.bytes / 2**20:.0f} MiB store, "
        f"{repeat} run(s), load {load:.2f} → {os.getloadavg()[0]:.2f}\n"
    )
    print("| part | phase | s, median (min–max) |\n|---|---|---|")
    for part, phases in rows.items():
        for name, xs in phases.items():
            print(f"| {part} | {name} | {_spread(xs)} |")
        if part != "commands":
            sums = [sum(run) for run in zip(*phases.values(), strict=True)]
            print(f"| {part} | sum of the phases above (one after another) | {_spread(sums)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
