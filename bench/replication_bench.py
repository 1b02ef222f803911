"""Replication (Litestream) measured side by side in one run: audited API
writes/s with replication off and on; how stale the replica gets under a
steady write rate; restore of a large store from the replica by
``portunus-server restore --from-replica`` against ``litestream restore``
alone. Measured, never asserted.

    python -m bench.replication_bench            # 3 rounds of 10 s, 500 writes/s, 1 GiB
    python -m bench.replication_bench --quick    # 1 round of 3 s, 64 MiB store
    invoke bench --replication

The replica is a ``file://`` directory on the same disk (an object store
on this machine would spend the same two CPUs serving it), so the numbers
are Portunus's and Litestream's cost, not a network's. Writes come from
wrk as in ``bench.api_bench``; the steady rate from wrk's per-connection
``delay()``. Staleness is ``portunus_replication_lag_seconds`` (time since
Litestream's last sync) sampled five times a second from ``/metrics``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import machine, store_gen
from bench.api_bench import REPO, Load, run_wrk, start_api, table, write_script
from bench.backup_bench import SEED
from portunus import log
from portunus.datadir import DataDir
from portunus.engine import tokens

LITESTREAM = Path(sys.executable).parent / "litestream"


def replication_toml(replica: Path) -> str:
    return f'[replication]\nurl = "file://{replica}"\nsync_interval = "1s"\n'


def throughput_round(args: argparse.Namespace, work: Path) -> list[Load]:
    """The same audited writes, replication off then on, fresh stores."""
    loads = []
    for name, on in (("replication off", False), ("replication on", True)):
        data = work / name.replace(" ", "-") / "data"
        extra = replication_toml(work / name.replace(" ", "-") / "replica") if on else ""
        api = start_api(data, work, tokens.bootstrap_admin(DataDir(data), "bench"), extra)
        try:
            loads.append(api.writes(f"API: create rule, {name}", "w-", args))
        finally:
            api.server.stop()
    return loads


def staleness_phase(args: argparse.Namespace, work: Path) -> dict[str, object]:
    """A steady write rate with replication on; the replica's staleness sampled."""
    data = work / "steady" / "data"
    extra = replication_toml(work / "steady" / "replica")
    api = start_api(data, work, tokens.bootstrap_admin(DataDir(data), "bench"), extra)
    samples: list[float] = []
    scrapes: list[float] = []  # how long each /metrics took
    stop = threading.Event()

    def sample() -> None:
        import httpx

        context = ssl.create_default_context(cafile=str(api.cert))
        with httpx.Client(base_url=api.url, verify=context) as client:
            while not stop.wait(0.2):
                started = time.monotonic()
                text = client.get("/metrics").text
                scrapes.append(time.monotonic() - started)
                for line in text.splitlines():
                    if line.startswith("portunus_replication_lag_seconds "):
                        samples.append(float(line.split()[1]))

    try:
        api.add_clients("s-", args.threads)
        script = write_script(work, api.token, "s-")
        # Each connection waits `delay` ms between its requests.
        delay_ms = max(1, int(1000 * args.connections / args.rate))
        script.write_text(script.read_text() + f"\nfunction delay() return {delay_ms} end\n")
        sampler = threading.Thread(target=sample)
        sampler.start()
        load = run_wrk(f"steady writes, target {args.rate}/s", api.server, api.url, args, script)
        stop.set()
        sampler.join()
    finally:
        api.server.stop()
    ordered = sorted(samples)
    return {
        "achieved_writes_per_s": load.rps,
        "samples": len(ordered),
        "staleness_p50_s": round(ordered[len(ordered) // 2], 3) if ordered else None,
        "staleness_p99_s": round(ordered[int(len(ordered) * 0.99) - 1], 3) if ordered else None,
        "staleness_max_s": round(ordered[-1], 3) if ordered else None,
        "sync_interval_s": 1.0,
        "scrapes": len(scrapes),
        "scrape_max_s": round(max(scrapes), 3) if scrapes else None,
    }


def restore_phase(args: argparse.Namespace, work: Path) -> dict[str, object]:
    """A large store shipped once to a replica, then restored both ways."""
    cached, info, _ = store_gen.cached_store(
        args.workdir / "store" / f"{args.size_mib}mib", args.size_mib, SEED
    )
    replica = work / "large-replica"
    done = subprocess.run(
        [str(LITESTREAM), "replicate", "-once", str(cached / "state.db"), f"file://{replica}"],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    timings: dict[str, list[float]] = {"litestream restore": [], "portunus restore": []}
    for n in range(args.rounds):
        out = work / f"plain-{n}.db"
        started = time.monotonic()
        subprocess.run([str(LITESTREAM), "restore", "-o", str(out), f"file://{replica}"],
                       check=True, capture_output=True)  # fmt: skip
        timings["litestream restore"].append(time.monotonic() - started)
        out.unlink()
        target = work / f"restored-{n}"
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "portunus", "--data-dir", str(target), "restore",
             "--from-replica", "--replica", f"file://{replica}"],
            check=True, capture_output=True,
        )  # fmt: skip
        timings["portunus restore"].append(time.monotonic() - started)
        shutil.rmtree(target)
    medians = {k: round(statistics.median(v), 2) for k, v in timings.items()}
    return {
        "store_bytes": info.bytes,
        "median_seconds": medians,
        "all_seconds": {k: [round(x, 2) for x in v] for k, v in timings.items()},
        "ratio": round(medians["portunus restore"] / medians["litestream restore"], 2),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    log.configure("logfmt", "warning")
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    work = args.workdir / f"replication-{time.strftime('%Y%m%dT%H%M%S')}"
    work.mkdir(parents=True)
    results: dict[str, object] = {"machine": machine.describe(args.workdir)}
    rounds = []
    for n in range(1, args.rounds + 1):
        rounds.append(throughput_round(args, work / f"round-{n}"))
        print(f"round {n} of {args.rounds}:\n{table(rounds[-1])}\n", flush=True)
    off = statistics.median(r[0].rps for r in rounds)
    on = statistics.median(r[1].rps for r in rounds)
    results["writes_per_s"] = {"off": off, "on": on, "on_vs_off": round(on / off, 3)}
    results["rounds"] = [[load.__dict__ for load in r] for r in rounds]
    results["staleness"] = staleness_phase(args, work)
    results["restore"] = restore_phase(args, work)
    print(json.dumps({k: v for k, v in results.items() if k != "rounds"}, indent=2))
    out = REPO / "bench" / "results" / f"{work.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results: {out}")
    if not args.keep:
        shutil.rmtree(work)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per load (10)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    parser.add_argument("--rate", type=int, default=500, help="steady writes/s (500)")
    parser.add_argument("--size-mib", type=int, default=1024, help="restored store size (1024)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, median reported (3)")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "work")
    parser.add_argument("--quick", action="store_true", help="3 s loads, 64 MiB, 1 round")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.size_mib, args.rounds = 3, 64, 1
    args.workdir = args.workdir.resolve()
    return args


if __name__ == "__main__":
    main()
