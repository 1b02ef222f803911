"""The printed table: built from the raw records alone, so that a results
file can be rendered again later (``backup_bench --report FILE``)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable

from bench.commands import LABELS

Record = dict[str, object]

IDLE_ORDER = ("cp_fsync", "sqlite3_backup", "vacuum_into", "portunus_backup")
LOAD_ORDER = ("portunus_backup", "sqlite3_backup", "stepped_100")
# The writer checkpointing as portunus-server does (bench/writer.py --server-like).
SERVER_LIKE = "max, server-like"
SERVER_LIKE_ORDER = ("portunus_backup",)
RESTORE_ORDER = ("portunus_restore", "cp_fsync")
RESTORE_LIMIT = 2.5  # issue 13: restore with every check <= 2.5x cp + fsync
ENGINE_PHASES = (
    ("copy_seconds", "copy phase alone (JSON `copy_seconds`)"),
    ("verify_seconds", "verify + sha256 phase (JSON `verify_seconds`)"),
    ("total_seconds", "in-process total (JSON `total_seconds`)"),
)
RSS_LIMIT_MIB = 64


# ---------------------------------------------------------------- numbers


def fmt(x: object, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def median(xs: Iterable[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs: list[float | None], nd: int = 2) -> str:
    """``median (min–max)``, or the single value."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    if len(xs) == 1:
        return fmt(xs[0], nd)
    return f"{fmt(median(xs), nd)} ({fmt(min(xs), nd)}–{fmt(max(xs), nd)})"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def runs(records: list[Record], phase: str, approach: str, rate: str | None = None) -> list[Record]:
    return [
        r
        for r in records
        if r.get("kind") == "run"
        and r["phase"] == phase
        and r["approach"] == approach
        and (rate is None or r.get("rate") == rate)
    ]


def load_rates(records: list[Record]) -> list[str]:
    """Rate-limited writers first, then the generic max-rate one, then the server-like one."""
    rates = {r["rate"] for r in records if r.get("phase") == "load"}
    return sorted(rates, key=lambda rate: (rate == "max") + 2 * (rate == SERVER_LIKE))


