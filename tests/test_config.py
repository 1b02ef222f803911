"""portunus.config: the schema, problems with their lines, editing with tomlkit,
and the shipped example and docs kept in step with the schema."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import tomlkit

from portunus import config
from portunus.errors import RefusedByConfiguration
from tests.support import REPO

EXAMPLE = REPO / "config" / "server.toml"


def problems_of(text: str) -> list[tuple[int | None, str | None, str]]:
    return [(p.line, p.key, p.message) for p in config.examine(text)[1]]


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        ('listen = "127.0.0.1:7443"\nlog_levl = "debug"\n', 2, "log_levl",
         "did you mean 'log_level'"),
        ("[backup]\nverify = 'full'\n\n[retention]\nkeep_daily = '7'\n", 5, "retention.keep_daily",
         "must be an integer, got string"),
        ("tls = 1\n", 1, "tls", "must be a boolean, got integer"),
        ("[retention]\nkeep_weekly = 1_000_001\n", 2, "retention.keep_weekly",
         "between 0 and 1000000"),
        ("[retention]\nkeep_within = '30 days'\n", 2, "retention.keep_within", "duration"),
        ("[retention]\nkeep_within = '0h'\n", 2, "retention.keep_within", "longer than zero"),
        ('listen = "localhost"\n', 1, "listen", "HOST:PORT"),
        ('[backup]\ndir = "backups"\n', 2, "backup.dir", "absolute path"),
        ('[backup]\nmetrics_textfile = "/tmp/portunus.txt"\n', 2, "backup.metrics_textfile",
         ".prom"),
        ('[reset]\nscope = ["state", "everything"]\n', 2, "reset.scope", "unknown scope"),
        ("[reset]\nscope = [1]\n", 2, "reset.scope", "array of strings"),
        ("[audit]\nretain_days = 0\n", 2, "audit.retain_days", "between 1 and 36500"),
        ("shutdown_drain_timeout_secs = 2.5\n", 1, "shutdown_drain_timeout_secs",
         "integer, got float"),
        ("\n\n[bakup]\ndir = '/x'\n", 3, "bakup", "unknown table (did you mean [backup]?)"),
        ("backup = 5\n", 1, "backup", "must be a table"),
        ("[retention.daily]\nkeep = 1\n", 1, "retention.daily", "unknown key"),
        ("retention = { keep_lastt = 3 }\n", 1, "retention.keep_lastt", "unknown key"),
        ("retention.keep_daily = -1\n", 1, "retention.keep_daily", "between 0"),
        ('[ "retention" ]\n  keep_monthly = true\n', 2, "retention.keep_monthly", "integer"),
    ],
)  # fmt: skip
def test_each_kind_of_mistake_is_named_with_its_line_and_key(text, line, key, words):
    """Unknown keys and tables, wrong types, out-of-range values."""
    (problem,) = problems_of(text)
    assert problem[:2] == (line, key)
    assert words in problem[2]


def test_syntax_errors_name_the_line():
    """Not TOML at all: the parser's line is reported."""
    (problem,) = problems_of('listen = "127.0.0.1:7443"\nlog_level = \n')
    assert problem[0] == 2 and problem[1] is None and "not valid TOML" in problem[2]


@pytest.mark.parametrize(
    "text", ["tls = true\ntls = false\n", "[audit]\nx = 1\n[audit.x]\ny = 1\n"]
)
def test_redefinitions_are_syntax_errors(text):
    """TOML forbids them; whichever tomlkit exception says so, it is a problem, not a crash."""
    assert problems_of(text)[0][2].startswith("not valid TOML")


def test_every_problem_is_reported_in_file_order():
    """config check lists them all, not only the first."""
    found = problems_of("nope = 1\n[backup]\nverify = 'some'\n[audit]\nretain_days = 'x'\n")
    assert [p[:2] for p in found] == [(1, "nope"), (3, "backup.verify"), (5, "audit.retain_days")]


def test_a_key_in_a_multiline_string_is_not_mistaken_for_a_key():
    """The line scanner skips multi-line strings."""
    lines = config.key_lines('x = """\n[audit]\nretain_days = 1\n"""\n[audit]\nretain_days = 2\n')
    assert lines["audit.retain_days"] == 6


def test_load_refuses_with_startup_config_invalid_naming_file_line_and_key(tmp_path: Path):
    """The error carries what the log line needs: exit 78, file, line, key."""
    path = tmp_path / "server.toml"
    path.write_text("[retention]\nkeep_last = 'three'\nkeep_daily = -2\n")
    with pytest.raises(RefusedByConfiguration) as caught:
        config.load(path)
    error = caught.value
    assert (error.exit_code, error.event) == (78, "startup.config_invalid")
    assert error.fields == {
        "file": str(path),
        "line": 2,
        "key": "retention.keep_last",
        "problems": 2,
    }
    assert error.message.startswith(f"{path}:2: key 'retention.keep_last': ")
    assert "1 more problem" in error.message


