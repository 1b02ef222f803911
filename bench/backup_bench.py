"""Backup/restore benchmark of portunus-server, side by side with cp + fsync,
sqlite3 .backup and VACUUM INTO: idle, under a concurrent writer (checkpointing
as any SQLite program does, then as portunus-server does), and restore.

    python -m bench.backup_bench                    # 1 GiB store, ~10 minutes
    python -m bench.backup_bench --quick            # 64 MiB, about a minute: checks the harness
    python -m bench.backup_bench --report FILE.jsonl    # print the table of an earlier run

Prints one table on stdout (progress goes to stderr) and keeps the raw runs,
one JSON object per line, in <workdir>/results/. The generated store is
cached in <workdir>/store/ and reused while its size and seed match.
docs/performance.md describes the method and every column.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import commands, machine, report, store_gen
from bench.measure import Measured, read_through, run_measured, settle
from bench.writer import Writer

REPO = Path(__file__).resolve().parent.parent
# settle: the pause before each idle copy and each restore. Free memory
# turns "cold" within about two seconds on VMs that hand it back to their
# host (free page reporting), and a GiB of page cache then costs 1.2-1.5 s
# of system time to fill; with a short pause, whichever run came right after
# another's freed GiB had it warm. Every run starts from the same idle
# machine instead (docs/performance.md, "Past the page cache").
PROFILES = {
    "full": {
        "size_mib": 1024,
        "repeat": 3,
        "cap": 60.0,
        "warmup": 1.0,
        "baseline": 4.0,
        "settle": 3.0,
    },
    "quick": {
        "size_mib": 64,
        "repeat": 1,
        "cap": 10.0,
        "warmup": 0.3,
        "baseline": 1.0,
        "settle": 0.3,
    },
}
SEED = 20261127
IDLE_CAP = 600.0  # idle copies are not raced against a writer: only a hang guard
STEPPED_GRACE = 10.0  # the stepped loop stops itself at the cap; this kills it if it cannot
AFTER_BACKUP = 0.5  # keep the writer running this long after the backup
STEP_PAGES = 100  # what the original implementation stepped
FREE_SPACE_FACTOR = 4  # store, working copy, its growth under the writer, a backup


@dataclass(frozen=True)
class Settings:
    profile: str
    size_mib: int
    repeat: int
    cap: float
    warmup: float
    baseline: float
    settle: float
    rate: int
    seed: int
    workdir: Path


class Workdir:
    """The benchmark's files: the cached store, scratch copies, the results."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stores = root / "store"  # one cached store per size: --quick keeps the 1 GiB one
        self.live = root / "live"  # a data dir copied from the cached store
        self.out = root / "out"
        self.artefact = root / "artefact" / "backup.db"
        self.restore = root / "restore"
        self.writer_log = root / "writer.bin"
        self.results = root / "results"

    @property
    def live_db(self) -> Path:
        return self.live / "state.db"

    def scratch(self) -> list[Path]:
        return [self.live, self.out, self.artefact.parent, self.restore]

    def fresh_live_copy(self, pristine: Path) -> None:
        """The store as generated, in a data dir of its own (runs may write to it)."""
        shutil.rmtree(self.live, ignore_errors=True)
        self.live.mkdir(mode=0o700, parents=True)
        shutil.copyfile(pristine, self.live_db)

    def empty(self, directory: Path) -> Path:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(mode=0o700, parents=True)
        return directory


