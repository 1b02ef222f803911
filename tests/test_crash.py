"""kill -9 during restore and backup, at many seeded random moments: the data
dir is always exactly the old or the new state, and nothing incomplete ever
sits under a backup's final name."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import apsw
import pytest

from bench import reliability
from bench.reliability import artefact_digest, content_digest
from portunus import testpoints
from portunus.datadir import DataDir
from portunus.engine import restore as restore_engine
from portunus.engine import verify as verify_engine
from portunus.engine.checksum import sidecar_path
from portunus.store.connection import open_store
from portunus.store.sqlitefile import uses_wal_format
from tests import support, writer
from tests.support import parse_events

pytestmark = pytest.mark.slow

# Override to replay or vary a run; every failure message names the seed.
SEED = int(os.environ.get("PORTUNUS_CRASH_SEED", "20261127"))
NEW_ROWS = 9_000  # ~35 MiB: the restored artefact and the backup source
OLD_ROWS = 1_500  # ~6 MiB in the old state.db ...
OLD_WAL_ROWS = 2_500  # ... and ~10 MiB more that live only in its WAL
# Kills per test: a few timed from the start (start-up, locking, checks), the
# rest timed from the moment the operation's own first file appears.
EARLY_KILLS = 2
RESTORE_KILLS = 12
SWAP_KILLS = 10
EMPTY_DIR_KILLS = 8
BACKUP_KILLS = 16
PUBLISH_KILLS = 7
POLL_S = 0.0005
CLI_TIMEOUT_S = 60
BACKUP_TEMP = re.compile(r"^\.portunus-backup-[0-9a-f]+\.tmp$")
# A killed backup may leave its temp file and the SQLite sidecars of that temp.
BACKUP_LEFTOVER = re.compile(r"^\.portunus-backup-[0-9a-f]+\.tmp(-journal|-wal|-shm)?$")


# --- the states ---------------------------------------------------------------


def build_store(data_dir: DataDir, marker: str, rows: int) -> DataDir:
    """A real Portunus store with a marker row and ``rows`` bulk rows."""
    support.make_store(data_dir)
    conn = open_store(data_dir.state_db)
    try:
        with conn:
            conn.execute(writer.CRASH_SCHEMA)
            conn.execute("INSERT INTO crash_marker VALUES (1, ?)", (marker,))
            conn.execute(writer.CRASH_ROWS, (rows,))
    finally:
        conn.close()
    return data_dir


def open_state(state_db: Path) -> tuple[str, str]:
    """(marker, content digest) of a store opened the way the server opens
    it, replaying any WAL; integrity_check must pass."""
    conn = open_store(state_db)
    try:
        assert [r[0] for r in conn.execute("PRAGMA integrity_check")] == ["ok"], state_db
        marker = conn.execute("SELECT state FROM crash_marker").fetchall()[0][0]
        return marker, content_digest(conn)
    finally:
        conn.close()


def read_marker(state_db: Path) -> str:
    """The marker row of a standalone (rollback-journal) store, read-only."""
    conn = apsw.Connection(str(state_db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT state FROM crash_marker").fetchall()[0][0]
    finally:
        conn.close()


def copy_data_dir(source: DataDir, target: Path) -> DataDir:
    shutil.copytree(source.path, target)
    return DataDir(target)


@dataclass(frozen=True)
class OldState:
    template: DataDir  # state.db + a WAL that holds the newest transactions
    digest: str


@dataclass(frozen=True)
class NewState:
    source: DataDir  # the store backed up (and the backup kill test's source)
    artefact: Path  # its backup, with a .sha256 sidecar
    digest: str


@pytest.fixture(scope="module")
def crash_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return support.clean_env(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def old_state(tmp_path_factory: pytest.TempPathFactory) -> OldState:
    """A store whose last transactions (marker "old") exist only in its WAL,
    left behind by a writer that died without a checkpoint."""
    root = tmp_path_factory.mktemp("old")
    template = build_store(DataDir(root / "data"), "old-base", OLD_ROWS)
    done = subprocess.run(
        [
            sys.executable,
            writer.__file__,
            "wal-only",
            str(template.state_db),
            "old",
            str(OLD_WAL_ROWS),
        ],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert done.stdout.strip() == "committed", done.stderr
    assert template.wal.stat().st_size > OLD_WAL_ROWS * 3_900
    # Without its WAL the file is a different, older state: losing the WAL
    # would be caught as "neither old nor new".
    bare = root / "bare"
    bare.mkdir()
    shutil.copy(template.state_db, bare / "state.db")
    assert open_state(bare / "state.db")[0] == "old-base"
    # Opening the template itself would checkpoint its WAL away: use a copy.
    marker, digest = open_state(copy_data_dir(template, root / "probe").state_db)
    assert marker == "old"
    return OldState(template, digest)


@pytest.fixture(scope="module")
def new_state(tmp_path_factory: pytest.TempPathFactory, crash_env) -> NewState:
    root = tmp_path_factory.mktemp("new")
    source = build_store(DataDir(root / "data"), "new", NEW_ROWS)
    artefact = root / "new.db"
    run = support.run_cli(
        "--data-dir", str(source.path), "backup", "--out", str(artefact), env=crash_env
    )
    assert run.code == 0, run.err
    marker, digest = open_state(source.state_db)
    assert marker == "new"
    assert artefact_digest(artefact) == digest
    return NewState(source, artefact, digest)


# --- killing ------------------------------------------------------------------

# A condition on the running process (given its pid), and a factory building
# one for the directory a run works in.
Probe = Callable[[int], bool]
ProbeFor = Callable[[Path], Probe]


@dataclass(frozen=True)
class Shot:
    """SIGKILL ``offset`` seconds after ``anchor`` first holds (after the start when None)."""

    anchor: ProbeFor | None
    offset: float

    def __str__(self) -> str:
        after = self.anchor.__name__ if self.anchor else "start"
        return f"kill {self.offset:.3f}s after {after}"


class Victim(reliability.Victim):
    """A ``portunus-server`` run the test may SIGKILL at a moment of its
    choosing: the reliability benchmark's, its probes given the pid."""

    def wait_for(self, probe: Probe) -> float | None:
        """Seconds from start until ``probe(pid)`` held; None if it exited first."""
        return super().wait_for(lambda: probe(self.proc.pid))

    def finish(self) -> float:
        """Let it run to a successful end; its duration."""
        assert not self.kill_at(float("inf"))
        return self.elapsed()

    def shoot(self, shot: Shot, directory: Path) -> bool:
        """Carry out ``shot`` against a run in ``directory``; True when it killed."""
        anchored = 0.0 if shot.anchor is None else self.wait_for(shot.anchor(directory))
        if anchored is None:
            return self.kill_at(float("inf"))
        return self.kill_at(anchored + shot.offset)