def test_a_missing_optional_file_means_defaults_and_a_required_one_is_refused(tmp_path: Path):
    """<data-dir>/server.toml may be absent; --config FILE may not."""
    assert config.load(tmp_path / "absent.toml").values == config.defaults().values
    with pytest.raises(RefusedByConfiguration):
        config.load(tmp_path / "absent.toml", required=True)


def test_settings_remember_which_keys_the_file_set(tmp_path: Path):
    """The source of each value, for config show."""
    path = tmp_path / "server.toml"
    path.write_text("log_level = 'info'\n[retention]\nkeep_daily = 7\n")
    settings = config.load(path)
    assert settings.explicit == {"log_level", "retention.keep_daily"}
    assert settings.get("retention.keep_daily") == 7 and settings.get("retention.keep_last") == 0


@pytest.mark.parametrize(
    ("key", "raw", "value"),
    [
        ("retention.keep_daily", "7", 7),
        ("tls", "false", False),
        ("retention.keep_within", "30d", "30d"),
        ("retention.keep_within", '"30d"', "30d"),
        ("listen", "0.0.0.0:7443", "0.0.0.0:7443"),
        ("reset.scope", "state,tls", ["state", "tls"]),
        ("reset.scope", '["state", "legacy"]', ["state", "legacy"]),
        ("backup.dir", "/var/backups/portunus", "/var/backups/portunus"),
    ],
)
def test_command_line_values_are_read_as_the_key_s_type(key, raw, value):
    """TOML syntax or bare text, whichever the key's type allows."""
    assert config.coerce(config.BY_DOTTED[key], raw) == value


def test_set_keeps_comments_and_layout(tmp_path: Path):
    """Only the edited value changes; every comment and blank line survives."""
    path = tmp_path / "server.toml"
    original = (
        "# my server\n"
        'listen = "127.0.0.1:7443"   # behind the proxy\n'
        "\n"
        "# nightly backups\n"
        "[backup]\n"
        'dir = "/srv/backups"  # the big disk\n'
        "\n"
        "[retention]\n"
        "keep_daily = 7 # a week\n"
    )
    path.write_text(original)
    config.set_value(path, "retention.keep_daily", "14")
    config.set_value(path, "log_level", "debug")
    config.set_value(path, "retention.keep_monthly", "6")
    config.set_value(path, "audit.retain_days", "90")
    assert path.read_text() == (
        "# my server\n"
        'listen = "127.0.0.1:7443"   # behind the proxy\n'
        'log_level = "debug"\n'
        "\n"
        "# nightly backups\n"
        "[backup]\n"
        'dir = "/srv/backups"  # the big disk\n'
        "\n"
        "[retention]\n"
        "keep_daily = 14 # a week\n"
        "keep_monthly = 6\n"
        "\n"
        "[audit]\n"
        "retain_days = 90\n"
    )


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        pytest.param(  # the file: the key must not join "# nightly backups"
            '# my server\nlisten = "127.0.0.1:7443"\n\n# nightly backups\n[backup]\n'
            'dir = "/srv/backups"\n',
            '# my server\nlisten = "127.0.0.1:7443"\nlog_level = "debug"\n\n'
            '# nightly backups\n[backup]\ndir = "/srv/backups"\n',
            id="after-the-last-key",
        ),
        pytest.param(  # tables only: above the comment block that introduces the first
            "# my server\n\n# nightly backups\n[backup]\ndir = '/b'\n",
            "# my server\n\nlog_level = \"debug\"\n\n# nightly backups\n[backup]\ndir = '/b'\n",
            id="tables-only",
        ),
        pytest.param(  # a "[" line inside a multi-line string is not a table header
            'data_dir = """/b\n[x]"""\n# c\n[backup]\n',
            'data_dir = """/b\n[x]"""\nlog_level = "debug"\n# c\n[backup]\n',
            id="header-like-line-in-a-string",
        ),
    ],
)
def test_a_new_top_level_key_goes_after_the_last_top_level_key(tmp_path: Path, original, expected):
    """tomlkit places a new key before the comment that leads into the first
    table (and its releases differ); config set never tears a comment from
    its table, whichever tomlkit pyproject.toml allows."""
    path = tmp_path / "server.toml"
    path.write_text(original)
    config.set_value(path, "log_level", "debug")
    assert path.read_text() == expected


