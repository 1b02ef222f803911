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
