"""Crash-safe file primitives: fsync, no-replace publication, atomic writes."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from portunus.errors import WouldOverwrite


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make renames and unlinks in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RANDOM_BYTES = 6  # 12 hex digits between prefix and suffix


def create_exclusive(directory: Path, prefix: str, suffix: str, mode: int = 0o600) -> Path:
    """Create an empty file with a fresh random name; never reuses a name."""
    while True:
        path = directory / f"{prefix}{os.urandom(_RANDOM_BYTES).hex()}{suffix}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            continue
        os.close(fd)
        return path


def exclusive_name_pattern(prefix: str, suffix: str) -> str:
    """A regex (source text) for exactly the names :func:`create_exclusive`
    gives with ``prefix`` and ``suffix``: what a sweep of leftovers may touch."""
    return f"{re.escape(prefix)}[0-9a-f]{{{2 * _RANDOM_BYTES}}}{re.escape(suffix)}"


def publish_no_replace(tmp: Path, final: Path, *, event: str) -> None:
    """Give the complete file ``tmp`` its final name, refusing to replace
    anything there, even one created a moment ago by a racing process.

    renameat2(RENAME_NOREPLACE) fails with EEXIST instead of replacing, and
    the name appears with the whole file behind it, never a partial one.
    Where the kernel or filesystem lacks it, link(2) + unlink(2) gives the
    same guarantee (and vfat-like filesystems without hard links are rare
    destinations that at least get an explicit error).
    """
    try:
        try:
            _rename_noreplace(tmp, final)
        except NotImplementedError:
            os.link(tmp, final)
            os.unlink(tmp)
    except FileExistsError:
        raise WouldOverwrite(
            f"{final} already exists; refusing to overwrite it",
            event=event,
            hint="pick a unique path (date-stamped is the convention)",
            path=str(final),
        ) from None


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _libc():
    """libc through ctypes, loaded on first use: most commands never publish
    or write back a file, and ctypes is a noticeable part of a cold start."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    sync_file_range = getattr(libc, "sync_file_range", None)  # Linux (glibc, musl)
    if sync_file_range is not None:
        sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return libc, sync_file_range, getattr(libc, "renameat2", None), ctypes.get_errno


def start_writeback(fd: int) -> bool:
    """Ask the kernel to start writing ``fd``'s dirty pages to disk now,
    without waiting for them (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``;
    Python's ``os`` lacks it). Not durability: an fsync is still needed.

    A large file written fast and fsynced once at the end leaves the disk
    a backlog of that whole file, and every other fsync on the machine (the
    server's own WAL syncs among them) queues behind it. Started as the file
    is written, the backlog stays small. Best effort: False where the call
    is missing or refused, and nothing else changes."""
    sync_file_range = _libc()[1]
    if sync_file_range is None:
        return False
    return sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) == 0


COPY_CHUNK = 16 << 20  # the kernel copies this much between writeback starts and progress
_COPY_BUFFER = 1 << 20  # the userspace fallback's one reused buffer
# copy_file_range(2) refused for this pair of files: copy through userspace.
_NO_COPY_FILE_RANGE = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})


def copy_range(
    src_fd: int,
    dst_fd: int,
    start: int,
    end: int,
    on_chunk: Callable[[int], None] | None = None,
) -> None:
    """Copy bytes ``[start, end)`` of ``src_fd`` to the same offsets of
    ``dst_fd``, in the kernel (copy_file_range) where it allows. After each
    chunk the writeback is started and ``on_chunk`` gets the offset copied
    up to. Where the kernel or the
    filesystems refuse copy_file_range (another filesystem, an old kernel),
    1 MiB reads and writes through one reused buffer: memory stays flat.
    A source shorter than ``end`` is an error (EIO), never a short copy."""
    offset = start
    kernel = hasattr(os, "copy_file_range")
    buffer = view = None
    while offset < end:
        want = min(COPY_CHUNK, end - offset)
        if kernel:
            try:
                copied = os.copy_file_range(src_fd, dst_fd, want, offset, offset)
            except OSError as exc:
                if offset != start or exc.errno not in _NO_COPY_FILE_RANGE:
                    raise
                kernel = False
                continue
        else:
            if buffer is None:
                buffer = bytearray(_COPY_BUFFER)
                view = memoryview(buffer)
            copied = os.preadv(src_fd, [view[: min(want, _COPY_BUFFER)]], offset)
            if copied:
                _pwrite_all(dst_fd, view[:copied], offset)
        if copied == 0:
            raise OSError(errno.EIO, f"the source ended at byte {offset}, before byte {end}")
        offset += copied
        start_writeback(dst_fd)
        if on_chunk is not None:
            on_chunk(offset)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


DIRECT_ALIGN = 4096  # O_DIRECT offsets, lengths and buffers: any block size up to 4 KiB
PIPE_CHUNK = 4 << 20  # each of copy_hashed's buffers
PIPE_DEPTH = 3  # buffers in flight: one read, one hashed, one written


