"""Sealed backups: age v1 encryption of a backup, and opening one again.

pyrage (the maintained Python bindings of the Rust ``age`` crate, which
``rage`` is built on) does the cryptography: the format is age's own, so
the ``age`` and ``rage`` tools open every sealed backup, and its ``*_io``
calls stream in 64 KiB chunks, so memory stays flat for any size. Nothing
here assembles the format from primitives.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from portunus import lazy
from portunus.errors import (
    InputMissing,
    NotAStateDatabase,
    PortunusError,
    RefusedByConfiguration,
    StorageIOError,
    UsageError,
    WouldOverwrite,
)
from portunus.store.sqlitefile import has_sqlite_header

AGE_HEADER = b"age-encryption.org/v1\n"
SEALED_SUFFIX = ".age"

# pyrage (Rust) loads on first use: `verify` of a plain backup, `status`
# and `list` only read the age header and never need it.
pyrage = lazy.module("pyrage")


def is_sealed(path: Path) -> bool:
    """The file starts with age's v1 header line. OSError when unreadable."""
    with open(path, "rb") as f:
        return f.read(len(AGE_HEADER)) == AGE_HEADER


class Recipient(NamedTuple):
    """A parsed recipient, and the text it was parsed from (what the
    encrypting process is handed, see :func:`encrypt_stream`). A NamedTuple:
    `verify` imports this module, and a dataclass costs its cold start."""

    text: str
    key: Any


def parse_recipient(text: str, *, source: str) -> Recipient:
    """An ``age1…`` or ``ssh-ed25519``/``ssh-rsa`` public key; 2 naming it otherwise."""
    text = text.strip()
    try:
        return Recipient(text, _parse_key(text))
    except (pyrage.RecipientError, ValueError) as exc:
        raise UsageError(
            f"not an age recipient ({source}): {text!r}: {exc}",
            event="backup.bad_recipient",
            hint="an age1… public key (age-keygen -y, portunus-server keygen) or an "
            "ssh-ed25519/ssh-rsa public key line",
            recipient=text,
            source=source,
        ) from None


def _parse_key(text: str) -> Any:
    if text.startswith("ssh-"):
        return pyrage.ssh.Recipient.from_str(text)
    return pyrage.x25519.Recipient.from_str(text)


