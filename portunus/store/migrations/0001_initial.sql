-- 0001: the server's state as of v0.8: operator tokens, clients, forwarding
-- rules with their targets, and the append-only audit log.
-- Only hashes of tokens are stored; the tokens themselves are shown once.

CREATE TABLE operator_tokens (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    role         TEXT    NOT NULL CHECK (role IN ('admin', 'viewer')),
    token_hash   BLOB    NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at   TEXT    NOT NULL,
    last_used_at TEXT
);

CREATE TABLE clients (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    token_hash   BLOB    NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at   TEXT    NOT NULL
);

CREATE TABLE rules (
    id           INTEGER PRIMARY KEY,
    client_id    INTEGER NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    protocol     TEXT    NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    listen_start INTEGER NOT NULL CHECK (listen_start BETWEEN 1 AND 65535),
    listen_end   INTEGER NOT NULL CHECK (listen_end BETWEEN listen_start AND 65535),
    enabled      INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created_at   TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL
);

CREATE TABLE rule_targets (
    rule_id      INTEGER NOT NULL REFERENCES rules (id) ON DELETE CASCADE,
    position     INTEGER NOT NULL CHECK (position BETWEEN 1 AND 8),
    host         TEXT    NOT NULL CHECK (length(host) BETWEEN 1 AND 253),
    port         INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    priority     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (rule_id, position)
) WITHOUT ROWID;

CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    resource     TEXT    NOT NULL,
    details      TEXT    NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_log_at ON audit_log (at);

-- Append-only: history is never rewritten. Retention deletes old rows
-- (audit prune), which this trigger deliberately still allows.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
