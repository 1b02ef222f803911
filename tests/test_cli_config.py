"""``portunus-server config show|check|set`` and invalid configs, black-box."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import REPO

WRONG = {
    "unknown key": ("[retention]\nkeep_dayly = 7\n", 2, "retention.keep_dayly"),
    "wrong type": ("tls = true\n[backup]\nchecksum = 'yes'\n", 3, "backup.checksum"),
    "out of range": ("\n[audit]\nretain_days = 0\n", 3, "audit.retain_days"),
    "bad choice": ('log_format = "xml"\n', 1, "log_format"),
    "syntax error": ('[backup]\ndir = "/x\n', 2, None),
    "half a TLS pair": (
        'listen = "127.0.0.1:7443"\ntls_key_path = "/etc/pki/api.key"\n',
        2,
        "tls_key_path",
    ),
}


@pytest.mark.parametrize("case", list(WRONG))
def test_an_invalid_config_stops_any_command_with_78_naming_file_line_and_key(cli, tmp_path, case):
    """startup.config_invalid, exit 78, before the command does anything."""
    text, line, key = WRONG[case]
    path = tmp_path / "server.toml"
    path.write_text(text)
    run = cli("--config", str(path), "backup", "--out", str(tmp_path / "b.db"))
    assert run.code == 78
    (event,) = [e for e in run.events if e["event"] == "startup.config_invalid"]
    assert (event["file"], event["line"], event.get("key")) == (str(path), line, key)
    assert event["msg"].startswith(f"{path}:{line}: ")
    assert not (tmp_path / "b.db").exists()


def test_the_config_in_the_data_dir_is_read_and_checked_too(cli, tmp_path):
    """Without --config, <data-dir>/server.toml applies."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "server.toml").write_text("[retention]\nkeep_last = -1\n")
    run = cli("--data-dir", str(data), "status")
    assert run.code == 78 and run.has_event("startup.config_invalid")


def test_portunus_config_must_exist_when_named(cli, tmp_path, env):
    """$PORTUNUS_CONFIG naming a missing file is a configuration error, not defaults."""
    run = cli("status", env={**env, "PORTUNUS_CONFIG": str(tmp_path / "absent.toml")})
    assert run.code == 78 and "does not exist" in run.events[-1]["msg"]


def test_show_names_the_source_of_every_value(cli, tmp_path, env):
    """default, file, flag, env."""
    path = tmp_path / "server.toml"
    path.write_text('log_level = "debug"\n[retention]\nkeep_daily = 7\n')
    run = cli(
        "--config", str(path), "config", "show", "--json",  # run_cli adds --log-format json
        env={**env, "STATE_DIRECTORY": str(tmp_path / "state")},
    )  # fmt: skip
    assert run.code == 0, run.err
    shown = json.loads(run.out)
    assert shown["file"] == str(path)
    settings = shown["settings"]
    assert settings["log_level"] == {"value": "debug", "source": "file"}
    assert settings["retention.keep_daily"] == {"value": 7, "source": "file"}
    assert settings["log_format"] == {"value": "json", "source": "flag"}
    assert settings["data_dir"] == {"value": str(tmp_path / "state"), "source": "env"}
    assert settings["audit.retain_days"] == {"value": 365, "source": "default"}
    assert settings["backup.dir"] == {"value": None, "source": "default"}


def test_show_in_text_prints_one_line_per_key(cli, tmp_path):
    """Human output: KEY VALUE # SOURCE, the file on top."""
    run = cli("--data-dir", str(tmp_path / "data"), "config", "show")
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0] == "# file: none (built-in defaults)"
    assert lines[1].split() == ["data_dir", f'"{tmp_path / "data"}"', "#", "flag"]
    assert any(line.split()[:2] == ["retention.keep_daily", "0"] for line in lines)
    assert len(lines) == 1 + 30


def test_check_lists_every_problem_and_exits_78(cli, tmp_path):
    """One line per problem on stdout, one event on stderr."""
    path = tmp_path / "server.toml"
    path.write_text("nope = 1\n[backup]\nverify = 'fast'\n")
    run = cli("config", "check", "--file", str(path))
    assert run.code == 78
    assert run.out.splitlines() == [
        f"{path}:1: key 'nope': unknown key",
        f"{path}:3: key 'backup.verify': must be one of none, quick, full (got \"fast\")",
    ]
    assert run.events[-1]["event"] == "startup.config_invalid"
    assert run.events[-1]["problems"] == 2


