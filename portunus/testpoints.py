"""Named points where a crash test may freeze the process; off by default.

With ``PORTUNUS_TEST_STOP_AT=<name>`` in its environment, a process that
reaches the point ``<name>`` stops itself (SIGSTOP), so a test can kill -9
it exactly there, in a window too short to hit by timing
(tests/test_crash.py). Nobody sets the variable outside the tests; unset,
:func:`reached` is one environment lookup. The points:

- ``backup.sidecar_published``: a backup's sidecar has its final name and
  the backup itself does not yet.
- ``managed.pruning``: a managed backup was published; pruning starts.
- ``replication.before_exec``: the replicator's shim, about to become
  Litestream (checked in ``portunus/replication/shim.py`` itself, which
  imports nothing of portunus).

``PORTUNUS_TEST_FAIL_AT=<name>`` makes the point raise :class:`InjectedFault`
instead: an exception the code does not expect, which is what exit 1
(``internal_error``) is for. Every operator task passes the point
``task.<name>`` (e.g. ``task.status``) before its body runs.
"""

from __future__ import annotations

import os
import signal

ENV = "PORTUNUS_TEST_STOP_AT"
FAIL_ENV = "PORTUNUS_TEST_FAIL_AT"


class InjectedFault(RuntimeError):
    """Raised on purpose at a test point: stands for a bug."""


def reached(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGSTOP)
    if os.environ.get(FAIL_ENV) == name:
        raise InjectedFault(f"fault injected at {name} ({FAIL_ENV})")
