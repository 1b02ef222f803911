"""The HTTPS API, end to end: one real server for the module, driven with
httpx over TLS (trusting the certificate the server generated)."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from types import SimpleNamespace

import apsw
import pytest
from prometheus_client.parser import text_string_to_metric_families

from portunus.datadir import DataDir
from portunus.engine import tokens as token_engine
from portunus.engine.verify import verify
from portunus.store.migrations import binary_schema_version
from tests import support
from tests.serving import free_port, start_server, write_config

RULE = {
    "client": "edge-a",
    "protocol": "tcp",
    "listen_start": 8000,
    "targets": [{"host": "10.0.0.1", "port": 80}],
}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """A served store with an admin token ('ops'), a viewer token, and two clients."""
    root = tmp_path_factory.mktemp("api")
    (root / "home").mkdir()
    (root / "backups").mkdir()
    data = root / "data"
    admin_token = token_engine.bootstrap_admin(DataDir(data), "ops")
    config = write_config(root / "server.toml", free_port(), backup={"dir": str(root / "backups")})
    server = start_server(data, config, support.clean_env(root / "home"))
    try:
        admin = server.client(admin_token)
        viewer_token = admin.post("/v1/tokens", json={"name": "watcher", "role": "viewer"}).json()
        clients = {
            name: admin.post("/v1/clients", json={"name": name}).json()["token"]
            for name in ("edge-a", "edge-b")
        }
        yield SimpleNamespace(
            server=server,
            admin=admin,
            admin_token=admin_token,
            viewer=server.client(viewer_token["token"]),
            anonymous=server.client(),
            client_tokens=clients,
            backups=root / "backups",
        )
    finally:
        server.stop()
    # Whichever tests of this module ran, in whatever order: none made the
    # server log a bug (a failure here is reported as the last test's error).
    assert_no_bug_logged(server)


@pytest.fixture
def rule(api):
    """A fresh rule on edge-a (port 9000/tcp), deleted afterwards if still there."""
    created = api.admin.post("/v1/rules", json={**RULE, "listen_start": 9000})
    assert created.status_code == 201, created.text
    yield created.json()
    api.admin.delete(f"/v1/rules/{created.json()['id']}")


def audit_count(api) -> int:
    entries, cursor = [], None
    while True:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = api.viewer.get("/v1/audit", params=params).json()
        entries += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            return len(entries)


# --- health ---------------------------------------------------------------------


def test_healthz_needs_no_token_and_readyz_reports_the_schema(api):
    """Liveness and readiness for load balancers and systemd."""
    assert api.anonymous.get("/healthz").json() == {"status": "ok"}
    ready = api.anonymous.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "schema_version": binary_schema_version()}


# --- auth -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_token"),
        ("Basic b3BzOnNlY3JldA==", "malformed_header"),
        ("Bearer", "malformed_header"),
        ("Bearer ptk_not-a-real-token-5ca1ab1e", "unknown_token"),
        ("Bearer pct_client-token-on-an-operator-route", "unknown_token"),
    ],
)
def test_a_missing_or_bad_token_is_401_with_an_auth_failure_event(api, header, reason):
    """The event says why; the token itself never reaches the log."""
    before = len(api.server.events())
    headers = {"Authorization": header} if header else {}
    response = api.anonymous.get("/v1/rules", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "auth.failure"
    assert response.headers["www-authenticate"].startswith("Bearer")
    failures = [e for e in api.server.events()[before:] if e["event"] == "auth.failure"]
    assert [f["reason"] for f in failures] == [reason]
    if header and len(header.split()) == 2:
        assert header.split()[1] not in api.server.stderr()


def test_a_known_token_of_the_wrong_kind_is_403_saying_which_kind(api):
    """Client tokens poll rules; they are not operator tokens, and vice
    versa. A valid token on the wrong kind of endpoint is not 'unknown': the
    response and the auth.forbidden event say which kind was given and which
    was needed."""
    edge = api.server.client(api.client_tokens["edge-a"])
    assert edge.get("/v1/client/rules").status_code == 200
    before = len(api.server.events())
    cases = [
        (edge, "/v1/rules", "client", "operator"),
        (api.admin, "/v1/client/rules", "operator", "client"),
        (api.viewer, "/v1/client/rules", "operator", "client"),
    ]
    for caller, path, given, needed in cases:
        response = caller.get(path)
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "auth.forbidden"
        message = response.json()["message"]
        assert f"needs a{'n' if needed == 'operator' else ''} {needed} token" in message
        assert f"yours is a{'n' if given == 'operator' else ''} {given} token" in message
    events = api.server.events()[before:]
    assert "auth.failure" not in [e["event"] for e in events]
    forbidden = [e for e in events if e["event"] == "auth.forbidden"]
    assert [(e["reason"], e["given"], e["needed"], e["path"]) for e in forbidden] == [
        ("wrong_token_kind", given, needed, path) for _, path, given, needed in cases
    ]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/tokens", {"name": "x", "role": "viewer"}),
        ("DELETE", "/v1/tokens/1", None),
        ("POST", "/v1/clients", {"name": "x"}),
        ("DELETE", "/v1/clients/edge-a", None),
        ("POST", "/v1/rules", RULE),
        ("PUT", "/v1/rules/1", RULE),
        ("DELETE", "/v1/rules/1", None),
        ("POST", "/v1/admin/backup", None),
    ],
)
def test_a_viewer_reads_but_every_write_is_403(api, method, path, body):
    """Viewers read, admins write; the refusal changes nothing."""
    before = audit_count(api)
    response = api.viewer.request(method, path, json=body)
    assert response.status_code == 403
    assert response.json()["error"] == "auth.forbidden"
    assert audit_count(api) == before


@pytest.mark.parametrize(
    "path", ["/v1/tokens", "/v1/clients", "/v1/clients/edge-a", "/v1/rules", "/v1/audit"]
)
def test_a_viewer_can_read_every_operator_resource(api, path):
    """Every GET an operator has is open to viewers."""
    assert api.viewer.get(path).status_code == 200


# --- tokens -----------------------------------------------------------------------


def test_a_token_is_shown_once_listed_without_secrets_and_dies_when_deleted(api):
    """Creation returns the token; the list never does; deletion revokes at once."""
    created = api.admin.post("/v1/tokens", json={"name": "temp-admin", "role": "admin"})
    assert created.status_code == 201
    body = created.json()
    assert body["token"].startswith("ptk_") and body["role"] == "admin"
    listed = api.viewer.get("/v1/tokens").json()["tokens"]
    assert {"ops", "watcher", "temp-admin"} <= {t["name"] for t in listed}
    assert all("token" not in t and "token_hash" not in t for t in listed)

    temp = api.server.client(body["token"])
    assert temp.get("/v1/rules").status_code == 200  # now cached as valid
    assert api.admin.delete(f"/v1/tokens/{body['id']}").status_code == 204
    assert temp.get("/v1/rules").status_code == 401
    assert api.admin.delete(f"/v1/tokens/{body['id']}").status_code == 404


def test_the_last_admin_token_cannot_be_deleted(api):
    """Deleting it would lock every operator out: 409, and it still works."""
    ops = next(t for t in api.admin.get("/v1/tokens").json()["tokens"] if t["name"] == "ops")
    response = api.admin.delete(f"/v1/tokens/{ops['id']}")
    assert response.status_code == 409
    assert response.json()["error"] == "api.conflict"
    assert api.admin.get("/v1/tokens").status_code == 200


def test_token_use_is_recorded_in_last_used_at(api):
    """Bookkeeping for operators auditing stale tokens."""
    listed = api.admin.get("/v1/tokens").json()["tokens"]
    ops = next(t for t in listed if t["name"] == "ops")
    assert ops["last_used_at"] is not None


# --- clients ----------------------------------------------------------------------


def test_a_client_is_created_found_case_insensitively_and_deleted_with_its_rules(api):
    """The client's token comes once; deleting the client deletes its rules."""
    created = api.admin.post("/v1/clients", json={"name": "Edge-Temp"})
    assert created.status_code == 201
    assert created.json()["token"].startswith("pct_")
    rule = api.admin.post("/v1/rules", json={**RULE, "client": "edge-temp"}).json()
    found = api.viewer.get("/v1/clients/EDGE-TEMP").json()
    assert found == {
        "id": created.json()["id"],
        "name": "Edge-Temp",
        "created_at": created.json()["created_at"],
        "rules": 1,
    }
    assert "Edge-Temp" in [c["name"] for c in api.viewer.get("/v1/clients").json()["clients"]]
    assert api.admin.delete("/v1/clients/edge-temp").status_code == 204
    assert api.viewer.get("/v1/clients/Edge-Temp").status_code == 404
    assert api.viewer.get(f"/v1/rules/{rule['id']}").status_code == 404
    gone = api.server.client(created.json()["token"])
    assert gone.get("/v1/client/rules").status_code == 401


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/tokens", {"name": "ops", "role": "viewer"}),
        ("/v1/clients", {"name": "edge-a"}),
        ("/v1/clients", {"name": "EDGE-A"}),
    ],
)
def test_a_taken_name_is_409(api, path, body):
    """Names are unique (client names case-insensitively)."""
    response = api.admin.post(path, json=body)
    assert response.status_code == 409
    assert response.json()["field"] == "name"


