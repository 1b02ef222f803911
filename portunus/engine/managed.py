"""A managed backup: the backup into ``[backup].dir``, the pruning
``[retention]`` asks for, and the metrics textfile, as one call.

Every face that takes a scheduled backup comes here: ``portunus-server
backup`` without ``--out``, ``invoke backup``, the systemd unit, the cron
script (which runs that same command) and ``POST /v1/admin/backup``. So a
backup into ``[backup].dir`` prunes and records whichever of them starts it.
A backup with an explicit ``--out`` is not managed: it calls
:func:`portunus.engine.backup.backup` alone.

When the backup is made but pruning or the metrics write after it fails,
the backup stands (it is published, and reported) and the call raises
:class:`BackupIncomplete`, which carries it: the scheduled job did not
finish, and an operator must hear of it now rather than when the disk fills
up or the backup-age alert fires a day later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portunus import metrics_textfile, testpoints
from portunus.datadir import DataDir
from portunus.engine import backup as backup_engine
from portunus.engine import retention, seal
from portunus.errors import PortunusError, StorageIOError, UsageError


@dataclass(frozen=True)
class ManagedOptions:
    """What a managed backup needs; :func:`options_from_settings` reads it
    from ``server.toml``. New backup options (sealing, say) go here."""

    directory: Path
    verify: str = "quick"
    checksum: bool = True
    policy: retention.Policy = field(default_factory=retention.Policy)
    metrics_textfile: Path | None = None
    progress: backup_engine.Progress | None = None
    # age recipients (engine.seal): non-empty seals every managed backup.
    recipients: tuple[Any, ...] = ()


@dataclass(frozen=True)
class ManagedBackup:
    """The backup made, and what pruning did (None: no retention rule set)."""

    backup: backup_engine.BackupResult
    prune: retention.PruneReport | None
    metrics_textfile: Path | None

    def as_dict(self) -> dict[str, object]:
        return {
            **self.backup.as_dict(),
            "prune": self.prune.as_dict() if self.prune else None,
            "metrics_textfile": str(self.metrics_textfile) if self.metrics_textfile else None,
        }


class BackupIncomplete(PortunusError):
    """The backup was made and published, but pruning or the metrics write
    after it failed. Exits with the first failure's code (74 for a metrics
    write); ``made`` is the backup, for the face to report it as made."""

    default_event = "backup.incomplete"

    def __init__(self, made: ManagedBackup, failures: list[PortunusError]) -> None:
        steps = [f.event.split(".")[0] for f in failures]  # "prune", "metrics"
        causes = [
            f"{_STEP.get(step, step)} failed: {f.message}"
            for step, f in zip(steps, failures, strict=True)
        ]
        super().__init__(
            f"the backup {made.backup.path} was made, but " + "; ".join(causes),
            hint=failures[0].hint,
            path=str(made.backup.path),
            failed=",".join(steps),
            reason=failures[0].event,
        )
        self.exit_code = failures[0].exit_code
        self.made = made
        self.failures = failures


_STEP = {"prune": "pruning", "metrics": "the metrics write"}


def options_from_settings(
    settings: Any,
    *,
    progress: backup_engine.Progress | None = None,
    recipients: list[Any] | None = None,
) -> ManagedOptions:
    """The managed backup ``server.toml`` describes (``settings`` is a
    config.Settings, or anything with its ``get``); ``recipients`` given on
    the command line replace ``[backup] encrypt_to``/``recipients_file``."""
    directory = settings.get("backup.dir")
    if not directory:
        raise UsageError(
            "a managed backup needs [backup].dir in server.toml",
            hint="portunus-server config set backup.dir /var/backups/portunus",
        )
    textfile = settings.get("backup.metrics_textfile")
    return ManagedOptions(
        directory=Path(directory).expanduser(),
        verify=settings.get("backup.verify"),
        checksum=settings.get("backup.checksum"),
        policy=retention.policy_from_settings(settings),
        metrics_textfile=Path(textfile).expanduser() if textfile else None,
        progress=progress,
        recipients=tuple(seal.from_settings(settings) if recipients is None else recipients),
    )


def managed_backup(data_dir: DataDir, options: ManagedOptions) -> ManagedBackup:
    """Back up into ``options.directory``, prune it per ``options.policy``,
    record the outcome in the metrics textfile (a failed backup too)."""
    try:
        made = backup_engine.backup(
            data_dir,
            options.directory,
            verify=options.verify,
            checksum=options.checksum,
            progress=options.progress,
            # A missing [backup].dir is 74, never a file of its name.
            directory=True,
            recipients=list(options.recipients),
        )
    except PortunusError:
        # Best effort: the backup's own error is what the operator must see.
        _write_metrics(options, attempt_metrics(time.time(), success=False))
        raise
    failures: list[PortunusError] = []
    pruned, kept = None, None
    try:
        pruned, kept = _prune(options)
    except PortunusError as error:
        failures.append(error)
    finally:
        # The backup was made whatever pruning did, even when a SIGTERM
        # stopped it: the success is recorded on the way out too.
        if not _record_success(options, made, pruned, kept):
            failures.append(_metrics_failure(options.metrics_textfile))
    result = ManagedBackup(made, pruned, options.metrics_textfile)
    if failures:
        raise BackupIncomplete(result, failures)
    return result


def _prune(options: ManagedOptions) -> tuple[retention.PruneReport | None, int | None]:
    """The prune report (None without a rule) and the backups left (counted
    only when there is a textfile to record them in)."""
    testpoints.reached("managed.pruning")
    if options.policy.empty:
        if options.metrics_textfile is None:
            return None, None
        return None, len(retention.scan(options.directory).backups)
    pruned = retention.prune(options.directory, options.policy)
    return pruned, len(pruned.plan.kept)


def _record_success(
    options: ManagedOptions,
    made: backup_engine.BackupResult,
    pruned: retention.PruneReport | None,
    kept: int | None,
) -> bool:
    now = time.time()
    values = {**success_metrics(made, now), **prune_metrics(pruned, now)}
    if kept is not None:
        values["portunus_backup_kept_count"] = kept
    return _write_metrics(options, values)


def _write_metrics(options: ManagedOptions, values: dict[str, float]) -> bool:
    """True when written, or when no textfile is configured."""
    if options.metrics_textfile is None:
        return True
    return metrics_textfile.update(options.metrics_textfile, values)


def _metrics_failure(path: Path | None) -> StorageIOError:
    return StorageIOError(
        f"cannot write the metrics textfile {path}",
        event="metrics.write_failed",
        hint="check [backup].metrics_textfile and that this user may write its directory",
        path=str(path),
    )


def attempt_metrics(now: float, *, success: bool) -> dict[str, float]:
    return {
        "portunus_backup_last_attempt_timestamp_seconds": now,
        "portunus_backup_last_attempt_success": 1 if success else 0,
    }


def success_metrics(made: backup_engine.BackupResult, now: float) -> dict[str, float]:
    return {
        "portunus_backup_last_success_timestamp_seconds": now,
        "portunus_backup_last_duration_seconds": made.total_seconds,
        "portunus_backup_last_size_bytes": made.bytes,
        **attempt_metrics(now, success=True),
    }


def prune_metrics(pruned: retention.PruneReport | None, now: float) -> dict[str, float]:
    """What a prune that ran records (a dry run, or none, records nothing)."""
    if pruned is None or pruned.dry_run:
        return {}
    return {
        "portunus_prune_last_removed_count": len(pruned.removed),
        "portunus_prune_last_timestamp_seconds": now,
    }
