"""The API under load: audited rule writes/s and reads/s with p50/p99,
side by side with a bare sanic hello-world in the same run, then writes/s
while online backups of a large store run. Measured, never asserted.

    python -m bench.api_bench                 # 3 rounds of 10 s loads, 1 GiB store
    python -m bench.api_bench --quick         # 1 round of 3 s loads, 64 MiB store
    invoke bench --api

Load comes from ``wrk`` (Debian package ``wrk``) on loopback, over TLS with
keep-alive connections; both servers run single-process, their event loop
pinned to one CPU, with the same certificate, and wrk runs on the other
CPUs (``taskset``), so the kernel cannot put client and server on one
CPU by chance. Besides throughput it reports the server's CPU time per
request (from /proc), which stays meaningful when other work shares the
machine. The small-store loads (hello-world, writes, reads, /healthz) run
in rounds, each on a fresh server, and the report gives each round and the
median with its range: on a shared 2-core VM one 10 s run can differ from
the next by half. Results: tables on stdout (the goals last), JSON in
bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import apsw

from bench import machine, store_gen
from bench.backup_bench import SEED
from portunus import log
from portunus.datadir import DataDir
from portunus.engine import tokens
from portunus.store.connection import open_store

REPO = Path(__file__).resolve().parent.parent
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}

WRITE_LUA = """
-- One client per wrk thread, fresh listen ports: every request is a real,
-- audited rule creation (201), never a clash.
local n = 0
function setup(thread) n = n + 1; thread:set("id", n) end
function init(args) counter = 0 end
request = function()
  counter = counter + 1
  local protocol = "tcp"
  local port = counter
  if counter > 65535 then protocol = "udp"; port = counter - 65535 end
  local body = string.format(
    '{"client":"%s%d","protocol":"%s","listen_start":%d,'
    .. '"targets":[{"host":"10.0.0.1","port":8080},{"host":"10.0.0.2","port":8080}]}',
    "PREFIX", id, protocol, port)
  return wrk.format("POST", "/v1/rules",
    {["Authorization"] = "Bearer TOKEN", ["Content-Type"] = "application/json"}, body)
end
"""

READ_LUA = """
-- Random rules by id among those the write phase created.
function init(args) math.randomseed(os.time() + os.clock() * 1e6) end
request = function()
  local id = math.random(FIRST, LAST)
  return wrk.format("GET", "/v1/rules/" .. id, {["Authorization"] = "Bearer TOKEN"})
end
"""


@dataclass
class Load:
    """One wrk run: throughput, latency, failures, and the server's CPU cost."""

    name: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    failed: int
    cpu_us_per_request: float
    extra: dict = field(default_factory=dict)


