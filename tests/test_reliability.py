"""The fault campaign kept in the repo (bench/reliability.py, bench/bad_inputs.py):
every row of the bad-input corpus, a few kill -9 trials of each kind, and
proof that the harness's checks can fail. ``invoke reliability --trials 100``
is the full run recorded in docs/reliability.md."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from bench import bad_inputs, reliability
from portunus.datadir import probe_filesystem
from portunus.errors import EXIT_CODES
from tests.support import REPO

ROWS = bad_inputs.load()
TRIALS = 2  # per kind here; the recorded run has 100
SMALL_STORE_ROWS = 2_000  # ~8 MiB: quick, still a backup and a restore with phases


# ------------------------------------------------------------------ the corpus


@pytest.fixture(scope="module")
def materials(tmp_path_factory: pytest.TempPathFactory) -> bad_inputs.Materials:
    return bad_inputs.Materials(tmp_path_factory.mktemp("materials"))


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_each_bad_input_gets_its_documented_answer_and_changes_nothing(
    row: bad_inputs.Row, materials, tmp_path: Path
):
    outcome = bad_inputs.run_row(row, materials, tmp_path / "sandbox")
    assert outcome.passed, (outcome.code, outcome.events, outcome.problems)


def test_the_corpus_has_at_least_40_rows_with_documented_codes_and_events():
    catalogue = (REPO / "docs" / "events.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", catalogue, re.MULTILINE))
    assert len(ROWS) >= 40
    for row in ROWS:
        assert row.exit in EXIT_CODES, row.name
        assert not row.event or row.event in documented, row.name
        assert row.exit == 0 or row.event, f"{row.name}: a refusal names its event"


def test_the_corpus_runner_notices_a_wrong_answer_and_a_change(materials, tmp_path: Path):
    """A backup that succeeds, in a row expecting a refusal: the wrong exit
    code, the missing event and the files it created are all reported."""
    row = bad_inputs.Row(
        name="a successful backup posing as a refusal",
        args=("--data-dir", "{data}", "backup", "--out", "{sandbox}/b.db"),
        exit=6,
        event="backup.destination_exists",
        setup={"data": "store"},
    )
    outcome = bad_inputs.run_row(row, materials, tmp_path / "sandbox")
    assert not outcome.passed
    assert "exit 0, expected 6" in outcome.problems
    assert any(p.startswith("no event=backup.destination_exists") for p in outcome.problems)
    assert {"created b.db", "created b.db.sha256"} <= set(outcome.problems)


def test_a_changed_input_is_noticed(tmp_path: Path):
    (tmp_path / "in.db").write_text("one")
    (tmp_path / "state.db.lock").write_text("812 serve\n")
    before = bad_inputs.snapshot(tmp_path)
    (tmp_path / "in.db").write_text("two")
    (tmp_path / "state.db.lock").write_text("913 restore\n")  # a holder's pid: not state
    os.chmod(tmp_path / "in.db", 0o600)
    assert bad_inputs.differences(before, bad_inputs.snapshot(tmp_path)) == ["changed in.db"]


# ------------------------------------------------------------------ kill -9 trials


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> reliability.Context:
    root = tmp_path_factory.mktemp("campaign")
    if probe_filesystem(root).verdict == "unsupported":
        pytest.skip(f"{root} is on a filesystem where serve refuses to run")
    (root / "home").mkdir()
    return reliability.Context(root, bad_inputs.sandbox_env(root / "home"), SMALL_STORE_ROWS)


@pytest.mark.slow
@pytest.mark.parametrize("kind", reliability.KINDS)
def test_kill_trials_of_each_kind_pass(campaign: reliability.Context, kind: str):
    """kill -9 at seeded moments: a backup leaves nothing or a whole backup, a
    restore the old or the new state, a server every acknowledged write."""
    lines: list[str] = []
    result = reliability.run_kind(campaign, kind, TRIALS, reliability.DEFAULT_SEED, lines.append)
    assert len(result.trials) == TRIALS
    assert not result.failures, "\n".join(lines)
    assert all(f"seed={reliability.DEFAULT_SEED}" in line for line in lines[:1]), lines
    if kind == "server":
        assert sum(t.acknowledged for t in result.trials) > 0
    else:
        assert {t.outcome for t in result.trials} <= {
            "absent", "published", "finished", "old", "new",
        }  # fmt: skip


def test_a_trial_seed_replays_the_same_kill_moment():
    """The printed seed is enough to replay a trial: the same phase, the same offset."""
    plan = reliability.Plan("its staged copy appeared", startup=0.3, work=0.5, early=0.25)
    draws = [plan.draw("restore", seed) for seed in range(200)]
    assert draws == [plan.draw("restore", seed) for seed in range(200)]
    assert {anchor for anchor, _ in draws} == {"start", "its staged copy appeared"}
    assert all(0 <= d <= (0.3 if a == "start" else 0.5) for a, d in draws)


def test_a_partial_file_under_a_final_name_fails_the_backup_check(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    with pytest.raises(reliability.TrialFailed, match="fails verify"):
        reliability.backup_left(out, "any digest")


def test_a_backup_left_without_its_sidecar_for_good_fails(campaign, tmp_path: Path):
    """A final name without its sidecar is reported by what the kill left and
    fails the trial unless the next backup gives it one."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copyfile(campaign.states.new_artefact, out / "b.db")
    digest = campaign.states.new_digest
    assert reliability.backup_left(out, digest) == "published without sidecar"
    with pytest.raises(reliability.TrialFailed, match="has no sidecar"):
        reliability.check_published(out / "b.db", digest)


