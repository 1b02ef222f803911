"""The listen-port clash check, against a brute-force model: any sequence
of creates and replaces on a real store keeps the rules of one client and
protocol free of overlaps, and refuses exactly the requests that would
overlap."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portunus.server.errors import Conflict, InvalidInput
from portunus.server.model import rules
from portunus.server.model.rules import RuleSpec, Target
from portunus.store import audit
from portunus.store.connection import open_store
from portunus.store.migrations import handshake

CLIENTS = ("edge-a", "edge-b")
PORTS = st.integers(1, 60)  # a small space, so that clashes are common

request = st.tuples(
    st.sampled_from(("create", "replace")),
    st.sampled_from(CLIENTS + ("EDGE-A", "nobody")),  # names match in any case
    st.sampled_from(("tcp", "udp")),
    PORTS,
    st.integers(0, 5),
    st.booleans(),
    st.integers(0, 30),  # which existing rule a replace targets
)


@pytest.fixture(scope="module")
def conn(tmp_path_factory):
    path = tmp_path_factory.mktemp("clash") / "state.db"
    connection = open_store(path)
    handshake(connection, path, allow_empty=True)
    for name in CLIENTS:
        connection.execute(
            "INSERT INTO clients (name, token_hash, created_at) VALUES (?, randomblob(32), ?)",
            (name, audit.now_rfc3339()),
        )
    yield connection
    connection.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(request, max_size=40))
def test_the_clash_check_refuses_exactly_the_overlapping_requests(conn, requests):
    conn.execute("BEGIN")
    try:
        model: dict[int, tuple[str, str, int, int]] = {}  # id -> (client, protocol, start, end)
        for op, client, protocol, start, width, enabled, pick in requests:
            spec = RuleSpec(client, protocol, start, start + width, enabled, (Target("h", 80),))
            owner = client.lower()
            exclude = sorted(model)[pick % len(model)] if op == "replace" and model else None
            clashes = owner in CLIENTS and any(
                c == owner and p == protocol and s <= spec.listen_end and spec.listen_start <= e
                for rule_id, (c, p, s, e) in model.items()
                if rule_id != exclude
            )
            try:
                if op == "replace" and exclude is not None:
                    done = rules.replace(conn, exclude, spec, "test")
                else:
                    done = rules.create(conn, spec, "test")
            except InvalidInput as error:
                assert owner not in CLIENTS and error.field == "client"
                continue
            except Conflict as error:
                assert clashes and error.field == "listen_start"
                continue
            assert not clashes, f"{spec} overlaps {model}"
            assert done["client"] == owner
            model[done["id"]] = (owner, protocol, spec.listen_start, spec.listen_end)
        stored = conn.execute(
            "SELECT r.id, c.name, r.protocol, r.listen_start, r.listen_end"
            " FROM rules r JOIN clients c ON c.id = r.client_id"
        ).fetchall()
        assert {row[0]: tuple(row[1:]) for row in stored} == model
    finally:
        conn.execute("ROLLBACK")


def test_no_such_client_is_refused_naming_the_field(conn):
    with pytest.raises(InvalidInput) as refused:
        rules.create(conn, RuleSpec("ghost", "tcp", 1, 1, True, (Target("h", 80),)), "test")
    assert refused.value.field == "client"
