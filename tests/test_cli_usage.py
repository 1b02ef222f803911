"""The portunus-server command line itself: global flags, usage errors (2), --help,
--version, log formats, and where the data dir is when no flag names it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from portunus import __version__
from portunus.errors import EXIT_CODES
from portunus.tasks import collection
from tests import support

LOGFMT_LINE = re.compile(r"^level=(debug|info|warning|error) event=[a-z_]+(\.[a-z_]+)* ")


def run_plain(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """portunus-server exactly as typed, without the fixture's --log-format json."""
    return subprocess.run(
        [sys.executable, "-m", "portunus", *args], env=env, capture_output=True, text=True
    )


def assert_usage_error(run: support.Run) -> None:
    """Exit 2, one cli.usage_error event (in JSON as asked) with a hint, nothing on stdout."""
    assert run.code == 2, run.err
    usage = [e for e in run.events if e["event"] == "cli.usage_error"]
    assert len(usage) == 1, run.err
    assert usage[0]["msg"] and usage[0]["hint"]
    assert run.out == ""


# --- usage errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["--no-such-flag", "reset"],
        ["reset", "--no-such-flag"],
        ["backup", "--out"],
        ["restore", "--in"],
        ["--data-dir"],
        ["reset", "verify", "x.db"],
        ["reset", "--confirm", "extra-word"],
        [],
        ["verify"],
        ["restore"],
        ["--help", "frobnicate"],
    ],
    ids=[
        "unknown-subcommand",
        "unknown-global-flag",
        "unknown-subcommand-flag",
        "backup-out-without-value",
        "restore-in-without-value",
        "data-dir-without-value",
        "two-subcommands",
        "stray-argument",
        "no-subcommand",
        "verify-without-path",
        "restore-without-in",
        "help-for-unknown-subcommand",
    ],
)
def test_usage_errors_exit_2_with_cli_usage_error(cli, home, argv):
    """Anything the parser cannot act on: exit 2, event cli.usage_error, nothing done."""
    run = cli(*argv)
    assert_usage_error(run)
    assert list(home.iterdir()) == [], "a usage error created the default data dir"


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        # The cli fixture gives --log-format json first, as operators' scripts might.
        (["--data-dir", "x", "--log-format=json", "status"], "--log-format"),
        (["--data-dir=a", "--data-dir", "b", "status"], "--data-dir"),
        (["--config", "a.toml", "--config=b.toml", "status"], "--config"),
    ],
    ids=["log-format", "data-dir", "config"],
)
def test_a_global_flag_given_twice_is_named_and_exits_2(cli, home, argv, flag):
    """Not invoke's "No idea what 'json' is!": the flag, and that it came twice."""
    run = cli(*argv)
    assert_usage_error(run)
    (error,) = [e for e in support.parse_events(run.err) if e["event"] == "cli.usage_error"]
    assert error["msg"] == f"{flag} is given more than once; give it once"
    assert list(home.iterdir()) == []


def test_bad_log_format_exits_2(env, data_dir):
    """--log-format must be logfmt, json or console."""
    proc = run_plain("--log-format", "xml", "--data-dir", str(data_dir.path), "reset", env=env)
    assert proc.returncode == 2
    assert "event=cli.usage_error" in proc.stderr
    assert "xml" in proc.stderr
    assert proc.stdout == ""


# --- log formats -----------------------------------------------------------------------


def test_default_logfmt_lines_start_with_level_then_event(env, tmp_path):
    """Without --log-format every stderr line reads `level=... event=... `, as the spec prints."""
    data_dir = tmp_path / "data"
    ok = run_plain("--data-dir", str(data_dir), "bootstrap-admin", "--name", "ops", env=env)
    failed = run_plain("--data-dir", str(tmp_path / "empty"), "backup", "--out", "x", env=env)
    usage = run_plain("frobnicate", env=env)
    assert (ok.returncode, failed.returncode, usage.returncode) == (0, 5, 2)
    lines = (ok.stderr + failed.stderr + usage.stderr).splitlines()
    assert len(lines) >= 5
    for line in lines:
        assert LOGFMT_LINE.match(line), line
    assert any(line.startswith("level=error event=backup.source_missing ") for line in lines)


