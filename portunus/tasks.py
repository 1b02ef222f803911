"""The operator tasks: parse, call the engine, render the result.

The same collection backs ``portunus-server`` (portunus.cli) and ``invoke``
run from a checkout (the root tasks.py). Results for scripts go to stdout;
logs go to stderr. A PortunusError becomes one log line and its exit code
here, in :func:`operator_task`, and nowhere else.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from invoke import Collection, Exit, task

from portunus import config, lazy, runtime, testpoints
from portunus import log as log_setup
from portunus.datadir import DataDir, resolve_data_dir
from portunus.errors import STOP_SIGNALS, Interrupted, PortunusError, UsageError

# Each command imports only the engine it runs: start-up is most of what
# `status` and `verify` cost (docs/performance.md, "Cold start").
metrics_textfile = lazy.module("portunus.metrics_textfile")
audit_prune_engine = lazy.module("portunus.engine.audit_prune")
backup_engine = lazy.module("portunus.engine.backup")
managed = lazy.module("portunus.engine.managed")
reset_engine = lazy.module("portunus.engine.reset")
restore_engine = lazy.module("portunus.engine.restore")
retention = lazy.module("portunus.engine.retention")
seal = lazy.module("portunus.engine.seal")
tokens = lazy.module("portunus.engine.tokens")
status_engine = lazy.module("portunus.engine.status")
verify_engine = lazy.module("portunus.engine.verify")
audit = lazy.module("portunus.store.audit")
store_lock = lazy.module("portunus.store.lock")
replication_restore = lazy.module("portunus.replication.restore")
replication_settings = lazy.module("portunus.replication.settings")
replication_status = lazy.module("portunus.replication.status")

log = structlog.get_logger()


def report(error: PortunusError) -> None:
    """The one place an error becomes a log line."""
    fields = {k: v for k, v in error.fields.items() if v is not None}
    log.error(error.event, msg=error.message, hint=error.hint, exit_code=error.exit_code, **fields)


def silence_stdout() -> None:
    """The reader (``| head``) stopped reading: not our failure. Point stdout
    at /dev/null so the interpreter's final flush does not fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def operator_task(
    *task_args: Any, failure_event: str | None = None, **task_kwargs: Any
) -> Callable:
    """``@task`` plus error translation: PortunusError → its exit code,
    anything else → ``internal_error`` and exit 1. ``failure_event`` adds one
    stable summary line for alerting, whatever the specific cause."""

    def decorate(body: Callable) -> Any:
        @functools.wraps(body)
        def run(c: Any, *args: Any, **kwargs: Any) -> Any:
            if not log_setup.is_configured():
                # Plain ``invoke``: no Program configured logging, and an
                # error before runtime.build must still be logfmt on stderr.
                log_setup.configure("logfmt")
            with stop_signals_interrupt():
                try:
                    testpoints.reached(f"task.{body.__name__}")
                    return body(c, *args, **kwargs)
                except PortunusError as error:
                    report(error)
                    code, reason = error.exit_code, error.event
                except Exit:
                    raise
                except KeyboardInterrupt as interrupted:
                    # SIGINT, or SIGTERM (errors.Interrupted): the clean-up ran on
                    # the way out; say so for alerting, then exit 128 + signal.
                    if failure_event:
                        signum = getattr(interrupted, "signum", signal.SIGINT)
                        log.error(
                            failure_event,
                            msg="interrupted; its temporary files were removed",
                            reason="interrupted",
                            signal=signal.Signals(signum).name,
                            exit_code=128 + signum,
                        )
                    raise
                except BrokenPipeError:
                    silence_stdout()
                    raise Exit(code=0) from None
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


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """While a task runs, SIGINT and SIGTERM both raise errors.Interrupted (a
    KeyboardInterrupt), once: systemd stopping a backup unit unwinds it as
    Ctrl-C does, through every ``finally`` (temp files and staged copies
    removed, the lock released), and a second signal cannot cut that
    clean-up short. ``serve`` relies on it during its start-up and hands
    the signals to sanic once it serves. The previous handlers come back
    afterwards. Only the main thread can set handlers; elsewhere, nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: object) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


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
        "recipient": "seal the backup to this age recipient (age1…, or an ssh-ed25519/ssh-rsa "
        "public key); repeatable; replaces [backup].encrypt_to",
        "recipients_file": "seal the backup to every recipient in this file (age's format: "
        "one a line, # comments); replaces [backup].recipients_file",
    },
    iterable=["recipient"],
)
def backup(c, out=None, json=False, recipient=None, recipients_file=None):
    """Online backup of the store to a new file (safe while the server runs)."""
    rt = _runtime(c)
    if out is None and not rt.settings.get("backup.dir"):
        raise UsageError(
            "backup needs --out PATH (or [backup].dir in server.toml)",
            hint="e.g. portunus-server backup --out ~/portunus-$(date +%F).db",
        )
    progress = None if json else _progress_bar()
    named = None
    if recipient or recipients_file:
        files = [Path(recipients_file).expanduser()] if recipients_file else []
        named = seal.recipients(recipient or (), files)
    if out is None:
        # Into [backup].dir: a managed backup, which prunes per [retention]
        # and records the metrics textfile (engine.managed).
        options = managed.options_from_settings(rt.settings, progress=progress, recipients=named)
        try:
            made = managed.managed_backup(rt.data_dir, options)
        except managed.BackupIncomplete as incomplete:
            _render_backup(incomplete.made.as_dict(), json)  # it was made: say where
            raise
        _render_backup(made.as_dict(), json)
        return
    # An explicit --out is the operator's own file: never pruned, not recorded.
    result = backup_engine.backup(
        rt.data_dir,
        Path(out).expanduser(),
        verify=rt.settings.get("backup.verify"),
        checksum=rt.settings.get("backup.checksum"),
        progress=progress,
        # An --out DIR/ (pathlib drops the slash) is a directory: if it is
        # missing, 74, never a file of its name.
        directory=out.endswith(os.sep),
        recipients=seal.from_settings(rt.settings) if named is None else named,
    )
    _render_backup(result.as_dict(), json)


def _render_backup(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(summary)
    else:
        print(summary["path"], flush=True)


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
        "from-replica": "restore from the [replication] replica (Litestream) instead of --in",
        "at": "with --from-replica: the point in time to restore (RFC 3339, e.g. "
        "2026-05-08T10:00:00Z); default: the newest",
        "replica": "with --from-replica: this replica URL instead of [replication] url",
        "identity": "age identity file (or SSH private key) that opens a sealed .db.age backup",
        "latest": "restore the newest backup in [backup].dir (or --dir) that passes its checks",
        "dir": "with --latest: look in this directory instead of [backup].dir",
    }
)
def restore(
    c,
    in_=None,
    force=False,
    json=False,
    from_replica=False,
    at=None,
    replica=None,
    identity=None,
    latest=False,
    dir_=None,
):
    """Validate a backup (or the replica) and restore it into the data dir (server stopped)."""
    if from_replica or at or replica:
        if latest or identity:
            raise UsageError("--from-replica takes neither --latest nor --identity")
        result = _restore_from_replica(c, in_, force, from_replica, at, replica)
    elif bool(in_) == bool(latest):
        raise UsageError(
            "restore needs one of --in PATH, --latest or --from-replica",
            hint="e.g. portunus-server restore --in /var/backups/portunus/2026-05-08.db",
        )
    else:
        result = _restore_backup(c, in_, force, identity, latest, dir_)
    if json:
        _print_json(result.as_dict())
    else:
        print(
            f"restored {result.source} into {result.path} (schema version {result.schema_version})"
        )


def _restore_backup(c, in_, force, identity, latest, dir_):
    """restore --in FILE or --latest: a plain or sealed (--identity) backup."""
    rt = _runtime(c)
    identities = seal.load_identities(Path(identity).expanduser()) if identity else None
    if latest:
        directory = _backup_dir(rt, dir_, "restore --latest")
        return restore_engine.restore_latest(
            rt.data_dir, directory, force=force, identities=identities
        )
    return restore_engine.restore(
        rt.data_dir, Path(in_).expanduser(), force=force, identities=identities
    )


def _restore_from_replica(c, in_, force, from_replica, at, replica):
    if in_ or not from_replica:
        raise UsageError(
            "--at and --replica go with --from-replica, which excludes --in",
            hint="e.g. portunus-server restore --from-replica --at 2026-05-08T10:00:00Z",
        )
    rt = _runtime(c)
    if replica:
        complaint = config.BY_DOTTED["replication.url"].check(replica)
        if complaint:
            raise UsageError(f"--replica {replication_settings.public_url(replica)}: {complaint}")
    rep = replication_settings.from_settings(rt.settings, url_override=replica)
    if rep is None:
        raise UsageError(
            "--from-replica needs a replica: set [replication] url in server.toml, "
            "or pass --replica URL",
            hint="e.g. portunus-server restore --from-replica --replica s3://bucket/portunus",
        )
    return replication_restore.restore_from_replica(
        rt.data_dir, rep, at=_parse_at(at) if at else None, force=force
    )


def _parse_at(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise UsageError(
            f"--at {text!r} is not an RFC 3339 time with a zone",
            hint="e.g. --at 2026-05-08T10:00:00Z",
        )
    return when.astimezone(UTC)


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
    holder = store_lock.probe_holder(rt.data_dir.lock)
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


@operator_task(
    positional=["path"],
    help={
        "path": "backup file to check",
        "json": "JSON output",
        "identity": "age identity file (or SSH private key): decrypt a sealed backup and check "
        "everything; without it only a sealed backup's checksum is checked",
    },
)
def verify(c, path, json=False, identity=None):
    """Check a backup: header, checksum, integrity, schema version, row counts."""
    rt = _runtime(c)
    identities = seal.load_identities(Path(identity).expanduser()) if identity else None
    # A sealed backup is decrypted inside the data dir (0700) when it exists.
    stage_in = rt.data_dir.path if rt.data_dir.path.is_dir() else None
    result = verify_engine.verify(Path(path).expanduser(), identities=identities, stage_in=stage_in)
    if json:
        _print_json(result.as_dict())
        return
    print(f"path: {result.path}")
    print(f"bytes: {result.bytes}")
    print(f"sealed: {'yes (age)' if result.sealed else 'no'}")
    print(f"sha256: {result.sha256} (sidecar: {result.checksum})")
    if result.integrity != "ok":
        print("content: NOT CHECKED (sealed; pass --identity FILE to check everything)")
        return
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


@operator_task()
def serve(c):
    """Run the HTTPS API until SIGTERM / SIGINT (holds the store while it runs)."""
    rt = _runtime(c)
    # Imported here: sanic adds ~0.2 s to the start of every other command.
    from portunus.serve import serve as run_server

    run_server(rt)


# --- retention, status, config and audit (prune, status, config.*, audit.prune) ---


def _update_metrics(rt: runtime.Runtime, **values: float) -> None:
    textfile = rt.settings.get("backup.metrics_textfile")
    if textfile and values:
        metrics_textfile.update(Path(textfile), values)


def _backup_dir(rt: runtime.Runtime, override: str | None, command: str = "prune") -> Path:
    target = override or rt.settings.get("backup.dir")
    if not target:
        raise UsageError(
            f"{command} needs [backup].dir in server.toml (or --dir DIR)",
            hint="portunus-server config set backup.dir /var/backups/portunus",
        )
    return Path(target).expanduser()


@operator_task(
    help={
        "dry_run": "print every backup with keep/remove and the rules that decided; remove nothing",
        "json": "print a JSON summary",
        "dir": "prune this directory instead of [backup].dir",
    }
)
def prune(c, dry_run=False, json=False, dir_=None):
    """Apply [retention] to the backup directory: remove the backups no rule keeps."""
    rt = _runtime(c)
    directory = _backup_dir(rt, dir_)
    pruned = retention.prune(
        directory, retention.policy_from_settings(rt.settings), dry_run=dry_run
    )
    if not dry_run and _is_configured_backup_dir(rt, directory):
        kept = {"portunus_backup_kept_count": len(pruned.plan.kept)}
        _update_metrics(rt, **kept, **managed.prune_metrics(pruned, time.time()))
    if json:
        _print_json(pruned.as_dict())
    else:
        _render_prune(pruned)


def _is_configured_backup_dir(rt: runtime.Runtime, directory: Path) -> bool:
    """The metrics textfile describes [backup].dir, however prune was pointed at it."""
    configured = rt.settings.get("backup.dir")
    if not configured:
        return False
    return os.path.realpath(Path(configured).expanduser()) == os.path.realpath(directory)


def _render_prune(pruned: retention.PruneReport) -> None:
    if pruned.dry_run:
        for decision in pruned.plan.decisions:
            action = "keep" if decision.keep else "remove"
            print(f"{action:<7}{decision.backup.name}  {','.join(decision.reasons) or '-'}")
    else:
        for name in pruned.removed:
            print(f"removed {name}")
    for impostor in pruned.impostors:
        print(f"ignored {impostor.name}  ({impostor.reason})")
    print(_prune_summary(pruned))


def _prune_summary(pruned: retention.PruneReport) -> str:
    total = len(pruned.plan.decisions)
    if pruned.plan.policy.empty:
        return f"no [retention] rule is set: nothing removed ({total} backups kept)"
    if pruned.dry_run:
        freed = sum(d.as_dict()["bytes"] for d in pruned.plan.removed)
        return (
            f"dry-run: would remove {len(pruned.plan.removed)} of {total} backups "
            f"({_human_bytes(freed)}), keep {len(pruned.plan.kept)}"
        )
    return (
        f"removed {len(pruned.removed)} of {total} backups ({_human_bytes(pruned.bytes_freed)} "
        f"freed), kept {len(pruned.plan.kept)}"
    )


def _human_bytes(count: int | None) -> str:
    size = float(count or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _human_age(seconds: int) -> str:
    days, rest = divmod(max(seconds, 0), 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h {rest // 60}m" if days else f"{hours}h {rest // 60}m"


@operator_task(help={"json": "print JSON"})
def status(c, json=False):
    """Show the data dir, its filesystem, the lock holder, schema version, sizes and backups."""
    rt = _runtime(c)
    backup_dir = rt.settings.get("backup.dir")
    found = status_engine.status(
        rt.data_dir, Path(backup_dir).expanduser() if backup_dir else None, rt.settings.source
    )
    # Without a replica URL replication is off (from_settings gives None):
    # not even its settings module is loaded then.
    url = rt.settings.get("replication.url")
    rep = replication_settings.from_settings(rt.settings) if url else None
    replicated = (
        replication_status.replication_status(rep, rt.data_dir, found.lock_holder) if rep else None
    )
    if json:
        _print_json({**found.as_dict(), "replication": replicated and replicated.as_dict()})
    else:
        _render_status(found)
        _render_replication(replicated)


def _render_replication(found: replication_status.ReplicationStatus | None) -> None:
    if found is None:
        print(f"{'replication:':<15}off (no [replication] url)")
        return
    state = "up" if found.up else "DOWN"
    print(f"{'replication:':<15}{found.url} ({state})")
    if found.last_sync:
        seconds = found.last_sync_age_seconds or 0
        age = f"{seconds}s" if seconds < 120 else _human_age(seconds)
        print(f"{'last sync:':<15}{found.last_sync} ({age} ago)")
    if found.oldest_restorable:
        window = f"{found.oldest_restorable} .. {found.newest_restorable}"
        print(f"{'restorable:':<15}{window}")
    if found.problem:
        print(f"{'replica note:':<15}{found.problem}")


def _render_status(found: status_engine.Status) -> None:
    store, backups = found.store, found.backups
    holder = found.lock_holder
    rows = {
        "data dir": f"{found.data_dir}" + ("" if found.data_dir_exists else " (does not exist)"),
        "filesystem": f"{found.filesystem} ({found.filesystem_verdict})",
        "config file": str(found.config_file or "none (built-in defaults)"),
        "lock": f"held by {store_lock.describe_holder(*holder)}" if holder else "free",
        "state.db": _store_line(store, found.binary_schema_version),
        "backups": _backups_line(backups),
    }
    if backups.newest:
        rows["newest backup"] = f"{backups.newest} ({_human_age(backups.newest_age_seconds)} old)"
    for label, value in rows.items():
        print(f"{label + ':':<15}{value}")


def _store_line(store: status_engine.StoreStatus, binary: int) -> str:
    if not store.exists:
        return "absent"
    wal = "no wal" if store.wal_bytes is None else f"wal {_human_bytes(store.wal_bytes)}"
    sizes = f"{_human_bytes(store.bytes)} ({wal})"
    if store.problem:
        return f"{sizes}, {store.problem}"
    return f"{sizes}, schema version {store.schema_version} (this binary: {binary})"


def _backups_line(backups: status_engine.BackupsStatus) -> str:
    if backups.problem:
        return backups.problem
    impostors = f", {backups.impostors} impostor(s)" if backups.impostors else ""
    return f"{backups.count} in {backups.dir}, {_human_bytes(backups.total_bytes)}{impostors}"


def _config_target(c: Any, file: str | None) -> tuple[Path, bool]:
    """The file config check / set work on, and whether it was named
    (--file, --config, $PORTUNUS_CONFIG) rather than the optional
    <data-dir>/server.toml. Not through runtime.build: that refuses an
    invalid file, which is what these two commands must be able to handle."""
    options = runtime.global_options(c)
    log_setup.configure(options.get("log_format") or "logfmt")
    runtime.refuse_empty_paths({**options, "file": file})
    if file:
        return Path(file).expanduser(), True
    explicit = config.config_path(options.get("config"), os.environ, None)
    if explicit:
        return explicit, True
    data_dir = resolve_data_dir(options.get("data_dir"), None)
    data_dir.refuse_a_non_directory()
    return data_dir.config, False


@operator_task(name="show", help={"json": "print JSON: each key's value and source"})
def config_show(c, json=False):
    """Print the effective configuration and where each value comes from."""
    rt = _runtime(c)
    entries = config.describe(rt.settings, _overrides(c, rt))
    if json:
        _print_json(
            {
                "file": str(rt.settings.source) if rt.settings.source else None,
                "settings": {e.key: e.as_dict() for e in entries},
            }
        )
        return
    print(f"# file: {rt.settings.source or 'none (built-in defaults)'}")
    width = max(len(e.key) for e in entries) + 2
    for entry in entries:
        print(f"{entry.key:<{width}}{config.render_value(entry.value):<32} # {entry.source}")


def _overrides(c: Any, rt: runtime.Runtime) -> dict[str, tuple[Any, str]]:
    """Values decided outside the file: --data-dir / the environment, --log-format."""
    options = runtime.global_options(c)
    explicit = config.config_path(options.get("config"), os.environ, None)
    if options.get("data_dir"):
        source = "flag"
    elif explicit and "data_dir" in rt.settings.explicit:
        source = "file"
    elif os.environ.get("STATE_DIRECTORY") or os.environ.get("XDG_STATE_HOME"):
        source = "env"
    else:
        source = "default"
    found = {"data_dir": (str(rt.data_dir.path), source)}
    if options.get("log_format"):
        found["log_format"] = (options["log_format"], "flag")
    return found


@operator_task(name="check", help={"file": "file to check (default: the one commands read)"})
def config_check(c, file=None):
    """Validate a server.toml: every problem with its line and key; exit 78 if any."""
    path, named = _config_target(c, file)
    if not named and not path.exists():
        print(f"no config file at {path}: built-in defaults apply")
        return
    problems = config.check_file(path)
    for problem in problems:
        print(problem.render(path))
    if problems:
        raise config.invalid(path, problems)
    print(f"ok: {path}")


@operator_task(
    name="set",
    positional=["key", "value"],
    help={
        "key": "dotted key, e.g. retention.keep_daily",
        "value": "TOML value or bare text: 7, true, 30d, state,tls",
        "file": "file to edit (default: the one commands read)",
    },
)
def config_set(c, key, value, file=None):
    """Set one key in server.toml, keeping comments; refused (78) if invalid."""
    path, named = _config_target(c, file)
    if not named:
        DataDir(path.parent).ensure()
    change = config.set_value(path, key, value)
    was = "unset" if change.old is None else config.render_value(change.old)
    print(f"{key} = {config.render_value(change.new)} (was {was}) in {change.path}")


@operator_task(
    name="prune",
    help={
        "before": "delete rows older than this RFC3339 time (default: now - [audit].retain_days)",
        "dry_run": "count the rows, delete nothing",
        "json": "print a JSON summary",
    },
)
def audit_prune(c, before=None, dry_run=False, json=False):
    """Delete old audit-log rows in small batches (safe while the server runs)."""
    rt = _runtime(c)
    cutoff = (
        _parse_before(before)
        if before
        else audit_prune_engine.cutoff_from_days(rt.settings.get("audit.retain_days"))
    )
    result = audit_prune_engine.prune_audit(rt.data_dir, cutoff, dry_run=dry_run)
    if json:
        _print_json(result.as_dict())
    else:
        done = f"dry-run: would delete {result.matched}" if dry_run else f"deleted {result.deleted}"
        print(f"{done} audit rows older than {result.as_dict()['before']}")


def _parse_before(text: str) -> datetime:
    """RFC3339 with a zone (``Z`` or an offset), or a bare date (midnight UTC)."""
    try:
        at = audit.parse_time(text + "T00:00:00Z" if len(text) == 10 else text)
    except ValueError:
        raise UsageError(
            f"--before must be an RFC3339 time with a zone, or a date: got {text!r}",
            hint="e.g. --before 2026-01-01T00:00:00Z or --before 2026-01-01",
        ) from None
    if at > datetime.now(UTC):
        raise UsageError(
            f"--before {text} is in the future: that would delete the whole audit log",
            hint="pick a past time",
        )
    return at


@operator_task(
    name="list",
    help={"json": "print JSON", "dir": "list this directory instead of [backup].dir"},
)
def list_(c, json=False, dir_=None):
    """List every backup in [backup].dir, newest first: time, size, sealed, checksum sidecar."""
    rt = _runtime(c)
    found = retention.scan(_backup_dir(rt, dir_, "list"))
    backups = sorted(found.backups, key=lambda b: b.time, reverse=True)
    rows = [
        {
            "name": b.name,
            "path": str(found.directory / b.name),
            "time": retention.rfc3339(b.time),
            "bytes": b.bytes,
            "sealed": b.sealed,
            "sidecar": b.sidecar_bytes is not None,
        }
        for b in backups
    ]
    if json:
        _print_json({"dir": str(found.directory), "backups": rows})
        return
    for row in rows:
        kind = "sealed" if row["sealed"] else "plain"
        sidecar = "sha256" if row["sidecar"] else "no-sha256"
        size = _human_bytes(row["bytes"])
        print(f"{row['time']}  {size:>10}  {kind:<6}  {sidecar:<9}  {row['name']}")
    if not rows:
        print(f"no backups in {found.directory}")


@operator_task(help={"out": "new file for the identity (mode 0600; never overwritten)"})
def keygen(c, out=None):
    """Generate an age key pair for sealed backups: identity to --out, recipient to stdout."""
    if not out:
        raise UsageError(
            "keygen needs --out FILE",
            hint="e.g. portunus-server keygen --out /root/portunus-backup.key (then keep it "
            "off this host)",
        )
    recipient = seal.keygen(Path(out).expanduser())
    log.info("keygen.completed", msg="identity written", path=str(out), recipient=recipient)
    print(recipient)


def collection() -> Collection:
    """The operator tasks, as both portunus-server and invoke see them."""
    root = Collection(
        serve, backup, restore, reset, verify, bootstrap_admin, prune, status, list_, keygen
    )
    root.add_collection(Collection("config", config_show, config_check, config_set))
    root.add_collection(Collection("audit", audit_prune))
    return root