def measure(start: Callable[[], Victim], *probes: Probe) -> list[float]:
    """Uninterrupted runs: when each probe first held (in order), then the
    duration, in seconds from the start; the quicker of two runs, so that
    kills spread over the measured windows rarely come after the end."""
    runs = []
    for _ in range(2):
        victim = start()
        seen = [victim.wait_for(probe) for probe in probes]
        runs.append([*seen, victim.finish()])
        assert None not in seen, f"the run ended before every phase was seen: {seen}"
    return [min(times) for times in zip(*runs, strict=True)]


def plan(rng: random.Random, count: int, anchor: ProbeFor | None, window: float) -> list[Shot]:
    """``count`` shots at seeded random offsets spread over ``window`` after ``anchor``."""
    return [Shot(anchor, rng.uniform(0.0, window)) for _ in range(count)]


def holds_open(pid: int, path: Path) -> bool:
    """True while process ``pid`` has ``path`` open."""
    target = os.path.realpath(path)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def count_prefixed(directory: Path, prefix: str) -> int:
    try:
        return sum(name.startswith(prefix) for name in os.listdir(directory))
    except FileNotFoundError:
        return 0


# --- restore ------------------------------------------------------------------


def restore_victim(env, data_dir: DataDir, artefact: Path, force: bool) -> Victim:
    args = ["--data-dir", str(data_dir.path), "restore", "--in", str(artefact)]
    return Victim(env, *args, *(["--force"] if force else []))


def staged(directory: Path) -> Probe:
    """The restore's staged copy exists in the data dir."""
    return lambda _pid: count_prefixed(directory, ".restore-") > 0


def swapping(directory: Path) -> Probe:
    """The restore has opened the previous state.db: its checkpoint, then the swap."""
    return lambda pid: holds_open(pid, directory / "state.db")


def wal_folded(directory: Path) -> Probe:
    """The previous state's WAL was checkpointed and removed."""
    return lambda _pid: not (directory / "state.db-wal").exists()