def _max(xs: Iterable[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


def _walls(rs: list[Record]) -> list[float]:
    return [r["wall_s"] for r in rs if r["completed"]]


def _engine(rs: list[Record], key: str) -> list[float]:
    return [r["engine"][key] for r in rs if r.get("engine")]


# ---------------------------------------------------------------- tables


def render(records: list[Record]) -> str:
    meta = next(r for r in records if r.get("kind") == "meta")
    sections = [
        _heading(records, meta),
        _idle_table(records),
        _load_table(records, meta),
        _restore_table(records),
        _goals_table(records),
        _machine_table(meta),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _heading(records: list[Record], meta: Record) -> str:
    store = meta["store"]
    args = meta["args"]
    origin = "cached" if meta["store_reused"] else f"generated in {store['generate_seconds']} s"
    end = next((r for r in records if r.get("kind") == "end"), {})
    return (
        f"# portunus-server backup/restore benchmark ({meta['profile']} profile, {meta['utc']})\n\n"
        f"Store: {fmt(store['bytes'] / 2**20, 0)} MiB, {store['pages']} pages, rows "
        + ", ".join(f"{t} {n}" for t, n in store["rows"].items())
        + f" (seed {args['seed']}; {origin}). Warm page cache; each command in its own process; "
        f"wall time from spawn to reap; median (min–max) over {args['repeat']} run(s) unless a "
        f"run hit the cap. The run took {fmt(end.get('minutes'), 1)} min; 1-minute load average "
        f"{fmt(meta['machine']['load_average_1m'])} at the start, "
        f"{fmt(end.get('load_average_1m_end'))} at the end (other work on the machine makes "
        f"every figure noisier)."
    )


def _idle_table(records: list[Record]) -> str:
    rows = []
    for approach in IDLE_ORDER:
        rs = runs(records, "idle", approach)
        if rs:
            label = LABELS[approach]
            if approach == "portunus_backup":
                label += ", whole process (start-up, copy, verify, sha256, fsync, publish)"
            rows.append(_idle_row(label, rs))
    backups = runs(records, "idle", "portunus_backup")
    for key, label in ENGINE_PHASES:
        if _engine(backups, key):
            rows.append([f"↳ {label}", str(len(backups)), spread(_engine(backups, key)), "", ""])
    if not rows:
        return ""
    header = ["approach", "n", "wall s", "peak RSS MiB", "output ok"]
    return "## 1. Idle copies\n\n" + _table(header, rows)


def _idle_row(label: str, rs: list[Record]) -> list[str]:
    ok = all(r["completed"] and r.get("output_ok") for r in rs)
    failed = [r for r in rs if not r["completed"]]
    wall = spread(_walls(rs)) if not failed else f"failed (rc {failed[0]['rc']})"
    return [
        label,
        str(len(rs)),
        wall,
        fmt(_max(r["rss_mib"] for r in rs), 1),
        "yes" if ok else "NO",
    ]


def _load_table(records: list[Record], meta: Record) -> str:
    rows = []
    for rate in load_rates(records):
        for approach in LOAD_ORDER:
            rs = runs(records, "load", approach, rate)
            if rs:
                rows.append(_load_row(rate, approach, rs, meta["args"]["cap"]))
    if not rows:
        return ""
    args = meta["args"]
    header = [
        "writer",
        "approach",
        "backup wall s",
        "restarts",
        "writer commits/s baseline → during (ratio)",
        "writer p99 ms baseline → during",
        "writer max ms baseline → during",
        "peak -wal MiB",
        "peak RSS MiB",
    ]
    intro = (
        f"## 2. Under a concurrent writer (cap {fmt(args['cap'], 0)} s)\n\n"
        f"The writer is another process committing one small audit_log row per transaction "
        f"(WAL, synchronous=NORMAL). Baseline = its {fmt(args['baseline'], 1)} s before the "
        f"backup (after {fmt(args['warmup'], 1)} s warm-up); during = from spawning the backup "
        f"to reaping it. Each run starts from a fresh copy of the generated store."
    )
    if runs(records, "load", "portunus_backup", SERVER_LIKE):
        intro += (
            f" The writer checkpoints as any SQLite program does (auto-checkpoint, run by "
            f"the commit that crosses 1000 pages), except in the `{SERVER_LIKE}` rows: "
            f"there it checkpoints as portunus-server does (auto-checkpoint off, PASSIVE "
            f"checkpoints on a background thread at most ten times a second, the writer "
            f"checkpointing only the frames it committed during a complete one)."
        )
    return intro + "\n\n" + _table(header, rows)


def _load_row(rate: str, approach: str, rs: list[Record], cap: float) -> list[str]:
    before = [r["writer_baseline"] for r in rs]
    during = [r["writer_during"] for r in rs]
    ratios = [ratio(d["per_second"], b["per_second"]) for b, d in zip(before, during, strict=True)]
    return [
        rate,
        LABELS[approach],
        _load_wall(rs, cap),
        _restarts(approach, rs),
        f"{_before_after(before, during, 'per_second', 0)} ({fmt(median(ratios))})",
        _before_after(before, during, "p99_ms", 3),
        _before_after(before, during, "max_ms", 1),
        fmt(_max(r["peak_wal_mib"] for r in rs), 0),
        fmt(_max(r["rss_mib"] for r in rs), 1),
    ]


def _before_after(before: list[Record], during: list[Record], key: str, nd: int) -> str:
    return f"{fmt(median(b[key] for b in before), nd)} → {fmt(median(d[key] for d in during), nd)}"


def _load_wall(rs: list[Record], cap: float) -> str:
    done = _walls(rs)
    if len(done) == len(rs):
        return spread(done)
    if not done:
        capped = any(r["capped"] for r in rs)
        return f"did not finish (cap {fmt(cap, 0)} s)" if capped else f"failed (rc {rs[0]['rc']})"
    return f"{len(done)}/{len(rs)} finished: {spread(done)}"


def _restarts(approach: str, rs: list[Record]) -> str:
    if approach == "sqlite3_backup":
        return "n/a (the CLI reports none)"
    counts = [r.get("restarts") for r in rs]
    text = ", ".join(fmt(c) for c in counts)
    reached = [r for r in rs if r.get("furthest_page") is not None and not r["completed"]]
    if reached:
        text += f" (reached page {reached[0]['furthest_page']} of {reached[0]['page_count']})"
    methods = [(r.get("engine") or {}).get("copy_method") for r in rs]
    if any(methods):
        # portunus-server backup --json: the held file, or the Online Backup API
        text += " (" + ", ".join(m or "?" for m in methods) + ")"
    return text


def _restore_table(records: list[Record]) -> str:
    rows = [
        _idle_row(LABELS[a], runs(records, "restore", a))
        for a in RESTORE_ORDER
        if runs(records, "restore", a)
    ]
    if not rows:
        return ""
    header = ["approach", "n", "wall s", "peak RSS MiB", "output ok"]
    return "## 3. Restore (of the backup written above, into an empty data dir)\n\n" + _table(
        header, rows
    )


# ---------------------------------------------------------------- goals


def _goals_table(records: list[Record]) -> str:
    rows = [row for goal in GOALS for row in goal(records)]
    if not rows:
        return ""
    header = ["goal", "measured", "target", "met"]
    return "## 4. Goals (computed from the figures above)\n\n" + _table(header, rows)


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


def _idle_median(records: list[Record], approach: str) -> float | None:
    return median(_walls(runs(records, "idle", approach)))


def _speed_goals(records: list[Record]) -> list[list[str]]:
    backups = runs(records, "idle", "portunus_backup")
    total = median(_walls(backups))
    in_process = median(_engine(backups, "total_seconds"))
    rows = []
    for reference, limit in (("cp_fsync", 2.0), ("sqlite3_backup", 1.3)):
        base = _idle_median(records, reference)
        for label, value in (("process wall", total), ("in-process total", in_process)):
            r = ratio(value, base)
            rows.append(
                [
                    f"backup ({label}) ÷ {LABELS[reference]}, idle",
                    f"{fmt(value)} s ÷ {fmt(base)} s = {fmt(r)}×",
                    f"≤ {limit}×",
                    _met(None if r is None else r <= limit),
                ]
            )
    return rows


def _restore_goals(records: list[Record]) -> list[list[str]]:
    restore = median(_walls(runs(records, "restore", "portunus_restore")))
    base = median(_walls(runs(records, "restore", "cp_fsync")))
    if restore is None:
        return []
    r = ratio(restore, base)
    return [
        [
            f"restore (process wall, every check) ÷ {LABELS['cp_fsync']} of the same file",
            f"{fmt(restore)} s ÷ {fmt(base)} s = {fmt(r)}×",
            f"≤ {RESTORE_LIMIT}×",
            _met(None if r is None else r <= RESTORE_LIMIT),
        ]
    ]


def _load_goals(records: list[Record]) -> list[list[str]]:
    rows = []
    for rate in load_rates(records):
        rs = runs(records, "load", "portunus_backup", rate)
        if not rs:
            continue
        worst = _max(r.get("restarts") for r in rs)
        finished = sum(1 for r in rs if r["completed"])
        rows.append(
            [
                f"backup restarts, writer {rate}",
                f"{fmt(worst)} (finished {finished}/{len(rs)})",
                "0",
                _met(worst == 0 and finished == len(rs)),
            ]
        )
        kept = median(
            ratio(r["writer_during"]["per_second"], r["writer_baseline"]["per_second"]) for r in rs
        )
        rows.append(
            [
                f"writer throughput during backup ÷ baseline, writer {rate}",
                f"{fmt(None if kept is None else kept * 100, 1)} %",
                "≥ 70 %",
                _met(None if kept is None else kept >= 0.70),
            ]
        )
    return rows


def _rss_goals(records: list[Record]) -> list[list[str]]:
    rows = []
    for approach in ("portunus_backup", "portunus_restore"):
        peak = _max(r["rss_mib"] for r in records if r.get("approach") == approach)
        if any(r.get("approach") == approach for r in records):
            rows.append(
                [
                    f"peak RSS of {LABELS[approach]} (all runs)",
                    f"{fmt(peak, 1)} MiB" if peak is not None else "not measured (no GNU time)",
                    f"< {RSS_LIMIT_MIB} MiB",
                    _met(None if peak is None else peak < RSS_LIMIT_MIB),
                ]
            )
    return rows


GOALS: tuple[Callable[[list[Record]], list[list[str]]], ...] = (
    _speed_goals,
    _restore_goals,
    _load_goals,
    _rss_goals,
)


def _machine_table(meta: Record) -> str:
    rows = [[k, fmt(v)] for k, v in meta["machine"].items()]
    return "## 5. Machine\n\n" + _table(["", ""], rows)
