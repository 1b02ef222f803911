-- 0002: client names are host-like, so "edge1" and "EDGE1" are the same
-- client; make that a constraint, and index rules by client for the
-- per-client poll and the listen-port clash check.
-- On a store that already holds two such names this migration fails, the
-- whole upgrade rolls back, and the operator renames one (exit 70).

CREATE UNIQUE INDEX clients_name_nocase ON clients (name COLLATE NOCASE);
CREATE INDEX rules_client_protocol ON rules (client_id, protocol, listen_start);
