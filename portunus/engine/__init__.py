"""The operations: plain functions returning result objects, raising
PortunusError subclasses. No printing, no exit codes, no interface imports."""