def test_a_stray_file_or_a_lone_sidecar_fails_the_backup_check(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.db.sha256").write_text("0" * 64 + "  b.db\n")
    with pytest.raises(reliability.TrialFailed, match="a sidecar without its backup"):
        reliability.backup_left(out, "any digest")
    (out / "b.db.sha256").unlink()
    (out / ".b.db.partial").write_bytes(b"x")
    with pytest.raises(reliability.TrialFailed, match="unexpected files"):
        reliability.backup_left(out, "any digest")


def test_a_half_state_fails_the_restore_check(campaign: reliability.Context, tmp_path: Path):
    """The old state without its WAL is neither the old state nor the new one."""
    data = campaign.fresh_old(tmp_path / "data")
    os.unlink(data / "state.db-wal")
    states = campaign.states
    with pytest.raises(reliability.TrialFailed, match="half state"):
        reliability.restore_left(data, states.old_digest, states.new_digest)
    shutil.rmtree(data)
    data.mkdir()
    with pytest.raises(reliability.TrialFailed, match="state.db is gone"):
        reliability.restore_left(data, states.old_digest, states.new_digest)


def test_a_client_without_its_audit_row_is_reported(tmp_path: Path):
    """The server check finds a write that was half made (its audit row missing)."""
    served = reliability.Served.__new__(reliability.Served)
    served.data_dir = tmp_path
    conn = apsw.Connection(str(tmp_path / "state.db"))
    conn.execute(
        "CREATE TABLE clients (name TEXT); CREATE TABLE audit_log (action TEXT, resource TEXT);"
        "INSERT INTO clients VALUES ('whole'), ('half');"
        "INSERT INTO audit_log VALUES ('client.create', 'client:whole');"
    )
    conn.close()
    names, orphans, checked = reliability.server_state(served)
    assert (names, orphans, checked) == ({"whole", "half"}, ["half"], "ok")


# ------------------------------------------------------------------ the command


def test_invoke_lists_reliability_as_a_development_chore(env):
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "--list"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.split()[:1] == ["reliability"])
    assert "Development:" in line


@pytest.mark.slow
def test_a_failing_row_makes_the_run_exit_1_with_both_tables(tmp_path: Path, env):
    """One backup trial and a corpus with one wrong row: the trial table, the
    corpus table naming the row, exit 1, and the failed sandbox kept."""
    corpus = tmp_path / "corpus.toml"
    corpus.write_text(
        "[[input]]\n"
        'name = "verify of a missing file wrongly expected to pass"\n'
        'run = ["verify", "{missing.db}"]\n'
        "exit = 0\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "bench.reliability", "--trials", "1", "--kinds", "backup",
         "--rows", "300", "--corpus", str(corpus), "--workdir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "| backup | 1 | 1 | 0 |" in done.stdout
    assert "| 1 | 0 | 1 |" in done.stdout  # rows, passed, failed
    assert "| verify of a missing file wrongly expected to pass | 5 | exit 5, expected 0 |" in (
        done.stdout
    )
    assert "directories are kept under" in done.stdout
