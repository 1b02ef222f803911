"""The store's connection policy: hot statements are prepared once.

SQLite calls a connection's authorizer while it compiles a statement, never
while it runs one, so counting those calls counts (re-)preparations.
Without the query planner stability guarantee, SQLite re-prepares a cached
statement whenever a bound value the planner looked at changes, which for
the server's rule lookup and clash probe was every request.
"""

from __future__ import annotations

import apsw
import pytest

from portunus.datadir import DataDir
from portunus.server.model import rules
from portunus.store.connection import open_readonly, open_store

HOT_STATEMENTS = {
    "rule by id": (rules.RULE_BY_ID, [(1,), (2,), (3,), (4,)]),
    "client and clash probe": (
        rules.CLIENT_AND_NEIGHBOUR,
        [("tcp", 10000, None, "edge0"), ("tcp", 10001, 1, "edge1"), ("udp", 5, 2, "EDGE2")],
    ),
}


def _compilations(conn: apsw.Connection, sql: str, bindings: list[tuple]) -> list[int]:
    """Authorizer calls so far, after each execution of ``sql``."""
    calls = 0

    def authorizer(*_: object) -> int:
        nonlocal calls
        calls += 1
        return apsw.SQLITE_OK

    conn.authorizer = authorizer  # expires cached statements: one fresh start
    seen = []
    for values in bindings:
        conn.execute(sql, values).fetchall()
        seen.append(calls)
    conn.authorizer = None
    return seen


@pytest.mark.parametrize("opener", [open_store, open_readonly], ids=["writer", "reader"])
@pytest.mark.parametrize("name", sorted(HOT_STATEMENTS))
def test_a_cached_statement_is_not_recompiled_for_new_values(
    store: DataDir, opener, name: str
) -> None:
    sql, bindings = HOT_STATEMENTS[name]
    conn = opener(store.state_db)
    try:
        seen = _compilations(conn, sql, bindings)
    finally:
        conn.close()
    assert seen[0] > 0, "the first execution compiles the statement"
    assert seen == [seen[0]] * len(seen), f"re-compiled for new bound values: {seen}"


# A plan every SQLite release makes from the bound value: a LIKE prefix on
# an index. (Which other statements SQLite re-plans for new values changes
# between releases: before 3.54 the hot statements above were not.)
VALUE_PLANNED = "SELECT name FROM temp.names WHERE name LIKE ?", [("a%",), ("b%",), ("c%",)]


def test_the_check_sees_recompilation_without_the_guarantee(store: DataDir) -> None:
    """The counter above can fail: SQLite's default does recompile."""
    conn = open_readonly(store.state_db)
    try:
        conn.execute("CREATE TEMP TABLE names (name TEXT COLLATE NOCASE)")
        conn.execute("CREATE INDEX temp.names_by_name ON names (name)")
        conn.config(apsw.SQLITE_DBCONFIG_ENABLE_QPSG, 0)
        seen = _compilations(conn, *VALUE_PLANNED)
    finally:
        conn.close()
    assert seen[-1] > seen[0]
