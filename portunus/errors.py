"""One error type, carrying what each edge (CLI, HTTP) needs to report it.

The engine and the store raise these; the CLI turns one into a log line and
an exit code in one place (``portunus.tasks``), the HTTP app into a status.
Kept free of imports from the rest of the package to avoid import loops.
"""

from __future__ import annotations

import signal
from typing import Any

# The one exit-code table. README.md and ``portunus-server --help`` render it;
# tests/test_docs.py checks that the README's copy agrees with this one.
EXIT_CODES: dict[int, str] = {
    0: "success, including no-ops and dry runs",
    1: "unexpected internal error (a bug)",
    2: "usage error: unknown flag, missing or invalid argument",
    5: "input not found: backup source, restore input, verify path",
    6: "would overwrite: destination exists, data dir not empty, admin exists",
    7: "not a valid state database: bad header, not a Portunus store, "
    "failed integrity check, checksum mismatch",
    70: "migration failed (state rolled back)",
    74: "I/O error: disk full, permission, read-only or missing directory",
    75: "store in use by a running server (try again later)",
    78: "configuration refuses to run: schema newer than binary, "
    "unsupported filesystem, invalid server.toml, TLS key permissions",
    130: "interrupted by SIGINT (Ctrl-C): cleaned up, nothing half-written",
    143: "stopped by SIGTERM: cleaned up, nothing half-written",
}


# The signals that stop a command (Ctrl-C, systemd): see portunus.tasks.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGTERM turned into an exception like SIGINT's KeyboardInterrupt, so
    a command stopped by either unwinds its clean-up (temp files, staged
    copies, the lock) and exits 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class PortunusError(Exception):
    """Base of every error the product reports to an operator."""

    exit_code = 1
    default_event = "internal_error"

    def __init__(
        self, message: str, *, event: str | None = None, hint: str | None = None, **fields: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        self.event = event or self.default_event
        self.hint = hint
        self.fields = fields


class UsageError(PortunusError):
    """A command line that cannot be acted on (exit 2)."""

    exit_code = 2
    default_event = "cli.usage_error"


class InputMissing(PortunusError):
    """A file the operation reads does not exist (exit 5)."""

    exit_code = 5


class WouldOverwrite(PortunusError):
    """The operation would replace something that already exists (exit 6)."""

    exit_code = 6


class NotAStateDatabase(PortunusError):
    """A file is not a valid, intact Portunus state database (exit 7)."""

    exit_code = 7


class MigrationFailed(PortunusError):
    """A schema migration failed and was rolled back (exit 70)."""

    exit_code = 70
    default_event = "startup.migration_failed"


class StorageIOError(PortunusError):
    """The filesystem refused a read or write (exit 74)."""

    exit_code = 74


class StoreInUse(PortunusError):
    """Another process holds the data dir's lock (exit 75)."""

    exit_code = 75
    default_event = "startup.store_in_use"


class RefusedByConfiguration(PortunusError):
    """Configuration or environment the binary refuses to run with (exit 78)."""

    exit_code = 78


class SchemaTooNew(RefusedByConfiguration):
    """The store's schema is newer than this binary knows (exit 78)."""

    default_event = "startup.schema_version_too_new"
