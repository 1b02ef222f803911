"""The node_exporter textfile that backup and prune keep up to date.

node_exporter's textfile collector reads ``*.prom`` files in the Prometheus
text format. The file is small and rewritten whole, atomically (a scrape
sees the old file or the new one, never half of one), mode 0644 because
node_exporter runs as another user. Each writer changes only its own
values; the rest are carried over from the file as it was, so a failed
backup does not erase the time of the last good one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import structlog

from portunus.durable import write_atomically

log = structlog.get_logger()

# name -> help; every one a gauge. The alert rules in config/alerts/ use these.
METRICS: dict[str, str] = {
    "portunus_backup_last_success_timestamp_seconds": (
        "Unix time the last successful backup into [backup].dir completed."
    ),
    "portunus_backup_last_duration_seconds": "Wall time of the last successful backup.",
    "portunus_backup_last_size_bytes": "Size of the last successful backup.",
    "portunus_backup_last_attempt_timestamp_seconds": "Unix time of the last backup attempt.",
    "portunus_backup_last_attempt_success": "1 if the last backup attempt succeeded, else 0.",
    "portunus_backup_kept_count": "Backups in [backup].dir after the last prune.",
    "portunus_prune_last_removed_count": "Backups the last prune removed.",
    "portunus_prune_last_timestamp_seconds": "Unix time of the last prune.",
}

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\s+(\S+)")


def read(path: Path) -> dict[str, float]:
    """The values in an existing textfile that we know; {} if there is none."""
    try:
        text = path.read_text("utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return {}
    values = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match[1] in METRICS:
            try:
                values[match[1]] = float(match[2])
            except ValueError:
                continue
    return values


def render(values: Mapping[str, float]) -> str:
    lines = []
    for name, help_text in METRICS.items():
        if name in values:
            lines += [
                f"# HELP {name} {help_text}",
                f"# TYPE {name} gauge",
                f"{name} {_number(values[name])}",
            ]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def update(path: Path, changes: Mapping[str, float]) -> bool:
    """Merge ``changes`` into the textfile at ``path``; False (and a warning)
    when it cannot be written: monitoring trouble must not fail a backup."""
    unknown = set(changes) - set(METRICS)
    if unknown:
        raise ValueError(f"not a Portunus metric: {sorted(unknown)}")
    path = Path(os.path.expanduser(path))
    values = {**read(path), **changes}
    try:
        write_atomically(path, render(values).encode("utf-8"), mode=0o644)
        # write_atomically's mode passes through the umask (systemd's UMask=0077
        # would leave node_exporter unable to read the file).
        os.chmod(path, 0o644)
    except OSError as exc:
        log.warning(
            "metrics.write_failed",
            msg=f"cannot write the metrics textfile: {exc.strerror or exc}",
            hint="check [backup].metrics_textfile and that this user may write its directory",
            path=str(path),
        )
        return False
    return True
