"""A real Portunus store of about N MiB, generated once and cached.

The product creates the store (``portunus-server bootstrap-admin``: schema,
migrations, the admin token); this module then bulk-fills the real tables
with clients, rules, rule targets and audit rows carrying ~1 KiB JSON
details, in one transaction, from a fixed seed: the same bytes every time
for a given size, seed and SQLite version. The result is a WAL-mode store,
checkpointed, with no -wal left beside it.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import apsw

from bench import commands

GENERATOR_VERSION = 1  # bump when the generated content changes: invalidates caches
MiB = 1024 * 1024
RULES_PER_CLIENT = 4
UPDATES_PER_CLIENT = 11  # audit rows beyond the creations: the log dominates, as in production
CLIENTS_PER_BATCH = 50  # ~1 MiB: how far generation may overshoot the target
EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z
TABLES = ("operator_tokens", "clients", "rules", "rule_targets", "audit_log")


@dataclass(frozen=True)
class StoreInfo:
    size_mib: int
    seed: int
    generator: int
    bytes: int
    pages: int
    rows: dict[str, int]
    generate_seconds: float

    def matches(self, size_mib: int, seed: int, state_db: Path) -> bool:
        return (
            (self.size_mib, self.seed, self.generator) == (size_mib, seed, GENERATOR_VERSION)
            and state_db.is_file()
            and state_db.stat().st_size == self.bytes
        )


def cached_store(cache_dir: Path, size_mib: int, seed: int) -> tuple[Path, StoreInfo, bool]:
    """(data dir, info, reused?): reuse the cached store when it matches."""
    data_dir = cache_dir / "data"
    meta = cache_dir / "store.json"
    if meta.is_file():
        info = StoreInfo(**json.loads(meta.read_text()))
        if info.matches(size_mib, seed, data_dir / "state.db"):
            return data_dir, info, True
    meta.unlink(missing_ok=True)
    info = generate(data_dir, size_mib, seed)
    meta.write_text(json.dumps(asdict(info), indent=2) + "\n")
    return data_dir, info, False


def generate(data_dir: Path, size_mib: int, seed: int) -> StoreInfo:
    started = time.monotonic()
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(commands.bootstrap_admin(data_dir), check=True, capture_output=True)
    state_db = data_dir / "state.db"
    fill(state_db, size_mib * MiB, random.Random(seed))
    (data_dir / "state.db.lock").unlink(missing_ok=True)
    return StoreInfo(
        size_mib=size_mib,
        seed=seed,
        generator=GENERATOR_VERSION,
        bytes=state_db.stat().st_size,
        pages=state_db.stat().st_size // _page_size(state_db),
        rows=row_counts(state_db),
        generate_seconds=round(time.monotonic() - started, 1),
    )


def fill(state_db: Path, target_bytes: int, rnd: random.Random) -> None:
    conn = apsw.Connection(str(state_db))
    try:
        # Bulk load: a rollback journal in memory holds only the few pages
        # that existed before, and nothing is synced until the end.
        conn.execute("PRAGMA journal_mode=MEMORY")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-65536")
        page_size = conn.execute("PRAGMA page_size").fetchall()[0][0]
        with conn:
            client_id = _max_id(conn, "clients")
            while _page_count(conn) * page_size < target_bytes:
                _insert_batch(conn, rnd, range(client_id + 1, client_id + CLIENTS_PER_BATCH + 1))
                client_id += CLIENTS_PER_BATCH
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _insert_batch(conn: apsw.Connection, rnd: random.Random, client_ids: range) -> None:
    clients, rules, targets, audit = [], [], [], []
    for client_id in client_ids:
        stamp = _rfc3339(EPOCH + client_id * 60)
        name = f"edge-{client_id:07d}"
        token_hash = hashlib.sha256(f"bench-client-{client_id}".encode()).digest()
        clients.append((client_id, name, token_hash, stamp))
        audit.append((stamp, "bench", "client.create", f"client:{name}", _details(rnd)))
        for r in range(RULES_PER_CLIENT):
            rule_id = (client_id - 1) * RULES_PER_CLIENT + r + 1
            rules.append(_rule(rnd, rule_id, client_id, stamp))
            targets.extend(_targets(rnd, rule_id))
            audit.append((stamp, "bench", "rule.create", f"rule:{rule_id}", _details(rnd)))
        for u in range(UPDATES_PER_CLIENT):
            rule_id = (client_id - 1) * RULES_PER_CLIENT + u % RULES_PER_CLIENT + 1
            at = _rfc3339(EPOCH + client_id * 60 + u + 1)
            audit.append((at, "bench", "rule.update", f"rule:{rule_id}", _details(rnd)))
    conn.executemany(
        "INSERT INTO clients (id, name, token_hash, created_at) VALUES (?,?,?,?)", clients
    )
    conn.executemany(
        "INSERT INTO rules (id, client_id, protocol, listen_start, listen_end, enabled,"
        " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
        rules,
    )
    conn.executemany(
        "INSERT INTO rule_targets (rule_id, position, host, port, priority) VALUES (?,?,?,?,?)",
        targets,
    )
    conn.executemany(
        "INSERT INTO audit_log (at, actor, action, resource, details) VALUES (?,?,?,?,?)", audit
    )


def _rule(rnd: random.Random, rule_id: int, client_id: int, stamp: str) -> tuple:
    start = rnd.randrange(1024, 60000)
    end = start + rnd.choice((0, 0, 0, 9, 99))
    return (rule_id, client_id, rnd.choice(("tcp", "udp")), start, end, 1, stamp, stamp)


def _targets(rnd: random.Random, rule_id: int) -> list[tuple]:
    return [
        (
            rule_id,
            position,
            f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}",
            rnd.randrange(1, 65536),
            position - 1,
        )
        for position in range(1, rnd.randrange(1, 9) + 1)
    ]


def _details(rnd: random.Random) -> str:
    """About 1 KiB of JSON, as an audit row of a rule change carries."""
    return json.dumps(
        {
            "request_id": rnd.randbytes(16).hex(),
            "remote_addr": f"192.0.2.{rnd.randrange(1, 255)}",
            "before": {"enabled": True, "targets": rnd.randrange(1, 9)},
            "after": {"enabled": rnd.random() < 0.9, "targets": rnd.randrange(1, 9)},
            "note": rnd.randbytes(rnd.randrange(380, 460)).hex(),
        },
        sort_keys=True,
    )


def _rfc3339(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(epoch))


def _max_id(conn: apsw.Connection, table: str) -> int:
    return conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchall()[0][0]


def _page_count(conn: apsw.Connection) -> int:
    return conn.execute("PRAGMA page_count").fetchall()[0][0]


def _page_size(state_db: Path) -> int:
    # Bytes 16-17 of the header; 1 means 65536.
    with open(state_db, "rb") as f:
        f.seek(16)
        size = int.from_bytes(f.read(2), "big")
    return 65536 if size == 1 else size


def row_counts(path: Path) -> dict[str, int]:
    """Row counts of the server's tables, reading the file as it is
    (immutable: no -wal or -shm appears beside a backup we look at)."""
    conn = apsw.Connection(
        f"{path.resolve().as_uri()}?immutable=1",
        flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI,
    )
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in TABLES}
    finally:
        conn.close()
