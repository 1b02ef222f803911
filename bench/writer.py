"""The concurrent writer: another process committing one small audit_log row
per transaction (WAL, synchronous=NORMAL), as the server does, timing each
commit. Rate-limited, or as fast as it can (--rate 0).

    python -m bench.writer --db STATE_DB --rate 500 --out FILE [--server-like]

By default it checkpoints as any SQLite program does (auto-checkpoint, run
by the commit that crosses 1000 pages): the honest comparison with the
sqlite3 CLI. ``--server-like`` checkpoints as portunus-server does: no
auto-checkpoint, a background thread running PASSIVE checkpoints, and the
writer's catch-up between commits (the server's own
:class:`~portunus.server.store.Checkpointer`).

It runs until SIGTERM, then writes the start time and latency of every commit
(CLOCK_MONOTONIC seconds, two float64 arrays) to FILE and a JSON summary to
FILE.json. :class:`Writer` is the parent's side: start, stop, read, window.
"""

from __future__ import annotations

import argparse
import array
import bisect
import json
import math
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import apsw

from bench import commands
from bench.measure import kill_process_group, now
from portunus.server.store import Checkpointer

INSERT = (
    "INSERT INTO audit_log (at, actor, action, resource, details) "
    "VALUES (?, 'bench-writer', 'client.poll', ?, ?)"
)
MAX_LAG = 1.0  # a rate-limited writer that falls this far behind does not burst to catch up


# ---------------------------------------------------------------- the child


def _details(rnd: random.Random) -> list[str]:
    # Prepared up front so that the loop measures SQLite, not JSON encoding.
    return [
        json.dumps({"edge": f"edge-{i:05d}", "seen": rnd.randbytes(64).hex()}) for i in range(512)
    ]


class _Stop:
    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._request)

    def _request(self, signum: int, frame: object) -> None:
        self.requested = True


def commit_until_stopped(db: str, rate: float, out: str, server_like: bool = False) -> None:
    stop = _Stop()
    conn = apsw.Connection(db)
    conn.setbusytimeout(5000)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    checkpointer = Checkpointer(Path(db)) if server_like else None
    if checkpointer:
        checkpointer.watch(conn)
        checkpointer.start()
    details = _details(random.Random(7))
    starts, latencies = array.array("d"), array.array("d")
    errors = 0
    interval = 1.0 / rate if rate > 0 else 0.0
    print("ready", flush=True)
    due = now()
    while not stop.requested:
        if interval:
            due = _pace(due, interval)
        n = len(starts)
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        began = now()
        try:
            conn.execute(INSERT, (at, f"client:{n}", details[n % len(details)]))
        except (apsw.BusyError, apsw.LockedError):
            errors += 1
            continue
        if checkpointer:
            # As the server's writer thread does before its next write; timed
            # with this commit, since it delays the next one.
            checkpointer.catch_up(conn)
        starts.append(began)
        latencies.append(now() - began)
    checkpoints = None
    if checkpointer:
        checkpointer.stop()
        checkpoints = {
            "attempts": checkpointer.attempts,
            "completed": checkpointer.completed,
            "catch_ups": checkpointer.catch_ups,
        }
    conn.close()
    _dump(out, starts, latencies, errors, checkpoints)


def _pace(due: float, interval: float) -> float:
    due += interval
    wait = due - now()
    if wait > 0:
        time.sleep(wait)
    elif wait < -MAX_LAG:
        due = now()
    return due


def _dump(
    out: str,
    starts: array.array,
    latencies: array.array,
    errors: int,
    checkpoints: dict[str, int] | None,
) -> None:
    with open(out, "wb") as f:
        f.write(len(starts).to_bytes(8, "little"))
        starts.tofile(f)
        latencies.tofile(f)
    with open(out + ".json", "w") as f:
        summary = {"commits": len(starts), "busy_errors": errors, "checkpoints": checkpoints}
        json.dump(summary, f)


# ---------------------------------------------------------------- the parent


@dataclass(frozen=True)
class Window:
    """The writer's commits that started in [start, end)."""

    commits: int
    seconds: float
    per_second: float | None
    p99_ms: float | None
    max_ms: float | None

    def as_dict(self) -> dict[str, object]:
        return {
            "commits": self.commits,
            "seconds": round(self.seconds, 3),
            "per_second": self.per_second,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
        }


@dataclass(frozen=True)
class WriterLog:
    starts: array.array
    latencies: array.array
    busy_errors: int
    checkpoints: dict[str, int] | None  # the background checkpointer's attempts, if it ran

    def window(self, start: float, end: float) -> Window:
        lo = bisect.bisect_left(self.starts, start)
        hi = bisect.bisect_left(self.starts, end)
        lat = sorted(self.latencies[lo:hi])
        seconds = end - start
        if not lat or seconds <= 0:
            return Window(len(lat), seconds, None, None, None)
        p99 = lat[max(0, math.ceil(0.99 * len(lat)) - 1)]
        return Window(
            len(lat),
            seconds,
            round(len(lat) / seconds, 1),
            round(p99 * 1e3, 3),
            round(lat[-1] * 1e3, 3),
        )


class Writer:
    """The writer child process, started and stopped by the benchmark."""

    def __init__(self, db: Path, rate: int, out: Path, server_like: bool = False) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            commands.writer(db, rate, out, server_like),
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.kill()
            raise RuntimeError(f"the writer did not start (said {line!r})")
        self.ready_at = now()

    def stop(self) -> WriterLog:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        self.proc.stdout.close()
        with open(self.out, "rb") as f:
            count = int.from_bytes(f.read(8), "little")
            starts, latencies = array.array("d"), array.array("d")
            starts.fromfile(f, count)
            latencies.fromfile(f, count)
        summary = json.loads(Path(f"{self.out}.json").read_text())
        return WriterLog(starts, latencies, summary["busy_errors"], summary["checkpoints"])

    def kill(self) -> None:
        if self.proc.poll() is None:
            kill_process_group(self.proc.pid)
            self.proc.wait()
        self.proc.stdout.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--rate", type=float, default=0, help="commits/s; 0 = as fast as it can")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--server-like",
        action="store_true",
        help="no auto-checkpoint; a background checkpointer thread, as in the server",
    )
    args = parser.parse_args()
    commit_until_stopped(args.db, args.rate, args.out, args.server_like)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
