"""Sealed (age) against plain backups and restores of one store, side by side.

    python -m bench.sealed_bench                  # 1 GiB store, 3 rounds
    python -m bench.sealed_bench --size-mib 64 --rounds 1     # checks the harness

Each round runs, in turn and on the same idle store: ``portunus-server
backup --out DIR/`` plain, then with ``--recipient`` (sealed); then
``restore`` of each into an empty data dir (the sealed one with
``--identity``). Wall time and peak RSS come from GNU time around each
command (bench.measure). Prints a Markdown table with the medians, the
sealed/plain ratios and the largest RSS; docs/performance.md ("Sealed
backups") holds the results and the goals (ratio <= 1.25, RSS < 64 MiB).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import commands, store_gen
from bench.measure import Measured, run_measured, settle

REPO = Path(__file__).resolve().parent.parent
SEED = 20261127
CAP = 1800.0  # a hang guard only: nothing here races a writer


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fresh(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    return directory


def measured(argv: list[str]) -> Measured:
    settle()
    result = run_measured([argv], CAP)
    if not result.completed:
        raise SystemExit(f"failed (rc {result.rc}): {' '.join(argv)}\n{result.stderr[-2000:]}")
    return result


def one_round(data: Path, work: Path, recipient: str, identity: Path) -> dict[str, Measured]:
    server = commands.portunus_server()
    out = fresh(work / "out")
    found: dict[str, Measured] = {}
    backup = [*server, "--data-dir", str(data), "backup", "--out", f"{out}/"]
    found["backup plain"] = measured(backup)
    plain = next(out.glob("portunus-state-*Z.db"))
    found["backup sealed"] = measured([*backup, "--recipient", recipient])
    sealed = next(out.glob("portunus-state-*Z.db.age"))
    for name, artefact, extra in (
        ("restore plain", plain, []),
        ("restore sealed", sealed, ["--identity", str(identity)]),
    ):
        target = work / "restored"
        shutil.rmtree(target, ignore_errors=True)
        found[name] = measured(
            [*server, "--data-dir", str(target), "restore", "--in", str(artefact), *extra]
        )
    return found


def table(rounds: list[dict[str, Measured]], size: int) -> str:
    names = list(rounds[0])
    wall = {n: statistics.median(r[n].wall_s for r in rounds) for n in names}
    rss = {n: max(r[n].rss_mib or 0.0 for r in rounds) for n in names}
    lines = [
        f"Store {size / 2**20:.0f} MiB, {len(rounds)} round(s); medians of wall time, "
        "largest peak RSS.",
        "",
        "| command | wall s (median) | peak RSS MiB | sealed / plain |",
        "|---|---:|---:|---:|",
    ]
    for name in names:
        kind, mode = name.split()
        ratio = f"{wall[name] / wall[f'{kind} plain']:.2f}" if mode == "sealed" else ""
        lines.append(f"| {name} | {wall[name]:.2f} | {rss[name]:.1f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sealed_bench")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "work")
    args = parser.parse_args(argv)
    cache = args.workdir / "store" / f"{args.size_mib}mib"
    progress(f"store: {args.size_mib} MiB in {cache}")
    data, info, _ = store_gen.cached_store(cache, args.size_mib, SEED)
    work = args.workdir / "sealed"
    fresh(work)
    identity = work / "bench.key"
    recipient = subprocess.run(
        [*commands.portunus_server(), "keygen", "--out", str(identity)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    rounds = []
    for number in range(args.rounds):
        progress(f"round {number + 1}/{args.rounds}")
        rounds.append(one_round(data, work, recipient, identity))
    print(table(rounds, info.bytes), end="")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
