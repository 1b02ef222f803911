"""sha256 of artefacts and their ``<name>.sha256`` sidecars (sha256sum -c format)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from portunus.errors import NotAStateDatabase

CHUNK = 1 << 20
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