def open_direct(path: Path) -> int | None:
    """A write descriptor of ``path`` that bypasses the page cache
    (``O_DIRECT``), or None where the platform or the filesystem refuses it."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC | flag)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise


def copy_hashed(
    src_fd: int,
    dst_fd: int,
    end: int,
    digest: Any,
    on_chunk: Callable[[int], None] | None = None,
    *,
    head: bytes = b"",
    direct_fd: int | None = None,
) -> bool:
    """Copy bytes ``[0, end)`` of ``src_fd`` to the same offsets of the file
    open as ``dst_fd``, with ``head`` in place of its first bytes, and feed
    ``digest`` (a hashlib object) the bytes written, in order.

    The bytes pass through a few page-aligned buffers (memory stays flat):
    one is read while the one before is hashed (hashlib lets go of the GIL)
    and the one before that is written. Given ``direct_fd`` (from
    :func:`open_direct`, the same file), whole blocks are written past the
    page cache: no GiB of fresh dirty pages for the kernel to allocate and
    then write back while other programs wait for their own fsyncs, and the
    hash is of the very bytes handed to the disk. The tail that is not a
    whole block, and every write once the filesystem refuses direct I/O
    (EINVAL), go through ``dst_fd``. ``on_chunk`` gets the offset written up
    to, in order. A source shorter than ``end`` is an error (EIO). True if
    the whole blocks went past the page cache."""
    import mmap
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    direct = direct_fd is not None

    def write(view: memoryview, offset: int) -> None:
        nonlocal direct
        if direct and len(view) % DIRECT_ALIGN == 0:
            try:
                _pwrite_all(direct_fd, view, offset)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                direct = False  # accepted at open, refused here: the page cache then
        _pwrite_all(dst_fd, view, offset)

    # Anonymous maps: page-aligned, as O_DIRECT wants. Unmapped when the
    # last view of them goes, after every thread is done with them.
    views = [memoryview(mmap.mmap(-1, PIPE_CHUNK)) for _ in range(PIPE_DEPTH)]
    in_flight: deque = deque()
    with ThreadPoolExecutor(1) as hasher, ThreadPoolExecutor(1) as writer:
        try:
            offset = turn = 0
            while offset < end:
                if len(in_flight) == PIPE_DEPTH:
                    _finish_oldest(in_flight, on_chunk)
                view = views[turn % PIPE_DEPTH]
                turn += 1
                read = os.preadv(src_fd, [view[: min(PIPE_CHUNK, end - offset)]], offset)
                if read == 0:
                    raise OSError(errno.EIO, f"the source ended at byte {offset}, not {end}")
                if offset < len(head):
                    patched = min(read, len(head) - offset)
                    view[:patched] = head[offset : offset + patched]
                chunk = view[:read]
                in_flight.append(
                    (
                        hasher.submit(digest.update, chunk),
                        writer.submit(write, chunk, offset),
                        offset + read,
                    )
                )
                offset += read
            while in_flight:
                _finish_oldest(in_flight, on_chunk)
        finally:
            # On a failure the queued work is dropped; the executors' exit
            # waits for what already runs.
            for hashed, wrote, _ in in_flight:
                hashed.cancel()
                wrote.cancel()
    return direct


def _finish_oldest(in_flight: Any, on_chunk: Callable[[int], None] | None) -> None:
    hashed, wrote, upto = in_flight.popleft()
    try:
        hashed.result()
    finally:
        wrote.result()
    if on_chunk is not None:
        on_chunk(upto)


class BackgroundWriteback:
    """:func:`start_writeback` from a thread of its own, each time
    :meth:`poke` is called (pokes while one runs coalesce). The call blocks
    whenever the disk's queue is full, which would hold a copy (or a hash
    following it) to the disk's pace; here only this thread waits. For a
    file being written by one thread and read by others; :meth:`close` when
    the writing is done."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._poked = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="portunus-writeback", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._poked.set()

    def close(self) -> None:
        """Stop the thread (once its current call returns); safe to repeat."""
        if self._closing:
            return
        self._closing = True
        self._poked.set()
        self._thread.join()
        os.close(self._fd)

    def _run(self) -> None:
        while True:
            self._poked.wait()
            self._poked.clear()
            closing = self._closing
            # Also when closing: the last poke may have come just before.
            start_writeback(self._fd)
            if closing:
                return


def _rename_noreplace(src: Path, dst: Path) -> None:
    _, _, renameat2, get_errno = _libc()
    if renameat2 is None:
        raise NotImplementedError("libc has no renameat2")
    rc = renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
    if rc != 0:
        err = get_errno()
        if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise NotImplementedError(os.strerror(err))
        raise OSError(err, os.strerror(err), str(dst))


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file."""
    tmp = create_exclusive(path.parent, f".{path.name}.", ".tmp", mode)
    try:
        with open(tmp, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask already cut O_CREAT's mode
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_if_present(tmp)
        raise
    fsync_dir(path.parent)


def remove_if_present(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def sqlite_family(path: Path) -> list[Path]:
    """A database file and every sidecar SQLite may have created beside it."""
    return [path, *(Path(f"{path}{suffix}") for suffix in ("-journal", "-wal", "-shm"))]


@contextlib.contextmanager
def signals_deferred(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
    """Hold ``signals`` back (this thread) for a few statements that must not
    be split, such as creating a file and binding the name that cleans it up;
    one that arrived meanwhile is delivered on the way out."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