def test_json_log_format_gives_one_object_per_line(cli, tmp_path):
    """--log-format json: every stderr line is a JSON object with level, event and msg."""
    run = cli("--data-dir", str(tmp_path / "d"), "bootstrap-admin", "--name", "ops")
    assert run.code == 0
    lines = run.err.splitlines()
    assert lines and len(run.events) == len(lines)
    for event in (json.loads(line) for line in lines):
        assert {"level", "event", "msg"} <= set(event)


def test_console_log_format_works(env, tmp_path):
    """--log-format console: a human-readable line per event, exit codes unchanged."""
    proc = run_plain(
        "--log-format", "console", "--data-dir", str(tmp_path / "d"), "bootstrap-admin",
        "--name", "ops", env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "bootstrap.admin_created" in proc.stderr
    assert not proc.stderr.startswith(("level=", "{"))
    assert len(proc.stdout.splitlines()) == 1


def test_log_format_from_server_toml_is_used(env, tmp_path):
    """log_format = "json" in the data dir's server.toml applies without a flag."""
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    (data_dir / "server.toml").write_text('log_format = "json"\n')
    proc = run_plain("--data-dir", str(data_dir), "bootstrap-admin", "--name", "ops", env=env)
    assert proc.returncode == 0, proc.stderr
    events = support.parse_events(proc.stderr)
    assert "bootstrap.admin_created" in [e["event"] for e in events]


def test_missing_config_file_named_by_flag_exits_78(cli, tmp_path):
    """--config naming a file that does not exist is refused, not ignored."""
    run = cli("--config", str(tmp_path / "nope.toml"), "reset")
    assert run.code == 78, run.err
    assert run.has_event("startup.config_invalid")


# --- help and version ------------------------------------------------------------------


def test_help_lists_every_subcommand_and_exits_0(cli):
    """--help: usage, every subcommand (a group's as ``config show``), the global
    flags and the exit-code table, exit 0; none of invoke's own wording."""
    run = cli("--help")
    assert run.code == 0
    for name in collection().task_names:
        typed = name.replace(".", " ")
        assert re.search(rf"^\s+{re.escape(typed)}\s", run.out, flags=re.M), typed
    for flag in ("--data-dir", "--config", "--log-format", "--version"):
        assert flag in run.out
    for code in EXIT_CODES:
        assert re.search(rf"^\s+{code}\s", run.out, flags=re.M), code
    for invoke_words in ("other tasks here", "Docstring:", "Core options", "invoke"):
        assert invoke_words not in run.out


@pytest.mark.parametrize(
    ("subcommand", "flags"),
    [
        ("backup", ["--out"]),
        ("restore", ["--in", "--force"]),
        ("reset", ["--confirm"]),
        ("verify", ["--json"]),
        ("bootstrap-admin", ["--name"]),
    ],
)
def test_help_for_a_subcommand_lists_its_flags(cli, subcommand, flags):
    """--help SUBCOMMAND: its docstring and flags, exit 0."""
    run = cli("--help", subcommand)
    assert run.code == 0, run.err
    for flag in flags:
        assert flag in run.out


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_package_version(cli, flag):
    """--version / -V: `portunus-server X.Y.Z`, exit 0."""
    run = cli(flag)
    assert run.code == 0
    assert run.out.strip() == f"portunus-server {__version__}"


# --- data dir resolution ---------------------------------------------------------------

LEVELS = ("flag", "config", "portunus_config", "state_directory", "xdg", "home")


def _where_each_level_points(tmp_path: Path, home: Path) -> dict[str, Path]:
    return {
        "flag": tmp_path / "from-flag",
        "config": tmp_path / "from-config",
        "portunus_config": tmp_path / "from-portunus-config",
        "state_directory": tmp_path / "from-systemd",
        "xdg": tmp_path / "xdg" / "portunus",
        "home": home / ".local" / "state" / "portunus",
    }


def _arrange(level: str, places: dict[str, Path], tmp_path: Path, env: dict) -> list[str]:
    """Set ``level`` and every level below it; return the global flags to pass."""
    args: list[str] = []
    enabled = LEVELS[LEVELS.index(level) :]
    if "flag" in enabled:
        args += ["--data-dir", str(places["flag"])]
    if "config" in enabled:
        config = tmp_path / "flag.toml"
        config.write_text(f'data_dir = "{places["config"]}"\n')
        args += ["--config", str(config)]
    if "portunus_config" in enabled:
        config = tmp_path / "env.toml"
        config.write_text(f'data_dir = "{places["portunus_config"]}"\n')
        env["PORTUNUS_CONFIG"] = str(config)
    if "state_directory" in enabled:
        env["STATE_DIRECTORY"] = str(places["state_directory"])
    if "xdg" in enabled:
        env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    return args


@pytest.mark.parametrize("level", LEVELS)
def test_data_dir_resolution_first_hit_wins(cli, env, home, tmp_path, level):
    """--data-dir, then data_dir in --config / $PORTUNUS_CONFIG, then $STATE_DIRECTORY,
    $XDG_STATE_HOME/portunus, ~/.local/state/portunus; created 0700."""
    places = _where_each_level_points(tmp_path, home)
    args = _arrange(level, places, tmp_path, env)
    run = cli(*args, "bootstrap-admin", "--name", "ops", env=env)
    assert run.code == 0, run.err
    chosen = places[level]
    assert (chosen / "state.db").is_file()
    assert chosen.stat().st_mode & 0o777 == 0o700
    for other, path in places.items():
        if other != level:
            assert not path.exists(), f"{other} was used too"


def test_state_directory_list_uses_its_first_entry(cli, env, tmp_path):
    """systemd passes STATE_DIRECTORY=a:b when several are configured: the first one wins."""
    env["STATE_DIRECTORY"] = f"{tmp_path / 'first'}:{tmp_path / 'second'}"
    run = cli("bootstrap-admin", "--name", "ops", env=env)
    assert run.code == 0, run.err
    assert (tmp_path / "first" / "state.db").is_file()
    assert not (tmp_path / "second").exists()


def test_relative_data_dir_is_taken_from_the_working_directory(cli, tmp_path):
    """--data-dir ./d means ./d where the command runs."""
    run = cli("--data-dir", "d", "bootstrap-admin", "--name", "ops", cwd=tmp_path)
    assert run.code == 0, run.err
    assert (tmp_path / "d" / "state.db").is_file()


@pytest.mark.parametrize("flags", [["--data-dir", ""], ["--data-dir="], ["--config", ""]])
def test_an_empty_path_flag_is_a_usage_error_and_no_fallback_store_is_touched(
    cli, env, store, flags
):
    """`--data-dir "$DIR"` with DIR unset: 2, and the store the default order
    would find (here $STATE_DIRECTORY's) is not reset."""
    env["STATE_DIRECTORY"] = str(store.path)
    run = cli(*flags, "reset", "--confirm", env=env)
    assert run.code == 2, run.err
    assert run.has_event("cli.usage_error")
    assert "is empty" in run.err
    assert store.state_db.is_file()


@pytest.mark.parametrize(
    "subcommand", [["status"], ["backup", "--out", "b.db"], ["config", "check"]]
)
def test_a_data_dir_that_is_a_file_is_named_as_such(cli, tmp_path, subcommand):
    """78 with startup.data_dir_not_directory, not a complaint about server.toml."""
    (tmp_path / "f").write_text("not a directory")
    run = cli("--data-dir", str(tmp_path / "f"), *subcommand, cwd=tmp_path)
    assert run.code == 78, run.err
    assert run.has_event("startup.data_dir_not_directory"), run.err
    assert (tmp_path / "f").read_text() == "not a directory"


@pytest.mark.parametrize(
    "subcommand", [["config", "set", "log_level", "debug"], ["config", "check"]]
)
@pytest.mark.parametrize("flags", [["--data-dir", ""], ["--config", ""]])
def test_config_commands_refuse_an_empty_path_too(cli, env, store, flags, subcommand):
    env["STATE_DIRECTORY"] = str(store.path)
    run = cli(*flags, *subcommand, env=env)
    assert run.code == 2, run.err
    assert run.has_event("cli.usage_error")
    assert not store.config.exists()


def test_config_check_refuses_an_empty_file_flag(cli, store):
    run = cli("--data-dir", str(store.path), "config", "check", "--file", "")
    assert run.code == 2, run.err
    assert "--file is empty" in run.err
