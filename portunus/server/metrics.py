"""``GET /metrics``: Prometheus text format, written by hand (no client
library needed for a handful of series).

Request counters and the latency histogram are kept in memory by the
request hooks; store and backup facts are read from the filesystem at
scrape time.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sanic import Blueprint, Sanic
from sanic.request import Request
from sanic.response import HTTPResponse, text

from portunus import __version__
from portunus.engine.backup import BACKUP_PREFIX
from portunus.replication import metrics as replication_metrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Methods counted under their own name; anything else a client sends (any
# token is a valid HTTP method) is counted as "other", so no client can add
# series without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

bp = Blueprint("metrics")


class Histogram:
    """Durations in ``BUCKETS``; updated by one thread, read by any."""

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)  # not cumulative; lines() sums up
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        cumulative = itertools.accumulate(self.buckets)
        out = [
            f'{name}_bucket{{{labels}{sep}le="{bound}"}} {n}'
            for bound, n in zip(BUCKETS, cumulative, strict=False)
        ]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.sum}", f"{name}_count{suffix} {self.count}"]
        return out


class RequestMetrics:
    """Counters by (route, method, status) and a latency histogram by route."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.latency: dict[str, Histogram] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in KNOWN_METHODS:
            method = "other"
        self.requests[(route, method, status)] += 1
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency[route] = Histogram()
        histogram.observe(seconds)

    def render(self) -> list[str]:
        lines = [
            "# HELP portunus_http_requests_total HTTP requests by route, method and status.",
            "# TYPE portunus_http_requests_total counter",
        ]
        for (route, method, status), n in sorted(self.requests.items()):
            labels = f'route="{_escape(route)}",method="{_escape(method)}",status="{status}"'
            lines.append(f"portunus_http_requests_total{{{labels}}} {n}")
        lines += [
            "# HELP portunus_http_request_duration_seconds Time to handle a request, by route.",
            "# TYPE portunus_http_request_duration_seconds histogram",
        ]
        for route in sorted(self.latency):
            name = "portunus_http_request_duration_seconds"
            lines += self.latency[route].lines(name, f'route="{_escape(route)}"')
        return lines


@dataclass(frozen=True)
class StoreFacts:
    db_bytes: int
    wal_bytes: int
    schema_version: int
    writes_committed: int
    writes_rolled_back: int
    write_queue: int
    write_seconds: Histogram
    newest_backup_age: float | None


def setup_metrics(app: Sanic) -> None:
    app.ctx.metrics = RequestMetrics()
    app.blueprint(bp)


@bp.get("/metrics")
async def metrics(request: Request) -> HTTPResponse:
    ctx = request.app.ctx
    backup_dir = ctx.settings.get("backup.dir")
    # A directory scan: off the loop, as the backup dir may hold many files.
    newest = await asyncio.get_running_loop().run_in_executor(None, newest_backup_age, backup_dir)
    facts = StoreFacts(
        _size(ctx.store.data_dir.state_db),
        _size(ctx.store.data_dir.wal),
        ctx.store.schema_version,
        ctx.store.writer.committed,
        ctx.store.writer.rolled_back,
        ctx.store.writer.pending(),
        ctx.store.writer.durations,
        newest,
    )
    replicator = getattr(ctx, "replicator", None)
    if replicator is not None:  # a fresh answer, not the last poll's
        await asyncio.get_running_loop().run_in_executor(None, replicator.poll)
    replication = replication_metrics.render(replicator)
    body = "\n".join([*ctx.metrics.render(), *render_store(facts), *replication]) + "\n"
    return text(body, content_type=CONTENT_TYPE)


def render_store(facts: StoreFacts) -> list[str]:
    lines = [
        *_gauge("portunus_build_info", "Version of this binary.", 1, f'version="{__version__}"'),
        *_gauge("portunus_store_bytes", "Size of state.db.", facts.db_bytes),
        *_gauge("portunus_store_wal_bytes", "Size of state.db-wal.", facts.wal_bytes),
        *_gauge("portunus_schema_version", "Schema version of the store.", facts.schema_version),
        *_gauge("portunus_writer_queue", "Writes waiting for the writer.", facts.write_queue),
        "# HELP portunus_store_writes_total Write transactions by outcome.",
        "# TYPE portunus_store_writes_total counter",
        f'portunus_store_writes_total{{outcome="committed"}} {facts.writes_committed}',
        f'portunus_store_writes_total{{outcome="rolled_back"}} {facts.writes_rolled_back}',
        "# HELP portunus_store_write_seconds Time each write transaction held the writer.",
        "# TYPE portunus_store_write_seconds histogram",
        *facts.write_seconds.lines("portunus_store_write_seconds"),
    ]
    if facts.newest_backup_age is not None:
        lines += _gauge(
            "portunus_backup_newest_age_seconds",
            "Age of the newest backup in [backup].dir (absent when there is none).",
            round(facts.newest_backup_age, 3),
        )
    return lines


def newest_backup_age(backup_dir: str | None) -> float | None:
    """Seconds since the newest ``portunus-state-*.db`` (or sealed ``.db.age``) in
    ``backup_dir`` was written."""
    if not backup_dir:
        return None
    newest = None
    try:
        with os.scandir(Path(backup_dir).expanduser()) as entries:
            for entry in entries:
                if entry.name.startswith(BACKUP_PREFIX) and entry.name.endswith((".db", ".db.age")):
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                    newest = mtime if newest is None else max(newest, mtime)
    except OSError:
        return None
    return None if newest is None else max(0.0, time.time() - newest)


def _gauge(name: str, help_text: str, value: float, labels: str = "") -> list[str]:
    sample = f"{name}{{{labels}}}" if labels else name
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{sample} {value}"]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _escape(value: str) -> str:
    """A label value as the text format wants it: backslash, quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
