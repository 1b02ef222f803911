"""invoke entry point: the operator tasks (the same collection as
``portunus-server``) plus development chores.

    invoke --list
    invoke backup --out /var/backups/portunus
    invoke test | invoke lint | invoke bench | invoke reliability
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
        "size_mib": "size of the generated store (default 1024; --quick: 64)",
        "workdir": "where to build stores (default bench/work; needs ~4x size free)",
        "quick": "small store, one run, short caps: checks the harness in about a minute",
        "repeat": "runs of each approach (default 3; --quick: 1)",
        "cap": "seconds before a backup under load counts as 'did not finish' (default 60)",
        "api": "instead: the HTTPS API under wrk (writes/s, reads/s, p50/p99) beside a "
        "sanic hello-world, and writes/s during online backups (needs wrk)",
        "replication": "instead: API writes/s with [replication] off vs on, replica staleness "
        "at a steady 500 writes/s, restore from the replica vs litestream restore (needs wrk)",
    }
)
def bench(
    c,
    size_mib=None,
    workdir="bench/work",
    quick=False,
    repeat=None,
    cap=None,
    api=False,
    replication=False,
):
    """Development: backup, restore, API, prune and cold-start benchmarks (docs/performance.md).

    Backup/restore side by side with cp + fsync, sqlite3 .backup and VACUUM INTO;
    --api for the HTTPS API under wrk; prints tables, keeps raw JSON lines."""
    if replication:
        size = f" --size-mib {size_mib}" if size_mib else ""
        quick_flag = " --quick" if quick else ""
        c.run(
            f"{sys.executable} -m bench.replication_bench --workdir {workdir}{size}{quick_flag}",
            pty=False,
        )
        return
    if api:
        size = f" --size-mib {size_mib}" if size_mib else ""
        quick_api = " --quick" if quick else ""
        c.run(
            f"{sys.executable} -m bench.api_bench --workdir {workdir}{size}{quick_api}", pty=False
        )
        return
    flags = [f"--workdir {workdir}"] + (["--quick"] if quick else [])
    for flag, value in (("--size-mib", size_mib), ("--repeat", repeat), ("--cap", cap)):
        if value is not None:
            flags.append(f"{flag} {value}")
    c.run(f"{sys.executable} -m bench.backup_bench {' '.join(flags)}", pty=False)
    # Where the time goes: each backup and restore phase alone, then the commands.
    size_flag = f" --size-mib {size_mib}" if size_mib else ""
    c.run(
        f"{sys.executable} -m bench.backup_profile --workdir {workdir}{size_flag}"
        + (" --quick" if quick else ""),
        pty=False,
    )
    # Retention and config: prune plan over 10,000 backups, config show start-up.
    quick_flag = " --quick" if quick else ""
    c.run(f"{sys.executable} -m bench.prune_bench --workdir {workdir}{quick_flag}", pty=False)
    # Cold start: --help, status, verify beside python's own start-up and the import floor.
    c.run(f"{sys.executable} -m bench.cold_start --workdir {workdir}{quick_flag}", pty=False)


@task(
    help={
        "trials": "kill -9 trials of each kind (default 10; the recorded run: 100)",
        "seed": "base seed: trial i of a kind uses seed + i (printed with every trial)",
        "kinds": "comma-separated subset of backup,restore,server (default all three)",
        "no_corpus": "skip the bad-input corpus (bench/bad_inputs.toml)",
        "workdir": "where trials run (default a temp dir; must not be tmpfs, serve refuses it)",
    }
)
def reliability(c, trials=10, seed=None, kinds="backup,restore,server", no_corpus=False,
                workdir=None):  # fmt: skip
    """Development: the fault campaign (docs/reliability.md).

    kill -9 at seeded random moments of a backup, a restore --force and a
    served server under API write load, then every row of the bad-input
    corpus; a table per kind, exit 1 on any failure."""
    flags = [f"--trials {int(trials)}", f"--kinds {kinds}"]
    if seed is not None:
        flags.append(f"--seed {int(seed)}")
    if no_corpus:
        flags.append("--no-corpus")
    if workdir:
        flags.append(f"--workdir {workdir}")
    c.run(f"{sys.executable} -m bench.reliability {' '.join(flags)}", pty=False)


ns = collection()
for chore in (test, lint, bench, reliability):
    ns.add_task(chore)
