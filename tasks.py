"""invoke entry point: the operator tasks (the same collection as
``portunus-server``) plus development chores.

    invoke --list
    invoke backup --out /var/backups/portunus
    invoke test | invoke lint | invoke bench
"""

from __future__ import annotations

import sys

from invoke import task

from portunus.tasks import collection


@task(help={"args": "extra arguments for pytest, e.g. '-k restore -x'"})
def test(c, args=""):
    """Development: run the test suite."""
    c.run(f"{sys.executable} -m pytest {args}", pty=False)


@task
def lint(c):
    """Development: ruff check and format check."""
    c.run(f"{sys.executable} -m ruff check portunus tests bench tasks.py")
    c.run(f"{sys.executable} -m ruff format --check portunus tests bench tasks.py")


@task(
    help={
        "size_mib": "size of the generated store (default 1024)",
        "workdir": "where to build stores (default bench/work; needs ~4x size free)",
        "quick": "small store and short runs, to check the harness itself",
    }
)
def bench(c, size_mib=1024, workdir="bench/work", quick=False):
    """Development: backup/restore benchmarks side by side with cp, sqlite3 .backup,
    VACUUM INTO; prints a table (see docs/performance.md)."""
    flags = f"--size-mib {size_mib} --workdir {workdir}" + (" --quick" if quick else "")
    c.run(f"{sys.executable} -m bench.backup_bench {flags}", pty=False)


ns = collection()
for chore in (test, lint, bench):
    ns.add_task(chore)
