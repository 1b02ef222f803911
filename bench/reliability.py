"""The fault campaign: ``kill -9`` at random moments of a backup, a restore
and a server under API write load, then the bad-input corpus
(``bench/bad_inputs.py``). Prints one table per kind and exits 1 on any
failure. Recorded in docs/reliability.md.

    python -m bench.reliability [--trials N] [--seed S] [--kinds backup,restore,server]
                                [--rows N] [--no-corpus] [--workdir DIR] [--verbose]

When to kill: two uninterrupted runs measure, on this machine, how long the
command takes to start its work (the first file it writes: a backup's hidden
temporary file, a restore's staged copy) and how long the work lasts. A
quarter of the kills land at a uniform moment of the start-up (flags, config,
lock, checks), the rest at a uniform moment up to 110% of the work after that
first file appears: the copy, the checks, the fsyncs, the publication or the
swap. The server is killed at a uniform moment up to 2 s after its first
acknowledged write. Trial ``i`` of a run with seed ``S`` draws from its own
seed ``S + i``: ``--kinds K --seed S+i --trials 1`` replays it (the same
phase and offset; not the same microsecond). A failing trial keeps its
directory under ``--workdir`` and names it.

What a trial checks after the kill:

backup   the source store still opens with every row (its WAL included) and
         passes integrity_check; the destination holds either nothing under
         a final name, or a whole backup under it with its sidecar, passing
         ``verify`` with the checksum and equal row for row to the source;
         nothing but hidden temporary files besides; the next backup works.
restore  ``restore --force`` over a store whose newest transactions live in
         its WAL: the data dir holds exactly the old state (WAL included) or
         the new one, row for row, passing integrity_check, never half; the
         next restore works and leaves only state.db and its lock.
server   a served HTTPS server taking ``POST /v1/clients`` from 4 threads
         with an admin token: after the kill it starts again on the same data
         dir (``/readyz`` 200), every write acknowledged with 201 before the
         kill is there with its audit row, no client lacks its audit row
         (nothing half-written), integrity_check passes, and it takes writes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import apsw

from bench import bad_inputs, commands, machine
from portunus import log as portunus_log

KINDS = ("backup", "restore", "server")
DEFAULT_SEED = 20261204
DEFAULT_ROWS = 9_000  # bulk rows of ~3.9 KiB: a ~35 MiB store to back up and restore
TIMEOUT_S = 120
BACKUP_TEMP_PREFIX = ".portunus-backup-"
RESTORE_STAGE_PREFIX = ".restore-"
POLL_S = 0.0005
EARLY_SHARE = 0.25  # kills during start-up; the rest during the work
LOAD_THREADS = 4
MAX_LOAD_S = 2.0  # the server is killed up to this long after its first acknowledged write

FAULT_SCHEMA = """
CREATE TABLE fault_marker (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL);
CREATE TABLE fault_rows (id INTEGER PRIMARY KEY, pad BLOB NOT NULL);
"""
FAULT_ROWS = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
INSERT INTO fault_rows (pad) SELECT randomblob(3900) FROM n
"""


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class Plan:
    """When kills of one kind land: ``early`` of them uniformly over the
    ``startup`` seconds after the process starts, the others uniformly over
    the ``work`` seconds after ``anchor`` first holds."""

    anchor: str
    startup: float
    work: float
    early: float

    def draw(self, kind: str, seed: int) -> tuple[str, float]:
        rng = random.Random(f"{kind}-{seed}")
        if rng.random() < self.early:
            return "start", rng.uniform(0.0, self.startup)
        return self.anchor, rng.uniform(0.0, self.work)

    def __str__(self) -> str:
        early = f"{self.early:.0%} in {self.startup:.2f} s of start-up, " if self.early else ""
        return f"{early}the rest in {self.work:.2f} s after {self.anchor}"


