"""Cold start: what a command costs before it touches the store, side by side.

    python -m bench.cold_start [--runs N] [--workdir DIR] [--quick]

Times, as processes and interleaved round by round (so a busy machine
slows every line alike): ``python -c pass``; ``python -c 'import invoke,
structlog, apsw'`` (the floor: what every command must import); and
``portunus-server --help``, ``status`` on an idle store, ``verify`` of a
small backup. Each runs once first, unmeasured, so bytecode is cached as in
an installed package (the children run without PYTHONDONTWRITEBYTECODE).
Prints medians and ranges, each command's distance from the floor, and the
modules each command imported beyond the floor. Timings are printed, never
asserted (issue 13's goal: within 0.03 s of the floor).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

FLOOR = "import invoke, structlog, apsw"
GOAL_SECONDS = 0.03
HEAVY = ("sanic", "cryptography", "tomlkit")


def environment(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith(("PORTUNUS_", "INVOKE_"))
    }
    env.pop("STATE_DIRECTORY", None)
    env.pop("XDG_STATE_HOME", None)
    env["HOME"] = str(home)
    return env


def prepare(workdir: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """A small store (the first admin token) and a backup of it, made by the CLI."""
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "home").mkdir(parents=True)
    data_dir, backup = workdir / "data", workdir / "small-backup.db"
    for args in (["bootstrap-admin", "--name", "ops"], ["backup", "--out", str(backup)]):
        subprocess.run(
            [sys.executable, "-m", "portunus", "--data-dir", str(data_dir), *args],
            env=env,
            check=True,
            capture_output=True,
        )
    return data_dir, backup


def cases(data_dir: Path, backup: Path) -> list[tuple[str, list[str]]]:
    portunus = [sys.executable, "-m", "portunus"]
    return [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        (f"python -c '{FLOOR}' (floor)", [sys.executable, "-c", FLOOR]),
        ("portunus-server --help", [*portunus, "--help"]),
        ("portunus-server status (idle store)", [*portunus, "--data-dir", str(data_dir), "status"]),
        ("portunus-server verify (small backup)", [*portunus, "verify", str(backup)]),
    ]


def measure(rows: list[tuple[str, list[str]]], runs: int, env: dict[str, str]) -> list[list[float]]:
    for _, argv in rows:  # warm-up: bytecode written, page cache filled
        subprocess.run(argv, env=env, check=True, capture_output=True)
    walls: list[list[float]] = [[] for _ in rows]
    for _ in range(runs):
        for i, (_, argv) in enumerate(rows):
            started = time.perf_counter()
            subprocess.run(argv, env=env, check=True, capture_output=True)
            walls[i].append(time.perf_counter() - started)
    return walls


def imported_beyond_floor(argv: list[str], env: dict[str, str]) -> list[str]:
    """Top-level packages the command imports that the floor does not (-X importtime)."""

    def top_level(cmd: list[str]) -> set[str]:
        err = subprocess.run(
            [cmd[0], "-X", "importtime", *cmd[1:]], env=env, capture_output=True, text=True
        ).stderr
        names = set()
        for line in err.splitlines():
            if line.startswith("import time:") and line.count("|") == 2:
                names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
        return names

    floor = top_level([sys.executable, "-c", FLOOR])
    return sorted(top_level(argv) - floor)


def render(rows, walls, extras, runs: int) -> str:
    floor, floor_best = statistics.median(walls[1]), min(walls[1])
    lines = [
        f"Cold start, median of {runs} runs (interleaved), min-max in brackets; "
        "'over the floor' compares medians, and the fastest runs (best).",
        "",
        "| command | median s | range s | over the floor s | best over the floor s "
        "| imports beyond the floor |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for (label, _), times, extra in zip(rows, walls, extras, strict=True):
        median = statistics.median(times)
        over = best = ""
        if label.startswith("portunus"):
            over, best = f"{median - floor:+.3f}", f"{min(times) - floor_best:+.3f}"
        heavy = [m for m in extra or () if m in HEAVY]
        shown = ", ".join(extra) if extra is not None else ""
        if heavy:
            shown += f" (HEAVY: {', '.join(heavy)})"
        lines.append(
            f"| `{label}` | {median:.3f} | {min(times):.3f}-{max(times):.3f} | {over} | {best} "
            f"| {shown} |"
        )
    worst = max(statistics.median(t) for t in walls[2:]) - floor
    verdict = "met" if worst <= GOAL_SECONDS else "NOT met"
    lines += [
        "",
        f"Goal: each portunus-server median within {GOAL_SECONDS:.2f} s of the floor's: "
        f"{verdict} (worst {worst:+.3f} s; compare on a quiet machine).",
        f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"load average {os.getloadavg()[0]:.2f} at the end.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--workdir", type=Path, default=Path("bench/work"))
    parser.add_argument("--quick", action="store_true", help="5 runs")
    args = parser.parse_args(argv)
    runs = 5 if args.quick else args.runs
    workdir = (args.workdir / "cold-start").resolve()
    env = environment(workdir / "home")
    data_dir, backup = prepare(workdir, env)
    try:
        rows = cases(data_dir, backup)
        walls = measure(rows, runs, env)
        extras = [None, None] + [imported_beyond_floor(a, env) for _, a in rows[2:]]
        print(render(rows, walls, extras, runs))
        record = {
            "bench": "cold_start",
            "runs": runs,
            "medians": {
                label: statistics.median(t) for (label, _), t in zip(rows, walls, strict=True)
            },
        }
        print(json.dumps(record))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
