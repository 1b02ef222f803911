"""The bad-input corpus: every row of ``bench/bad_inputs.toml`` builds a small
sandbox of files, runs one ``portunus-server`` command line against it, and
checks the documented answer: the exit code, the event (carrying that exit
code), no traceback, and that nothing in the sandbox changed.

    python -m bench.bad_inputs [--only SUBSTRING] [--workdir DIR]

"Nothing changed" compares every path under the row's sandbox (its data dir,
its inputs, and the HOME the command runs with) before and after: type, mode,
and the bytes of every file. The one exception is the content of
``state.db.lock``: a command that takes the lock writes its own pid there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import apsw

from bench import commands

CORPUS = Path(__file__).with_name("bad_inputs.toml")
TIMEOUT_S = 60
# The pid a command writes into the lock file is not state.
VOLATILE_CONTENT = {"state.db.lock"}
PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Row:
    name: str
    args: tuple[str, ...]
    exit: int
    event: str
    setup: dict[str, str]
    hold_lock: str | None = None  # a setup path whose store lock a live process holds

    @classmethod
    def from_toml(cls, raw: dict) -> Row:
        return cls(
            name=raw["name"],
            args=tuple(raw["run"]),
            exit=raw["exit"],
            event=raw.get("event", ""),
            setup=dict(raw.get("setup", {})),
            hold_lock=raw.get("hold_lock"),
        )


def load(path: Path = CORPUS) -> list[Row]:
    with open(path, "rb") as f:
        rows = [Row.from_toml(raw) for raw in tomllib.load(f)["input"]]
    names = [row.name for row in rows]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"{path}: duplicate row names {sorted(duplicates)}")
    return rows


@dataclass
class Outcome:
    row: Row
    code: int
    events: list[str]
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


# ------------------------------------------------------------ the materials


class Materials:
    """What rows copy instead of building: a Portunus data dir (made by
    ``bootstrap-admin``, as an operator makes one, so with its
    ``state.db.lock``) and a backup of it with its sidecar (made by
    ``backup``), built once per run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = root / "store"
        self.backup = root / "backup.db"
        env = sandbox_env(root / "home")
        (root / "home").mkdir(parents=True, exist_ok=True)
        _check(commands.bootstrap_admin(self.store), env)
        backup = ["--data-dir", str(self.store), "backup", "--out", str(self.backup)]
        _check([*commands.portunus_server(), *backup], env)

    def make(self, kind: str, target: Path, sandbox: Path) -> None:
        """Create ``target`` as ``kind`` says (see bad_inputs.toml's header)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        name, _, arg = kind.partition(":")
        if name == "store":
            shutil.copytree(self.store, target)
        elif name == "backup":
            self._backup(arg, target)
        elif name == "text":
            target.write_text(arg.replace("\\n", "\n"))
        elif name == "empty":
            target.write_bytes(b"")
        elif name == "dir":
            target.mkdir()
        elif name == "symlink":
            target.symlink_to(sandbox / arg)
        elif name == "sqlite":
            conn = apsw.Connection(str(target))
            conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
            conn.execute("INSERT INTO notes (body) VALUES ('not a Portunus store')")
            conn.close()
        elif name == "header":
            target.write_bytes(b"SQLite format 3\x00" + b"\x00" * 84 + b"garbage" * 100)
        else:
            raise ValueError(f"unknown setup kind {kind!r}")

    def _backup(self, variant: str, target: Path) -> None:
        shutil.copyfile(self.backup, target)
        sidecar = target.with_name(target.name + ".sha256")
        good_sidecar = f"{hashlib.sha256(self.backup.read_bytes()).hexdigest()}  {target.name}\n"
        size = target.stat().st_size
        if variant in ("", "flipped", "truncated-sidecar"):
            sidecar.write_text(good_sidecar)
        if variant == "flipped":
            # A byte in the middle of the file: a row, not the header.
            with open(target, "r+b") as f:
                f.seek(size // 2)
                byte = f.read(1)
                f.seek(size // 2)
                f.write(bytes([byte[0] ^ 0xFF]))
        elif variant in ("truncated", "truncated-sidecar"):
            os.truncate(target, size // 2)
        elif variant == "bad-sidecar":
            sidecar.write_text("this is not a sha256sum line\n")
        elif variant == "too-new":
            conn = apsw.Connection(str(target))
            conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'x')")
            conn.close()
        elif variant == "with-wal":
            target.with_name(target.name + "-wal").write_bytes(b"\x37\x7f\x06\x82" + b"\0" * 28)
        elif variant not in ("", "nosidecar"):
            raise ValueError(f"unknown backup variant {variant!r}")


def _check(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr}")


def sandbox_env(home: Path) -> dict[str, str]:
    """The caller's environment without anything that steers Portunus."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PORTUNUS_CONFIG", "STATE_DIRECTORY", "XDG_STATE_HOME")
        and not k.startswith("INVOKE_")
    }
    env["HOME"] = str(home)
    return env