@dataclass
class Trial:
    kind: str
    seed: int
    anchor: str  # "start", or the moment the kill is timed from (the Plan's anchor)
    delay: float  # seconds after the anchor the kill was aimed at
    outcome: str = ""  # what the kill left: "absent", "published", "old", "new", "finished", ...
    problem: str = ""
    acknowledged: int = 0  # server: writes answered 201 before the kill
    directory: Path | None = None

    @property
    def passed(self) -> bool:
        return not self.problem


@dataclass
class KindResult:
    kind: str
    plan: Plan | None
    trials: list[Trial] = field(default_factory=list)

    @property
    def failures(self) -> list[Trial]:
        return [t for t in self.trials if not t.passed]


class TrialFailed(AssertionError):
    pass


def require(condition: object, problem: str) -> None:
    if not condition:
        raise TrialFailed(problem)


# ------------------------------------------------------------------ states


def content_digest(conn: apsw.Connection) -> str:
    """Every row of every table, independent of page layout and row order."""
    total = hashlib.sha256()
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]
    for table in tables:
        rows = sorted(
            hashlib.sha256(repr(row).encode()).digest()
            for row in conn.execute(f'SELECT * FROM "{table}"')
        )
        total.update(table.encode() + b"\x00" + b"".join(rows))
    return total.hexdigest()


def integrity(conn: apsw.Connection) -> str:
    return "; ".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))


def open_state(state_db: Path) -> str:
    """Content digest of a store opened as the server opens it (replaying any
    WAL); its integrity_check must pass."""
    from portunus.store.connection import open_store

    conn = open_store(state_db)
    try:
        checked = integrity(conn)
        require(checked == "ok", f"{state_db}: integrity_check says {checked}")
        return content_digest(conn)
    finally:
        conn.close()


