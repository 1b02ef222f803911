"""Retention: which backups in a directory to keep, and removing the rest.

restic's semantics (``restic forget``): backups are walked newest first and
one is kept when *any* rule keeps it:

- ``keep_last`` N: the N newest;
- ``keep_hourly`` / ``daily`` / ``weekly`` / ``monthly`` / ``yearly`` N: the
  newest backup of each period, for the N most recent periods that have a
  backup (weeks are ISO weeks; every period is in UTC, like the names);
- ``keep_within`` D: every backup less than D older than the *newest* one
  (not "now": a host whose backups stopped keeps its last ones).

Every non-empty policy keeps the newest backup; an empty policy keeps
everything. :func:`plan` is pure (names and times in, decisions out);
:func:`scan` reads a directory and :func:`apply` removes files.

Only regular files named ``portunus-state-<RFC3339 UTC>.db`` whose first 16
bytes are the SQLite header, and sealed ones named ``….db.age`` that start
with age's header (``age-encryption.org/v1``), are candidates: retention
counts both alike. A file with such a name that is
not SQLite (an "impostor") is reported and never removed; nothing else in
the directory is ever touched, including orphaned ``.sha256`` sidecars and
temporary files of a backup in progress.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from portunus import durable
from portunus.durations import parse_duration
from portunus.engine.checksum import sidecar_path
from portunus.errors import InputMissing, StorageIOError
from portunus.store.sqlitefile import has_sqlite_header

log = structlog.get_logger()

# What portunus.engine.backup.backup_name writes: seconds, or microseconds
# when two backups land in the same second.
BACKUP_NAME = re.compile(
    r"portunus-state-(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{6})?Z\.db(\.age)?"
)
NAME_ALIKE = re.compile(r"portunus-state-.*\.db(\.age)?")
AGE_HEADER = b"age-encryption.org/v1\n"  # engine.seal's; a sealed backup starts with it
RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly", "within")


@dataclass(frozen=True)
class Policy:
    """The ``[retention]`` table; 0 / None switch a rule off."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: timedelta | None = None

    @property
    def empty(self) -> bool:
        return not any(self.counts().values()) and not self.keep_within

    def counts(self) -> dict[str, int]:
        return {
            "last": self.keep_last,
            "hourly": self.keep_hourly,
            "daily": self.keep_daily,
            "weekly": self.keep_weekly,
            "monthly": self.keep_monthly,
            "yearly": self.keep_yearly,
        }

    def as_dict(self) -> dict[str, object]:
        rules: dict[str, object] = {f"keep_{k}": v for k, v in self.counts().items() if v}
        if self.keep_within:
            rules["keep_within_seconds"] = int(self.keep_within.total_seconds())
        return rules


def policy_from_settings(settings: Any) -> Policy:
    """The ``[retention]`` table of ``server.toml`` (a config.Settings)."""
    within = settings.get("retention.keep_within")
    return Policy(
        **{f"keep_{rule}": settings.get(f"retention.keep_{rule}") for rule in PERIODS},
        keep_last=settings.get("retention.keep_last"),
        keep_within=parse_duration(within) if within else None,
    )


@dataclass(frozen=True)
class Backup:
    """A candidate: a SQLite file named like a backup, timed by its name."""

    name: str
    time: datetime
    bytes: int = 0
    sidecar_bytes: int | None = None  # None when it has no sidecar

    @property
    def sealed(self) -> bool:
        return self.name.endswith(".age")


@dataclass(frozen=True)
class Impostor:
    """A file named like a backup that is not one; reported, never removed."""

    name: str
    reason: str


@dataclass(frozen=True)
class Decision:
    backup: Backup
    keep: bool
    reasons: tuple[str, ...]  # the rules that keep it; empty when removed

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.backup.name,
            "time": rfc3339(self.backup.time),
            "action": "keep" if self.keep else "remove",
            "reasons": list(self.reasons),
            "bytes": self.backup.bytes + (self.backup.sidecar_bytes or 0),
        }


@dataclass(frozen=True)
class Plan:
    decisions: tuple[Decision, ...]  # newest first
    policy: Policy

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    @property
    def removed(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]


@dataclass(frozen=True)
class Scan:
    directory: Path
    backups: tuple[Backup, ...]
    impostors: tuple[Impostor, ...] = ()
    others: int = 0  # entries that are none of our business (sidecars not counted)


