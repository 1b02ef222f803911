"""sha256 of artefacts and their ``<name>.sha256`` sidecars (sha256sum -c format)."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from portunus.errors import NotAStateDatabase

CHUNK = 1 << 20
MAP_WINDOW = 8 << 20  # TrailingSha256 hashes the page cache in place, this much at a time
_SIDECAR_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def sidecar_path(artefact: Path) -> Path:
    return artefact.with_name(artefact.name + ".sha256")


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex digest, size) read in 1 MiB chunks into one reused buffer: memory
    stays flat, and no chunk is allocated and freed (a GiB is 1,024 of them)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        # A smaller regular file gets a buffer of its size: zeroing a whole
        # MiB costs about 0.5 ms, a noticeable part of `verify`'s cold start.
        small = stat.S_ISREG(st.st_mode) and st.st_size < CHUNK
        buffer = bytearray(st.st_size + 1 if small else CHUNK)
        view = memoryview(buffer)
        while read := f.readinto(buffer):
            digest.update(view[:read])
            size += read
    return digest.hexdigest(), size


# The hashing process of :class:`Sha256Beside` (portunus.engine.children):
# the sha256 and the size of the file behind the inherited descriptor.
_HASHING_CHILD = """
import hashlib

def main():
    with os.fdopen(int(sys.argv[2]), "rb", buffering=0) as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        print(digest, f.tell())
"""


class Sha256Beside:
    """sha256 of an open file in a process of its own, for when this process
    is about to spend seconds inside a call that holds the GIL (pyrage's
    decryption: a thread here would not run until it returned), so the hash
    takes the other core instead of adding its time."""

    def __init__(self, fd: int) -> None:
        from portunus.engine import children

        os.lseek(fd, 0, os.SEEK_SET)
        self._child = children.spawn(
            _HASHING_CHILD, [str(fd)], isolated=True, stdout=-1, stderr=-1, pass_fds=(fd,)
        )

    def result(self) -> tuple[str, int]:
        """(hex digest, size); OSError when the child could not read the file."""
        from portunus.engine import children

        out, err = self._child.communicate()
        failed = children.failure(self._child.returncode, err, "hashing")
        if failed is not None:
            raise failed
        digest, size = out.decode("ascii").split()
        return digest, int(size)

    def cancel(self) -> None:
        self._child.kill()
        self._child.communicate()


def sidecar_text(digest: str, artefact_name: str) -> str:
    """One line ``sha256sum -c`` accepts when run in the artefact's directory."""
    return f"{digest}  {artefact_name}\n"


def read_sidecar(artefact: Path, *, event: str) -> str | None:
    """The digest recorded beside ``artefact``, or None when there is no sidecar."""
    path = sidecar_path(artefact)
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise NotAStateDatabase(
            f"cannot read the checksum sidecar {path}: {exc}",
            event=event,
            hint="fix or remove the sidecar",
            path=str(path),
        ) from exc
    match = _SIDECAR_LINE.match(text.strip())
    if not match:
        raise NotAStateDatabase(
            f"{path} is not a sha256sum line ('<64 hex digits>  <file name>')",
            event=event,
            hint="fix or remove the sidecar",
            path=str(path),
        )
    return match[1].lower()


def ensure_matches(artefact: Path, expected: str | None, digest: str, *, event: str) -> None:
    """Exit 7 when a sidecar was present and the bytes' digest differs."""
    if expected is not None and expected != digest:
        raise NotAStateDatabase(
            f"{artefact} does not match its checksum sidecar "
            f"(sha256 {digest}, expected {expected})",
            event=event,
            hint="the file was damaged in transit or storage; use another copy",
            path=str(artefact),
        )


class TrailingSha256:
    """sha256 of a file another thread is writing, read a little behind the
    writer: the hash is ready moments after the last byte is written instead
    of a whole read later. The writer calls :meth:`advance` with the offset
    it has written up to (each byte is read once it is final), then
    :meth:`result`; :meth:`cancel` on failure. One reused buffer: memory
    stays flat. ``thread_setup`` runs first in the hashing thread (e.g. to
    lower its priority)."""

    def __init__(self, path: Path, thread_setup: Callable[[], None] | None = None) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._ready = threading.Condition()
        self._upto = 0
        self._end: int | None = None
        self._cancelled = False
        self._outcome: tuple[str, int] | BaseException | None = None
        self._setup = thread_setup
        self._thread = threading.Thread(target=self._run, name="portunus-sha256", daemon=True)
        self._thread.start()

    def advance(self, upto: int) -> None:
        with self._ready:
            self._upto = upto
            self._ready.notify()

    def result(self, end: int) -> tuple[str, int]:
        """(hex digest, size) of the file's first ``end`` bytes, all written."""
        with self._ready:
            self._upto = self._end = end
            self._ready.notify()
        return self._join()

    def cancel(self) -> None:
        with self._ready:
            self._cancelled = True
            self._ready.notify()
        try:
            self._join()
        except BaseException:  # noqa: BLE001 - the caller is already failing
            pass

    def _join(self) -> tuple[str, int]:
        self._thread.join()
        os.close(self._fd)
        self._fd = -1
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome

    def _run(self) -> None:
        try:
            if self._setup is not None:
                self._setup()
            self._outcome = self._hash()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller in _join
            self._outcome = exc

    def _hash(self) -> tuple[str, int]:
        digest = hashlib.sha256()
        view = memoryview(bytearray(CHUNK))
        done = 0
        while True:
            with self._ready:
                while not self._cancelled and done >= self._upto and self._end is None:
                    self._ready.wait()
                if self._cancelled:
                    return "", done
                upto, end = self._upto, self._end
            done = self._hash_range(digest, done, upto, view)
            if end is not None and done >= end:
                return digest.hexdigest(), done

    def _hash_range(self, digest: Any, done: int, upto: int, view: memoryview) -> int:
        """Hash bytes ``[done, upto)``: mapped a window at a time where the
        offsets allow (the page cache hashed in place, no copy through a
        buffer; each window unmapped before the next, so memory stays flat),
        read into ``view`` otherwise."""
        import mmap  # here: only a backup hashes this way, and `verify` starts faster

        while done < upto:
            if done % mmap.ALLOCATIONGRANULARITY == 0 and upto - done >= MAP_WINDOW:
                mapped = mmap.mmap(self._fd, MAP_WINDOW, access=mmap.ACCESS_READ, offset=done)
                with mapped, memoryview(mapped) as window:
                    digest.update(window)
                done += MAP_WINDOW
                continue
            read = os.preadv(self._fd, [view[: min(CHUNK, upto - done)]], done)
            if read == 0:
                raise OSError(errno.EIO, f"the file ended at byte {done}, before byte {upto}")
            digest.update(view[:read])
            done += read
        return done
