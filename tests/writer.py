"""A second process that writes to a live store, for the consistency and crash tests.

    python tests/writer.py ledger STATE_DB SEED
        Commits transfers as fast as it can until SIGTERM, then prints one JSON
        line {"commits": n, "errors": [...]}. Prints "ready" after its first commit.
    python tests/writer.py wal-only STATE_DB MARKER ROWS
        Commits ROWS crash rows and sets the marker with checkpoints off, then
        dies without closing, so every one of those transactions lives only in
        state.db-wal (a server killed mid-flight leaves exactly that).

Runs as a plain script (no ``tests`` package needed) and writes through the
store's own connection policy: WAL, synchronous=NORMAL, ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
from pathlib import Path

import apsw

from portunus.store.connection import open_store

# The consistency load. Every transaction moves an amount between two random
# accounts (pages all over the file), records both legs in the ledger (pages
# at its end) and bumps the counter (an early page). A snapshot torn between
# two commits breaks at least one of the invariants in LOAD_INVARIANTS.
ACCOUNT_BALANCE = 1_000
ACCOUNT_PAD_BYTES = 3_900  # about one account per 4 KiB page
LOAD_SCHEMA = """
CREATE TABLE load_accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, pad BLOB NOT NULL);
CREATE TABLE load_ledger (id INTEGER PRIMARY KEY, batch INTEGER NOT NULL,
                          account INTEGER NOT NULL, delta INTEGER NOT NULL);
CREATE TABLE load_counter (id INTEGER PRIMARY KEY CHECK (id = 1),
                           commits INTEGER NOT NULL, entries INTEGER NOT NULL);
INSERT INTO load_counter VALUES (1, 0, 0);
"""
LOAD_ACCOUNTS = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
INSERT INTO load_accounts (id, balance, pad) SELECT i, ?, randomblob(?) FROM n
"""

# The crash tests' distinguishable states: a marker row and bulk rows.
CRASH_SCHEMA = """
CREATE TABLE crash_marker (id INTEGER PRIMARY KEY CHECK (id = 1), state TEXT NOT NULL);
CREATE TABLE crash_rows (id INTEGER PRIMARY KEY, pad BLOB NOT NULL);
"""
CRASH_ROWS = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
INSERT INTO crash_rows (pad) SELECT randomblob(3900) FROM n
"""
WAL_ONLY_BATCH = 200


def commit_transfer(conn: apsw.Connection, batch: int, accounts: int, rng: random.Random) -> None:
    debit, credit = rng.sample(range(1, accounts + 1), 2)
    amount = rng.randint(1, 100)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("UPDATE load_accounts SET balance = balance - ? WHERE id = ?", (amount, debit))
        conn.execute(
            "UPDATE load_accounts SET balance = balance + ? WHERE id = ?", (amount, credit)
        )
        conn.execute(
            "INSERT INTO load_ledger (batch, account, delta) VALUES (?, ?, ?), (?, ?, ?)",
            (batch, debit, -amount, batch, credit, amount),
        )
        conn.execute(
            "UPDATE load_counter SET commits = ?, entries = entries + 2 WHERE id = 1", (batch,)
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def run_ledger(state_db: Path, seed: int) -> int:
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    rng = random.Random(seed)
    conn = open_store(state_db)
    accounts = conn.execute("SELECT count(*) FROM load_accounts").fetchall()[0][0]
    batch = conn.execute("SELECT commits FROM load_counter").fetchall()[0][0]
    commits, errors = 0, []
    while not stopping and len(errors) < 20:
        try:
            commit_transfer(conn, batch + 1, accounts, rng)
        except apsw.Error as exc:
            # Reported, never retried silently: the test asserts there are none.
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        batch += 1
        commits += 1
        if commits == 1:
            print("ready", flush=True)
    conn.close()
    print(json.dumps({"commits": commits, "errors": errors}), flush=True)
    return 0


def run_wal_only(state_db: Path, marker: str, rows: int) -> int:
    conn = open_store(state_db)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    for start in range(0, rows, WAL_ONLY_BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(CRASH_ROWS, (min(WAL_ONLY_BATCH, rows - start),))
        conn.execute("COMMIT")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE crash_marker SET state = ? WHERE id = 1", (marker,))
    conn.execute("COMMIT")
    print("committed", flush=True)
    # No close: closing the last connection would checkpoint the WAL away.
    os._exit(0)


def main(argv: list[str]) -> int:
    mode, state_db, *rest = argv
    if mode == "ledger":
        return run_ledger(Path(state_db), int(rest[0]))
    if mode == "wal-only":
        return run_wal_only(Path(state_db), rest[0], int(rest[1]))
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
