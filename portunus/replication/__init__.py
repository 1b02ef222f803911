"""Continuous replication off the host, run by Litestream 0.5.

Portunus configures (:mod:`.settings`), supervises (:mod:`.supervisor`),
observes (:mod:`.logs`) and restores from (:mod:`.restore`) Litestream; it
never ships WAL frames itself. Kept light: ``config`` imports
:mod:`.settings` for its checks.
"""
