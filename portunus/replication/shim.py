"""Run as ``python -I shim.py PARENT_PID PROGRAM ARGS...``: ask the kernel
to SIGKILL this process when its parent dies, then become PROGRAM.

Litestream watches no pipe and no parent, so without this a kill -9'd
server would leave its replicator running, and the next server would start
a second one on the same store. The death signal survives ``execv``. A
separate, single-threaded process because the server is multi-threaded,
where ``preexec_fn`` is unsafe. Standard library only: ``-I`` ignores the
environment and the user's site-packages.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> None:
    parent = int(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}")
    if os.getppid() != parent:
        sys.exit(0)  # the parent died before the death signal was armed
    # Replication yields the CPU to the API: on a busy machine the replica
    # falls a little further behind rather than writes slowing down.
    os.nice(10)
    # portunus.testpoints' point `replication.before_exec`, spelled out here
    # (standard library only): a test freezes the replicator before it starts.
    if os.environ.get("PORTUNUS_TEST_STOP_AT") == "replication.before_exec":
        os.kill(os.getpid(), signal.SIGSTOP)
    os.execv(sys.argv[2], sys.argv[2:])


if __name__ == "__main__":
    main()
