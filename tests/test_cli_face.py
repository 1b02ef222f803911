"""The binary's own face: its parser is generated from the task collection,
speaks the project's words, suggests what was meant, completes in bash and
zsh, and reads none of invoke's configuration."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from invoke import Collection, task

from portunus import cli as portunus_cli
from portunus.tasks import collection
from tests import support


def usage_error(run: support.Run) -> dict:
    assert run.code == 2, run.err
    (event,) = [e for e in run.events if e["event"] == "cli.usage_error"]
    assert run.out == ""
    return event


# --- groups, suggestions, positionals -------------------------------------------------


@pytest.mark.parametrize("group", ["config", "audit"])
@pytest.mark.parametrize("extra", [[], ["--help"]])
def test_a_group_name_lists_its_subcommands(cli, home, group, extra):
    """``config`` alone (or ``config --help``) lists show, check, set: exit 0."""
    run = cli(group, *extra)
    assert run.code == 0, run.err
    subs = collection().collections[group].task_names
    for sub in subs:
        assert re.search(rf"^\s+{group} {sub}\s+\S", run.out, flags=re.M), sub
    assert run.err == ""
    assert list(home.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["backpu"], "did you mean 'backup'?"),
        (["confg"], "did you mean 'config'?"),
        (["config", "shwo"], "did you mean 'config show'?"),
        (["audit", "prnue"], "did you mean 'audit prune'?"),
        (["backup", "--outt", "x.db"], "did you mean --out?"),
        (["restore", "--forse"], "did you mean --force?"),
        (["--data-dri", "d", "status"], "did you mean --data-dir?"),
        (["--help", "stauts"], "did you mean 'status'?"),
    ],
)
def test_an_unknown_word_exits_2_with_a_did_you_mean(cli, home, argv, suggestion):
    event = usage_error(cli(*argv))
    assert suggestion in event["hint"], event
    assert list(home.iterdir()) == []


def test_a_global_flag_after_the_subcommand_says_where_it_goes(cli, home):
    event = usage_error(cli("status", "--data-dir", "d"))
    assert "give it before the subcommand" in event["msg"]


def test_usage_errors_are_logfmt_events_by_default(env):
    """As operators see them: one logfmt line on stderr, nothing on stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "portunus", "backpu"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("level=error event=cli.usage_error ")
    assert "did you mean 'backup'?" in line


def test_positionals_are_shown_as_positionals(cli):
    """``config set KEY VALUE``, not invoke's ``-k/--key``."""
    run = cli("config", "set", "--help")
    assert run.code == 0, run.err
    assert re.search(r"^usage: portunus-server .*config set .*KEY VALUE$", run.out, flags=re.M)
    assert re.search(r"^\s+KEY\s+dotted key", run.out, flags=re.M)
    assert "--key" not in run.out and "-k" not in run.out
    verify = cli("verify", "--help")
    assert "PATH" in verify.out and "--path" not in verify.out
    assert "Docstring" not in run.out + verify.out


@pytest.mark.parametrize("argv", [["--help", "config", "set"], ["config", "set", "-h"]])
def test_help_for_a_group_subcommand(cli, argv):
    run = cli(*argv)
    assert run.code == 0, run.err
    assert "--file FILE" in run.out


def test_a_missing_positional_names_it(cli):
    event = usage_error(cli("config", "set", "log_level"))
    assert event["msg"] == "config set needs VALUE"


def test_invoke_spelling_of_a_group_subcommand_still_runs(cli, tmp_path):
    run = cli("--data-dir", str(tmp_path / "d"), "config.check")
    assert run.code == 0, run.err


# --- generated from the tasks ---------------------------------------------------------


@task(
    positional=["target"],
    iterable=["recipient"],
    incrementable=["verbose"],
    help={"target": "where", "recipient": "who may read it", "level": "how hard"},
)
def sample(c, target, recipient=None, level=3, verbose=0, json=False):
    """Do a sample thing.

    More words about it."""
    return {"target": target, "recipient": recipient, "level": level, "verbose": verbose}


def test_a_flag_added_to_a_task_appears_with_no_parser_change():
    """The parser reads the task's signature and declarations: a repeatable
    flag, an int flag, a counter, a positional."""
    commands = portunus_cli.build_commands(Collection(sample))
    found = portunus_cli.parse(
        ["sample", "--recipient", "a", "-r", "b", "--level=7", "-v", "-v", "out.db"], commands
    )
    assert found.command is not None and found.command.name == "sample"
    assert found.kwargs == {"recipient": ["a", "b"], "level": 7, "verbose": 2, "target": "out.db"}
    text = portunus_cli.command_help(found.command)
    assert "TARGET  where" in text
    assert "--recipient RECIPIENT" in text and "more than once" in text
    assert "Do a sample thing." in text and "More words about it." in text
    with pytest.raises(portunus_cli.UsageProblem, match="--level must be an int"):
        portunus_cli.parse(["sample", "--level", "high", "x"], commands)


# --- invoke's configuration is not read -----------------------------------------------

