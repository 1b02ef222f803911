"""Keep the threads that take turns on the GIL on one CPU.

The event loop and the writer hand the GIL to each other several times per
write: apsw releases it around every SQLite call, and the other thread
takes it. When the two run on different CPUs, each hand-over is a
cross-CPU wake-up, and the thread that wants the GIL back often waits out
CPython's switch interval while the other holds it. Both threads are bound
by the GIL, so they never gain from running at the same time; on one CPU
the hand-overs are cheap. Measured with ``invoke bench --api`` on the
2-core machine (docs/performance.md, "Serving"): audited writes cost
~300-400 µs of CPU each with the two threads on one CPU against
~540-900 µs apart.

Only those two threads are pinned. Threads whose work runs mostly outside
the GIL (the checkpointer's I/O, the read pool, online backups and their
verification) keep every CPU the process may use, so a backup still runs
beside the loop. Everything here is best effort: where affinity cannot be
read or set, nothing changes.
"""

from __future__ import annotations

import os

# Field 39 of /proc/<tid>/stat (1-based): the CPU the thread last ran on.
_PROCESSOR_FIELD = 39


def allowed_cpus() -> frozenset[int]:
    """The CPUs the calling thread may run on (empty when unknown)."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset()


def one_cpu(allowed: frozenset[int]) -> frozenset[int]:
    """One CPU for the GIL-bound threads: the one the calling thread runs on
    now (where the scheduler just placed it), or the lowest allowed. Empty
    when there is no choice to make."""
    if len(allowed) < 2:
        return frozenset()
    current = _current_cpu()
    return frozenset({current if current in allowed else min(allowed)})


def pin_thread(cpus: frozenset[int]) -> None:
    """Bind the calling thread (on Linux, affinity is per thread, and threads
    it starts inherit it) to ``cpus``; a no-op for an empty set or on refusal."""
    if not cpus:
        return
    try:
        os.sched_setaffinity(0, cpus)
    except (AttributeError, OSError):
        pass


def _current_cpu() -> int | None:
    try:
        with open("/proc/thread-self/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state): field N is fields[N - 3].
        return int(fields[_PROCESSOR_FIELD - 3])
    except (OSError, IndexError, ValueError):
        return None
