"""Retention and config benchmarks: the prune plan over 10,000 backups, the
directory scan behind it, and the start-up time of ``config show``.

    python -m bench.prune_bench [--backups 10000] [--repeat 5] [--workdir bench/work] [--quick]

Prints a Markdown table (the "Retention and config" section of
docs/performance.md). Goal: the plan for 10,000 backups in under 1 s.
Figures are measured here and recorded in the docs, never asserted by tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from portunus.engine import retention
from portunus.engine.backup import backup_name
from portunus.store.sqlitefile import SQLITE_HEADER

PLAN_GOAL_SECONDS = 1.0
# A policy an operator would write: two days of everything, then thinning out.
POLICY = retention.Policy(
    keep_last=24,
    keep_daily=14,
    keep_weekly=8,
    keep_monthly=24,
    keep_yearly=10,
    keep_within=timedelta(days=2),
)


def hourly_backups(count: int) -> list[retention.Backup]:
    """``count`` backups an hour apart, ending now: 10,000 is about 14 months."""
    newest = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    times = [newest - timedelta(hours=n) for n in range(count)]
    return [retention.Backup(backup_name(t), t, 4096, 90) for t in times]


def fill_directory(directory: Path, backups: list[retention.Backup]) -> None:
    """Small real files: the SQLite header and a sidecar for each backup."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for b in backups:
        (directory / b.name).write_bytes(SQLITE_HEADER + bytes(4080))
        (directory / f"{b.name}.sha256").write_text(f"{'0' * 64}  {b.name}\n")


def timed(action: Callable[[], object], repeat: int) -> list[float]:
    walls = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        walls.append(time.perf_counter() - started)
    return walls


def cli(*args: str) -> Callable[[], object]:
    argv = [sys.executable, *args]
    return lambda: subprocess.run(argv, check=True, capture_output=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backups", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("bench/work"))
    parser.add_argument("--quick", action="store_true", help="1,000 backups, 2 runs")
    args = parser.parse_args(argv)
    count, repeat = (1_000, 2) if args.quick else (args.backups, args.repeat)
    backups = hourly_backups(count)
    directory = args.workdir / "prune-bench"
    fill_directory(directory, backups)
    config = args.workdir / "prune-bench.toml"
    config.write_text(f'[backup]\ndir = "{directory.resolve()}"\n[retention]\nkeep_daily = 14\n')
    try:
        rows = measure(backups, directory, config, repeat)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        config.unlink(missing_ok=True)
    print(render(rows, count, repeat))


def measure(backups, directory: Path, config: Path, repeat: int) -> list[tuple[str, list[float]]]:
    kept = len(retention.plan(backups, POLICY).kept)
    portunus = ["-m", "portunus", "--config", str(config)]
    cases: list[tuple[str, Callable[[], object]]] = [
        (f"plan() alone ({kept} kept)", lambda: retention.plan(backups, POLICY)),
        ("scan() of the directory (reads 16 bytes each)", lambda: retention.scan(directory)),
        ("`prune --dry-run` end to end", cli(*portunus, "prune", "--dry-run")),
        ("`python -c pass` (interpreter start, for scale)", cli("-c", "pass")),
        ("`portunus-server --version`", cli("-m", "portunus", "--version")),
        ("`portunus-server config show`", cli(*portunus, "config", "show")),
    ]
    return [(label, timed(action, repeat)) for label, action in cases]


def render(rows: list[tuple[str, list[float]]], count: int, repeat: int) -> str:
    lines = [
        f"Retention over {count:,} backups (+ sidecars), policy {POLICY.as_dict()}; "
        f"median of {repeat} runs, min-max in brackets.",
        "",
        "| what | median s | range s |",
        "| --- | --- | --- |",
    ]
    for label, walls in rows:
        lines.append(f"| {label} | {statistics.median(walls):.3f} | "
                     f"{min(walls):.3f}-{max(walls):.3f} |")  # fmt: skip
    plan = statistics.median(rows[0][1])
    met = "met" if plan < PLAN_GOAL_SECONDS else "NOT met"
    lines += ["", f"Goal: plan for {count:,} backups under {PLAN_GOAL_SECONDS:.0f} s: {met}."]
    lines.append(f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
