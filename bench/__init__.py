"""Benchmarks of portunus-server, run from a checkout (not installed with the package).

    python -m bench.backup_bench --help      # or: invoke bench

Every measured command runs in its own process; see docs/performance.md.
"""