# ------------------------------------------------------------ nothing changed


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: type, mode, and a hash of a file's bytes."""
    seen: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                seen[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                seen[rel] = ("dir", stat.S_IMODE(info.st_mode))
            elif name in VOLATILE_CONTENT:
                seen[rel] = ("file", stat.S_IMODE(info.st_mode), "(content not compared)")
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                seen[rel] = ("file", stat.S_IMODE(info.st_mode), digest)
    return seen


def differences(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    found = []
    for rel in sorted(before.keys() | after.keys()):
        if rel not in after:
            found.append(f"removed {rel}")
        elif rel not in before:
            found.append(f"created {rel}")
        elif before[rel] != after[rel]:
            found.append(f"changed {rel}")
    return found


# ------------------------------------------------------------------ running


class LockHolder:
    """A process holding a data dir's store lock, as a running server does."""

    def __init__(self, data_dir: Path) -> None:
        code = (
            "import sys; from pathlib import Path; from portunus.store.lock import StoreLock; "
            "StoreLock(Path(sys.argv[1]) / 'state.db.lock', 'serve').acquire(); "
            "print('ready', flush=True); sys.stdin.read()"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.close()
            raise RuntimeError(f"the lock holder did not start (said {line!r})")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=TIMEOUT_S)
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()


def run_row(row: Row, materials: Materials, sandbox: Path) -> Outcome:
    sandbox.mkdir(parents=True)
    home = sandbox / "home"
    home.mkdir()
    paths = {name: sandbox / name for name in row.setup}
    for name, kind in row.setup.items():
        materials.make(kind, paths[name], sandbox)
    args = [expand(arg, sandbox, paths) for arg in row.args]
    holder = LockHolder(paths[row.hold_lock]) if row.hold_lock else None
    try:
        before = snapshot(sandbox)
        done = subprocess.run(
            [*commands.portunus_server(), "--log-format", "json", *args],
            env=sandbox_env(home),
            cwd=home,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        after = snapshot(sandbox)
    finally:
        if holder:
            holder.close()
    events = _events(done.stderr)
    outcome = Outcome(row, done.returncode, [e.get("event", "?") for e in events])
    outcome.problems = judge(row, done, events) + differences(before, after)
    return outcome


def expand(arg: str, sandbox: Path, paths: dict[str, Path]) -> str:
    """``{name}`` is a setup path, ``{sandbox}`` the row's directory, any
    other ``{x}`` the absent path ``x`` under the sandbox."""

    def path_of(match: re.Match) -> str:
        name = match[1]
        if name == "sandbox":
            return str(sandbox)
        return str(paths.get(name, sandbox / name))

    return PLACEHOLDER.sub(path_of, arg)


def judge(row: Row, done: subprocess.CompletedProcess, events: list[dict]) -> list[str]:
    problems = []
    if done.returncode != row.exit:
        problems.append(f"exit {done.returncode}, expected {row.exit}")
    named = [e for e in events if e.get("event") == row.event]
    if row.event and not named:
        problems.append(f"no event={row.event} (got {[e.get('event') for e in events]})")
    elif named and "exit_code" in named[-1] and named[-1]["exit_code"] != row.exit:
        problems.append(f"event={row.event} says exit_code={named[-1]['exit_code']}")
    if "Traceback" in done.stderr or any(e.get("event") == "internal_error" for e in events):
        problems.append("a traceback or internal_error")
    return problems


def _events(stderr: str) -> list[dict]:
    events = []
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def run_corpus(workdir: Path, only: str = "", rows: list[Row] | None = None) -> list[Outcome]:
    rows = [r for r in (rows if rows is not None else load()) if only in r.name]
    materials = Materials(workdir / "materials")
    outcomes = []
    for i, row in enumerate(rows):
        outcomes.append(run_row(row, materials, workdir / f"row-{i:03d}"))
    return outcomes


# ------------------------------------------------------------------ report


def table(outcomes: list[Outcome], seconds: float) -> str:
    passed = sum(o.passed for o in outcomes)
    lines = [
        "## Bad-input corpus (bench/bad_inputs.toml)",
        "",
        "| rows | passed | failed | seconds |",
        "| ---: | ---: | ---: | ---: |",
        f"| {len(outcomes)} | {passed} | {len(outcomes) - passed} | {seconds:.1f} |",
    ]
    failures = [o for o in outcomes if not o.passed]
    if failures:
        lines += ["", "| failed row | exit | problems |", "| --- | ---: | --- |"]
        lines += [f"| {o.row.name} | {o.code} | {'; '.join(o.problems)} |" for o in failures]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="rows whose name contains this")
    parser.add_argument("--workdir", help="where sandboxes go (default: a temp dir, removed)")
    parser.add_argument("--verbose", action="store_true", help="one line per row")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="portunus-corpus-", dir=args.workdir) as tmp:
        started = time.monotonic()
        outcomes = run_corpus(Path(tmp), args.only)
        if args.verbose:
            for o in outcomes:
                verdict = "ok  " if o.passed else "FAIL"
                print(f"{verdict} {o.code:>3} {o.row.name}: {'; '.join(o.problems)}")
        print(table(outcomes, time.monotonic() - started))
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