def state_after_kill(data_dir: DataDir, old: str | None, new: str, note: str) -> str:
    """What a killed restore left: the old state (its WAL still pending, or
    folded in), the new one, or none when there was none before. A half state,
    or any stray file but a staged copy, fails."""
    names = set(os.listdir(data_dir.path)) if data_dir.path.exists() else set()
    strays = names - {"state.db", "state.db-wal", "state.db-shm", "state.db.lock"}
    assert all(n.startswith(".restore-") for n in strays), (strays, note)
    if "state.db" not in names:
        assert old is None, f"state.db is gone: neither the old state nor the new {note}"
        assert not names & {"state.db-wal", "state.db-shm"}, (names, note)
        return "absent"
    wal_pending = data_dir.wal.exists() and data_dir.wal.stat().st_size > 0
    marker, digest = open_state(data_dir.state_db)
    assert digest in (old, new), f"half state: marker {marker!r}, neither old nor new {note}"
    if digest == new:
        return "new"
    return "old, WAL pending" if wal_pending else "old, WAL folded in"


def assert_next_restore_cleans_up(
    env, data_dir: DataDir, new_state: NewState, note: str, via_cli: bool
) -> None:
    """A normal restore after the kill succeeds and sweeps what the kill left
    (through the CLI, or the same engine in-process to keep the test quick)."""
    force = data_dir.state_db.exists()
    if via_cli:
        restore_victim(env, data_dir, new_state.artefact, force).finish()
    else:
        restore_engine.restore(data_dir, new_state.artefact, force=force)
    assert sorted(os.listdir(data_dir.path)) == ["state.db", "state.db.lock"], note
    assert read_marker(data_dir.state_db) == "new", note


@dataclass
class RestoreKills:
    """Runs restores into fresh data dirs, kills each, and checks what is left."""

    root: Path
    env: dict[str, str]
    new_state: NewState
    old_state: OldState | None  # None: restore into an empty data dir
    seed: int
    outcomes: Counter = field(default_factory=Counter)
    staged_copies_left: int = 0  # kills that landed mid-restore

    def fresh_data_dir(self, name: str, empty_exists: bool = False) -> DataDir:
        if self.old_state is not None:
            return copy_data_dir(self.old_state.template, self.root / name)
        data_dir = DataDir(self.root / name)
        if empty_exists:
            data_dir.ensure()
        return data_dir

    def timing(self, *phases: ProbeFor) -> list[float]:
        """When each phase began, then the end: seconds into an uninterrupted restore."""
        data_dir = DataDir(self.root / "measure")

        def start() -> Victim:
            shutil.rmtree(data_dir.path, ignore_errors=True)
            self.fresh_data_dir("measure")
            return restore_victim(self.env, data_dir, self.new_state.artefact, force=True)

        return measure(start, *(phase(data_dir.path) for phase in phases))

    def run(self, shot: Shot, via_cli: bool = False) -> str:
        i = self.outcomes.total()
        note = f"(run {i}, seed {self.seed}, {shot})"
        data_dir = self.fresh_data_dir(f"run-{i}", empty_exists=bool(i % 2))
        force = self.old_state is not None
        victim = restore_victim(self.env, data_dir, self.new_state.artefact, force)
        killed = victim.shoot(shot, data_dir.path)
        old = self.old_state.digest if self.old_state else None
        outcome = state_after_kill(data_dir, old, self.new_state.digest, note)
        if not killed:
            assert outcome == "new", note
            outcome = "finished"
        self.outcomes[outcome] += 1
        self.staged_copies_left += count_prefixed(data_dir.path, ".restore-") > 0
        if data_dir.path.exists():
            assert_next_restore_cleans_up(self.env, data_dir, self.new_state, note, via_cli)
            shutil.rmtree(data_dir.path)
        return outcome


def test_restore_force_killed_at_random_moments_leaves_exactly_old_or_new_state(
    tmp_path: Path, crash_env, old_state: OldState, new_state: NewState
):
    """kill -9 anywhere in restore --force: the old state (its WAL included) or the new one."""
    rng = random.Random(SEED)
    kills = RestoreKills(tmp_path, crash_env, new_state, old_state, SEED)
    working, total = kills.timing(staged)
    shots = plan(rng, EARLY_KILLS, None, working) + plan(
        rng, RESTORE_KILLS, staged, total - working
    )
    for i, shot in enumerate(shots):
        kills.run(shot, via_cli=i == len(shots) - 1)
    assert kills.staged_copies_left > 0, f"no kill landed mid-restore: {kills.outcomes}"


