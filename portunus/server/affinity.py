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

Which CPU: not one that services the machine's busy device interrupts.
The kernel delivers each device's completions (the disk's, the NIC's) to
the CPUs its interrupt affinity names; on the 2-core development VM every
disk interrupt lands on CPU 1, and with the loop pinned there writes and
reads were ~8 % slower than on CPU 0 (5 of 6 alternating pairs). So the
choice leaves out CPUs that have served far more device interrupts than
the quietest one, and among the rest keeps the CPU the thread is on (so
several servers on one host still spread out).

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
# A CPU counts as busy with interrupts past twice the quietest allowed CPU's
# device-interrupt count, plus this much slack (so that a freshly booted
# machine's few hundred interrupts decide nothing).
_INTERRUPT_SLACK = 10_000


def allowed_cpus() -> frozenset[int]:
    """The CPUs the calling thread may run on (empty when unknown)."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset()


def one_cpu(allowed: frozenset[int], interrupts: dict[int, int] | None = None) -> frozenset[int]:
    """One CPU for the GIL-bound threads. Of the allowed CPUs, those not busy
    with device interrupts (``interrupts``: counts per CPU, read from
    /proc/interrupts when not given); of those, the one the calling thread
    runs on now (where the scheduler just placed it), or the lowest. Empty
    when there is no choice to make."""
    if len(allowed) < 2:
        return frozenset()
    counts = device_interrupts() if interrupts is None else interrupts
    quietest = min(counts.get(cpu, 0) for cpu in allowed)
    calm = {cpu for cpu in allowed if counts.get(cpu, 0) <= 2 * quietest + _INTERRUPT_SLACK}
    current = _current_cpu()
    return frozenset({current if current in calm else min(calm)})


def device_interrupts(text: str | None = None) -> dict[int, int]:
    """Interrupts served per CPU since boot by devices (the numbered lines of
    /proc/interrupts; the per-CPU timer and IPI lines are left out). Empty
    when unreadable."""
    if text is None:
        try:
            with open("/proc/interrupts", encoding="ascii", errors="replace") as f:
                text = f.read()
        except OSError:
            return {}
    lines = text.splitlines()
    if not lines:
        return {}
    cpus = [int(n[3:]) for n in lines[0].split() if n.startswith("CPU") and n[3:].isdigit()]
    counts = dict.fromkeys(cpus, 0)
    for line in lines[1:]:
        label, _, rest = line.partition(":")
        if not label.strip().isdigit():
            continue
        for cpu, field in zip(cpus, rest.split(), strict=False):
            if not field.isdigit():
                break
            counts[cpu] += int(field)
    return counts


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