# --- servers ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A server subprocess, stopped with SIGTERM; CPU time read from /proc."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "w") as stderr:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, env=env)

    def client_cpus(self) -> list[int]:
        """The CPUs the server's event loop (its main thread) may not use:
        where wrk runs, so that the kernel's wake-up affinity cannot put the
        client on the server's CPU (on 2 cores it otherwise often does,
        leaving the other idle and halving throughput at random)."""
        # The main thread's id is the pid: its affinity, not the process's.
        return sorted(os.sched_getaffinity(0) - os.sched_getaffinity(self.proc.pid))

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_until_listening(self, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"server did not listen within {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


def start_portunus(data_dir: Path, work: Path, extra_config: str = "") -> tuple[Process, int]:
    port = free_port()
    config = work / f"server-{port}.toml"
    config.write_text(f'listen = "127.0.0.1:{port}"\n{extra_config}')
    argv = [sys.executable, "-m", "portunus", "--data-dir", str(data_dir)]
    server = Process([*argv, "--config", str(config), "serve"], work / f"serve-{port}.log")
    server.wait_until_listening(port)
    return server, port


def start_hello(cert: Path, key: Path, work: Path) -> tuple[Process, int]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.api_bench", "hello", str(port), str(cert), str(key)]
    server = Process(argv, work / f"hello-{port}.log", env={**os.environ, "PYTHONPATH": str(REPO)})
    server.wait_until_listening(port)
    return server, port


def serve_hello(port: int, cert: str, key: str) -> None:
    """The baseline: sanic's smallest app, configured like ours (single
    process, its loop on one CPU, TLS, no access log, no banner)."""
    from sanic import Sanic, text

    from portunus.server import affinity

    # One CPU, as portunus pins its event loop (and the client runs elsewhere).
    affinity.pin_thread(affinity.one_cpu(affinity.allowed_cpus()))
    app = Sanic("hello", configure_logging=False)

    @app.get("/")
    async def hello(request):
        return text("hello")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    app.run(
        host="127.0.0.1",
        port=port,
        ssl=context,
        single_process=True,
        access_log=False,
        motd=False,
    )


# --- load -----------------------------------------------------------------------------


def run_wrk(
    name: str,
    server: Process,
    url: str,
    args: argparse.Namespace,
    script: Path | None = None,
    headers: dict[str, str] | None = None,
) -> Load:
    argv = ["wrk", "-t", str(args.threads), "-c", str(args.connections)]
    client_cpus = server.client_cpus()
    if client_cpus:
        argv = ["taskset", "-c", ",".join(map(str, client_cpus)), *argv]
    argv += ["-d", f"{args.duration}s", "--latency", "--timeout", "30s"]
    for key, value in (headers or {}).items():
        argv += ["-H", f"{key}: {value}"]
    if script:
        argv += ["-s", str(script)]
    cpu_before = server.cpu_seconds()
    done = subprocess.run([*argv, url], capture_output=True, text=True, check=True)
    cpu = server.cpu_seconds() - cpu_before
    return parse_wrk(name, done.stdout, cpu)


def parse_wrk(name: str, output: str, cpu_seconds: float) -> Load:
    requests, seconds = map(float, re.search(r"(\d+) requests in ([\d.]+)s", output).groups())
    failed = sum(map(int, re.findall(r"Non-2xx or 3xx responses: (\d+)", output)))
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    failed += sum(map(int, errors.groups())) if errors else 0
    return Load(
        name=name,
        requests=int(requests),
        seconds=seconds,
        rps=round(requests / seconds, 1),
        p50_ms=_latency(output, "50%"),
        p99_ms=_latency(output, "99%"),
        failed=failed,
        cpu_us_per_request=round(cpu_seconds / max(requests, 1) * 1e6, 1),
    )


def _latency(output: str, percentile: str) -> float:
    value, unit = re.search(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()
    return round(float(value) * UNITS[unit], 3)


def write_script(work: Path, token: str, prefix: str) -> Path:
    """Writes as clients ``<prefix>1..N``: each wrk run gets clients of its
    own, so no run clashes with the listen ports of an earlier one."""
    path = work / f"write-{prefix}lua"
    path.write_text(WRITE_LUA.replace("TOKEN", token).replace("PREFIX", prefix))
    return path


def read_script(work: Path, token: str, first: int, last: int) -> Path:
    path = work / "read.lua"
    text = READ_LUA.replace("TOKEN", token).replace("FIRST", str(first))
    path.write_text(text.replace("LAST", str(last)))
    return path


# --- stores ---------------------------------------------------------------------------


def admin_token(data_dir: Path) -> str:
    """A fresh admin token in an existing store (the server is not running yet)."""
    conn = open_store(data_dir / "state.db")
    try:
        with conn:
            return tokens.create_operator_token(conn, f"bench-{time.time_ns()}", "admin", "bench")
    finally:
        conn.close()


@dataclass
class Api:
    """A running portunus server as the loads see it."""

    server: Process
    url: str
    cert: Path
    token: str
    work: Path

    def add_clients(self, prefix: str, count: int) -> None:
        import httpx

        context = ssl.create_default_context(cafile=str(self.cert))
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.url, verify=context, headers=headers) as client:
            for n in range(1, count + 1):
                client.post("/v1/clients", json={"name": f"{prefix}{n}"}).raise_for_status()

    def writes(self, name: str, prefix: str, args: argparse.Namespace) -> Load:
        """Rule creations as fresh clients ``<prefix>1..N`` (one per wrk
        thread), so no run clashes with the listen ports of an earlier one.
        ``extra["slow_on_server"]``: how many write transactions, and how
        many POST /v1/rules from handler start to response, took over 0.1,
        0.25 and 1 s (the server's own histograms), to tell stalls in the
        server from latency wrk adds on a busy machine."""
        self.add_clients(prefix, args.threads)
        script = write_script(self.work, self.token, prefix)
        slow_before = self.slow_writes()
        load = run_wrk(name, self.server, self.url, args, script)
        slow_after = self.slow_writes()
        load.extra["slow_on_server"] = {
            bound: slow_after[bound] - slow_before[bound] for bound in slow_after
        }
        return load

    def slow_writes(self) -> dict[str, int]:
        """Write transactions and rule writes so far slower than each bound."""
        import httpx

        context = ssl.create_default_context(cafile=str(self.cert))
        text = httpx.get(f"{self.url}/metrics", verify=context).text
        samples = dict(
            line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
        )
        total = int(samples["portunus_store_write_seconds_count"])
        bucket = 'portunus_store_write_seconds_bucket{{le="{}"}}'
        bounds = ("0.1", "0.25", "1.0")
        slow = {f"transaction >{b}s": total - int(samples[bucket.format(b)]) for b in bounds}
        route = 'route="/v1/rules"'
        handled = int(samples.get(f"portunus_http_request_duration_seconds_count{{{route}}}", 0))
        for b in bounds:
            key = f'portunus_http_request_duration_seconds_bucket{{{route},le="{b}"}}'
            slow[f"request >{b}s"] = handled - int(samples.get(key, 0))
        return slow


def start_api(data: Path, work: Path, token: str, extra_config: str = "") -> Api:
    server, port = start_portunus(data, work, extra_config)
    return Api(server, f"https://127.0.0.1:{port}", data / "server.crt", token, work)


def rule_id_range(state_db: Path) -> tuple[int, int]:
    conn = apsw.Connection(str(state_db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT min(id), max(id) FROM rules").fetchall()[0]
    finally:
        conn.close()


# --- phases ---------------------------------------------------------------------------


def small_store_phase(args: argparse.Namespace, work: Path) -> list[Load]:
    """hello-world, writes, reads: one after another, same machine, same TLS."""
    work.mkdir(parents=True)
    data = work / "small" / "data"
    api = start_api(data, work, tokens.bootstrap_admin(DataDir(data), "bench"))
    try:
        hello, hello_port = start_hello(api.cert, data / "server.key", work)
        try:
            loads = [run_wrk("sanic hello-world", hello, f"https://127.0.0.1:{hello_port}/", args)]
        finally:
            hello.stop()
        loads.append(api.writes("API: create rule (audited write)", "w-", args))
        first, last = rule_id_range(data / "state.db")
        script = read_script(work, api.token, first, last)
        loads.append(run_wrk("API: get rule by id (read)", api.server, api.url, args, script))
        healthz = f"{api.url}/healthz"
        loads.append(run_wrk("API: /healthz (no auth, no store)", api.server, healthz, args))
    finally:
        api.server.stop()
    return loads


def backup_phase(args: argparse.Namespace, work: Path) -> list[Load]:
    """Writes on a large store, alone and while online backups run back to back."""
    # The same cache as bench.backup_bench: one generated store per size.
    cache = args.workdir / "store" / f"{args.size_mib}mib"
    cached, info, _ = store_gen.cached_store(cache, args.size_mib, SEED)
    data = work / "large" / "data"
    shutil.copytree(cached, data)
    backups = work / "large" / "backups"
    backups.mkdir()
    api = start_api(data, work, admin_token(data), f'[backup]\ndir = "{backups}"\n')
    try:
        # Not reported: the copied store starts with a cold page cache.
        api.writes("warm-up", "warm-", argparse.Namespace(**{**vars(args), "duration": 3}))
        size = f"{info.bytes >> 20} MiB store"
        before = api.writes(f"writes, {size}, before the backups", "before-", args)
        looping = BackupLoop(api, backups)
        looping.start()
        looping.first_started.wait()
        during = api.writes(f"writes, {size}, during online backups", "during-", args)
        looping.finish()
        after = api.writes(f"writes, {size}, after the backups", "after-", args)
    finally:
        api.server.stop()
    alone = (before.rps + after.rps) / 2
    during.extra |= {
        "backups_completed": len(looping.seconds),
        "backup_seconds": looping.seconds,
        "backup_failures": looping.failures,
        "vs_alone": round(during.rps / alone, 3) if alone else None,
    }
    return [before, during, after]


class BackupLoop(threading.Thread):
    """POST /v1/admin/backup back to back; each artefact deleted once done
    (a GiB each), so the disk holds at most one."""

    def __init__(self, api: Api, directory: Path) -> None:
        super().__init__(daemon=True)
        self.api, self.directory = api, directory
        self.stop = threading.Event()
        self.first_started = threading.Event()
        self.seconds: list[float] = []
        self.failures = 0

    def run(self) -> None:
        import httpx

        context = ssl.create_default_context(cafile=str(self.api.cert))
        headers = {"Authorization": f"Bearer {self.api.token}"}
        with httpx.Client(base_url=self.api.url, verify=context, headers=headers, timeout=900) as c:
            while not self.stop.is_set():
                started = time.monotonic()
                self.first_started.set()
                response = c.post("/v1/admin/backup")
                if response.status_code != 201:
                    self.failures += 1
                    continue
                self.seconds.append(round(time.monotonic() - started, 2))
                for leftover in self.directory.iterdir():
                    leftover.unlink()

    def finish(self) -> None:
        self.stop.set()
        self.join()


# --- report -----------------------------------------------------------------------------


def table(loads: list[Load]) -> str:
    lines = [
        "| load | requests/s | p50 ms | p99 ms | failed | server CPU µs/request |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for load in loads:
        lines.append(
            f"| {load.name} | {load.rps:,.0f} | {load.p50_ms} | {load.p99_ms} | "
            f"{load.failed} | {load.cpu_us_per_request:,.0f} |"
        )
    return "\n".join(lines)


@dataclass
class Summary:
    """One load over the rounds: the median and the range."""

    name: str
    rps: list[float]
    cpu_us: list[float]
    failed: int

    @property
    def median_rps(self) -> float:
        return statistics.median(self.rps)


def summarize(rounds: list[list[Load]]) -> list[Summary]:
    by_name: dict[str, Summary] = {}
    for round_loads in rounds:
        for load in round_loads:
            entry = by_name.setdefault(load.name, Summary(load.name, [], [], 0))
            entry.rps.append(load.rps)
            entry.cpu_us.append(load.cpu_us_per_request)
            entry.failed += load.failed
    return list(by_name.values())


def summary_table(summary: list[Summary]) -> str:
    lines = [
        "| load | requests/s median | min-max | failed | server CPU µs/request median |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for entry in summary:
        spread = f"{min(entry.rps):,.0f}-{max(entry.rps):,.0f}"
        lines.append(
            f"| {entry.name} | {entry.median_rps:,.0f} | {spread} | {entry.failed}"
            f" | {statistics.median(entry.cpu_us):,.0f} |"
        )
    return "\n".join(lines)


GOALS = (("API: create rule (audited write)", 3000), ("API: get rule by id (read)", 5000))
BACKUP_GOAL = 0.70


def goals_table(summary: list[Summary], during: list[Load]) -> str:
    """The issue's goals against the medians (and the backup phase's ratio)."""
    lines = ["| goal | measured | target | met |", "| --- | ---: | ---: | --- |"]
    medians = {entry.name: entry.median_rps for entry in summary}
    for name, target in GOALS:
        if name in medians:
            met = "yes" if medians[name] >= target else "no"
            lines.append(f"| {name}, median req/s | {medians[name]:,.0f} | {target:,} | {met} |")
    ratio = next((load.extra["vs_alone"] for load in during if "vs_alone" in load.extra), None)
    if ratio is not None:
        met = "yes" if ratio >= BACKUP_GOAL else "no"
        lines.append(
            f"| writes during online backups / alone | {ratio:.2f} | {BACKUP_GOAL:.2f} | {met} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["hello"]:
        serve_hello(int(argv[1]), argv[2], argv[3])
        return
    args = parse_args(argv)
    log.configure("logfmt", "warning")  # the in-process engine calls stay quiet
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    work = args.workdir / f"api-{time.strftime('%Y%m%dT%H%M%S')}"
    work.mkdir(parents=True)
    results = {"machine": machine.describe(args.workdir), "settings": _settings(args)}
    rounds = []
    for n in range(1, args.rounds + 1):
        rounds.append(small_store_phase(args, work / f"round-{n}"))
        print(f"round {n} of {args.rounds}:\n{table(rounds[-1])}\n", flush=True)
    loads = [load for round_loads in rounds for load in round_loads]
    during = backup_phase(args, work) if not args.skip_backup else []
    loads += during
    results["loads"] = [asdict(load) for load in loads]
    results["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    summary = summarize(rounds)
    print(f"median of {args.rounds} rounds (min-max):\n{summary_table(summary)}\n")
    if during:
        print(table(during))
    for load in during:
        if load.extra:
            print(f"{load.name}: {json.dumps(load.extra)}")
    print(f"\n{goals_table(summary, during)}")
    out = REPO / "bench" / "results" / f"{work.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out}")
    if not args.keep:
        shutil.rmtree(work)


def _settings(args: argparse.Namespace) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per load (default 10)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1: 2 cores)")
    parser.add_argument("--size-mib", type=int, default=1024, help="large store size (1024)")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "work")
    parser.add_argument(
        "--rounds", type=int, default=3, help="small-store rounds, median reported (3)"
    )
    parser.add_argument("--quick", action="store_true", help="3 s loads, 64 MiB store, 1 round")
    parser.add_argument("--skip-backup", action="store_true", help="small-store loads only")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.size_mib, args.rounds = 3, 64, 1
    args.workdir = args.workdir.resolve()
    return args


if __name__ == "__main__":
    main()
