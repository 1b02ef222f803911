"""What the figures were measured on: CPU, memory, kernel, filesystem, versions."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import apsw

from bench.measure import TIME_BIN, gnu_time_available


def describe(workdir: Path) -> dict[str, object]:
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "filesystem": _filesystem(workdir),
        "python": platform.python_version(),
        "apsw": apsw.apsw_version(),
        "apsw_sqlite": apsw.sqlite_lib_version(),
        "sqlite3_cli": _output(["sqlite3", "--version"]).split(" ")[0] or "absent",
        "gnu_time": TIME_BIN if gnu_time_available() else "absent (no peak RSS)",
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _filesystem(workdir: Path) -> str:
    fs_type = _output(["stat", "-f", "-c", "%T", str(workdir)])
    mount = _output(["findmnt", "-n", "-T", str(workdir), "-o", "FSTYPE,SOURCE,OPTIONS"])
    return f"{workdir}: {mount or fs_type or 'unknown'}"


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return " ".join(done.stdout.split()) if done.returncode == 0 else ""