@dataclass
class PruneReport:
    directory: Path
    plan: Plan
    impostors: tuple[Impostor, ...]
    dry_run: bool
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_freed: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "dir": str(self.directory),
            "dry_run": self.dry_run,
            "policy": self.plan.policy.as_dict(),
            "empty_policy": self.plan.policy.empty,
            "backups": [d.as_dict() for d in self.plan.decisions],
            "impostors": [{"name": i.name, "reason": i.reason} for i in self.impostors],
            "kept": len(self.plan.kept),
            "to_remove": len(self.plan.removed),
            "removed": self.removed,
            "skipped": self.skipped,
            "bytes_freed": self.bytes_freed,
        }


def rfc3339(at: datetime) -> str:
    spec = "microseconds" if at.microsecond else "seconds"
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def time_from_name(name: str) -> datetime | None:
    """The UTC time a backup name carries, or None if it is not a backup name."""
    match = BACKUP_NAME.fullmatch(name)
    if not match:
        return None
    try:
        at = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    micros = int(match[2][1:]) if match[2] else 0
    return at.replace(microsecond=micros, tzinfo=UTC)


# --- planning (pure) -------------------------------------------------------

PERIODS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar())[:2],
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}


def plan(backups: Iterable[Backup], policy: Policy) -> Plan:
    """Decide keep/remove for every backup; the input order does not matter."""
    ordered = sorted(backups, key=lambda b: (b.time, b.name), reverse=True)
    if policy.empty:
        return Plan(tuple(Decision(b, True, ("no-policy",)) for b in ordered), policy)
    reasons: list[list[str]] = [[] for _ in ordered]
    _mark_last(ordered, policy.keep_last, reasons)
    for rule, period in PERIODS.items():
        _mark_periods(ordered, policy.counts()[rule], period, rule, reasons)
    if policy.keep_within:
        _mark_within(ordered, policy.keep_within, reasons)
    decisions = tuple(Decision(b, bool(r), tuple(r)) for b, r in zip(ordered, reasons, strict=True))
    return Plan(decisions, policy)


def _mark_last(ordered: list[Backup], count: int, reasons: list[list[str]]) -> None:
    for index in range(min(count, len(ordered))):
        reasons[index].append("last")


def _mark_periods(
    ordered: list[Backup],
    count: int,
    period: Callable[[datetime], tuple[int, ...]],
    rule: str,
    reasons: list[list[str]],
) -> None:
    # Newest first, so the first backup seen in a period is that period's newest.
    seen: set[tuple[int, ...]] = set()
    for index, backup in enumerate(ordered):
        if len(seen) >= count:
            return
        key = period(backup.time)
        if key not in seen:
            seen.add(key)
            reasons[index].append(rule)


def _mark_within(ordered: list[Backup], within: timedelta, reasons: list[list[str]]) -> None:
    if not ordered:
        return
    # Strictly less than ``within`` older, as restic and the docs say: with
    # "2d", a backup exactly 48 h older than the newest is not kept by it.
    newest = ordered[0].time
    for index, backup in enumerate(ordered):
        if newest - backup.time < within:
            reasons[index].append("within")


# --- the directory ---------------------------------------------------------