@pytest.mark.parametrize("given", ["tls_cert_path", "tls_key_path"])
def test_check_refuses_one_half_of_the_tls_pair_naming_the_other(cli, tmp_path, given):
    """One alone would pair it with the data dir's file, which serve then
    refused with a hint about the wrong directory."""
    path = tmp_path / "server.toml"
    path.write_text(f'# mine\n{given} = "/etc/pki/api.pem"\n')
    run = cli("config", "check", "--file", str(path))
    assert run.code == 78
    (partner,) = {"tls_cert_path", "tls_key_path"} - {given}
    (line,) = run.out.splitlines()
    assert line.startswith(f"{path}:2: key '{given}': {given} is set but {partner} is not")
    assert (run.events[-1]["event"], run.events[-1]["key"]) == ("startup.config_invalid", given)

    path.write_text(f'{given} = "/etc/pki/api.pem"\n{partner} = "/etc/pki/api.pem"\n')
    assert cli("config", "check", "--file", str(path)).code == 0


def test_set_writes_half_a_pair_with_a_hint_and_the_other_half_completes_it(cli, tmp_path):
    """One key per command: the first is written (the file is refused until
    the second is set, and says so), the second makes it whole."""
    path = tmp_path / "server.toml"
    first = cli("--config", str(path), "config", "set", "tls_cert_path", "/etc/pki/api.crt")
    assert first.code == 0, first.err
    (event,) = [e for e in first.events if e["event"] == "config.updated"]
    assert event["hint"] == "set tls_key_path too: until then the file is refused"
    assert cli("--config", str(path), "config", "check").code == 78
    assert cli("--config", str(path), "status").code == 78
    second = cli("--config", str(path), "config", "set", "tls_key_path", "/etc/pki/api.key")
    assert second.code == 0, second.err
    (event,) = [e for e in second.events if e["event"] == "config.updated"]
    assert "hint" not in event
    assert cli("--config", str(path), "config", "check").code == 0


def test_check_accepts_the_shipped_example(cli):
    """config/server.toml is valid as shipped."""
    example = REPO / "config" / "server.toml"
    run = cli("--config", str(example), "config", "check")
    assert (run.code, run.out.strip()) == (0, f"ok: {example}")


def test_check_without_a_file_says_defaults_apply(cli, tmp_path):
    """The optional file in the data dir may be absent."""
    run = cli("--data-dir", str(tmp_path / "data"), "config", "check")
    assert run.code == 0 and "built-in defaults apply" in run.out


def test_set_keeps_the_operator_s_comments(cli, tmp_path):
    """The edit changes the value and nothing else."""
    path = tmp_path / "server.toml"
    path.write_text("# ops team: do not shorten\n[retention]\nkeep_daily = 7  # one week\n")
    run = cli("--config", str(path), "config", "set", "retention.keep_daily", "30")
    assert run.code == 0, run.err
    assert (
        path.read_text() == "# ops team: do not shorten\n[retention]\nkeep_daily = 30  # one week\n"
    )
    assert run.out.strip() == f"retention.keep_daily = 30 (was 7) in {path}"
    (updated,) = [e for e in run.events if e["event"] == "config.updated"]
    assert (updated["key"], updated["old"], updated["new"]) == ("retention.keep_daily", 7, 30)


def test_set_refuses_an_invalid_value_with_78_and_leaves_the_file(cli, tmp_path):
    """Validated before the write: the file's bytes do not change."""
    path = tmp_path / "server.toml"
    path.write_text("[retention]\nkeep_daily = 7\n")
    run = cli("--config", str(path), "config", "set", "retention.keep_within", "a month")
    assert run.code == 78
    assert run.events[-1]["event"] == "config.set_refused"
    assert run.events[-1]["key"] == "retention.keep_within"
    assert path.read_text() == "[retention]\nkeep_daily = 7\n"


def test_set_creates_the_data_dir_config_and_commands_then_use_it(cli, tmp_path):
    """A fresh host: config set writes <data-dir>/server.toml, show reads it."""
    data = tmp_path / "data"
    assert cli("--data-dir", str(data), "config", "set", "backup.dir", "/srv/b").code == 0
    assert (data / "server.toml").stat().st_mode & 0o777 == 0o600
    assert data.stat().st_mode & 0o777 == 0o700
    shown = json.loads(cli("--data-dir", str(data), "config", "show", "--json").out)
    assert shown["settings"]["backup.dir"] == {"value": "/srv/b", "source": "file"}


def test_set_needs_both_key_and_value(cli, tmp_path):
    """A usage error, exit 2."""
    assert cli("--data-dir", str(tmp_path), "config", "set", "log_level").code == 2


def test_the_dotted_spelling_works_too(cli, tmp_path):
    """config.show is the invoke name of config show."""
    run = cli("--data-dir", str(tmp_path / "d"), "config.show", "--json")
    assert run.code == 0 and json.loads(run.out)["file"] is None


def test_show_refuses_an_invalid_file_like_every_command(cli, tmp_path):
    """78: show prints effective values, and there are none."""
    path = tmp_path / "server.toml"
    path.write_text("bogus = 1\n")
    assert cli("--config", str(path), "config", "show").code == 78


def test_the_config_example_file_exists_for_operators():
    """config/server.toml ships in the repository."""
    assert (REPO / "config" / "server.toml").is_file()
    assert Path(REPO / "docs" / "configuration.md").is_file()