INVOKE_YAML = """\
run:
  echo: true
  warn: true
tasks:
  auto_dash_names: false
  dedupe: false
"""


def _observable(run: support.Run) -> tuple:
    events = [{k: v for k, v in e.items() if k != "ts"} for e in run.events]
    return run.code, run.out, events


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["bootstrap-admin", "--name", "ops"],
        ["status"],
        ["config", "show"],
        ["bootstrap-admin"],
        ["frobnicate"],
    ],
)
def test_invoke_configuration_files_and_variables_change_nothing(env, tmp_path, argv):
    """A cron job as the service user with root's HOME: a broken
    ~/.invoke.yaml, an invoke.yaml in the working directory and INVOKE_*
    variables, and portunus-server behaves exactly as without them."""
    runs = []
    for hostile in (False, True):
        home = tmp_path / f"home-{hostile}"
        work = tmp_path / f"cwd-{hostile}"
        home.mkdir()
        work.mkdir()
        run_env = {**env, "HOME": str(home)}
        if hostile:
            (home / ".invoke.yaml").write_text("run: [unclosed\n\t: {{\n")
            (home / ".invoke.yml").mkdir()  # unreadable as a file, even for root
            (work / "invoke.yaml").write_text(INVOKE_YAML)
            run_env.update(INVOKE_RUN_ECHO="1", INVOKE_TASKS_AUTO_DASH_NAMES="0")
        data_dir = str(tmp_path / f"data-{hostile}")
        run = support.run_cli("--data-dir", data_dir, *argv, env=run_env, cwd=work)
        # The two runs differ only by their data dir's name.
        run.out = run.out.replace(data_dir, "DATA")
        run.err = run.err.replace(data_dir, "DATA")
        if argv[:1] == ["bootstrap-admin"] and run.code == 0:
            run.out = "TOKEN"
        runs.append(_observable(run))
    assert runs[0] == runs[1]
    assert runs[0][0] in (0, 2)


# --- shell completion -----------------------------------------------------------------


def _complete_bash(script: str, *words: str) -> list[str]:
    """Source the script in a real bash, then call its function as bash's
    completion would for the command line ``words`` (the last one being
    completed)."""
    array = " ".join(f"'{w}'" for w in ("portunus-server", *words))
    program = (
        f"{script}\n"
        f"COMP_WORDS=({array}); COMP_CWORD={len(words)}\n"
        '_portunus_server; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    proc = subprocess.run(["bash", "-c", program], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return [line for line in proc.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def bash_script() -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "portunus", "completion", "bash"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["back"], ["backup"]),
        (["con"], ["config"]),
        (["config", "s"], ["set", "show"]),
        (["audit", ""], ["--help", "prune"]),
        (["backup", "--o"], ["--out"]),
        (["--data-dir", "/x", "--log-format", "json", "sta"], ["status"]),
        (["--log-format", "j"], ["json"]),
        (["restore", "--fo"], ["--force"]),
        (["restore", "-f", "--j"], ["--json"]),  # restore's -f takes no value
        (["config", "set", "--f"], ["--file"]),
        (["completion", ""], ["bash", "zsh"]),
        (["--ver"], ["--version"]),
    ],
)
def test_bash_completion_offers_commands_and_flags(bash_script, words, expected):
    assert sorted(_complete_bash(bash_script, *words)) == expected


def test_bash_completion_offers_file_names_where_a_path_is_due(bash_script, tmp_path):
    (tmp_path / "nightly.db").write_text("")
    prefix = str(tmp_path / "nig")
    assert _complete_bash(bash_script, "verify", prefix) == [str(tmp_path / "nightly.db")]
    assert _complete_bash(bash_script, "backup", "--out", prefix) == [str(tmp_path / "nightly.db")]


def test_bash_completion_registers_for_the_binary(bash_script):
    proc = subprocess.run(
        ["bash", "-c", f"{bash_script}\ncomplete -p portunus-server"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "-F _portunus_server" in proc.stdout


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["back"], ["backup"]),
        (["config", "s"], ["check", "set", "show", "--help"]),
        (["backup", "--o"], ["--out", "-o", "--json", "-j", "--help"]),
        (["--log-format", ""], ["logfmt", "json", "console"]),
    ],
)
def test_zsh_completion_offers_commands_and_flags(words, expected):
    """zsh filters compadd's candidates by the prefix itself; the stub prints them all."""
    script = subprocess.run(
        [sys.executable, "-m", "portunus", "completion", "zsh"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    array = " ".join(f"'{w}'" for w in ("portunus-server", *words))
    program = (
        "compadd() { [[ $1 == -- ]] && shift; print -l -- $@ }\n"
        "_files() { print FILES }\n"
        f"{script}\n"
        f"words=({array}); CURRENT={len(words) + 1}\n"
        "_portunus_server"
    )
    proc = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    offered = proc.stdout.split()
    assert set(expected) <= set(offered), offered


def test_completion_for_an_unknown_shell_exits_2(cli):
    event = usage_error(cli("completion", "fish"))
    assert "bash or zsh" in event["msg"]
