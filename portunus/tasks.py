"""The operator tasks: parse, call the engine, render the result.

The same collection backs ``portunus-server`` (portunus.cli) and ``invoke``
run from a checkout (the root tasks.py). Results for scripts go to stdout;
logs go to stderr. A PortunusError becomes one log line and its exit code
here, in :func:`operator_task`, and nowhere else.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from invoke import Collection, Exit, task

from portunus import runtime
from portunus.engine import backup as backup_engine
from portunus.engine import reset as reset_engine
from portunus.engine import restore as restore_engine
from portunus.engine import tokens
from portunus.engine import verify as verify_engine
from portunus.errors import PortunusError, UsageError
from portunus.store.lock import probe_holder

log = structlog.get_logger()


def report(error: PortunusError) -> None:
    """The one place an error becomes a log line."""
    fields = {k: v for k, v in error.fields.items() if v is not None}
    log.error(error.event, msg=error.message, hint=error.hint, exit_code=error.exit_code, **fields)


def operator_task(
    *task_args: Any, failure_event: str | None = None, **task_kwargs: Any
) -> Callable:
    """``@task`` plus error translation: PortunusError → its exit code,
    anything else → ``internal_error`` and exit 1. ``failure_event`` adds one
    stable summary line for alerting, whatever the specific cause."""

    def decorate(body: Callable) -> Any:
        @functools.wraps(body)
        def run(c: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return body(c, *args, **kwargs)
            except PortunusError as error:
                report(error)
                code, reason = error.exit_code, error.event
            except (Exit, KeyboardInterrupt):
                raise
            except Exception as exc:
                log.error(
                    "internal_error",
                    msg=f"unexpected error: {exc!r}",
                    hint="this is a bug; please report it with this log",
                    exc_info=True,
                )
                code, reason = 1, "internal_error"
            if failure_event:
                log.error(failure_event, msg="operation failed", reason=reason, exit_code=code)
            raise Exit(code=code)

        return task(*task_args, **task_kwargs)(run)

    return decorate


def _runtime(c: Any) -> runtime.Runtime:
    return runtime.build(runtime.global_options(c))


def _print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


@operator_task(
    failure_event="backup.failed",
    help={
        "out": "new file to write, or an existing directory (gets portunus-state-<RFC3339>.db); "
        "default: [backup].dir from server.toml",
        "json": "print a JSON summary instead of the path",
    },
)
def backup(c, out=None, json=False):
    """Online backup of the store to a new file (safe while the server runs)."""
    rt = _runtime(c)
    target = out or rt.settings.get("backup.dir")
    if not target:
        raise UsageError(
            "backup needs --out PATH (or [backup].dir in server.toml)",
            hint="e.g. portunus-server backup --out ~/portunus-$(date +%F).db",
        )
    result = backup_engine.backup(
        rt.data_dir,
        Path(target).expanduser(),
        verify=rt.settings.get("backup.verify"),
        checksum=rt.settings.get("backup.checksum"),
        progress=None if json else _progress_bar(),
    )
    if json:
        _print_json(result.as_dict())
    else:
        print(result.path)


def _progress_bar() -> Callable[[int, int], None] | None:
    """A one-line bar on a terminal for backups that take a while."""
    if not sys.stderr.isatty():
        return None
    started = time.monotonic()
    shown = [False]

    def show(done: int, total: int) -> None:
        if time.monotonic() - started < 1.0 and not shown[0]:
            return  # short backups stay quiet
        shown[0] = True
        width = 30
        filled = width * done // max(total, 1)
        end = "\n" if done >= total else ""
        sys.stderr.write(
            f"\rbackup [{'#' * filled}{'.' * (width - filled)}] "
            f"{100 * done // max(total, 1):3d}% {done}/{total} pages{end}"
        )
        sys.stderr.flush()

    return show


@operator_task(
    help={
        "in": "backup file to restore",
        "force": "replace an existing state.db (atomically, after every check passed)",
        "json": "print a JSON summary",
    }
)
def restore(c, in_=None, force=False, json=False):
    """Validate a backup and restore it into the data dir (server stopped)."""
    if not in_:
        raise UsageError(
            "restore needs --in PATH",
            hint="e.g. portunus-server restore --in /var/backups/portunus/2026-05-08.db",
        )
    rt = _runtime(c)
    result = restore_engine.restore(rt.data_dir, Path(in_).expanduser(), force=force)
    if json:
        _print_json(result.as_dict())
    else:
        print(
            f"restored {result.source} into {result.path} (schema version {result.schema_version})"
        )


@operator_task(
    help={
        "confirm": "really remove the files (without it: dry run)",
        "json": "print a JSON summary",
    }
)
def reset(c, confirm=False, json=False):
    """Remove state.db and its sidecars; a dry run unless --confirm."""
    rt = _runtime(c)
    scope = rt.settings.get("reset.scope")
    if confirm:
        plan = reset_engine.reset(rt.data_dir, scope)
        _render_reset(plan, "removed", json)
        return
    plan = reset_engine.plan_reset(rt.data_dir, scope)
    holder = probe_holder(rt.data_dir.lock)
    if holder:
        log.warning(
            "reset.dry_run_store_in_use",
            msg="--confirm would refuse: store in use",
            pid=holder[0],
            holder=holder[1],
        )
    if plan.refusal:
        log.warning(
            "reset.dry_run_refusal",
            msg=f"--confirm would refuse: {plan.refusal.message}",
            hint=plan.refusal.hint,
        )
    _render_reset(plan, "dry-run: would remove", json, dry_run=True)


def _render_reset(
    plan: reset_engine.ResetPlan, verb: str, as_json: bool, dry_run: bool = False
) -> None:
    if as_json:
        _print_json({**plan.as_dict(), "dry_run": dry_run})
        return
    for path in plan.targets:
        print(f"{verb} {path}")
    if not plan.targets:
        prefix = "dry-run: " if dry_run else ""
        print(f"{prefix}nothing to remove in {plan.data_dir.path}")


@operator_task(positional=["path"], help={"path": "backup file to check", "json": "JSON output"})
def verify(c, path, json=False):
    """Check a backup: header, checksum, integrity, schema version, row counts."""
    _runtime(c)
    result = verify_engine.verify(Path(path).expanduser())
    if json:
        _print_json(result.as_dict())
        return
    print(f"path: {result.path}")
    print(f"bytes: {result.bytes}")
    print(f"sha256: {result.sha256} (sidecar: {result.checksum})")
    print(f"integrity: {result.integrity}")
    print(f"schema_version: {result.schema_version} (this binary: {result.binary_schema_version})")
    for table, count in result.rows.items():
        print(f"rows.{table}: {count}")


@operator_task(help={"name": "name of the first admin token"})
def bootstrap_admin(c, name=None):
    """Create the store if needed and print the first admin API token, once."""
    if not name:
        raise UsageError("bootstrap-admin needs --name NAME", hint="e.g. --name ops-admin")
    rt = _runtime(c)
    print(tokens.bootstrap_admin(rt.data_dir, name))


def collection() -> Collection:
    """The operator tasks, as both portunus-server and invoke see them."""
    return Collection(backup, restore, reset, verify, bootstrap_admin)