# --- rules ------------------------------------------------------------------------


def test_a_rule_is_created_read_replaced_and_deleted(api):
    """The whole life of a rule, each step as the API reference shows it."""
    body = {
        "client": "edge-a",
        "protocol": "udp",
        "listen_start": 5000,
        "listen_end": 5010,
        "enabled": False,
        "targets": [
            {"host": "db1.internal", "port": 5432, "priority": 1},
            {"host": "2001:db8::1", "port": 5432},
        ],
    }
    created = api.admin.post("/v1/rules", json=body)
    assert created.status_code == 201
    rule = created.json()
    assert rule["targets"] == [
        {"host": "db1.internal", "port": 5432, "priority": 1},
        {"host": "2001:db8::1", "port": 5432, "priority": 0},
    ]
    assert {k: rule[k] for k in ("client", "protocol", "listen_start", "listen_end")} == {
        "client": "edge-a",
        "protocol": "udp",
        "listen_start": 5000,
        "listen_end": 5010,
    }
    assert rule["enabled"] is False
    assert api.viewer.get(f"/v1/rules/{rule['id']}").json() == rule

    replaced = api.admin.put(f"/v1/rules/{rule['id']}", json={**RULE, "listen_start": 5001})
    assert replaced.status_code == 200
    assert replaced.json()["listen_start"] == 5001 and replaced.json()["listen_end"] == 5001
    assert replaced.json()["created_at"] == rule["created_at"]
    assert api.admin.delete(f"/v1/rules/{rule['id']}").status_code == 204
    assert api.viewer.get(f"/v1/rules/{rule['id']}").status_code == 404
    assert api.admin.delete(f"/v1/rules/{rule['id']}").status_code == 404


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"listen_start": 9000}, 409),
        ({"listen_start": 8990, "listen_end": 9000}, 409),
        ({"listen_start": 8990, "listen_end": 9010}, 409),
        ({"listen_start": 8999, "listen_end": 8999}, 201),
        ({"listen_start": 9001}, 201),
        ({"listen_start": 9000, "protocol": "udp"}, 201),
        ({"listen_start": 9000, "client": "edge-b"}, 201),
    ],
    ids=["same", "overlaps-end", "contains", "below", "above", "other-protocol", "other-client"],
)
def test_a_listen_port_clash_on_the_same_client_and_protocol_is_409(api, rule, change, status):
    """Ranges clash when they overlap on one client and protocol, and only then."""
    before = audit_count(api)
    response = api.admin.post("/v1/rules", json={**RULE, **change})
    assert response.status_code == status, response.text
    if status == 409:
        assert response.json()["field"] == "listen_start"
        assert f"rule {rule['id']}" in response.json()["message"]
        assert audit_count(api) == before  # nothing half-written
    else:
        api.admin.delete(f"/v1/rules/{response.json()['id']}")


