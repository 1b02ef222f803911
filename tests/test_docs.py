"""Docs that cannot drift: the exit-code table in README.md and --help."""

from __future__ import annotations

import re

from portunus.errors import EXIT_CODES
from tests.support import REPO


def readme_exit_codes() -> dict[int, str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+?) \|", section, flags=re.M)
    return {int(code): meaning.strip() for code, meaning in rows}


def test_readme_exit_code_table_matches_the_code():
    assert readme_exit_codes() == EXIT_CODES


def test_help_lists_every_exit_code(cli):
    run = cli("--help")
    assert run.code == 0
    for code, meaning in EXIT_CODES.items():
        assert re.search(rf"^\s+{code}\s+{re.escape(meaning)}$", run.out, flags=re.M), code


def test_every_subcommand_is_documented_in_the_readme(cli):
    readme = (REPO / "README.md").read_text()
    from portunus.tasks import collection

    for name in collection().task_names:
        # Operators type ``config show``; invoke names it ``config.show``.
        typed = name.replace(".", " ")
        assert re.search(rf"^### {re.escape(typed)}$", readme, flags=re.M), typed


def test_the_quick_start_is_two_one_line_commands():
    """The README's quick start: exactly two one-line commands for a fresh
    machine, one that installs and serves on the default data dir, one that
    installs and runs the tests (the one .ci/run runs)."""
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", quick, flags=re.S)
    commands = [
        line
        for block in blocks
        for line in block.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert len(commands) == 2, commands
    serve, tests = commands
    assert serve.startswith("python3 -m venv .venv && ") and serve.endswith("portunus-server serve")
    assert tests.startswith("python3 -m venv .venv && ") and tests.endswith("python -m pytest")
