"""The replicator under ``serve``: Litestream as a supervised child.

One thread spawns Litestream (through :mod:`.shim`, so the kernel kills it
when the server dies, even by kill -9), turns its stderr into events, and
on an unexpected exit logs ``replication.failed`` and starts it again
after a back-off, while the API goes on serving. A second thread asks
Litestream's control socket when it last synced, for ``/metrics`` and
``status``. :meth:`Replicator.stop` asks for a final sync bounded by the
drain timeout, then stops the child.

The generated config and the control socket live in a private temporary
directory (0700, config 0600), removed at stop; neither holds a secret.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import structlog

from portunus.replication import logs
from portunus.replication.settings import (
    Replication,
    child_environment,
    litestream_binary,
    render_config,
    write_private,
)

log = structlog.get_logger()

SHIM = Path(__file__).with_name("shim.py")
POINTER_NAME = "replication.json"  # in the data dir while a server replicates
FIRST_BACKOFF_SECS = 1.0
MAX_BACKOFF_SECS = 60.0
HEALTHY_RUN_SECS = 60.0  # a child that ran this long resets the back-off
START_WAIT_SECS = 10.0
_CA_HINT = (
    "Litestream 0.5 cannot use a custom CA bundle from the AWS configuration "
    "(ca_bundle in ~/.aws/config or AWS_CA_BUNDLE); remove it, or point "
    "SSL_CERT_FILE at the bundle instead"
)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class Replicator:
    """Litestream replicating one database; start, observe, stop."""

    def __init__(
        self,
        rep: Replication,
        db_path: Path,
        *,
        log_level: str = "info",
        drain_secs: int = 10,
        env: dict[str, str] | None = None,
    ) -> None:
        self.rep = rep
        self.db_path = db_path
        self._log_level = log_level
        self._drain_secs = drain_secs
        self._env = dict(os.environ if env is None else env)
        self._dir: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._spawned = threading.Event()
        self._threads: list[threading.Thread] = []
        self.restarts = 0
        self.failures = 0
        self.errors = 0  # error-level lines Litestream logged
        self.last_sync: float | None = None  # epoch seconds, from the control socket
        self.reachable = False  # the control socket answered "replicating" last time

    # --- life ---------------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        assert self._dir is not None
        return self._dir / "control.sock"

    @property
    def config_path(self) -> Path:
        assert self._dir is not None
        return self._dir / "litestream.yml"

    @property
    def pointer_path(self) -> Path:
        return self.db_path.parent / POINTER_NAME

    @property
    def running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    @property
    def up(self) -> bool:
        return self.running and self.reachable

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        """Write the config, start the child; returns once it was spawned."""
        self._dir = Path(tempfile.mkdtemp(prefix="portunus-litestream-"))
        config = render_config(
            self.rep,
            self.db_path,
            socket_path=self.socket_path,
            log_level=self._log_level,
            shutdown_sync_secs=self._drain_secs,
        )
        write_private(self.config_path, config)
        # For `status`, another process: where to ask this server's replicator.
        pointer = {"pid": os.getpid(), "socket": str(self.socket_path), "url": self.rep.public_url}
        write_private(self.pointer_path, json.dumps(pointer) + "\n")
        self._child_env, changed = child_environment(self.rep, self._env)
        if changed:
            log.info("replication.ca_bundle_adjusted", msg=changed)
        for target, name in ((self._supervise, "supervise"), (self._watch, "watch")):
            thread = threading.Thread(target=target, name=f"portunus-replication-{name}")
            thread.daemon = True
            self._threads.append(thread)
            thread.start()
        self._spawned.wait(START_WAIT_SECS)

    def stop(self) -> None:
        """Final sync (bounded by the drain timeout), then stop the child."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        synced = self._final_sync() if self.running else None
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self._drain_secs + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for thread in self._threads:
            thread.join(5)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.pointer_path.unlink()
        log.info(
            "replication.stopped",
            msg="replicator stopped"
            + (
                ""
                if synced is None
                else ("; final sync done" if synced else "; final sync NOT confirmed")
            ),
            url=self.rep.public_url,
            final_sync=synced,
        )

    # --- the child ----------------------------------------------------------

    def _spawn(self) -> subprocess.Popen:
        argv = [
            sys.executable,
            "-I",
            str(SHIM),
            str(os.getpid()),
            litestream_binary(),
            "replicate",
            "-no-expand-env",
            "-config",
            str(self.config_path),
        ]
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self._child_env,
            text=True,
            errors="replace",
            close_fds=True,
            # Its own session: a stop signal sent to the server's process
            # group (a terminal's Ctrl-C, timeout(1)) must not stop it before
            # the drain and the final sync; the server stops it after those.
            start_new_session=True,
        )

    def _supervise(self) -> None:
        # Every child is spawned by this thread and this thread outlives
        # it: the kernel's parent-death signal follows the spawning thread.
        failures_in_a_row = 0
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                proc = self._spawn()
            except OSError as exc:
                status, reason = None, f"cannot start litestream: {exc.strerror or exc}"
            else:
                self._proc = proc
                self._spawned.set()
                log.info(
                    "replication.started",
                    msg="replicator started",
                    url=self.rep.public_url,
                    pid=proc.pid,
                    sync_interval=self.rep.sync_interval,
                )
                reason = self._relay(proc)
                status = proc.wait()
                self.reachable = False
            self._spawned.set()
            if self._stopping.is_set():
                return
            failures_in_a_row = (
                0 if time.monotonic() - began > HEALTHY_RUN_SECS else failures_in_a_row
            )
            delay = min(MAX_BACKOFF_SECS, FIRST_BACKOFF_SECS * 2**failures_in_a_row)
            failures_in_a_row += 1
            self.failures += 1
            self._failed(status, reason, delay)
            if self._stopping.wait(delay):
                return
            self.restarts += 1

    def _relay(self, proc: subprocess.Popen) -> str:
        """Log each line as an event until the child closes its stderr; the
        last error it gave."""
        last_error = ""
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = logs.translate(raw)
            if line is None:
                continue
            if line.level == "error":
                self.errors += 1
                detail = line.fields.get("error") or line.fields.get("err")
                last_error = f"{line.msg}: {detail}" if detail else line.msg
            getattr(log, line.level)(line.event, msg=line.msg, **line.fields)
        return last_error

    def _failed(self, status: int | None, reason: str, delay: float) -> None:
        hint = "the API keeps serving; the replicator is restarted after the back-off"
        what = reason or f"status {status}"
        if "RootCAs" in reason:
            hint = _CA_HINT
            what = "Litestream cannot use the custom CA bundle in the AWS configuration"
        elif status == -signal.SIGKILL:
            reason = reason or "killed by SIGKILL"
        log.error(
            "replication.failed",
            msg=f"replicator exited ({what}); restarting in {delay:g}s",
            hint=hint,
            url=self.rep.public_url,
            status=status,
            reason=reason,
            restart_in_secs=delay,
        )

    # --- observing ----------------------------------------------------------

    def _request(self, method: str, path: str, body: dict | None, timeout: float) -> dict:
        return control_request(self.socket_path, method, path, body, timeout)

    def _watch(self) -> None:
        interval = max(1.0, min(self.rep.sync_seconds, 10.0))
        while not self._stopping.wait(interval):
            self.poll()

    def poll(self) -> None:
        """Ask the running child when it last synced."""
        if not self.running:
            self.reachable = False
            return
        try:
            state = last_sync(self.socket_path, self.db_path)
        except (OSError, ValueError, http.client.HTTPException):
            self.reachable = False
            return
        self.reachable, when = state
        if when is not None:
            self.last_sync = when

    def _final_sync(self) -> bool:
        """Ship everything committed so far; whether Litestream confirmed it.

        A replicator still starting (its control socket not there yet, the
        store not yet open in it) is waited for, up to the drain timeout: a
        server stopped moments after it started has acknowledged writes that
        only this sync can ship, and a Litestream stopped before it opened
        the store ships nothing on its own."""
        timeout = max(self._drain_secs, 1)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                result = self._request(
                    "POST",
                    "/sync",
                    {"path": str(self.db_path), "wait": True, "timeout": max(1, int(left))},
                    left + 2.0,
                )
                break
            except (OSError, ValueError, http.client.HTTPException) as exc:
                if _not_ready(exc) and left > 0.1 and self.running:
                    time.sleep(0.05)
                    continue
                log.warning(
                    "replication.final_sync_failed",
                    msg=f"the final sync did not complete (drain timeout {timeout}s): {exc}",
                    hint="writes since the last sync may be missing from the replica; "
                    "start the server again to ship them, then check the replica",
                    url=self.rep.public_url,
                )
                return False
        self.last_sync = time.time()
        return result.get("replicated_txid", 0) >= result.get("txid", 0)