def artefact_digest(path: Path) -> str:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return content_digest(conn)
    finally:
        conn.close()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*commands.portunus_server(), "--log-format", "json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def cli_ok(*args: str, env: dict[str, str]) -> str:
    done = cli(*args, env=env)
    require(done.returncode == 0, f"{' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


def build_store(data_dir: Path, marker: str, rows: int, env: dict[str, str]) -> str:
    """A real store (bootstrap-admin), a marker row and ``rows`` bulk rows;
    returns the admin token."""
    from portunus.store.connection import open_store

    token = cli_ok("--data-dir", str(data_dir), "bootstrap-admin", "--name", "ops", env=env)
    conn = open_store(data_dir / "state.db")
    try:
        with conn:
            conn.execute(FAULT_SCHEMA)
            conn.execute("INSERT INTO fault_marker VALUES (1, ?)", (marker,))
            conn.execute(FAULT_ROWS, (rows,))
    finally:
        conn.close()
    return token.strip()


def commit_into_wal_and_die(state_db: str, marker: str, rows: int) -> None:
    """Child process: commit ``rows`` more rows and the marker with checkpoints
    off, then die without closing, so they live only in state.db-wal (what a
    server killed mid-flight leaves)."""
    from portunus.store.connection import open_store

    conn = open_store(Path(state_db))
    conn.execute("PRAGMA wal_autocheckpoint=0")
    for start in range(0, rows, 200):
        with conn:
            conn.execute(FAULT_ROWS, (min(200, rows - start),))
    with conn:
        conn.execute("UPDATE fault_marker SET state = ? WHERE id = 1", (marker,))
    print("committed", flush=True)
    os._exit(0)


@dataclass(frozen=True)
class States:
    """Built once per run. ``old``: a data dir whose newest transactions live
    only in its WAL. ``new_artefact``: a backup (with sidecar) of another store."""

    old: Path
    old_digest: str
    new_artefact: Path
    new_digest: str

    @classmethod
    def build(cls, root: Path, rows: int, env: dict[str, str]) -> States:
        old = root / "old"
        build_store(old, "old-base", max(1, rows // 6), env)
        child = subprocess.run(
            [sys.executable, "-m", "bench.reliability", "_wal_only", str(old / "state.db"),
             "old", str(max(1, rows // 3))],
            capture_output=True, text=True, timeout=TIMEOUT_S,
        )  # fmt: skip
        require(child.stdout.strip() == "committed", f"the WAL writer failed: {child.stderr}")
        require((old / "state.db-wal").stat().st_size > 0, "the old state has no WAL")
        probe = root / "old-probe"
        shutil.copytree(old, probe)  # opening the template would fold its WAL in
        old_digest = open_state(probe / "state.db")
        shutil.rmtree(probe)
        new = root / "new"
        build_store(new, "new", rows, env)
        artefact = root / "new.db"
        cli_ok("--data-dir", str(new), "backup", "--out", str(artefact), env=env)
        new_digest = artefact_digest(artefact)
        require(new_digest != old_digest, "old and new states are the same")
        return cls(old, old_digest, artefact, new_digest)


# ------------------------------------------------------------------ killing


class Victim:
    """A ``portunus-server`` run that may be SIGKILLed at a chosen moment."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [*commands.portunus_server(), "--log-format", "json", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait_for(self, probe: Callable[[], bool]) -> float | None:
        """Seconds from the start until ``probe()`` held; None if it exited first."""
        while self.proc.poll() is None:
            if probe():
                return self.elapsed()
            time.sleep(POLL_S)
        return None

    def shoot(self, anchor: str, delay: float, probe: Callable[[], bool]) -> bool:
        """SIGKILL ``delay`` s after the start, or after ``probe`` first held;
        False when it finished first."""
        at = 0.0 if anchor == "start" else self.wait_for(probe)
        return self.kill_at(float("inf") if at is None else at + delay)

    def kill_at(self, moment: float) -> bool:
        """SIGKILL ``moment`` s after the start; False when it finished first
        (and then it must have succeeded)."""
        try:
            self.proc.wait(timeout=max(0.0, moment - self.elapsed()))
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
        _, err = self.proc.communicate(timeout=TIMEOUT_S)
        if self.proc.returncode == -signal.SIGKILL:
            return True
        require(self.proc.returncode == 0, f"exited {self.proc.returncode}: {err}")
        return False

    def duration(self) -> float:
        self.kill_at(float("inf"))
        return time.monotonic() - self.started


def measure(start: Callable[[], tuple[Victim, Callable[[], bool]]], anchor: str) -> Plan:
    """Two uninterrupted runs: when the work began (``probe`` first held) and
    when it ended; the quicker of each, so that few kills come after the end."""
    began, ended = [], []
    for _ in range(2):
        victim, probe = start()
        at = victim.wait_for(probe)
        ended.append(victim.duration())
        require(at is not None, f"the run ended before {anchor}")
        began.append(at)
    work = min(e - b for b, e in zip(began, ended, strict=True))
    return Plan(anchor, startup=min(began), work=1.1 * work, early=EARLY_SHARE)


def appears(directory: Path, prefix: str) -> Callable[[], bool]:
    """A file whose name starts with ``prefix`` exists in ``directory``."""

    def probe() -> bool:
        try:
            return any(name.startswith(prefix) for name in os.listdir(directory))
        except FileNotFoundError:
            return False

    return probe


# ------------------------------------------------------------------ backup


def backup_victim(env: dict[str, str], source: Path, out: Path) -> Victim:
    return Victim(env, "--data-dir", str(source), "backup", "--out", str(out))


def backup_left(out_dir: Path, digest: str) -> str:
    """What a killed backup left: "absent", "published", or "published without
    sidecar"; anything under a final name must be whole and verify."""
    names = sorted(os.listdir(out_dir))
    hidden = [n for n in names if n.startswith(".")]
    require(all(n.startswith(BACKUP_TEMP_PREFIX) for n in hidden), f"unexpected files: {hidden}")
    backups = [n for n in names if not n.startswith(".") and not n.endswith(".sha256")]
    sidecars = [n for n in names if n.endswith(".sha256")]
    require(len(backups) <= 1, f"more than one final name: {backups}")
    require(
        sidecars == [f"{b}.sha256" for b in backups if f"{b}.sha256" in sidecars],
        f"a sidecar without its backup: {names}",
    )
    if not backups:
        return "absent"
    check_published(out_dir / backups[0], digest, sidecar_required=False)
    return "published" if sidecars else "published without sidecar"


def check_published(final: Path, digest: str, *, sidecar_required: bool = True) -> None:
    """A backup under its final name: standalone, passing ``verify`` (with its
    sidecar's checksum), row for row the source."""
    from portunus.engine import verify
    from portunus.store.sqlitefile import uses_wal_format

    require(not uses_wal_format(final), f"{final.name} needs a -wal")
    try:
        checked = verify.verify(final)
    except Exception as exc:
        raise TrialFailed(f"{final.name} fails verify: {exc}") from exc
    if sidecar_required:
        require(checked.checksum == "ok", f"{final.name} has no sidecar")
    require(artefact_digest(final) == digest, f"{final.name} differs from the source")


def backup_trial(ctx: Context, trial: Trial) -> None:
    source = ctx.fresh_old(trial.directory / "data")
    out_dir = trial.directory / "out"
    out_dir.mkdir()
    # Every other trial names a file, the rest a directory (a generated name).
    out = out_dir / "b.db" if trial.seed % 2 else out_dir
    digest = ctx.states.old_digest
    victim = backup_victim(ctx.env, source, out)
    killed = victim.shoot(trial.anchor, trial.delay, appears(out_dir, BACKUP_TEMP_PREFIX))
    left = backup_left(out_dir, digest)
    require(killed or left == "published", f"finished, but left {left}")
    trial.outcome = left if killed else "finished"
    require(open_state(source / "state.db") == digest, "the source changed")
    # The next backup into the same directory works beside the leftovers;
    # after it, every backup there has its sidecar (a kill between a backup
    # and its sidecar must not leave a final name without one for good).
    path = cli_ok("--data-dir", str(source), "backup", "--out", str(out_dir), env=ctx.env)
    check_published(Path(path.strip()), digest)
    for name in os.listdir(out_dir):
        if not name.startswith(".") and not name.endswith(".sha256"):
            check_published(out_dir / name, digest)


def backup_plan(ctx: Context) -> Plan:
    root = ctx.workdir / "backup-measure"

    def start() -> tuple[Victim, Callable[[], bool]]:
        shutil.rmtree(root, ignore_errors=True)
        source = ctx.fresh_old(root / "data")
        (root / "out").mkdir()
        victim = backup_victim(ctx.env, source, root / "out")
        return victim, appears(root / "out", BACKUP_TEMP_PREFIX)

    plan = measure(start, "its temporary file appeared")
    shutil.rmtree(root)
    return plan


# ------------------------------------------------------------------ restore


def restore_victim(env: dict[str, str], data_dir: Path, artefact: Path) -> Victim:
    return Victim(env, "--data-dir", str(data_dir), "restore", "--in", str(artefact), "--force")


def restore_left(data_dir: Path, old: str, new: str) -> str:
    """What a killed restore left: "old" or "new", whole; never half."""
    names = set(os.listdir(data_dir))
    strays = names - {"state.db", "state.db-wal", "state.db-shm", "state.db.lock"}
    require(all(n.startswith(".restore-") for n in strays), f"unexpected files: {sorted(strays)}")
    require("state.db" in names, "state.db is gone: neither the old state nor the new")
    digest = open_state(data_dir / "state.db")
    require(digest in (old, new), "a half state: neither the old rows nor the new")
    return "new" if digest == new else "old"


def restore_trial(ctx: Context, trial: Trial) -> None:
    data_dir = ctx.fresh_old(trial.directory / "data")
    states = ctx.states
    victim = restore_victim(ctx.env, data_dir, states.new_artefact)
    killed = victim.shoot(trial.anchor, trial.delay, appears(data_dir, RESTORE_STAGE_PREFIX))
    left = restore_left(data_dir, states.old_digest, states.new_digest)
    require(killed or left == "new", "finished without the new state")
    trial.outcome = left if killed else "finished"
    # The next restore works and sweeps what the kill left.
    restore_victim(ctx.env, data_dir, states.new_artefact).duration()
    require(
        sorted(os.listdir(data_dir)) == ["state.db", "state.db.lock"],
        f"after the next restore: {sorted(os.listdir(data_dir))}",
    )
    require(open_state(data_dir / "state.db") == states.new_digest, "next restore: not new")


def restore_plan(ctx: Context) -> Plan:
    data_dir = ctx.workdir / "restore-measure"

    def start() -> tuple[Victim, Callable[[], bool]]:
        shutil.rmtree(data_dir, ignore_errors=True)
        ctx.fresh_old(data_dir)
        victim = restore_victim(ctx.env, data_dir, ctx.states.new_artefact)
        return victim, appears(data_dir, RESTORE_STAGE_PREFIX)

    plan = measure(start, "its staged copy appeared")
    shutil.rmtree(data_dir)
    return plan


# ------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``portunus-server serve`` on a loopback port, restarted after each kill."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.data_dir = root / "data"
        self.token = cli_ok(
            "--data-dir", str(self.data_dir), "bootstrap-admin", "--name", "load", env=env
        ).strip()
        self.port = free_port()
        self.config = root / "server.toml"
        self.config.write_text(f'listen = "127.0.0.1:{self.port}"\n')
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.acknowledged: set[str] = set()  # every write answered 201, over all trials

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        self.log = self.root / f"serve-{self.starts}.log"
        with open(self.log, "w") as stderr:
            self.proc = subprocess.Popen(
                [*commands.portunus_server(), "--log-format", "json", "--data-dir",
                 str(self.data_dir), "--config", str(self.config), "serve"],
                stdout=subprocess.DEVNULL, stderr=stderr, env=self.env,
            )  # fmt: skip
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if '"server.listening"' in self.log.read_text():
                return
            if self.proc.poll() is not None:
                raise TrialFailed(f"serve exited {self.proc.returncode}: {self.log.read_text()}")
            time.sleep(0.05)
        raise TrialFailed(f"no server.listening within {TIMEOUT_S}s")

    def client(self):
        import httpx

        context = ssl.create_default_context(cafile=str(self.data_dir / "server.crt"))
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.url, verify=context, headers=headers, timeout=30.0)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=TIMEOUT_S)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=TIMEOUT_S)


class Load:
    """Threads creating clients over the API; a name is acknowledged on 201."""

    def __init__(self, served: Served, trial: int) -> None:
        self.acked: list[str] = []
        self.unexpected: list[str] = []
        self.first_ack = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._write, args=(served, f"k{trial}-{t}"), daemon=True)
            for t in range(LOAD_THREADS)
        ]
        for thread in self.threads:
            thread.start()

    def _write(self, served: Served, prefix: str) -> None:
        import httpx

        with served.client() as client:
            for n in range(10**9):
                name = f"{prefix}-{n}"
                try:
                    response = client.post("/v1/clients", json={"name": name})
                except httpx.HTTPError:
                    return  # the server is gone: this write was never acknowledged
                if response.status_code != 201:
                    with self.lock:
                        self.unexpected.append(f"{response.status_code} {response.text[:200]}")
                    return
                with self.lock:
                    self.acked.append(name)
                self.first_ack.set()

    def wait_for_first_ack(self) -> bool:
        """True once a write was acknowledged; False if every writer gave up first."""
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if self.first_ack.wait(0.05):
                return True
            if not any(thread.is_alive() for thread in self.threads):
                return self.first_ack.is_set()
        return False

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=TIMEOUT_S)