def test_restore_force_killed_during_the_swap_keeps_the_old_wal_transactions(
    tmp_path: Path, crash_env, old_state: OldState, new_state: NewState
):
    """kill -9 once restore has opened the old store to checkpoint and replace it: the old
    state with every transaction of its WAL, or the new one."""
    rng = random.Random(SEED + 1)
    kills = RestoreKills(tmp_path, crash_env, new_state, old_state, SEED + 1)
    swap, folded, _total = kills.timing(swapping, wal_folded)
    checkpoint = folded - swap
    # Half the kills early in the checkpoint of the old WAL, the other half
    # spread from its end to well past the rename.
    shots = plan(rng, SWAP_KILLS // 2, swapping, checkpoint / 2) + [
        Shot(swapping, checkpoint / 2 + shot.offset)
        for shot in plan(rng, SWAP_KILLS - SWAP_KILLS // 2, swapping, 1.5 * checkpoint)
    ]
    for i, shot in enumerate(shots):
        kills.run(shot, via_cli=i == 0)
    old = kills.outcomes["old, WAL pending"] + kills.outcomes["old, WAL folded in"]
    assert old >= 2, f"too few kills caught the old state mid-swap: {kills.outcomes}"


def test_restore_into_empty_data_dir_killed_leaves_no_state_or_the_new_one(
    tmp_path: Path, crash_env, new_state: NewState
):
    """kill -9 during a restore into an empty (or missing) data dir: no state.db, or the new
    one; the next restore needs no --force."""
    rng = random.Random(SEED + 2)
    kills = RestoreKills(tmp_path, crash_env, new_state, None, SEED + 2)
    working, total = kills.timing(staged)
    shots = plan(rng, EARLY_KILLS, None, working) + plan(
        rng, EMPTY_DIR_KILLS - EARLY_KILLS, staged, total - working
    )
    for i, shot in enumerate(shots):
        kills.run(shot, via_cli=i == len(shots) - 1)
    assert kills.staged_copies_left > 0, f"no kill landed mid-restore: {kills.outcomes}"


# --- backup -------------------------------------------------------------------


def backup_victim(env, source: DataDir, out: Path) -> Victim:
    return Victim(env, "--data-dir", str(source.path), "backup", "--out", str(out))


def copying(out_dir: Path) -> Probe:
    """The backup's temporary copy exists."""
    return lambda _pid: count_prefixed(out_dir, ".portunus-backup-") > 0


def publishing(out_dir: Path) -> Probe:
    """Publication began: a final name exists, or the sidecar's temp beside the copy's."""

    def probe(_pid: int) -> bool:
        names = os.listdir(out_dir)
        temps = sum(bool(BACKUP_TEMP.match(n)) for n in names)
        return temps >= 2 or any(not n.startswith(".") for n in names)

    return probe


def backup_after_kill(out_dir: Path, digest: str, note: str) -> str:
    """What a killed backup left: "absent", "sidecar only" (killed between
    publishing the sidecar and the backup) or "published"; whatever carries a
    final name must be whole and valid, and a backup never lacks its sidecar."""
    names = os.listdir(out_dir)
    leftovers = [n for n in names if n.startswith(".")]
    assert all(BACKUP_LEFTOVER.match(n) for n in leftovers), (leftovers, note)
    published = [out_dir / n for n in names if not n.startswith(".") and n.endswith(".db")]
    sidecars = [n for n in names if n.endswith(".sha256")]
    assert len(published) <= 1 and len(sidecars) <= 1, (names, note)
    assert len(leftovers) + len(published) + len(sidecars) == len(names), (names, note)
    if not published:
        return "sidecar only" if sidecars else "absent"
    final = published[0]
    assert not uses_wal_format(final), f"{final} needs a -wal {note}"
    # Header, the sidecar's checksum when there is one, integrity_check.
    checked = verify_engine.verify(final)
    assert artefact_digest(final) == digest, f"{final} differs from the source {note}"
    assert sidecars == [sidecar_path(final).name], f"a backup without its sidecar {note}"
    assert checked.checksum == "ok", note
    return "published"


def test_backup_killed_at_random_moments_never_leaves_a_partial_file_under_its_final_name(
    tmp_path: Path, crash_env, new_state: NewState
):
    """kill -9 anywhere in backup: the final name is absent or whole; temps stay hidden."""
    rng = random.Random(SEED + 3)
    source = new_state.source
    probe = tmp_path / "measure"
    probe.mkdir()

    def start() -> Victim:
        for name in os.listdir(probe):
            os.unlink(probe / name)
        return backup_victim(crash_env, source, probe / "b.db")

    working, publish, total = measure(start, copying(probe), publishing(probe))
    # Most kills during the copy and its checks; the rest soon after
    # publication began, where the final name and the sidecar appear.
    shots = (
        plan(rng, EARLY_KILLS, None, working)
        + plan(rng, BACKUP_KILLS, copying, 1.1 * (publish - working))
        + plan(rng, PUBLISH_KILLS, publishing, (total - publish) / 3)
    )
    outcomes: Counter = Counter()
    for i, shot in enumerate(shots):
        out_dir = tmp_path / f"out-{i}"
        out_dir.mkdir()
        # Every other run backs up into the directory, under a generated name.
        out = out_dir if i % 2 else out_dir / "backup.db"
        killed = backup_victim(crash_env, source, out).shoot(shot, out_dir)
        outcome = backup_after_kill(
            out_dir, new_state.digest, f"(run {i}, seed {SEED + 3}, {shot})"
        )
        outcomes[outcome if killed else "finished"] += 1
        if i < len(shots) - 1:
            shutil.rmtree(out_dir)  # 47 MiB each; the last run's leftovers stay
    # The source is undamaged, and a normal backup still works beside the
    # last run's leftovers.
    assert open_state(source.state_db) == ("new", new_state.digest)
    run = support.run_cli(
        "--data-dir", str(source.path), "backup", "--out", str(out_dir), env=crash_env
    )
    assert run.code == 0, run.err
    assert artefact_digest(Path(run.out.strip())) == new_state.digest
    assert outcomes["absent"] > 0, f"no kill landed mid-backup: {outcomes}"


def test_the_next_backup_sweeps_what_a_killed_one_left(
    tmp_path: Path, crash_env, new_state: NewState
):
    """kill -9 mid-copy leaves a hidden temporary file; once it is a minute old
    (aged here) the next backup into that directory removes it and says so."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    killed = backup_victim(crash_env, new_state.source, out_dir).shoot(Shot(copying, 0.0), out_dir)
    assert killed, "the backup finished before the kill"
    left = sorted(n for n in os.listdir(out_dir) if n.startswith("."))
    assert left and all(BACKUP_LEFTOVER.match(n) for n in left), left
    old = time.time() - 3600
    for name in left:
        os.utime(out_dir / name, (old, old))

    run = support.run_cli(
        "--data-dir",
        str(new_state.source.path),
        "backup",
        "--out",
        str(out_dir),
        env=crash_env,
    )
    assert run.code == 0, run.err
    assert [n for n in os.listdir(out_dir) if n.startswith(".")] == []
    swept = [e for e in parse_events(run.err) if e["event"] == "backup.stale_temp_removed"]
    assert [Path(e["path"]).name for e in swept] == [n for n in left if n.endswith(".tmp")]
    assert artefact_digest(Path(run.out.strip())) == new_state.digest


# Attempts at catching a backup before it publishes; each one lands there
# unless the backup is already past its copy and checks (~0.1 s at least).
SIGNAL_ATTEMPTS = 5


def stopped(pid: int) -> bool:
    """True once process ``pid`` is stopped (state T in /proc/PID/stat)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("T", "t")


def stop_a_backup_mid_copy(env, source: DataDir, out: Path, sig: int) -> support.Run:
    """A backup that receives ``sig`` while it runs and before it publishes.

    The backup is frozen (SIGSTOP) once its temp file exists; if nothing is
    published yet, ``sig`` is queued and the backup resumed, so the signal
    reaches a backup that has not finished, whatever the machine's load. An
    attempt frozen too late (already published) is thrown away and retried:
    a backup that ignores the signal exits 0 every time and fails the test."""
    for _ in range(SIGNAL_ATTEMPTS):
        victim = backup_victim(env, source, out)
        try:
            signalled = signal_before_publication(victim, out, sig)
            _, err = victim.proc.communicate(timeout=CLI_TIMEOUT_S)
        finally:
            if victim.proc.poll() is None:  # a failure above: never leave it frozen
                victim.proc.kill()
                victim.proc.wait()
        if signalled:
            return support.Run(victim.proc.returncode, "", err)
        assert victim.proc.returncode == 0, err
        for name in os.listdir(out):
            os.unlink(out / name)
    raise AssertionError(f"{SIGNAL_ATTEMPTS} backups all published before they could be frozen")


def signal_before_publication(victim: Victim, out: Path, sig: int) -> bool:
    """Freeze the backup once its temp file exists; send ``sig`` if it has
    published nothing yet; resume it. Whether the signal was sent."""
    assert victim.wait_for(copying(out)) is not None, "the backup ended before its copy"
    os.kill(victim.proc.pid, signal.SIGSTOP)
    while not stopped(victim.proc.pid):
        time.sleep(POLL_S)
    signalled = not [n for n in os.listdir(out) if not n.startswith(".")]
    if signalled:
        os.kill(victim.proc.pid, sig)
    os.kill(victim.proc.pid, signal.SIGCONT)
    return signalled


def assert_stopped_cleanly(stopped: support.Run, out: Path, sig: int) -> None:
    """No temp file left, nothing published, one backup.failed naming the signal."""
    assert os.listdir(out) == [], stopped.err
    failed = [e for e in stopped.events if e["event"] == "backup.failed"]
    assert [(e["reason"], e["signal"], e["exit_code"]) for e in failed] == [
        ("interrupted", signal.Signals(sig).name, 128 + sig)
    ], stopped.err


def test_a_backup_stopped_by_sigterm_cleans_up_and_exits_143(
    tmp_path: Path, crash_env, new_state: NewState
):
    """systemd stopping the backup unit mid-copy: no temp file left, nothing
    published, backup.failed reason=interrupted, exit 128 + 15."""
    out = tmp_path / "out"
    out.mkdir()
    run = stop_a_backup_mid_copy(crash_env, new_state.source, out, signal.SIGTERM)
    assert run.code == 143, run.err
    assert_stopped_cleanly(run, out, signal.SIGTERM)


def test_a_backup_interrupted_by_ctrl_c_cleans_up_and_exits_130(
    tmp_path: Path, crash_env, new_state: NewState
):
    """Ctrl-C mid-copy: the same clean-up, exit 128 + 2."""
    out = tmp_path / "out"
    out.mkdir()
    run = stop_a_backup_mid_copy(crash_env, new_state.source, out, signal.SIGINT)
    assert run.code == 130, run.err
    assert_stopped_cleanly(run, out, signal.SIGINT)


# --- the window between a backup's sidecar and the backup itself -------------


def sha256sum_check(directory: Path) -> subprocess.CompletedProcess:
    sidecars = sorted(n for n in os.listdir(directory) if n.endswith(".sha256"))
    return subprocess.run(
        ["sha256sum", "-c", *sidecars], cwd=directory, capture_output=True, text=True
    )


@pytest.mark.parametrize("into_directory", [True, False], ids=["out-dir", "out-name"])
def test_a_kill_between_the_sidecar_and_the_backup_never_leaves_a_backup_without_it(
    tmp_path: Path, crash_env, new_state: NewState, into_directory: bool
):
    """The window is microseconds wide, too narrow to hit by timing: the
    backup is told to stop itself there (PORTUNUS_TEST_STOP_AT, a test-only
    hook, see portunus/testpoints.py) and is then killed -9. What stays is a
    lone sidecar, which sha256sum -c reports (no backup passes unchecked),
    never a backup without one; the next backup (the same command, once the
    orphan is a minute old) removes it and publishes a whole pair."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir if into_directory else out_dir / "b.db"
    env = {**crash_env, testpoints.ENV: "backup.sidecar_published"}
    victim = backup_victim(env, new_state.source, out)
    assert victim.wait_for(stopped) is not None, "the backup never reached the point"
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.communicate(timeout=CLI_TIMEOUT_S)
    names = os.listdir(out_dir)
    assert [n for n in names if n.endswith(".db")] == [], names
    (orphan,) = [n for n in names if n.endswith(".sha256")]
    assert sha256sum_check(out_dir).returncode != 0  # the missing file is reported

    old = time.time() - 3600
    for name in os.listdir(out_dir):
        os.utime(out_dir / name, (old, old))
    run = support.run_cli(
        "--data-dir", str(new_state.source.path), "backup", "--out", str(out), env=crash_env
    )
    assert run.code == 0, run.err
    swept = [e for e in parse_events(run.err) if e["event"] == "backup.orphan_sidecar_removed"]
    assert [Path(e["path"]).name for e in swept] == [orphan]
    final = Path(run.out.strip())
    assert sorted(os.listdir(out_dir)) == sorted([final.name, f"{final.name}.sha256"])
    assert sha256sum_check(out_dir).returncode == 0
    assert artefact_digest(final) == new_state.digest