class ControlError(OSError):
    """Litestream's control socket answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _not_ready(exc: BaseException) -> bool:
    """Litestream is still starting: no socket yet, or the store not yet open
    (404 not found, 409 not open)."""
    if isinstance(exc, ControlError):
        return exc.status in (404, 409)
    return isinstance(exc, (FileNotFoundError, ConnectionRefusedError))


def control_request(
    socket_path: Path, method: str, path: str, body: dict | None, timeout: float
) -> dict:
    """One request to Litestream's control socket (HTTP over a Unix socket)."""
    conn = _UnixHTTPConnection(str(socket_path), timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        data = json.loads(response.read() or b"{}")
        if response.status != 200:
            raise ControlError(response.status, data.get("error") or f"HTTP {response.status}")
        return data
    finally:
        conn.close()


def last_sync(socket_path: Path, db_path: Path) -> tuple[bool, float | None]:
    """(replicating, when it last synced) as Litestream's control socket says."""
    listing = control_request(socket_path, "GET", "/list", None, 5.0)
    for db in listing.get("databases", []):
        if Path(db.get("path", "")) == db_path:
            when = db.get("last_sync_at")
            return db.get("status") == "replicating", _epoch(when) if when else None
    return False, None


def _epoch(rfc3339: str) -> float | None:
    text = rfc3339.replace("Z", "+00:00")
    # Go writes nanoseconds; Python reads at most microseconds.
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