def server_state(served: Served) -> tuple[set[str], list[str], str]:
    """(client names, clients without their audit row, integrity_check) read
    beside the running server through a read-only connection."""
    conn = apsw.Connection(str(served.data_dir / "state.db"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.setbusytimeout(5000)
        names = {r[0] for r in conn.execute("SELECT name FROM clients")}
        # Set arithmetic, not a correlated query: audit_log has no index on resource.
        audited = {
            r[0]
            for r in conn.execute("SELECT resource FROM audit_log WHERE action = 'client.create'")
        }
        orphans = sorted(n for n in names if f"client:{n}" not in audited)
        return names, orphans, integrity(conn)
    finally:
        conn.close()


def server_trial(ctx: Context, trial: Trial) -> None:
    served = ctx.served
    if not served.running():  # an earlier trial failed to restart it
        served.start()
    load = Load(served, trial.seed)
    try:
        require(load.wait_for_first_ack(), f"no write acknowledged: {load.unexpected}")
        time.sleep(trial.delay)
    finally:
        served.kill()
        load.join()
    require(not load.unexpected, f"writes refused under load: {load.unexpected[:3]}")
    trial.acknowledged = len(load.acked)
    served.acknowledged.update(load.acked)
    served.start()
    with served.client() as client:
        ready = client.get("/readyz")
        require(ready.status_code == 200, f"/readyz after the restart: {ready.status_code}")
        names, orphans, checked = server_state(served)
        require(checked == "ok", f"integrity_check: {checked}")
        lost = served.acknowledged - names
        require(not lost, f"{len(lost)} acknowledged writes lost, e.g. {sorted(lost)[:3]}")
        require(not orphans, f"clients without their audit row: {orphans[:3]}")
        after = client.post("/v1/clients", json={"name": f"after-{trial.seed}"})
        require(after.status_code == 201, f"a write after the restart: {after.status_code}")
    trial.outcome = "restarted, all present"


def server_plan(ctx: Context) -> Plan:
    ctx.served = Served(ctx.workdir / "server", ctx.env)
    ctx.served.start()
    return Plan("the first 201", startup=0.0, work=MAX_LOAD_S, early=0.0)


def server_finish(ctx: Context, result: KindResult) -> None:
    """A clean stop after the last trial: exit 0."""
    if ctx.served is None:
        return
    code = ctx.served.stop()
    if code != 0 and result.trials:
        result.trials[-1].problem = result.trials[-1].problem or f"the final stop exited {code}"


# ------------------------------------------------------------------ a run


@dataclass
class Context:
    workdir: Path
    env: dict[str, str]
    rows: int
    _states: States | None = None
    served: Served | None = None

    @property
    def states(self) -> States:
        if self._states is None:
            self._states = States.build(self.workdir / "states", self.rows, self.env)
        return self._states

    def fresh_old(self, target: Path) -> Path:
        shutil.copytree(self.states.old, target)
        return target


RUNNERS: dict[str, tuple[Callable, Callable]] = {
    "backup": (backup_plan, backup_trial),
    "restore": (restore_plan, restore_trial),
    "server": (server_plan, server_trial),
}


def run_kind(ctx: Context, kind: str, trials: int, seed: int, log=print) -> KindResult:
    """``trials`` kills of one kind; one line per trial (seed, moment, outcome)."""
    make_plan, run_trial = RUNNERS[kind]
    plan = make_plan(ctx) if trials else None
    result = KindResult(kind, plan)
    try:
        for i in range(trials):
            trial = Trial(kind, seed + i, *plan.draw(kind, seed + i))
            trial.directory = ctx.workdir / f"{kind}-{trial.seed}"
            trial.directory.mkdir(parents=True)
            try:
                run_trial(ctx, trial)
            except TrialFailed as exc:
                trial.problem = str(exc)
            except Exception as exc:  # a harness error is a failed trial too, never a lost one
                trial.problem = f"{type(exc).__name__}: {exc}"
            result.trials.append(trial)
            log(trial_line(trial))
            if trial.passed:
                shutil.rmtree(trial.directory)
    finally:
        if kind == "server":
            server_finish(ctx, result)
    return result


def trial_line(trial: Trial) -> str:
    writes = f" acknowledged={trial.acknowledged}" if trial.kind == "server" else ""
    verdict = "ok" if trial.passed else f"FAILED: {trial.problem} (kept {trial.directory})"
    return (
        f'{trial.kind} seed={trial.seed} kill="{trial.delay:.3f}s after {trial.anchor}" '
        f"outcome={trial.outcome or '-'}{writes} {verdict}"
    )


def kind_table(results: list[KindResult], seed: int) -> str:
    lines = [
        f"## kill -9 trials (seed {seed})",
        "",
        "| kind | trials | passed | failed | when the kills landed | what the kills left |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        outcomes = Counter(t.outcome for t in r.trials if t.outcome)
        left = ", ".join(f"{name} {n}" for name, n in sorted(outcomes.items()))
        if r.kind == "server":
            left += f"; {sum(t.acknowledged for t in r.trials)} acknowledged writes"
        lines.append(
            f"| {r.kind} | {len(r.trials)} | {len(r.trials) - len(r.failures)} | "
            f"{len(r.failures)} | {r.plan or '-'} | {left} |"
        )
    failures = [t for r in results for t in r.failures]
    if failures:
        lines += ["", "| failed trial (replay: --kinds K --seed S --trials 1) | problem |"]
        lines += ["| --- | --- |"]
        lines += [
            f"| {t.kind} seed {t.seed}, kill {t.delay:.3f} s after {t.anchor} | {t.problem} |"
            for t in failures
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_wal_only"]:
        commit_into_wal_and_die(argv[1], argv[2], int(argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="kills per kind (default 10)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="bulk rows (~3.9 KiB)")
    parser.add_argument("--no-corpus", action="store_true", help="skip the bad-input corpus")
    parser.add_argument("--corpus", type=Path, default=bad_inputs.CORPUS)
    parser.add_argument("--workdir", type=Path, help="default: a temp dir on the disk")
    parser.add_argument("--verbose", action="store_true", help="one line per corpus row")
    args = parser.parse_args(argv)
    # verify() runs in-process: its events are not this report.
    portunus_log.configure("json", "critical", stream=io.StringIO())
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    workdir = Path(tempfile.mkdtemp(prefix="portunus-reliability-", dir=args.workdir))
    ctx = Context(workdir, bad_inputs.sandbox_env(workdir / "home"), args.rows)
    (workdir / "home").mkdir()
    started = time.monotonic()
    results = [run_kind(ctx, kind, args.trials, args.seed) for kind in kinds]
    failed = sum(len(r.failures) for r in results)
    if results:
        print(kind_table(results, args.seed), end="\n\n")
    if not args.no_corpus:
        corpus_started = time.monotonic()
        rows = bad_inputs.load(args.corpus)
        outcomes = bad_inputs.run_corpus(workdir / "corpus", rows=rows)
        if args.verbose:
            for o in outcomes:
                print(f"{'ok' if o.passed else 'FAILED'} {o.code} {o.row.name} {o.problems}")
        print(bad_inputs.table(outcomes, time.monotonic() - corpus_started), end="\n\n")
        failed += sum(not o.passed for o in outcomes)
    about = machine.describe(workdir)
    print(
        f"machine: nproc {about['nproc']}, {about['cpu']}, kernel {about['kernel']}, "
        f"{about['filesystem']}, SQLite {about['apsw_sqlite']}, load {about['load_average_1m']}; "
        f"{time.monotonic() - started:.0f} s"
    )
    if failed:
        print(f"{failed} failed; their directories are kept under {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
