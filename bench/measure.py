"""Run a measured command in its own process: wall time, peak RSS, a time cap.

Peak RSS comes from GNU time wrapped around each command. Asking the kernel
ourselves (wait4 / RUSAGE_CHILDREN) is wrong here: a child forked from this
Python process inherits its RSS high-water mark at exec, so every child would
report at least the parent's size.
"""

from __future__ import annotations

import functools
import os
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TIME_BIN = "/usr/bin/time"
MiB = 1024 * 1024
POLL_SECONDS = 0.05  # how often the -wal size is sampled while a command runs


@dataclass(frozen=True)
class Measured:
    """One command (or a short sequence of commands, such as cp then sync)."""

    rc: int | None
    wall_s: float
    t_start: float
    t_end: float
    rss_mib: float | None
    cpu_s: float | None
    capped: bool
    stdout: str
    stderr: str
    peak_watched_mib: float

    @property
    def completed(self) -> bool:
        return self.rc == 0 and not self.capped


def now() -> float:
    # CLOCK_MONOTONIC is one clock for every process on the machine, so the
    # writer's timestamps and ours can be compared directly.
    return time.monotonic()


@functools.cache
def gnu_time_available() -> bool:
    try:
        probe = subprocess.run([TIME_BIN, "--version"], capture_output=True, text=True, timeout=5)
    except OSError:
        return False
    return "GNU" in probe.stdout + probe.stderr


def run_measured(
    commands: Sequence[Sequence[str]], cap: float, watch: Path | None = None
) -> Measured:
    """Run ``commands`` one after another (stopping at the first failure),
    each under GNU time; kill whatever still runs after ``cap`` seconds."""
    deadline = now() + cap
    parts = []
    for argv in commands:
        part = _run_one([str(a) for a in argv], deadline, watch)
        parts.append(part)
        if not part.completed:
            break
    return _combine(parts)


def _combine(parts: list[Measured]) -> Measured:
    rss = [p.rss_mib for p in parts]
    cpu = [p.cpu_s for p in parts]
    return Measured(
        rc=parts[-1].rc,
        wall_s=parts[-1].t_end - parts[0].t_start,
        t_start=parts[0].t_start,
        t_end=parts[-1].t_end,
        rss_mib=max(rss) if None not in rss else None,
        cpu_s=round(sum(cpu), 3) if None not in cpu else None,
        capped=any(p.capped for p in parts),
        stdout="".join(p.stdout for p in parts),
        stderr="".join(p.stderr for p in parts),
        peak_watched_mib=max(p.peak_watched_mib for p in parts),
    )


def _run_one(argv: list[str], deadline: float, watch: Path | None) -> Measured:
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", prefix="rusage-") as usage,
    ):
        wrapped = gnu_time_available()
        full = [TIME_BIN, "-f", "%M %U %S", "-o", usage.name, *argv] if wrapped else argv
        t_start = now()
        proc = subprocess.Popen(full, stdout=out, stderr=err, start_new_session=True)
        capped, peak = _wait(proc, deadline, watch)
        t_end = now()
        rss_kib, cpu = _read_usage(usage.name) if wrapped else (None, None)
        out.seek(0)
        err.seek(0)
        return Measured(
            rc=proc.returncode,
            wall_s=t_end - t_start,
            t_start=t_start,
            t_end=t_end,
            rss_mib=round(rss_kib / 1024, 1) if rss_kib else None,
            cpu_s=cpu,
            capped=capped,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace")[-4000:],
            peak_watched_mib=round(peak / MiB, 1),
        )


def _wait(proc: subprocess.Popen, deadline: float, watch: Path | None) -> tuple[bool, int]:
    """Wait for ``proc``; a pidfd wakes us the moment it exits, so the wall
    time is not rounded up to a polling interval."""
    pidfd = os.pidfd_open(proc.pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    capped, peak = False, 0
    try:
        while not poller.poll(POLL_SECONDS * 1000):
            peak = max(peak, _size(watch))
            if now() >= deadline:
                capped = True
                _kill_command(proc)
                break
        proc.wait()
    finally:
        os.close(pidfd)
    return capped, max(peak, _size(watch))


def _size(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _kill_command(proc: subprocess.Popen) -> None:
    # Kill the measured command, not GNU time around it, so that time still
    # writes the command's peak RSS; the process group is the fallback.
    try:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            children = [int(pid) for pid in f.read().split()]
    except (OSError, ValueError):
        children = []
    if proc.args[0] != TIME_BIN or not children:
        kill_process_group(proc.pid)
        return
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_process_group(pgid: int) -> None:
    """SIGKILL a child started with start_new_session, and its own children."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_usage(path: str) -> tuple[int | None, float | None]:
    """GNU time's line: peak RSS KiB, user s, sys s (after a 'Command
    terminated by signal' line when the command was killed)."""
    try:
        with open(path) as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        rss, user, sys_ = lines[-1].split()
        return int(rss), round(float(user) + float(sys_), 3)
    except (OSError, IndexError, ValueError):
        return None, None


def settle(pause: float = 0.3) -> None:
    """Flush dirty pages from the previous run so it does not bill the next."""
    os.sync()
    time.sleep(pause)


def read_through(path: Path) -> None:
    """Read a file once so that the runs after it start with a warm page cache."""
    buf = bytearray(4 * MiB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
