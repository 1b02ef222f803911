"""Sealed backups, black-box through the CLI: age encryption on every face,
opening them (verify/restore --identity, the ``age`` tool), keygen, list,
restore --latest, and no plaintext byte in the destination, ever."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portunus.datadir import DataDir
from portunus.store.connection import open_store
from tests import serving, support

SQLITE_HEADER = b"SQLite format 3\x00"
AGE_HEADER = b"age-encryption.org/v1\n"
MARKER = b"edge0"
serve_tmp = serving.serve_tmp  # a client name make_store writes: known plaintext


@pytest.fixture
def keys(tmp_path: Path, cli) -> dict[str, Path | str]:
    first, second = tmp_path / "keys" / "one.key", tmp_path / "keys" / "two.key"
    first.parent.mkdir()
    found: dict[str, Path | str] = {"one": first, "two": second}
    for name, path in (("one", first), ("two", second)):
        run = cli("keygen", "--out", str(path))
        assert run.code == 0, run.err
        found[f"{name}_recipient"] = run.out.strip()
    return found


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "backups"
    path.mkdir()
    return path


def sealed_backup(cli, store: DataDir, dest: Path, *recipients: str, extra=()) -> Path:
    flags = [arg for r in recipients for arg in ("--recipient", r)]
    run = cli("--data-dir", str(store.path), "backup", "--out", f"{dest}/", *flags, *extra)
    assert run.code == 0, run.err
    return Path(run.out.strip())


def assert_no_plaintext(directory: Path) -> None:
    """Nothing in ``directory`` carries the SQLite header or a known row."""
    for entry in directory.iterdir():
        if entry.is_file():
            data = entry.read_bytes()
            assert SQLITE_HEADER not in data, entry
            assert MARKER not in data, entry


def age_decrypt(path: Path, identity: Path) -> bytes:
    return subprocess.run(
        ["age", "-d", "-i", str(identity), str(path)], capture_output=True, check=True
    ).stdout


needs_age = pytest.mark.skipif(shutil.which("age") is None, reason="the age tool is not installed")


# --- keygen --------------------------------------------------------------------------


def test_keygen_writes_a_0600_identity_prints_its_recipient_and_refuses_to_overwrite(cli, tmp_path):
    out = tmp_path / "id.key"
    run = cli("keygen", "--out", str(out))
    assert run.code == 0, run.err
    recipient = run.out.strip()
    assert recipient.startswith("age1")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert f"# public key: {recipient}" in out.read_text()
    before = out.read_bytes()
    again = cli("keygen", "--out", str(out))
    assert again.code == 6 and again.has_event("keygen.destination_exists"), again.err
    assert out.read_bytes() == before


# --- sealing -------------------------------------------------------------------------


@needs_age
def test_a_sealed_backup_is_age_v1_its_sidecar_covers_it_and_age_opens_it(cli, store, dest, keys):
    sealed = sealed_backup(cli, store, dest, keys["one_recipient"], keys["two_recipient"])
    assert sealed.name.startswith("portunus-state-") and sealed.name.endswith("Z.db.age")
    assert sealed.read_bytes().startswith(AGE_HEADER)
    check = subprocess.run(
        ["sha256sum", "-c", sealed.name + ".sha256"], cwd=dest, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    for identity in (keys["one"], keys["two"]):
        plain = age_decrypt(sealed, identity)
        assert plain.startswith(SQLITE_HEADER) and MARKER in plain
    assert_no_plaintext(dest)
    # The private staging copy is gone from the data dir too.
    assert sorted(p.name for p in store.path.iterdir() if p.name.startswith(".")) == []


@needs_age
def test_a_recipients_file_with_comments_and_blank_lines(cli, store, dest, keys, tmp_path):
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(
        f"# the backup team\n\n{keys['one_recipient']}\n   \n# offsite\n{keys['two_recipient']}\n"
    )
    sealed = sealed_backup(cli, store, dest, extra=("--recipients-file", str(recipients)))
    for identity in (keys["one"], keys["two"]):
        assert age_decrypt(sealed, identity).startswith(SQLITE_HEADER)


@pytest.mark.parametrize("bad", ["age1notakey", "ssh-ed25519 AAAAnope", "hello"])
def test_a_bad_recipient_is_2_naming_it_and_writes_nothing(cli, store, dest, bad):
    run = cli("--data-dir", str(store.path), "backup", "--out", f"{dest}/", "--recipient", bad)
    assert run.code == 2, run.err
    assert bad in run.err
    assert any(e["event"] == "backup.bad_recipient" for e in run.events), run.err
    assert list(dest.iterdir()) == []


def test_a_bad_recipient_in_a_recipients_file_is_2_naming_it(cli, store, dest, tmp_path):
    recipients = tmp_path / "r.txt"
    recipients.write_text("# ok\nage1broken\n")
    run = cli(
        "--data-dir", str(store.path), "backup", "--out", f"{dest}/",
        "--recipients-file", str(recipients),
    )  # fmt: skip
    assert run.code == 2 and "age1broken" in run.err, run.err
    assert list(dest.iterdir()) == []


def write_config(tmp_path: Path, store: DataDir, dest: Path, **backup: object) -> dict:
    config = tmp_path / "server.toml"
    lines = [f'data_dir = "{store.path}"', "[backup]", f'dir = "{dest}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in backup.items()]
    config.write_text("\n".join(lines) + "\n")
    return {**support.clean_env(tmp_path / "home"), "PORTUNUS_CONFIG": str(config)}


def test_encrypt_to_in_server_toml_seals_the_managed_backup(cli, store, dest, keys, tmp_path):
    env = write_config(tmp_path, store, dest, encrypt_to=[keys["one_recipient"]])
    run = cli("backup", env=env)
    assert run.code == 0, run.err
    sealed = Path(run.out.strip())
    assert sealed.parent == dest and sealed.name.endswith(".db.age")
    assert sealed.read_bytes().startswith(AGE_HEADER)
    assert_no_plaintext(dest)
    opened = cli(
        "--data-dir", str(tmp_path / "elsewhere"), "verify", str(sealed),
        "--identity", str(keys["one"]),
    )  # fmt: skip
    assert opened.code == 0, opened.err


def test_recipients_file_in_server_toml_seals_the_backup(cli, store, dest, keys, tmp_path):
    recipients = tmp_path / "r.txt"
    recipients.write_text(f"# comment\n\n{keys['two_recipient']}\n")
    env = write_config(tmp_path, store, dest, recipients_file=str(recipients))
    run = cli("backup", "--out", f"{dest}/", env=env)
    assert run.code == 0, run.err
    assert Path(run.out.strip()).read_bytes().startswith(AGE_HEADER)


def test_a_bad_encrypt_to_in_server_toml_is_refused_by_config_check(cli, store, dest, tmp_path):
    env = write_config(tmp_path, store, dest, encrypt_to=["age1typo"])
    run = cli("backup", env=env)
    assert run.code == 78, run.err
    assert "age1typo" in run.err
    assert list(dest.iterdir()) == []


def test_invoke_backup_is_sealed_by_encrypt_to(store, dest, keys, tmp_path):
    env = write_config(tmp_path, store, dest, encrypt_to=[keys["one_recipient"]])
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "backup"],
        capture_output=True, text=True, env=env, cwd=support.REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    made = [p for p in dest.iterdir() if p.name.endswith(".db.age")]
    assert len(made) == 1 and made[0].read_bytes().startswith(AGE_HEADER)
    assert_no_plaintext(dest)


# --- opening -------------------------------------------------------------------------


def test_verify_without_identity_checks_the_checksum_and_says_the_content_was_not(
    cli, store, dest, keys
):
    sealed = sealed_backup(cli, store, dest, keys["one_recipient"])
    run = cli("verify", str(sealed))
    assert run.code == 0, run.err
    assert "NOT CHECKED" in run.out
    assert run.has_event("verify.content_unchecked")
    as_json = json.loads(cli("verify", str(sealed), "--json").out)
    assert as_json["sealed"] is True and as_json["content_checked"] is False
    # The checksum is still checked: a flipped byte is 7 without any key.
    flip(sealed, len(sealed.read_bytes()) // 2)
    damaged = cli("verify", str(sealed))
    assert damaged.code == 7 and damaged.has_event("verify.checksum_mismatch"), damaged.err


def test_verify_with_identity_checks_everything(cli, store, dest, keys):
    sealed = sealed_backup(cli, store, dest, keys["one_recipient"])
    run = cli("--data-dir", str(store.path), "verify", str(sealed), "--identity", str(keys["one"]))
    assert run.code == 0, run.err
    result = json.loads(cli("verify", str(sealed), "--identity", str(keys["one"]), "--json").out)
    assert result["content_checked"] and result["integrity"] == "ok"
    assert result["rows"]["clients"] == 3
    # The decrypted copy went with the command.
    assert [p.name for p in store.path.iterdir() if p.name.startswith(".verify-")] == []


def test_verify_with_the_wrong_identity_is_7(cli, store, dest, keys):
    sealed = sealed_backup(cli, store, dest, keys["one_recipient"])
    run = cli("verify", str(sealed), "--identity", str(keys["two"]))
    assert run.code == 7 and run.has_event("verify.decrypt_failed"), run.err


def restore_into(cli, data: Path, sealed: Path, identity: Path, *extra: str) -> support.Run:
    return cli(
        "--data-dir", str(data), "restore", "--in", str(sealed), "--identity", str(identity),
        *extra,
    )  # fmt: skip


def test_restore_a_sealed_backup_with_its_identity(cli, store, dest, keys, tmp_path):
    sealed = sealed_backup(cli, store, dest, keys["one_recipient"])
    target = tmp_path / "restored"
    run = restore_into(cli, target, sealed, keys["one"])
    assert run.code == 0, run.err
    assert support.table_counts(target / "state.db") == support.table_counts(store.state_db)
    assert sorted(p.name for p in target.iterdir()) == ["state.db", "state.db.lock"]


def test_a_sealed_backup_without_identity_is_2_and_changes_nothing(
    cli, store, dest, keys, tmp_path
):
    sealed = sealed_backup(cli, store, dest, keys["one_recipient"])
    target = tmp_path / "restored"
    run = cli("--data-dir", str(target), "restore", "--in", str(sealed))
    assert run.code == 2 and run.has_event("restore.identity_required"), run.err
    assert not target.exists()


def assert_refused_cleanly(run: support.Run, target: Path, event: str) -> None:
    assert run.code == 7, run.err
    assert run.has_event(event), run.err
    # Nothing changed, and no staged plaintext is left behind.
    assert not target.exists() or list(target.iterdir()) == []


def test_restore_with_the_wrong_identity_is_7_decrypt_failed(cli, store, dest, keys, tmp_path):
    sealed = sealed_backup(cli, store, dest, keys["one_recipient"])
    target = tmp_path / "restored"
    assert_refused_cleanly(
        restore_into(cli, target, sealed, keys["two"]), target, "restore.decrypt_failed"
    )


def test_restore_with_the_wrong_identity_leaves_an_existing_store_as_it_was(cli, store, dest, keys):
    sealed = sealed_backup(cli, store, dest, keys["one_recipient"])
    before = store.state_db.read_bytes()
    names = sorted(p.name for p in store.path.iterdir())
    run = restore_into(cli, store.path, sealed, keys["two"], "--force")
    assert run.code == 7 and run.has_event("restore.decrypt_failed"), run.err
    assert store.state_db.read_bytes() == before
    assert sorted(p.name for p in store.path.iterdir()) == names


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["header", "stanza", "middle", "last"])
def test_a_flipped_byte_anywhere_is_7_and_changes_nothing(cli, store, dest, keys, tmp_path, where):
    sealed = sealed_backup(cli, store, dest, keys["one_recipient"])
    size = sealed.stat().st_size
    offset = {"header": 3, "stanza": 40, "middle": size // 2, "last": size - 1}[where]
    flip(sealed, offset)
    target = tmp_path / "restored"
    # With its sidecar: the checksum mismatch is what is reported.
    with_sidecar = restore_into(cli, target, sealed, keys["one"])
    if where == "header":
        # Not age's header any more: refused as not a database at all.
        assert with_sidecar.code == 7, with_sidecar.err
        assert not target.exists()
        return
    assert_refused_cleanly(with_sidecar, target, "restore.checksum_mismatch")
    # Without it (a copy that lost its sidecar): age's authentication does.
    Path(f"{sealed}.sha256").unlink()
    assert_refused_cleanly(
        restore_into(cli, target, sealed, keys["one"]), target, "restore.decrypt_failed"
    )


def test_an_authentic_sealed_backup_with_a_wrong_sidecar_is_a_checksum_mismatch(
    cli, store, dest, keys, tmp_path
):
    """The sealed bytes are hashed beside the decryption, which succeeds
    here: the mismatch alone must still refuse it, and leave nothing."""
    sealed = sealed_backup(cli, store, dest, keys["one_recipient"])
    sidecar = Path(f"{sealed}.sha256")
    sidecar.write_text(f"{'0' * 64}  {sealed.name}\n")
    target = tmp_path / "restored"
    assert_refused_cleanly(
        restore_into(cli, target, sealed, keys["one"]), target, "restore.checksum_mismatch"
    )
    stage = tmp_path / "verify-data"
    stage.mkdir(mode=0o700)
    run = cli("--data-dir", str(stage), "verify", str(sealed), "--identity", str(keys["one"]))
    assert run.code == 7 and run.has_event("verify.checksum_mismatch"), run.err
    assert list(stage.iterdir()) == []  # its private decrypted copy is gone


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_a_truncated_sealed_backup_is_7_and_changes_nothing(cli, store, dest, keys, tmp_path, keep):
    sealed = sealed_backup(cli, store, dest, keys["one_recipient"])
    data = sealed.read_bytes()
    sealed.write_bytes(data[: int(len(data) * keep)])
    Path(f"{sealed}.sha256").unlink()
    target = tmp_path / "restored"
    assert_refused_cleanly(
        restore_into(cli, target, sealed, keys["one"]), target, "restore.decrypt_failed"
    )
    run = cli("verify", str(sealed), "--identity", str(keys["one"]))
    assert run.code == 7 and run.has_event("verify.decrypt_failed"), run.err


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")
def test_an_ssh_ed25519_recipient_and_its_private_key(cli, store, dest, tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops", "-f", str(key)], check=True
    )
    sealed = sealed_backup(cli, store, dest, Path(f"{key}.pub").read_text().strip())
    target = tmp_path / "restored"
    run = restore_into(cli, target, sealed, key)
    assert run.code == 0, run.err
    assert support.table_counts(target / "state.db") == support.table_counts(store.state_db)
    if shutil.which("age"):
        assert age_decrypt(sealed, key).startswith(SQLITE_HEADER)


# --- finding backups -----------------------------------------------------------------


def test_list_shows_every_backup_newest_first_and_nothing_else(cli, store, dest, keys):
    plain = cli("--data-dir", str(store.path), "backup", "--out", f"{dest}/")
    assert plain.code == 0, plain.err
    time.sleep(1.1)  # a later second: a later name
    sealed = sealed_backup(cli, store, dest, keys["one_recipient"])
    Path(f"{sealed}.sha256").unlink()
    (dest / "notes.txt").write_text("not a backup")
    (dest / "portunus-state-2020-01-01T00:00:00Z.db").write_text("not sqlite")
    run = cli("list", "--dir", str(dest), "--json")
    assert run.code == 0, run.err
    rows = json.loads(run.out)["backups"]
    assert [r["name"] for r in rows] == [sealed.name, Path(plain.out.strip()).name]
    assert [r["sealed"] for r in rows] == [True, False]
    assert [r["sidecar"] for r in rows] == [False, True]
    assert all(r["bytes"] > 0 and r["time"].endswith("Z") for r in rows)
    text = cli("list", "--dir", str(dest))
    assert text.code == 0 and "sealed" in text.out and "notes.txt" not in text.out


def test_list_reads_backup_dir_from_server_toml(cli, store, dest, keys, tmp_path):
    env = write_config(tmp_path, store, dest)
    sealed_backup(cli, store, dest, keys["one_recipient"])
    run = cli("list", "--json", env=env)
    assert run.code == 0 and len(json.loads(run.out)["backups"]) == 1, run.err


def test_restore_latest_skips_a_damaged_newest_backup_naming_it(cli, store, dest, keys, tmp_path):
    good = sealed_backup(cli, store, dest, keys["one_recipient"])
    time.sleep(1.1)
    newest = sealed_backup(cli, store, dest, keys["one_recipient"])
    flip(newest, newest.stat().st_size // 2)
    target = tmp_path / "restored"
    run = cli(
        "--data-dir", str(target), "restore", "--latest", "--dir", str(dest),
        "--identity", str(keys["one"]), "--json",
    )  # fmt: skip
    assert run.code == 0, run.err
    skipped = [e for e in run.events if e["event"] == "restore.latest_skipped"]
    assert skipped and skipped[0]["path"] == str(newest)
    assert json.loads(run.out)["source"] == str(good)


def test_restore_latest_with_nothing_good_is_5(cli, dest, tmp_path):
    run = cli("--data-dir", str(tmp_path / "d"), "restore", "--latest", "--dir", str(dest))
    assert run.code == 5 and run.has_event("restore.no_good_backup"), run.err


def test_prune_and_status_count_sealed_and_plain_backups_alike(cli, store, dest, keys, tmp_path):
    env = write_config(tmp_path, store, dest)
    with open(env["PORTUNUS_CONFIG"], "a") as f:
        f.write("[retention]\nkeep_last = 1\n")
    assert cli("backup", "--out", f"{dest}/", env=env).code == 0
    time.sleep(1.1)
    newest = sealed_backup(cli, store, dest, keys["one_recipient"])
    status = json.loads(cli("status", "--json", env=env).out)
    assert status["backups"]["count"] == 2, status
    run = cli("prune", env=env)
    assert run.code == 0, run.err
    assert sorted(p.name for p in dest.iterdir()) == [newest.name, newest.name + ".sha256"]


# --- no plaintext in the destination, even from a killed backup ----------------------


def padded(store: DataDir, mib: int = 48) -> None:
    conn = open_store(store.state_db)
    with conn:
        conn.executemany(
            "INSERT INTO audit_log (at, actor, action, resource, details)"
            " VALUES ('2020-01-01T00:00:00.000Z', 'seed', 'seed', 'edge0', ?)",
            [("x" * 4000,)] * (mib * 256),
        )
    conn.close()


def test_a_killed_sealed_backup_leaves_no_plaintext_in_the_destination(
    store, dest, keys, env, tmp_path
):
    padded(store)
    rng = random.Random(12)
    argv = [
        sys.executable, "-m", "portunus", "--data-dir", str(store.path), "backup",
        "--out", f"{dest}/", "--recipient", str(keys["one_recipient"]),
    ]  # fmt: skip
    for _ in range(6):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + rng.uniform(0.2, 1.5)
        # Scanned while it runs too, not only after the kill.
        while time.monotonic() < deadline and proc.poll() is None:
            assert_no_plaintext(dest)
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_no_plaintext(dest)
    completed = subprocess.run(argv, env=env, capture_output=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert_no_plaintext(dest)


def test_identity_files_that_cannot_open_anything(cli, store, dest, keys, tmp_path):
    sealed = sealed_backup(cli, store, dest, keys["one_recipient"])
    target = tmp_path / "restored"
    missing = restore_into(cli, target, sealed, tmp_path / "nope.key")
    assert missing.code == 5 and missing.has_event("cli.identity_missing"), missing.err
    unreadable = restore_into(cli, target, sealed, tmp_path)  # a directory
    assert unreadable.code == 74 and unreadable.has_event("cli.identity_unreadable")
    junk = tmp_path / "junk.key"
    junk.write_text("# a comment\nnot a key\n")
    bad = cli("verify", str(sealed), "--identity", str(junk))
    assert bad.code == 2 and bad.has_event("cli.bad_identity"), bad.err
    assert not target.exists()


def test_a_missing_recipients_file_is_5(cli, store, dest, tmp_path):
    run = cli(
        "--data-dir", str(store.path), "backup", "--out", f"{dest}/",
        "--recipients-file", str(tmp_path / "absent.txt"),
    )  # fmt: skip
    assert run.code == 5 and run.has_event("backup.recipients_file_missing"), run.err
    assert list(dest.iterdir()) == []


def test_keygen_into_a_missing_directory_is_74(cli, tmp_path):
    run = cli("keygen", "--out", str(tmp_path / "no" / "such" / "dir.key"))
    assert run.code == 74 and run.has_event("keygen.io_error"), run.err
    ok = cli("keygen", "--out", str(tmp_path / "fresh.key"))
    assert ok.code == 0 and ok.has_event("keygen.completed"), ok.err


def test_a_bad_recipients_file_in_server_toml_is_78_naming_the_line(cli, store, dest, tmp_path):
    recipients = tmp_path / "r.txt"
    recipients.write_text("# team\nage1typo\n")
    env = write_config(tmp_path, store, dest, recipients_file=str(recipients))
    run = cli("backup", env=env)
    assert run.code == 78 and run.has_event("backup.recipients_file_invalid"), run.err
    assert "age1typo" in run.err
    assert list(dest.iterdir()) == []


@needs_age
def test_post_admin_backup_is_sealed_by_encrypt_to(keys, serve_tmp):
    from portunus.engine import tokens

    root = serve_tmp
    data = DataDir(root / "srv")
    admin = tokens.bootstrap_admin(data, "ops")
    backups = root / "api-backups"
    backups.mkdir()
    (root / "srvhome").mkdir()
    env = support.clean_env(root / "srvhome")
    config = serving.write_config(
        root / "srv.toml",
        serving.free_port(),
        backup={"dir": str(backups), "encrypt_to": [keys["one_recipient"]]},
    )
    server = serving.start_server(data.path, config, env)
    try:
        with server.client(admin) as client:
            response = client.post("/v1/admin/backup")
        assert response.status_code == 201, response.text
        sealed = Path(response.json()["path"])
        assert sealed.parent == backups and sealed.name.endswith(".db.age")
        assert_no_plaintext(backups)
        assert age_decrypt(sealed, keys["one"]).startswith(SQLITE_HEADER)
    finally:
        server.stop()


def test_a_sealed_backup_whose_copy_fails_its_check_publishes_nothing(cli, data_dir, tmp_path):
    """The private copy is checked beside the encryption: a failed check
    publishes no ciphertext, and the staging copy leaves the data dir."""
    from tests.test_cli_faults import damage_a_table_page

    support.make_store(data_dir, clients=200)
    damage_a_table_page(data_dir, "rules")
    recipient = cli("keygen", "--out", str(tmp_path / "k")).out.strip()
    out = tmp_path / "backups"
    out.mkdir()
    run = cli(
        "--data-dir", str(data_dir.path), "backup", "--out", f"{out}/", "--recipient", recipient
    )
    assert run.code == 7 and run.has_event("backup.verify_failed"), run.err
    assert os.listdir(out) == []
    assert [p for p in os.listdir(data_dir.path) if p.startswith(".")] == []


def _encrypting_children() -> list[int]:
    """Processes running the sealed backup's encrypting child."""
    return _processes_running(b"encrypt_io(Plaintext(")


