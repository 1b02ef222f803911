"""Helper processes that do one long job beside this process: pyrage holds
the GIL for the whole of a call (measured), so while it encrypts or
decrypts here no thread of ours could hash or check; in a process of its
own the other core does that work.

Each runs a short Python script (``python -c``) given the parent's pid and
its own arguments. It asks the kernel to kill it when its parent dies
(``PR_SET_PDEATHSIG``; it exits at once if the parent is already gone), so
a ``kill -9``'d command leaves nothing running. Its body defines
``main()``; an OSError from it is reported as ``<errno> <message>`` on the
last line of stderr, exit 3, which :func:`failure` turns back into an
OSError here.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

_PREAMBLE = """
import ctypes, os, sys
ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
if os.getppid() != int(sys.argv[1]):
    sys.exit(4)  # the parent died before the signal was armed
"""
_EPILOGUE = """
try:
    main()
except OSError as exc:
    sys.stderr.write("%d %s\\n" % (exc.errno or 0, exc.strerror or exc))
    sys.exit(3)
"""


def spawn(body: str, args: list[str], *, isolated: bool = False, **popen: Any) -> Any:
    """Start ``body`` (which defines ``main()``; its arguments are
    ``sys.argv[2:]``) in a child. ``isolated``: ``python -I``, for a body
    that needs only the standard library. ``popen``: subprocess.Popen's."""
    import subprocess  # here: the light commands never spawn

    flags = ["-I"] if isolated else []
    script = _PREAMBLE + body + _EPILOGUE
    return subprocess.Popen(
        [sys.executable, *flags, "-c", script, str(os.getpid()), *args], **popen
    )


def failure(returncode: int, stderr: bytes, what: str) -> OSError | None:
    """The OSError a child that exited ``returncode`` reported (None when it
    succeeded); ``what`` names the job when it said nothing."""
    if returncode == 0:
        return None
    text = stderr.decode("utf-8", "replace").strip()
    code, _, why = text.rpartition("\n")[2].partition(" ")
    return OSError(int(code) if code.isdigit() else errno.EIO, why or text or f"{what} failed")
