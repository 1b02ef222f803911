"""``serve``: the start-up sequence, the server's life, the clean stop.

In this order, each refusal a documented event and exit code: probe the
data dir's filesystem (78) before anything is created on it; create the
data dir (0700); take the store lock for the whole life of the process
(75); open and migrate the store (78 too new, 70 failed); load or generate
the TLS pair (78 on bad permissions); warn about legacy files; bind
``listen`` (78); start the replicator when ``[replication] url`` is set
(portunus.replication); serve. SIGTERM / SIGINT: stop accepting, drain for up
to ``shutdown_drain_timeout_secs``, checkpoint and truncate the WAL,
release the lock, ``server.stopped``.

One process, one event loop (sanic's single-process mode): the lock, the
single writer and the clean stop all need the process that holds the lock
to be the one that serves and the last one to exit. See docs/api.md.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from portunus.config import Settings
from portunus.datadir import LEGACY_FILES, DataDir
from portunus.engine.restore import sweep_stale_stages
from portunus.errors import STOP_SIGNALS, RefusedByConfiguration
from portunus.replication.serving import start_replication
from portunus.runtime import Runtime
from portunus.server import ServerStore, create_app
from portunus.store.connection import close_quietly
from portunus.store.live import open_live_store
from portunus.store.lock import StoreLock
from portunus.tls import TlsMaterial, load_or_generate

log = structlog.get_logger()

BACKLOG = 1024


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> Listen:
        host, _, port = value.rpartition(":")
        return cls(host.strip("[]"), int(port))

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def url(self, tls: bool) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if tls else 'http'}://{host}:{self.port}"


def serve(rt: Runtime) -> None:
    """Run the API until SIGTERM / SIGINT; raises PortunusError on refusal."""
    started = time.monotonic()
    data_dir = rt.data_dir
    try:
        data_dir.prepare_for_store()
        with StoreLock(data_dir.lock, "serve"):
            sweep_stale_restores(data_dir)
            _serve_locked(rt.settings, data_dir)
    except KeyboardInterrupt as stop:
        # A stop signal before sanic took the signals over (the task's
        # errors.Interrupted): it unwound the start-up through every
        # ``finally`` (a migration rolled back, the store closed with its WAL
        # checkpointed, the lock released). A clean stop, not a failure.
        name = signal.Signals(getattr(stop, "signum", signal.SIGINT)).name
        log.info(
            "server.stopped",
            msg=f"stopped by {name} during start-up; store closed, lock released",
            signal=name,
            uptime_secs=round(time.monotonic() - started, 1),
        )
        return
    log.info(
        "server.stopped",
        msg="stopped cleanly; WAL checkpointed, lock released",
        uptime_secs=round(time.monotonic() - started, 1),
    )


def _hand_stop_signals_to(app) -> None:
    """From here until sanic installs its own handlers, a stop signal is kept
    rather than raised (unwinding sanic's own start-up would log it as a
    failure) and delivered again once sanic serves: it is then the ordinary
    drain and clean stop, right after ``server.listening``."""
    pending: list[int] = []
    deliveries: list[asyncio.Task] = []  # a reference, so the task is not collected

    def keep(signum: int, _frame: object) -> None:
        pending.append(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, keep)

    @app.after_server_start  # sanic's handlers are in place by now
    async def deliver_kept_stop(app) -> None:
        if pending:
            deliveries.append(asyncio.create_task(_deliver_once_serving(app, pending[0])))


async def _deliver_once_serving(app, signum: int) -> None:
    # sanic's stop is loop.stop(): raised while the start-up listeners still
    # run, it would end that run_until_complete instead of the serving loop.
    # is_running is set between the two.
    while not app.state.is_running:
        await asyncio.sleep(0.01)
    signal.raise_signal(signum)


def _ignore_stop_signals() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _serve_locked(settings: Settings, data_dir: DataDir) -> None:
    conn, handshake = open_live_store(data_dir)
    store = None
    try:
        store = ServerStore(data_dir, conn, handshake.to_version)
        listen = Listen.parse(settings.get("listen"))
        tls = load_tls(settings, data_dir, listen) if settings.get("tls") else None
        if tls is None:
            log.warning(
                "startup.tls_disabled",
                msg="serving plain HTTP (tls = false)",
                hint="only behind a TLS-terminating proxy on the same host",
            )
        warn_about_legacy_files(data_dir)
        warn_when_no_admin(conn, data_dir)
        sock = bind(listen)
        replicator = start_replication(settings, data_dir, store)
        app = create_app(settings, store, url=listen.url(tls is not None))
        app.ctx.replicator = replicator
        _hand_stop_signals_to(app)
        run(app, sock, tls)
        # sanic's loop is closed and its handlers gone: the final checkpoint
        # and the unlock below are not to be cut short by a second signal.
        _ignore_stop_signals()
    finally:
        if store is not None:
            store.close()
        else:
            close_quietly(conn)


def load_tls(settings: Settings, data_dir: DataDir, listen: Listen) -> TlsMaterial:
    """The configured pair, or the data dir's own (generated when absent)."""
    cert = settings.get("tls_cert_path")
    key = settings.get("tls_key_path")
    return load_or_generate(
        Path(cert).expanduser() if cert else data_dir.path / "server.crt",
        Path(key).expanduser() if key else data_dir.path / "server.key",
        # Only the data dir's own pair is ours to create or renew.
        may_generate=not cert and not key,
        extra_names=(listen.host,),
    )


def warn_about_legacy_files(data_dir: DataDir) -> None:
    for name in LEGACY_FILES:
        path = data_dir.path / name
        if os.path.lexists(path):
            log.warning(
                "startup.legacy_file_ignored",
                msg=f"{name} is from v0.5-v0.7 and is not read; all state lives in state.db",
                hint="move it out of the data dir once you no longer need it",
                path=str(path),
            )


def warn_when_no_admin(conn, data_dir: DataDir) -> None:
    """A fresh store has no operator token, so the API refuses everything.
    The first one comes from bootstrap-admin, which needs the store lock:
    say so, with the exact command. (serve never mints or prints a token:
    its output ends up in the journal.)"""
    if conn.execute("SELECT 1 FROM operator_tokens WHERE role = 'admin' LIMIT 1").fetchone():
        return
    log.warning(
        "startup.no_admin_token",
        msg="no admin token exists yet: the API will refuse every request",
        hint=f"stop the server, run 'portunus-server --data-dir {data_dir.path} "
        "bootstrap-admin --name NAME' (it prints the first token once), start it again",
        path=str(data_dir.state_db),
    )


def sweep_stale_restores(data_dir: DataDir) -> None:
    for leftover in sweep_stale_stages(data_dir):
        log.warning(
            "startup.stale_restore_removed",
            msg="removed a file left by an interrupted restore",
            path=str(leftover),
        )


def bind(listen: Listen) -> socket.socket:
    try:
        return socket.create_server(
            (listen.host, listen.port), family=listen.family, backlog=BACKLOG
        )
    except OSError as exc:
        reason = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise RefusedByConfiguration(
            f"cannot listen on {listen.host}:{listen.port}: {reason}",
            event="startup.listen_failed",
            hint="change 'listen' in server.toml, or stop what holds that port",
            listen=f"{listen.host}:{listen.port}",
        ) from exc


def run(app, sock: socket.socket, tls: TlsMaterial | None) -> None:
    """sanic in single-process mode on our bound socket; returns after the
    drain and the listeners that close the store."""
    app.run(
        sock=sock,
        ssl=tls.context if tls else None,
        single_process=True,
        motd=False,
        access_log=False,
        backlog=BACKLOG,
    )