def _processes_running(marker: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                found.append(int(entry))
    return found


def _ciphertext_started(dest: Path) -> bool:
    return any(p.stat().st_size > 0 for p in dest.glob(".portunus-backup-*.tmp"))


def test_the_encrypting_process_dies_with_a_killed_backup(store, dest, keys, env):
    """The held store's bytes are encrypted in a child process: killed with
    the backup (kill -9), it does not go on writing into the destination."""
    padded(store, mib=160)
    argv = [
        sys.executable, "-m", "portunus", "--data-dir", str(store.path), "backup",
        "--out", f"{dest}/", "--recipient", str(keys["one_recipient"]),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    # Ciphertext in the destination: the child is past its start-up (where
    # it asks for the signal) and encrypting.
    while not _ciphertext_started(dest) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    children = _encrypting_children()
    for pid in children:
        # Stopped, it could not finish on its own: only its parent's death
        # (PR_SET_PDEATHSIG, SIGKILL) can end it now.
        os.kill(pid, signal.SIGSTOP)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert children, "the backup finished before its encrypting process was seen"
    deadline = time.monotonic() + 10
    while set(children) & set(_encrypting_children()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(children) & set(_encrypting_children())
    assert_no_plaintext(dest)


def test_the_hashing_process_dies_with_a_killed_restore(cli, store, dest, keys, env, tmp_path):
    """A sealed restore hashes the backup in a child process while it
    decrypts: killed with the restore (kill -9), it does not live on."""
    padded(store, mib=160)
    sealed = sealed_backup(cli, store, dest, keys["one_recipient"])
    argv = [
        sys.executable, "-m", "portunus", "--data-dir", str(tmp_path / "restored"), "restore",
        "--in", str(sealed), "--identity", str(keys["one"]),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    children: list[int] = []
    # Hashing (its descriptor has moved): past its start-up, where it asks
    # for the signal.
    while not children and proc.poll() is None and time.monotonic() < deadline:
        children = [p for p in _processes_running(b"hashlib.file_digest") if _has_read(p)]
    for pid in children:
        os.kill(pid, signal.SIGSTOP)  # only its parent's death can end it now
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert children, "the restore finished before its hashing process was seen"
    deadline = time.monotonic() + 10
    while set(children) & set(_processes_running(b"hashlib.file_digest")):
        assert time.monotonic() < deadline, "the hashing process outlived its restore"
        time.sleep(0.05)


def _has_read(pid: int) -> bool:
    """Whether the hashing process ``pid`` has begun reading its descriptor
    (its last argument)."""
    try:
        fd = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").rsplit(b"\0", 1)[1]
        info = Path(f"/proc/{pid}/fdinfo/{fd.decode()}").read_text()
    except (OSError, IndexError):
        return False
    return int(info.split("pos:", 1)[1].split()[0]) > 0


def test_a_sealed_backup_to_a_full_disk_is_74_and_leaves_nothing(cli, store, keys, tmp_path):
    """The encrypting process meets ENOSPC: the backup says the disk is
    full (74), and neither ciphertext nor temporary file is left."""
    from tests.test_cli_backup import tmpfs

    padded(store)
    with tmpfs(tmp_path / "full", "1m") as full:
        run = cli(
            "--data-dir", str(store.path), "backup", "--out", f"{full}/",
            "--recipient", str(keys["one_recipient"]),
        )  # fmt: skip
        left = os.listdir(full)
    assert run.code == 74, run.err
    assert "disk is full" in run.err, run.err
    assert left == []


def test_a_store_that_cannot_be_held_is_sealed_from_a_private_copy(cli, store, dest, keys):
    """A reader holding the WAL back (as Litestream does): the copy goes
    through SQLite into a staging file in the data dir, is sealed from
    there, and the staging file goes; the result opens the same way."""
    import apsw

    writer = apsw.Connection(str(store.state_db))
    writer.execute("PRAGMA journal_mode=WAL").fetchall()
    writer.execute("PRAGMA wal_autocheckpoint=0")
    reader = apsw.Connection(str(store.state_db))
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM clients").fetchall()
        with writer:
            writer.execute("UPDATE clients SET name = name || '-renamed' WHERE name = 'edge1'")
        run = cli(
            "--data-dir", str(store.path), "backup", "--json", "--out", f"{dest}/",
            "--recipient", str(keys["one_recipient"]),
        )  # fmt: skip
        reader.execute("COMMIT")
    finally:
        reader.close()
        writer.close()
    assert run.code == 0, run.err
    summary = json.loads(run.out)
    assert summary["copy_method"] == "backup_api"
    assert_no_plaintext(dest)
    assert [p for p in os.listdir(store.path) if p.startswith(".backup-stage-")] == []
    restored = cli(
        "--data-dir", str(store.path.parent / "restored"), "restore", "--in", summary["path"],
        "--identity", str(keys["one"]),
    )  # fmt: skip
    assert restored.code == 0, restored.err
    conn = apsw.Connection(str(store.path.parent / "restored" / "state.db"))
    try:
        names = {n for (n,) in conn.execute("SELECT name FROM clients")}
    finally:
        conn.close()
    assert "edge1-renamed" in names