def test_a_rule_can_be_replaced_in_place_but_not_onto_another(api, rule):
    """PUT ignores the rule's own ports and still sees every other rule's."""
    other = api.admin.post("/v1/rules", json={**RULE, "listen_start": 9100}).json()
    same = api.admin.put(f"/v1/rules/{rule['id']}", json={**RULE, "listen_start": 9000})
    assert same.status_code == 200
    clash = api.admin.put(f"/v1/rules/{rule['id']}", json={**RULE, "listen_start": 9100})
    assert clash.status_code == 409
    assert api.viewer.get(f"/v1/rules/{rule['id']}").json()["listen_start"] == 9000
    api.admin.delete(f"/v1/rules/{other['id']}")


def test_rules_are_listed_by_cursor_and_filtered(api):
    """Pages of `limit` in id order; next_cursor is null on the last page."""
    made = [
        api.admin.post("/v1/rules", json={**RULE, "client": "edge-b", "listen_start": p}).json()
        for p in range(7000, 7005)
    ]
    seen, cursor = [], None
    while True:
        params = {"client": "edge-b", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api.viewer.get("/v1/rules", params=params).json()
        assert len(page["rules"]) <= 2
        seen += page["rules"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [r["id"] for r in seen] == [r["id"] for r in made]
    udp = api.viewer.get("/v1/rules", params={"client": "edge-b", "protocol": "udp"}).json()
    assert udp["rules"] == []
    for r in made:
        api.admin.delete(f"/v1/rules/{r['id']}")


def test_a_client_polls_only_its_own_enabled_rules(api):
    """What an edge forwarder sees: enabled rules of its own, nothing else."""
    mine = api.admin.post("/v1/rules", json={**RULE, "client": "edge-b", "listen_start": 6000})
    off = api.admin.post(
        "/v1/rules", json={**RULE, "client": "edge-b", "listen_start": 6001, "enabled": False}
    )
    theirs = api.admin.post("/v1/rules", json={**RULE, "listen_start": 6000})
    polled = api.server.client(api.client_tokens["edge-b"]).get("/v1/client/rules").json()
    assert polled["client"] == "edge-b"
    assert [r["id"] for r in polled["rules"]] == [mine.json()["id"]]
    for made in (mine, off, theirs):
        api.admin.delete(f"/v1/rules/{made.json()['id']}")


# --- bad input --------------------------------------------------------------------


def _without(key: str) -> dict:
    return {k: v for k, v in RULE.items() if k != key}


def _target(**fields) -> dict:
    return {**RULE, "targets": [{"host": "10.0.0.1", "port": 80, **fields}]}


BAD_RULES = [
    (b"{not json", "body"),
    (b"[1, 2]", "body"),
    (b"", "body"),
    ({**RULE, "enabeld": True}, "enabeld"),
    (_without("client"), "client"),
    (_without("protocol"), "protocol"),
    (_without("listen_start"), "listen_start"),
    (_without("targets"), "targets"),
    ({**RULE, "client": "no-such-client"}, "client"),
    ({**RULE, "client": "bad name!"}, "client"),
    ({**RULE, "client": 7}, "client"),
    ({**RULE, "protocol": "icmp"}, "protocol"),
    ({**RULE, "protocol": ["tcp"]}, "protocol"),
    ({**RULE, "listen_start": 0}, "listen_start"),
    ({**RULE, "listen_start": 65536}, "listen_start"),
    ({**RULE, "listen_start": "80"}, "listen_start"),
    ({**RULE, "listen_start": 80.0}, "listen_start"),
    ({**RULE, "listen_start": True}, "listen_start"),
    ({**RULE, "listen_start": 2**70}, "listen_start"),
    ({**RULE, "listen_start": 100, "listen_end": 99}, "listen_end"),
    ({**RULE, "listen_end": 70000}, "listen_end"),
    ({**RULE, "enabled": "yes"}, "enabled"),
    ({**RULE, "targets": []}, "targets"),
    ({**RULE, "targets": [{"host": "h", "port": 1}] * 9}, "targets"),
    ({**RULE, "targets": {"host": "h", "port": 1}}, "targets"),
    ({**RULE, "targets": ["10.0.0.1:80"]}, "targets[0]"),
    (_target(host="bad host"), "targets[0].host"),
    (_target(host=""), "targets[0].host"),
    (_target(host="a" * 254), "targets[0].host"),
    (_target(host="-lead.example"), "targets[0].host"),
    (_target(port=0), "targets[0].port"),
    (_target(port=None), "targets[0].port"),
    (_target(priority=-1), "targets[0].priority"),
    (_target(priority=70000), "targets[0].priority"),
    (_target(weight=3), "targets[0].weight"),
    ({**RULE, "targets": [{"port": 80}]}, "targets[0].host"),
]


@pytest.mark.parametrize(("body", "field"), BAD_RULES, ids=[f for _, f in BAD_RULES])
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_a_bad_rule_is_400_naming_the_field_and_writes_nothing(api, rule, method, body, field):
    """Bad JSON, unknown or missing fields, wrong types, out-of-range values."""
    before = audit_count(api)
    path = "/v1/rules" if method == "POST" else f"/v1/rules/{rule['id']}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = api.admin.request(method, path, content=content)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "api.invalid_input"
    assert response.json()["field"] == field
    assert audit_count(api) == before
    assert api.viewer.get(f"/v1/rules/{rule['id']}").json() == rule


BAD_REQUESTS = [
    ("POST", "/v1/tokens", {"name": "x", "role": "root"}, "role"),
    ("POST", "/v1/tokens", {"name": "", "role": "viewer"}, "name"),
    ("POST", "/v1/tokens", {"name": "x" * 65, "role": "viewer"}, "name"),
    ("POST", "/v1/tokens", {"name": "x"}, "role"),
    ("POST", "/v1/tokens", {"name": "x", "role": "viewer", "expires": 1}, "expires"),
    ("POST", "/v1/clients", {"name": "has space"}, "name"),
    ("POST", "/v1/clients", {}, "name"),
    ("DELETE", "/v1/tokens/abc", None, "id"),
    ("DELETE", "/v1/tokens/0", None, "id"),
    ("GET", "/v1/rules/-1", None, "id"),
    ("GET", "/v1/rules/99999999999999999999", None, "id"),
    ("GET", "/v1/rules?limit=0", None, "limit"),
    ("GET", "/v1/rules?limit=1001", None, "limit"),
    ("GET", "/v1/rules?limit=ten", None, "limit"),
    ("GET", "/v1/rules?cursor=-5", None, "cursor"),
    ("GET", "/v1/rules?protocol=icmp", None, "protocol"),
    ("GET", "/v1/rules?client=bad%20name", None, "client"),
    ("GET", "/v1/rules?client=nobody", None, "client"),
    ("GET", "/v1/rules?sort=id", None, "sort"),
    ("GET", "/v1/rules?limit=1&limit=2", None, "limit"),
    ("GET", "/v1/audit?since=yesterday", None, "since"),
    ("GET", "/v1/audit?until=2026-05-08T02:00:00", None, "until"),
    ("GET", "/v1/audit?cursor=%C2%B2", None, "cursor"),
    ("POST", "/v1/admin/backup", {"out": "/tmp/x"}, "out"),
    # A regex's $ matches before a final newline: names are matched whole.
    ("POST", "/v1/clients", {"name": "edge1\n"}, "name"),
    ("POST", "/v1/tokens", {"name": "ops\n", "role": "viewer"}, "name"),
    # In RFC 3339 but out of Python's range once in UTC; ISO-only forms.
    ("GET", "/v1/audit?since=0001-01-01T00:00:00%2B01:00", None, "since"),
    ("GET", "/v1/audit?until=9999-12-31T23:59:59-01:00", None, "until"),
    ("GET", "/v1/audit?since=20260101T000000Z", None, "since"),
    ("GET", "/v1/audit?since=2026-W01-1T00:00:00Z", None, "since"),
    ("GET", "/v1/audit?since=2026-01-01", None, "since"),
    # Blank parameters are input too: ?client= must not mean every client.
    ("GET", "/v1/rules?client=", None, "client"),
    ("GET", "/v1/rules?limit=", None, "limit"),
    ("GET", "/v1/rules?bogus=", None, "bogus"),
    ("GET", "/v1/rules?bogus", None, "bogus"),
    ("GET", "/v1/audit?cursor=", None, "cursor"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    BAD_REQUESTS,
    ids=[f"{m} {p}" for m, p, _, _ in BAD_REQUESTS],
)
def test_bad_input_anywhere_is_400_naming_the_field(api, method, path, body, field):
    """Every resource validates like rules do: never a 500, always the field."""
    response = api.admin.request(method, path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b'{"name": "dup-a", "name": "dup-b"}', "name"),
        (
            b'{"client": "edge-a", "protocol": "tcp", "listen_start": 8100,'
            b' "targets": [{"host": "10.0.0.1", "port": 80, "port": 81}]}',
            "port",
        ),
    ],
)
def test_a_key_given_twice_is_400_naming_it_and_nothing_is_written(api, content, field):
    """JSON lets a key repeat and Python keeps the last: a guess, so refused."""
    before = audit_count(api)
    path = "/v1/clients" if b'"name"' in content else "/v1/rules"
    response = api.admin.post(path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert audit_count(api) == before


def test_the_audit_row_names_the_client_as_stored_whatever_the_spelling(api):
    """Client names are case-insensitive: EDGE-A is edge-a, in the rule and its audit row."""
    created = api.admin.post("/v1/rules", json={**RULE, "client": "EDGE-A", "listen_start": 8200})
    assert created.status_code == 201, created.text
    assert created.json()["client"] == "edge-a"
    latest = api.viewer.get("/v1/audit", params={"limit": 1}).json()["entries"][0]
    assert latest["details"]["client"] == "edge-a"
    api.admin.delete(f"/v1/rules/{created.json()['id']}")


def test_oversize_headers_are_413_saying_headers(api):
    response = api.admin.get("/v1/rules", headers={"X-Padding": "x" * 9000})
    assert response.status_code == 413
    assert "headers" in response.json()["message"]


def test_an_oversize_body_is_413(api):
    """Bodies above 64 KiB are refused before they are parsed."""
    huge = {**RULE, "client": "x" * (70 * 1024)}
    response = api.admin.post("/v1/rules", json=huge)
    assert response.status_code == 413
    assert response.json()["error"] == "api.payload_too_large"


def test_a_body_shorter_than_its_content_length_is_408_then_closed(api):
    """10 of 100 announced bytes, then silence: a client error, answered
    once the body timeout (BODY_TIMEOUT_SECS) passes, never a 500."""
    head = (
        b"POST /v1/clients HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    before = len(api.server.events())
    with (
        socket.create_connection(("127.0.0.1", api.server.port), timeout=120) as raw,
        api.server.tls_context().wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        conn.sendall(head + b'{"name": "')
        answer = b""
        while chunk := conn.recv(65536):  # until the server closes the connection
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", answer
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"] == "api.request_timeout"
    assert "Content-Length" in body["message"]
    logged = [e for e in api.server.events()[before:] if e["event"] == "http.request"]
    assert [(e["path"], e["status"], e["error"]) for e in logged] == [
        ("/v1/clients", 408, "api.request_timeout")
    ]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/nothing-here", 404),
        ("GET", "/v1/rules/123456", 404),
        ("GET", "/v1/clients/nobody", 404),
        ("PATCH", "/v1/rules/1", 405),
        ("DELETE", "/v1/rules", 405),
    ],
)
def test_unknown_routes_and_resources_are_404_and_wrong_methods_405(api, method, path, status):
    """JSON errors for routing too, in the same shape as every other error."""
    response = api.admin.request(method, path)
    assert response.status_code == status
    assert response.json()["error"] in ("api.not_found", "api.method_not_allowed")


# --- audit ------------------------------------------------------------------------


def test_every_mutation_is_audited_with_its_actor_newest_first(api):
    """Create, replace, delete: three rows, in reverse order, by 'operator:ops'."""
    rule = api.admin.post("/v1/rules", json={**RULE, "listen_start": 4000}).json()
    api.admin.put(f"/v1/rules/{rule['id']}", json={**RULE, "listen_start": 4001})
    api.admin.delete(f"/v1/rules/{rule['id']}")
    entries = api.viewer.get("/v1/audit", params={"limit": 3}).json()["entries"]
    assert [e["action"] for e in entries] == ["rule.delete", "rule.update", "rule.create"]
    assert {e["resource"] for e in entries} == {f"rule:{rule['id']}"}
    assert {e["actor"] for e in entries} == {"operator:ops"}
    assert entries[1]["details"]["before"]["listen_start"] == 4000
    assert entries[0]["id"] > entries[1]["id"] > entries[2]["id"]


def test_the_audit_log_pages_by_cursor_and_filters_by_time(api):
    """Cursor pages cover everything once; since/until bound by time."""
    everything = api.viewer.get("/v1/audit", params={"limit": 1000}).json()["entries"]
    paged, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = api.viewer.get("/v1/audit", params=params).json()
        paged += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [e["id"] for e in paged] == [e["id"] for e in everything]
    middle = everything[len(everything) // 2]["at"]
    newer = api.viewer.get("/v1/audit", params={"since": middle, "limit": 1000}).json()
    older = api.viewer.get("/v1/audit", params={"until": middle, "limit": 1000}).json()
    assert all(e["at"] >= middle for e in newer["entries"])
    assert all(e["at"] < middle for e in older["entries"])
    assert len(newer["entries"]) + len(older["entries"]) == len(everything)
    offset = api.viewer.get("/v1/audit", params={"since": middle.replace("Z", "+00:00")}).json()
    assert offset["entries"][:3] == newer["entries"][:3]


# --- backup and metrics -------------------------------------------------------


def test_the_backup_endpoint_writes_a_verified_backup_and_audits_it(api):
    """Same engine as the CLI: a standalone file, its sidecar, its checksum."""
    response = api.admin.post("/v1/admin/backup")
    assert response.status_code == 201, response.text
    body = response.json()
    path = Path(body["path"])
    assert path.parent == api.backups
    assert path.name.startswith("portunus-state-")
    assert body["size"] == path.stat().st_size
    assert body["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert body["schema_version"] == binary_schema_version()
    assert verify(path).integrity == "ok"
    latest = api.viewer.get("/v1/audit", params={"limit": 1}).json()["entries"][0]
    assert (latest["action"], latest["resource"]) == ("backup.create", f"backup:{path.name}")


def test_a_write_lock_held_outside_the_server_is_503_and_the_writer_recovers(api):
    """A sqlite3 shell holding BEGIN IMMEDIATE past the busy timeout: the
    server's environment, not a bug, so 503; nothing written; then back."""
    outsider = apsw.Connection(str(api.server.data_dir / "state.db"))
    outsider.execute("BEGIN IMMEDIATE")
    try:
        response = api.admin.post("/v1/clients", json={"name": "blocked"})
    finally:
        outsider.execute("ROLLBACK")
        outsider.close()
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "api.store_unavailable"
    assert api.admin.get("/v1/clients/blocked").status_code == 404
    assert api.admin.post("/v1/clients", json={"name": "unblocked"}).status_code == 201
    assert api.admin.delete("/v1/clients/unblocked").status_code == 204


def test_a_missing_backup_dir_is_503_and_nothing_takes_its_name(api):
    """[backup] dir gone (an unmounted volume, say): refused, never a file
    written under the directory's name, no audit row."""
    away = api.backups.with_name("backups.away")
    before = audit_count(api)
    api.backups.rename(away)
    try:
        response = api.admin.post("/v1/admin/backup")
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "backup.destination_dir_missing"
        assert not api.backups.exists()
        assert not api.backups.with_name("backups.sha256").exists()
    finally:
        away.rename(api.backups)
    assert audit_count(api) == before
    assert api.admin.post("/v1/admin/backup").status_code == 201


def raw_request(server, head: bytes) -> bytes:
    """One request written byte for byte (methods no HTTP client would send)."""
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw,
        server.tls_context().wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        conn.sendall(head)
        return conn.recv(65536)


def test_metrics_stay_parseable_and_bounded_whatever_method_a_client_sends(api):
    """Any token is a valid HTTP method: odd ones are counted as "other", so
    no anonymous client can break the page or add series without bound."""
    methods = [b'A"B', b"A\\B"] + [b"X%d" % n for n in range(20)]
    for method in methods:
        answer = raw_request(api.server, method + b" /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 405"), answer[:80]
    text = api.anonymous.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    seen = {s.labels["method"] for s in families["portunus_http_requests"].samples}
    assert seen <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    others = [
        s.value
        for s in families["portunus_http_requests"].samples
        if s.labels == {"route": "unmatched", "method": "other", "status": "405"}
    ]
    assert others and others[0] >= len(methods)


def test_metrics_expose_requests_latency_store_schema_and_backup_age(api, rule):
    """Prometheus text format; the backup age appears once a backup exists."""
    api.admin.post("/v1/admin/backup")
    response = api.anonymous.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert 'portunus_http_requests_total{route="/v1/rules",method="POST",status="201"}' in text
    assert 'portunus_http_request_duration_seconds_bucket{route="/v1/rules",le="+Inf"}' in text
    assert f"portunus_schema_version {binary_schema_version()}" in text
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert int(samples["portunus_store_bytes"]) > 0
    assert int(samples["portunus_store_wal_bytes"]) >= 0
    assert 0 <= float(samples["portunus_backup_newest_age_seconds"]) < 3600
    assert int(samples['portunus_store_writes_total{outcome="committed"}']) > 0
    buckets = [
        int(value)
        for key, value in samples.items()
        if key.startswith('portunus_http_request_duration_seconds_bucket{route="/v1/rules",')
    ]
    assert buckets == sorted(buckets)  # cumulative
    count = samples['portunus_http_request_duration_seconds_count{route="/v1/rules"}']
    assert buckets[-1] == int(count)
    # Every write transaction the writer ran, committed or not, is timed.
    writes = int(samples["portunus_store_write_seconds_count"])
    assert writes >= int(samples['portunus_store_writes_total{outcome="committed"}'])
    assert int(samples['portunus_store_write_seconds_bucket{le="+Inf"}']) == writes
    assert 0 < float(samples["portunus_store_write_seconds_sum"]) < writes


def test_every_response_carries_a_request_id_counted_and_logged_when_refused(api):
    """Successes, handler errors, auth refusals, unknown routes and oversize
    bodies all get an X-Request-Id, a metrics sample, and (for 4xx) an
    http.request line with that same id."""
    responses = {
        200: api.anonymous.get("/healthz"),
        400: api.admin.post("/v1/rules", content=b"{not json"),
        401: api.anonymous.get("/v1/rules"),
        404: api.anonymous.get("/no/such/route"),
        413: api.admin.post("/v1/rules", content=b"x" * (65 * 1024)),
    }
    ids = {}
    for status, response in responses.items():
        assert response.status_code == status, response.text
        ids[status] = response.headers["x-request-id"]
    assert len(set(ids.values())) == len(ids)
    text = api.anonymous.get("/metrics").text
    assert 'portunus_http_requests_total{route="unmatched",method="GET",status="404"}' in text
    assert 'portunus_http_requests_total{route="/healthz",method="GET",status="200"}' in text
    logged = {
        e["request_id"]: e["status"] for e in api.server.events() if e["event"] == "http.request"
    }
    for status in (400, 401, 404, 413):
        assert logged.get(ids[status]) == status
    assert ids[200] not in logged  # successes are logged at debug only


def assert_no_bug_logged(server) -> None:
    """No 500, no internal_error or framework_log line, nothing on stderr
    but events. 503s are documented answers (a test takes the backup dir away)."""
    events = server.events()
    assert not [e for e in events if e["event"] in ("internal_error", "server.framework_log")]
    assert not [e for e in events if e["event"] == "http.request" and e["status"] == 500]
    strays = [line for line in server.stderr().splitlines() if not line.startswith("{")]
    assert strays == [], strays  # every stderr line is an event


def test_awkward_requests_are_never_a_500(api):
    """Malformed, oversize, unauthenticated, misrouted and wrongly-typed
    requests, sent here whatever else ran: each gets its 4xx, none a 500
    (and the module's fixture checks the same for every test at the end)."""
    sent = [
        api.admin.post("/v1/rules", content=b"{not json"),
        api.admin.post("/v1/rules", content=b"[]"),
        api.admin.post("/v1/rules", json={**RULE, "listen_start": "80"}),
        api.admin.put("/v1/rules/not-a-number", json=RULE),
        api.admin.get("/v1/audit", params={"limit": "many", "cursor": "%%"}),
        api.admin.post("/v1/tokens", content=b"x" * (65 * 1024)),
        api.admin.request("PATCH", "/v1/clients"),
        api.anonymous.get("/v1/rules", headers={"Authorization": "Bearer"}),
        api.anonymous.get("/no/such/route"),
    ]
    statuses = [response.status_code for response in sent]
    assert all(400 <= status < 500 for status in statuses), statuses
    assert_no_bug_logged(api.server)


def test_every_route_is_wrapped_by_the_request_log():
    """Routes added later cannot silently miss metrics and request ids."""
    from portunus import config
    from portunus.server.app import create_app

    app = create_app(config.defaults(), None, url="https://127.0.0.1:7443")
    routes = list(app.router.routes)
    assert len(routes) >= 18
    assert [r.path for r in routes if not getattr(r.handler, "observed", False)] == []
