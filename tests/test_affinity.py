"""portunus.server.affinity: one CPU for the GIL-bound threads, per thread."""

from __future__ import annotations

import os
import threading

import pytest

from portunus.server import affinity


def test_one_cpu_is_one_of_the_allowed_or_nothing_when_there_is_no_choice():
    assert affinity.one_cpu(frozenset()) == frozenset()
    assert affinity.one_cpu(frozenset({3})) == frozenset()
    allowed = affinity.allowed_cpus()
    if len(allowed) >= 2:
        chosen = affinity.one_cpu(allowed)
        assert len(chosen) == 1 and chosen <= allowed
    # A CPU the thread is not on now cannot be chosen unless it is allowed.
    assert affinity.one_cpu(frozenset({10_000, 10_001})) == frozenset({10_000})


# Shaped like the development VM's /proc/interrupts: every disk completion on CPU1.
INTERRUPTS = """\
           CPU0       CPU1       CPU2       CPU3
 31:          0       3511          0          0  PCI-MSIX-0000:00:01.0   3-edge      virtio0-stats
 36:          0    8144582          0          0  PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
 39:      13605          0        200          0  PCI-MSIX-0000:00:03.0   2-edge      virtio2-out
 41:       6268          0          0       9000  PCI-MSIX-0000:00:04.0   1-edge      virtio3-rx
NMI:          0          0          0          0   Non-maskable interrupts
LOC:    4290080    4441835    4000000    4100000   Local timer interrupts
CAL:   19222612   17719670   19000000   19000000   Function call interrupts
ERR:          0
"""


def test_device_interrupts_are_summed_per_cpu_without_the_per_cpu_housekeeping():
    assert affinity.device_interrupts(INTERRUPTS) == {
        0: 19_873,
        1: 8_148_093,
        2: 200,
        3: 9_000,
    }
    assert affinity.device_interrupts("") == {}
    real = affinity.device_interrupts()  # this machine's, whatever it is
    assert all(isinstance(n, int) and n >= 0 for n in real.values())


def test_the_cpu_serving_the_busy_device_interrupts_is_never_chosen():
    counts = affinity.device_interrupts(INTERRUPTS)
    for allowed in ({0, 1}, {1, 2}, {0, 1, 2, 3}):
        chosen = affinity.one_cpu(frozenset(allowed), counts)
        assert len(chosen) == 1 and chosen <= allowed and 1 not in chosen
    # Counts within the slack decide nothing: any allowed CPU may be chosen.
    even = {0: 5_000, 1: 9_000}
    assert affinity.one_cpu(frozenset({0, 1}), even) <= {0, 1}
    assert affinity.one_cpu(frozenset({10_000, 10_001}), {}) == frozenset({10_000})


def test_pinning_binds_only_the_calling_thread_and_the_threads_it_starts():
    allowed = affinity.allowed_cpus()
    if len(allowed) < 2:
        pytest.skip("one CPU: nothing to pin")
    target = frozenset({min(allowed)})
    seen: dict[str, frozenset[int]] = {}

    def pinned() -> None:
        affinity.pin_thread(target)
        seen["pinned"] = frozenset(os.sched_getaffinity(0))
        child = threading.Thread(
            target=lambda: seen.update(child=frozenset(os.sched_getaffinity(0)))
        )
        child.start()
        child.join()

    thread = threading.Thread(target=pinned)
    thread.start()
    thread.join()
    assert seen == {"pinned": target, "child": target}
    assert affinity.allowed_cpus() == allowed  # this thread is untouched


def test_an_empty_set_or_a_refusal_changes_nothing():
    before = affinity.allowed_cpus()
    affinity.pin_thread(frozenset())
    affinity.pin_thread(frozenset({10_000}))  # no such CPU: refused, ignored
    assert affinity.allowed_cpus() == before
