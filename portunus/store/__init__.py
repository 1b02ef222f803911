"""The state store: connections, migrations, the schema handshake, the lock."""