def test_set_reports_the_old_and_new_value_and_creates_a_missing_file(tmp_path: Path):
    """A first set creates the file, mode 0600."""
    path = tmp_path / "server.toml"
    change = config.set_value(path, "backup.dir", "/srv/b")
    assert (change.old, change.new, change.created) == (None, "/srv/b", True)
    assert tomlkit.parse(path.read_text())["backup"]["dir"] == "/srv/b"
    assert path.stat().st_mode & 0o777 == 0o600
    again = config.set_value(path, "backup.dir", "/srv/c")
    assert (again.old, again.created) == ("/srv/b", False)


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("retention.keep_dayly", "7"),
        ("retention.keep_daily", "seven"),
        ("retention.keep_daily", "2000000"),
        ("backup.verify", "thorough"),
        ("tls", "yes"),
        ("backup.dir", "relative"),
        ("reset.scope", "state,all"),
    ],
)
def test_set_refuses_invalid_values_without_touching_the_file(tmp_path: Path, key, raw):
    """78, config.set_refused; same bytes, same inode, same mtime."""
    path = tmp_path / "server.toml"
    path.write_text("# keep me\n[retention]\nkeep_daily = 7\n")
    before = (path.read_bytes(), path.stat().st_ino, path.stat().st_mtime_ns)
    with pytest.raises(RefusedByConfiguration) as caught:
        config.set_value(path, key, raw)
    assert (caught.value.exit_code, caught.value.event) == (78, "config.set_refused")
    assert caught.value.fields["key"] == key
    assert (path.read_bytes(), path.stat().st_ino, path.stat().st_mtime_ns) == before
    assert os.listdir(tmp_path) == ["server.toml"]  # no temporary file left either


def test_set_refuses_when_another_key_of_the_file_is_invalid(tmp_path: Path):
    """The edited file must load as a whole before it is written."""
    path = tmp_path / "server.toml"
    path.write_text("[audit]\nretain_days = 0\n")
    with pytest.raises(RefusedByConfiguration) as caught:
        config.set_value(path, "log_level", "debug")
    assert caught.value.fields["key"] == "audit.retain_days"
    assert path.read_text() == "[audit]\nretain_days = 0\n"


def test_set_through_a_symlink_edits_the_target_and_keeps_the_link(tmp_path: Path):
    """/etc/portunus/server.toml may be a link into a config repository."""
    real = tmp_path / "real.toml"
    real.write_text("log_level = 'info'\n")
    link = tmp_path / "server.toml"
    link.symlink_to(real)
    config.set_value(link, "log_level", "debug")
    assert link.is_symlink() and "debug" in real.read_text()


def test_set_keeps_the_file_mode(tmp_path: Path):
    """A 0644 config stays 0644 (no secrets in it; other tools read it)."""
    path = tmp_path / "server.toml"
    path.write_text("")
    path.chmod(0o644)
    config.set_value(path, "tls", "false")
    assert path.stat().st_mode & 0o777 == 0o644


# --- the shipped example and docs ----------------------------------------------------


def test_the_example_config_is_valid_and_every_value_in_it_is_the_default():
    """config/server.toml shows the defaults, so it can be copied as is."""
    settings = config.load(EXAMPLE, required=True)
    assert settings.values == config.defaults().values


def test_the_example_config_names_every_key_in_its_table():
    """Keys without a default appear commented out, in the right table."""
    text = EXAMPLE.read_text()
    lines = config.key_lines(text)
    table = ""
    commented: set[str] = set()
    for raw in text.splitlines():
        header = re.match(r"^\[(\w+)\]", raw)
        table = header[1] if header else table
        key = re.match(r"^# (\w+) = ", raw)
        if key:
            commented.add(f"{table}.{key[1]}" if table else key[1])
    for key in config.SCHEMA:
        if key.default is None:
            assert key.dotted in commented, key.dotted
        else:
            assert key.dotted in lines, key.dotted


def test_docs_configuration_lists_every_key_with_type_default_and_range():
    """docs/configuration.md has a row per key that agrees with the schema."""
    text = (REPO / "docs" / "configuration.md").read_text()
    rows = {
        m[0]: (m[1], m[2], m[3])
        for m in re.findall(r"^\| `([a-z_.]+)` \| (\w+) \| (.+?) \| (.+?) \|", text, flags=re.M)
    }
    assert set(rows) == set(config.BY_DOTTED)
    for key in config.SCHEMA:
        kind, default, allowed = rows[key.dotted]
        assert kind == config.TYPE_NAMES[key.kind], key.dotted
        assert default == (
            "unset" if key.default is None else f"`{config.render_value(key.default)}`"
        )
        assert allowed == (key.allowed or "true, false"), key.dotted
