"""Named points where a crash test may freeze the process; off by default.

With ``PORTUNUS_TEST_STOP_AT=<name>`` in its environment, a process that
reaches the point ``<name>`` stops itself (SIGSTOP), so a test can kill -9
it exactly there, in a window too short to hit by timing
(tests/test_crash.py). Nobody sets the variable outside the tests; unset,
:func:`reached` is one environment lookup. The points:

- ``backup.sidecar_published``: a backup's sidecar has its final name and
  the backup itself does not yet.
- ``managed.pruning``: a managed backup was published; pruning starts.
"""

from __future__ import annotations

import os
import signal

ENV = "PORTUNUS_TEST_STOP_AT"


def reached(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGSTOP)