class Recorder:
    """The raw runs, appended to a JSON-lines file as they happen."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.records: list[dict] = []

    def add(self, record: dict) -> dict:
        record = {**record, "utc": _utc_now(), "load_average_1m": round(os.getloadavg()[0], 2)}
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")
        if record.get("kind") == "run" and not record["completed"] and not record["capped"]:
            last = record["stderr_tail"].strip().splitlines()[-1:] or ["(no stderr)"]
            what = f"{record['phase']} {record['approach']}"
            progress(f"{what} failed (rc {record['rc']}): {last[0]}")
        return record


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- one run


def run_record(phase: str, approach: str, rep: int, measured: Measured, **extra) -> dict:
    record = {
        "kind": "run",
        "phase": phase,
        "approach": approach,
        "rep": rep,
        "wall_s": round(measured.wall_s, 4),
        "rss_mib": measured.rss_mib,
        "cpu_s": measured.cpu_s,
        "rc": measured.rc,
        "capped": measured.capped,
        "completed": measured.completed,
        **extra,
    }
    if approach.startswith("portunus") and measured.completed:
        record["engine"] = _json_summary(measured.stdout)
    if approach == "stepped_100":
        record.update(_stepped_summary(measured))
    if not record["completed"]:
        record["stderr_tail"] = measured.stderr[-800:]
    return record


def _json_summary(stdout: str) -> dict | None:
    text = stdout.strip()
    return json.loads(text) if text.startswith("{") else None


def _stepped_summary(measured: Measured) -> dict:
    lines = measured.stdout.strip().splitlines()
    if not lines:
        return {"restarts": None}
    summary = json.loads(lines[-1])
    done = summary["done"]
    # The loop gives up by itself at the cap, before we would have killed it.
    return {**summary, "completed": done, "capped": measured.capped or not done}


def _output_ok(path: Path, expected: dict[str, int]) -> bool:
    try:
        return store_gen.row_counts(path) == expected
    except Exception:  # noqa: BLE001 - any failure to read the copy means "not ok"
        return False


# ---------------------------------------------------------------- phases


def idle_copies(s: Settings, wd: Workdir, rec: Recorder, expected: dict[str, int]) -> None:
    """Each approach copies the idle store, --repeat times, interleaved."""
    read_through(wd.live_db)
    for rep in range(1, s.repeat + 1):
        for approach in report.IDLE_ORDER:
            dst = wd.artefact if approach == "portunus_backup" else wd.out / "copy.db"
            _clear(dst)
            settle(s.settle)
            m = run_measured(_idle_commands(approach, wd, dst), cap=IDLE_CAP)
            ok = m.completed and _output_ok(dst, expected)
            rec.add(run_record("idle", approach, rep, m, output_ok=ok))
            progress(f"idle {approach} #{rep}: {m.wall_s:.2f} s, rss {m.rss_mib} MiB, ok={ok}")


def _idle_commands(approach: str, wd: Workdir, dst: Path) -> commands.Commands:
    if approach == "portunus_backup":
        return commands.portunus_backup(wd.live, dst)
    build = {
        "cp_fsync": commands.cp_fsync,
        "sqlite3_backup": commands.sqlite3_backup,
        "vacuum_into": commands.vacuum_into,
    }[approach]
    return build(wd.live_db, dst)


def _clear(dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    for path in (dst, dst.with_name(dst.name + ".sha256"), *_sqlite_sidecars(dst)):
        path.unlink(missing_ok=True)


def _sqlite_sidecars(db: Path) -> list[Path]:
    return [db.with_name(db.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def under_writer(s: Settings, wd: Workdir, rec: Recorder, pristine: Path) -> None:
    """Each approach backs up a store another process keeps writing to, once
    rate-limited and once as fast as it can; then the backup alone against a
    max-rate writer that checkpoints as the server does. An approach that
    hits the cap is not repeated at that rate: it would only hit it again."""
    writers = (
        (f"{s.rate}/s", s.rate, report.LOAD_ORDER),
        ("max", 0, report.LOAD_ORDER),
        (report.SERVER_LIKE, 0, report.SERVER_LIKE_ORDER),
    )
    for rate_name, rate, approaches in writers:
        for approach in approaches:
            for rep in range(1, s.repeat + 1):
                r = rec.add(_one_under_writer(s, wd, pristine, approach, rate, rate_name, rep))
                during, before = r["writer_during"], r["writer_baseline"]
                progress(
                    f"writer {rate_name} {approach} #{rep}: done={r['completed']} "
                    f"{r['wall_s']:.2f} s restarts={r.get('restarts')} writer "
                    f"{before['per_second']} -> {during['per_second']}/s"
                )
                if not r["completed"]:
                    break


def _one_under_writer(
    s: Settings, wd: Workdir, pristine: Path, approach: str, rate: int, rate_name: str, rep: int
) -> dict:
    wd.fresh_live_copy(pristine)
    dst = wd.out / "copy.db"
    _clear(dst)
    settle()
    server_like = rate_name == report.SERVER_LIKE
    writer = Writer(wd.live_db, rate, wd.writer_log, server_like)
    try:
        time.sleep(s.warmup + s.baseline)
        cmds, cap = _load_commands(approach, wd, dst, s.cap)
        m = run_measured(cmds, cap=cap, watch=wd.live / "state.db-wal")
        time.sleep(AFTER_BACKUP)
        log = writer.stop()
    except BaseException:
        writer.kill()
        raise
    baseline = log.window(writer.ready_at + s.warmup, m.t_start)
    during = log.window(m.t_start, m.t_end)
    record = run_record(
        "load",
        approach,
        rep,
        m,
        rate=rate_name,
        server_like_writer=server_like,
        writer_baseline=baseline.as_dict(),
        writer_during=during.as_dict(),
        writer_busy_errors=log.busy_errors,
        writer_checkpoints=log.checkpoints,
        peak_wal_mib=m.peak_watched_mib,
    )
    if approach == "portunus_backup" and record.get("engine"):
        record["restarts"] = record["engine"]["restarts"]
    return record


def _load_commands(
    approach: str, wd: Workdir, dst: Path, cap: float
) -> tuple[commands.Commands, float]:
    if approach == "portunus_backup":
        return commands.portunus_backup(wd.live, dst), cap
    if approach == "sqlite3_backup":
        return commands.sqlite3_backup(wd.live_db, dst), cap
    return commands.stepped_backup(wd.live_db, dst, STEP_PAGES, cap), cap + STEPPED_GRACE


def restores(s: Settings, wd: Workdir, rec: Recorder, expected: dict[str, int]) -> None:
    """The idle backup restored into an empty data dir, against cp + fsync of it."""
    if not wd.artefact.is_file():
        progress("restore: skipped, the idle portunus-server backup failed")
        return
    read_through(wd.artefact)
    for rep in range(1, s.repeat + 1):
        for approach in report.RESTORE_ORDER:
            target = wd.empty(wd.restore / "data")
            if approach == "portunus_restore":
                cmds = commands.portunus_restore(target, wd.artefact)
            else:
                cmds = commands.cp_fsync(wd.artefact, target / "state.db")
            settle(s.settle)
            m = run_measured(cmds, cap=IDLE_CAP)
            ok = m.completed and _output_ok(target / "state.db", expected)
            rec.add(run_record("restore", approach, rep, m, output_ok=ok))
            progress(f"restore {approach} #{rep}: {m.wall_s:.2f} s, rss {m.rss_mib} MiB, ok={ok}")


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Settings | None]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.backup_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="64 MiB, 1 run, 10 s caps")
    parser.add_argument("--size-mib", type=int, help="store size (default 1024; quick 64)")
    parser.add_argument("--repeat", type=int, help="runs of each approach (default 3; quick 1)")
    parser.add_argument("--cap", type=float, help="give up a backup under load after this (s)")
    parser.add_argument(
        "--settle", type=float, help="pause before each idle copy and restore, s (3; quick 0.3)"
    )
    parser.add_argument("--rate", type=int, default=500, help="rate-limited writer, commits/s")
    parser.add_argument("--seed", type=int, default=SEED, help="store generator seed")
    parser.add_argument(
        "--workdir", type=Path, default=REPO / "bench" / "work", help="default bench/work"
    )
    parser.add_argument("--report", type=Path, metavar="JSONL", help="only print that run's table")
    args = parser.parse_args(argv)
    if args.report:
        return args, None
    profile = "quick" if args.quick else "full"
    chosen = {
        key: getattr(args, key) if getattr(args, key, None) is not None else default
        for key, default in PROFILES[profile].items()
    }
    return args, Settings(
        profile, **chosen, rate=args.rate, seed=args.seed, workdir=args.workdir.resolve()
    )


def main(argv: list[str] | None = None) -> int:
    args, settings = parse_args(argv)
    if settings is None:
        records = [json.loads(line) for line in args.report.read_text().splitlines() if line]
        print(report.render(records), end="")
        return 0
    _children_import_bench()
    wd = Workdir(settings.workdir)
    _require_tools()
    _require_free_space(settings)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    rec = Recorder(wd.results / f"backup-bench-{stamp}.jsonl")
    try:
        text = run(settings, wd, rec)
    finally:
        for path in wd.scratch():
            shutil.rmtree(path, ignore_errors=True)
        wd.writer_log.unlink(missing_ok=True)
        Path(f"{wd.writer_log}.json").unlink(missing_ok=True)
    table = rec.path.with_suffix(".md")
    table.write_text(text)
    print(text, end="")
    progress(f"raw runs: {rec.path}")
    progress(f"table: {table}")
    return 0


def run(s: Settings, wd: Workdir, rec: Recorder) -> str:
    started = time.monotonic()
    cache = wd.stores / f"{s.size_mib}mib"
    progress(f"store: {s.size_mib} MiB in {cache}")
    data_dir, info, reused = store_gen.cached_store(cache, s.size_mib, s.seed)
    progress(f"store {'reused' if reused else 'generated'}: {info.bytes / 2**20:.0f} MiB")
    pristine = data_dir / "state.db"
    settings = {**asdict(s), "workdir": str(s.workdir)}
    rec.add(
        {
            "kind": "meta",
            "profile": s.profile,
            "args": settings,
            "machine": machine.describe(s.workdir),
            "store": asdict(info),
            "store_reused": reused,
        }
    )
    wd.fresh_live_copy(pristine)
    idle_copies(s, wd, rec, info.rows)
    restores(s, wd, rec, info.rows)
    under_writer(s, wd, rec, pristine)
    rec.add(
        {
            "kind": "end",
            "minutes": round((time.monotonic() - started) / 60, 1),
            "load_average_1m_end": round(os.getloadavg()[0], 2),
        }
    )
    return report.render(rec.records)


def _children_import_bench() -> None:
    # The writer and the stepped backup run as `python -m bench.…` children.
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")


def _require_tools() -> None:
    missing = [tool for tool in ("cp", "sync", "sqlite3") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"missing tools: {', '.join(missing)} (apt-get install -y sqlite3 coreutils)"
        )


def _require_free_space(s: Settings) -> None:
    s.workdir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(s.workdir).free
    needed = FREE_SPACE_FACTOR * s.size_mib * 2**20
    if free < needed:
        raise SystemExit(
            f"{s.workdir} has {free / 2**30:.1f} GiB free; "
            f"a {s.size_mib} MiB benchmark needs about {needed / 2**30:.1f} GiB"
        )


if __name__ == "__main__":
    raise SystemExit(main())