def read_recipients_file(path: Path) -> list[str]:
    """age's recipients-file format: one recipient a line; ``#`` comments
    and blank lines ignored."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise InputMissing(
            f"the recipients file {path} does not exist",
            event="backup.recipients_file_missing",
            hint="check --recipients-file or [backup].recipients_file",
            path=str(path),
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageIOError(
            f"cannot read the recipients file {path}: {exc}",
            event="backup.io_error",
            hint="check the file's permissions",
            path=str(path),
        ) from exc
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def recipients(
    strings: Iterable[str] = (), files: Iterable[Path] = (), *, source: str = "--recipient"
) -> list[Any]:
    """Every recipient named directly or in a recipients file (2 for a bad one)."""
    parsed = [parse_recipient(s, source=source) for s in strings]
    for path in files:
        for line in read_recipients_file(path):
            parsed.append(parse_recipient(line, source=str(path)))
    return parsed


def from_settings(settings: Any) -> list[Any]:
    """The recipients ``[backup] encrypt_to`` and ``recipients_file`` name."""
    files = settings.get("backup.recipients_file")
    try:
        return recipients(
            settings.get("backup.encrypt_to") or (),
            [Path(files).expanduser()] if files else (),
            source="[backup].encrypt_to",
        )
    except PortunusError as exc:
        # The server's own configuration is wrong, not the caller's request:
        # 78 (HTTP 503 from POST /v1/admin/backup), never 2 or 5.
        raise RefusedByConfiguration(
            f"[backup].recipients_file cannot seal a backup: {exc.message}",
            event="backup.recipients_file_invalid",
            hint="fix or restore the recipients file (age's format: one recipient a line)",
            path=files,
        ) from exc


def load_identities(path: Path) -> list[Any]:
    """An age identity file (``AGE-SECRET-KEY-1…`` lines, ``#`` comments) or
    an unencrypted SSH private key (ed25519 or RSA)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputMissing(
            f"the identity file {path} does not exist",
            event="cli.identity_missing",
            hint="pass --identity with the age identity (or SSH private key) kept offline",
            path=str(path),
        ) from None
    except OSError as exc:
        raise StorageIOError(
            f"cannot read the identity file {path}: {exc.strerror}",
            event="cli.identity_unreadable",
            hint="check the file's permissions",
            path=str(path),
        ) from exc
    if b"PRIVATE KEY-----" in data:
        try:
            return [pyrage.ssh.Identity.from_buffer(data)]
        except (pyrage.IdentityError, ValueError) as exc:
            raise _bad_identity(path, str(exc)) from None
    found = []
    for line in data.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            found.append(pyrage.x25519.Identity.from_str(line))
        except (pyrage.IdentityError, ValueError):
            raise _bad_identity(path, "a line is not an AGE-SECRET-KEY-1… identity") from None
    if not found:
        raise _bad_identity(path, "it holds no identity")
    return found


def _bad_identity(path: Path, why: str) -> UsageError:
    return UsageError(
        f"{path} is not an age identity file or SSH private key: {why}",
        event="cli.bad_identity",
        hint="pass the file age-keygen / portunus-server keygen wrote, or an unencrypted "
        "ssh-ed25519/ssh-rsa private key",
        path=str(path),
    )


def encrypt(src: Path, dst: Path, to: list[Recipient]) -> None:
    """Encrypt ``src`` to ``to`` into the existing file ``dst`` (its mode
    and owner kept), streaming. pyrage's file-to-file call: its I/O runs in
    Rust, where ``encrypt_io`` through Python file objects made a sealed
    1 GiB backup take about twice as long (docs/performance.md)."""
    pyrage.encrypt_file(str(src), str(dst), [r.key for r in to])


# The encrypting process (portunus.engine.children): pyrage streams the
# plaintext (the first bytes from stdin, the rest read from the inherited
# descriptor of the held file: the plaintext never lands in a file) into
# the destination's temporary file.
_ENCRYPTING_CHILD = """
import errno
from pyrage import encrypt_io, ssh, x25519

def main():
    dst, fd, start, end = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    keys = [(ssh if t.startswith("ssh-") else x25519).Recipient.from_str(t) for t in sys.argv[6:]]
    with open(dst, "wb") as out:
        encrypt_io(Plaintext(fd, start, end), out, keys)

class Plaintext:
    def __init__(self, fd, start, end):
        self.first = sys.stdin.buffer.read(start)
        self.fd, self.start, self.end = fd, start, end
        self.offset = 0

    def read(self, n=-1):
        start, end = self.start, self.end
        n = min(end if n is None or n < 0 else n, end - self.offset)
        if n <= 0:
            return b""
        if self.offset < start:
            data = self.first[self.offset : min(start, self.offset + n)]
        else:
            data = os.pread(self.fd, n, self.offset)
        if not data:
            raise OSError(errno.EIO, "the source ended at byte %d" % self.offset)
        self.offset += len(data)
        return data
"""
_POLL_SECS = 0.01


def encrypt_stream(
    prefix: bytes,
    src_fd: int,
    end: int,
    dst: Path,
    to: list[Recipient],
    on_written: Callable[[int], None],
) -> None:
    """Encrypt ``prefix`` followed by bytes ``[len(prefix), end)`` of
    ``src_fd`` to ``to``, into the existing file ``dst`` (its mode and
    owner kept), in a process of its own (:mod:`portunus.engine.children`):
    meanwhile the check and the hash of the ciphertext run here, on the
    other core. Its ``encrypt_io`` reads the plaintext through a small
    reader (as fast as its file-to-file call: docs/performance.md) and
    writes through a buffered file. ``on_written`` gets how much ciphertext
    is in ``dst`` as it grows (age writes it front to back), last its whole
    size. OSError when the encryption fails (the disk filling up, say)."""
    from portunus.engine import children

    args = [str(dst), str(src_fd), str(len(prefix)), str(end)] + [r.text for r in to]
    child = children.spawn(_ENCRYPTING_CHILD, args, stdin=-1, stderr=-1, pass_fds=(src_fd,))
    assert child.stdin is not None and child.stderr is not None
    try:
        try:
            with child.stdin:
                child.stdin.write(prefix)
        except BrokenPipeError:
            pass  # it ended already: its exit status says why
        while child.poll() is None:
            on_written(os.stat(dst).st_size)
            time.sleep(_POLL_SECS)
    except BaseException:
        child.kill()
        raise
    finally:
        child.wait()
    with child.stderr:
        failed = children.failure(child.returncode, child.stderr.read(), "encryption")
    if failed is not None:
        raise failed
    on_written(os.stat(dst).st_size)


def decrypt(
    src: Path,
    dst: Path,
    identities: list[Any],
    *,
    event: str,
    name: Path,
    not_sqlite_event: str | None = None,
) -> None:
    """Decrypt ``src`` into the existing file ``dst`` (its mode and owner
    kept), streaming; the caller fsyncs what it keeps. 7 with ``event``
    for a wrong identity or a damaged file (age authenticates every 64 KiB
    chunk and the end, so a flipped byte or a truncation is caught). The
    caller removes ``dst`` on failure: it may hold a prefix. With
    ``not_sqlite_event``, a plaintext without the SQLite header is 7 too. pyrage's
    file-to-file call, not its ``*_io`` one: both stream, and this one does
    its I/O in Rust (about a third faster)."""
    try:
        pyrage.decrypt_file(str(src), str(dst), identities)
    except pyrage.DecryptError as exc:
        raise _decrypt_failed(name, str(exc), event) from None
    except OSError as exc:
        if not _is_authentication_failure(exc):
            raise  # a real I/O error (disk full, permissions): the caller's 74
        raise _decrypt_failed(name, str(exc), event) from None
    if not_sqlite_event and not has_sqlite_header(dst):
        # Authentic age, but not what a sealed backup holds.
        raise NotAStateDatabase(
            f"{name} decrypts to something that is not a SQLite database",
            event=not_sqlite_event,
            hint="this is not a sealed Portunus backup",
            path=str(name),
        )


def decrypt_checked(
    src: Path,
    dst: Path,
    identities: list[Any],
    expected: str | None,
    *,
    event: str,
    checksum_event: str,
    name: Path,
    not_sqlite_event: str | None = None,
) -> tuple[str, int]:
    """:func:`decrypt`, while a process of its own hashes the sealed bytes
    (the sidecar covers those) on the other core: (digest, size) of ``src``.
    A checksum mismatch is reported before a failed decryption, as for a
    plain backup: a damaged transfer is the likelier cause of both. The
    caller removes ``dst`` on failure."""
    from portunus.engine.checksum import Sha256Beside, ensure_matches

    with open(src, "rb") as sealed:
        hashing = Sha256Beside(sealed.fileno())
        failure: PortunusError | None = None
        try:
            decrypt(
                Path(f"/proc/self/fd/{sealed.fileno()}"),
                dst,
                identities,
                event=event,
                name=name,
                not_sqlite_event=not_sqlite_event,
            )
        except PortunusError as exc:
            failure = exc
        except BaseException:
            hashing.cancel()
            raise
        digest, size = hashing.result()
    ensure_matches(name, expected, digest, event=checksum_event)
    if failure is not None:
        raise failure
    return digest, size


def _is_authentication_failure(exc: OSError) -> bool:
    """pyrage reports a chunk that fails authentication (a flipped byte, a
    truncation) as a bare OSError without an errno; the operating system's
    own errors carry one, or name it as "(os error N)"."""
    return type(exc) is OSError and exc.errno is None and "(os error" not in str(exc)


def _decrypt_failed(name: Path, why: str, event: str) -> NotAStateDatabase:
    return NotAStateDatabase(
        f"cannot decrypt {name}: {why} (a wrong identity, or a damaged or truncated file)",
        event=event,
        hint="pass the identity matching a recipient it was sealed to; otherwise use another "
        "backup",
        path=str(name),
    )


def keygen(out: Path) -> str:
    """Write a new X25519 identity to ``out`` (0600, never over a file) in
    age-keygen's format; return its recipient."""
    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    text = f"# created: {created}\n# public key: {recipient}\n{identity}\n"
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise WouldOverwrite(
            f"{out} already exists; refusing to overwrite an identity",
            event="keygen.destination_exists",
            hint="pick a new file name; an overwritten identity cannot open old backups",
            path=str(out),
        ) from None
    except OSError as exc:
        raise StorageIOError(
            f"cannot create {out}: {exc.strerror}",
            event="keygen.io_error",
            hint="check the directory exists and is writable",
            path=str(out),
        ) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(out)
        raise
    return recipient