def scan(directory: Path) -> Scan:
    """Classify every entry of ``directory``; reads 16 bytes of each candidate."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        raise InputMissing(
            f"the backup directory {directory} does not exist",
            event="prune.dir_missing",
            hint="check [backup].dir in server.toml (or --dir), and that its disk is mounted",
            path=str(directory),
        ) from None
    except OSError as exc:
        raise _io_error(exc, directory) from exc
    backups, impostors, others = [], [], 0
    for name in names:
        at = time_from_name(name)
        if at is None:
            impostor = _name_alike(name)
            if impostor:
                impostors.append(impostor)
            elif not _is_sidecar_name(name):
                others += 1
            continue
        found = _inspect(directory, name, at)
        if isinstance(found, Impostor):
            impostors.append(found)
        else:
            backups.append(found)
    return Scan(directory, tuple(backups), tuple(impostors), others)


def _is_sidecar_name(name: str) -> bool:
    return name.endswith(".sha256") and time_from_name(name[: -len(".sha256")]) is not None


def _name_alike(name: str) -> Impostor | None:
    if BACKUP_NAME.fullmatch(name):
        return Impostor(name, "the time in its name is not a valid date")
    if NAME_ALIKE.fullmatch(name):
        return Impostor(name, "its name does not carry an RFC3339 UTC time")
    return None


def _inspect(directory: Path, name: str, at: datetime) -> Backup | Impostor:
    path = directory / name
    try:
        st = os.lstat(path)
        if not _is_regular(st.st_mode):
            return Impostor(name, "not a regular file (a symlink, directory or device)")
        if not _has_its_header(path):
            if name.endswith(".age"):
                return Impostor(name, "does not start with the age header")
            return Impostor(name, "does not start with the SQLite header")
    except FileNotFoundError:
        return Impostor(name, "vanished while the directory was read")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Impostor(name, "not a regular file (a symlink, directory or device)")
        raise _io_error(exc, path) from exc
    return Backup(name, at, st.st_size, _size_or_none(sidecar_path(path)))


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


def _size_or_none(path: Path) -> int | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_size if _is_regular(st.st_mode) else None


def apply(directory: Path, decisions: Iterable[Decision], report: PruneReport) -> None:
    """Remove every backup the plan removes, the artefact first, then its sidecar.

    Artefact first, as backup publishes it last: a backup never lacks its
    sidecar, even after a crash in between, which leaves a lone sidecar
    that the next backup into the directory sweeps
    (engine.backup.sweep_orphan_sidecars). Each file is checked again just
    before removal; one that changed since the scan is skipped, not removed.
    """
    for decision in decisions:
        if decision.keep:
            continue
        name = decision.backup.name
        path = directory / name
        if not _still_a_backup(path):
            report.skipped.append(name)
            log.warning(
                "prune.skipped",
                msg="file changed since it was planned; left in place",
                path=str(path),
            )
            continue
        report.bytes_freed += _remove(path) + _remove(sidecar_path(path), regular_only=True)
        report.removed.append(name)
    if report.removed:
        try:
            durable.fsync_dir(directory)
        except OSError as exc:
            raise _io_error(exc, directory) from exc


def _still_a_backup(path: Path) -> bool:
    try:
        return _has_its_header(path)
    except OSError:
        return False


def _has_its_header(path: Path) -> bool:
    """SQLite's header for a ``.db``, age's for a sealed ``.db.age``;
    a symlink is never followed (OSError)."""
    if not path.name.endswith(".age"):
        return has_sqlite_header(path)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.pread(fd, len(AGE_HEADER), 0) == AGE_HEADER
    finally:
        os.close(fd)


def _remove(path: Path, *, regular_only: bool = False) -> int:
    """Unlink ``path``; its size, or 0 when it was not there."""
    try:
        st = os.lstat(path)
        if regular_only and not _is_regular(st.st_mode):
            return 0
        os.unlink(path)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise _io_error(exc, path) from exc
    return st.st_size


def prune(directory: Path, policy: Policy, *, dry_run: bool = False) -> PruneReport:
    """Scan, plan and (unless ``dry_run``) remove; logs the prune.* events."""
    found = scan(directory)
    decided = plan(found.backups, policy)
    report = PruneReport(directory, decided, found.impostors, dry_run)
    for impostor in found.impostors:
        log.warning(
            "prune.impostor",
            msg="named like a backup but not one; left in place",
            path=str(directory / impostor.name),
            reason=impostor.reason,
        )
    _log_planned(report, found.others)
    if policy.empty:
        log.warning(
            "prune.empty_policy",
            msg="no [retention] rule is set: nothing is removed",
            hint="set keep_last, keep_daily, ... or keep_within in [retention]",
            dir=str(directory),
        )
    if not dry_run:
        apply(directory, decided.decisions, report)
        _log_completed(report)
    return report


def _log_planned(report: PruneReport, others: int) -> None:
    log.info(
        "prune.planned",
        msg="retention plan",
        dir=str(report.directory),
        dry_run=report.dry_run,
        backups=len(report.plan.decisions),
        keep=len(report.plan.kept),
        remove=len(report.plan.removed),
        impostors=len(report.impostors),
        other_files=others,
        **report.plan.policy.as_dict(),
    )


def _log_completed(report: PruneReport) -> None:
    log.info(
        "prune.completed",
        msg="backups pruned",
        dir=str(report.directory),
        removed=len(report.removed),
        kept=len(report.plan.kept),
        skipped=len(report.skipped),
        bytes_freed=report.bytes_freed,
    )


def newest(backups: Iterable[Backup]) -> Backup | None:
    return max(backups, key=lambda b: (b.time, b.name), default=None)


def _io_error(exc: OSError, path: Path) -> StorageIOError:
    return StorageIOError(
        f"prune failed at {path}: {exc.strerror or exc}",
        event="prune.io_error",
        hint="check the backup directory's permissions and its disk",
        path=str(path),
    )
