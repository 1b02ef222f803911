"""The data dir's filesystem probe: statfs magic plus /proc/self/mountinfo."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from portunus.datadir import (
    DataDir,
    _mountinfo_name,
    _parse_mountinfo_line,
    _statfs_magic,
    _verdict,
    check_supported_filesystem,
    filesystem_type,
    probe_filesystem,
    remove_created_dirs,
)
from portunus.errors import RefusedByConfiguration


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A small, real tmpfs (we run as root); skipped where mounting is denied."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_mounted_tmpfs_is_named_and_refused_with_78(tmpfs):
    """The real thing: statfs says tmpfs, the check refuses it."""
    assert filesystem_type(tmpfs) == "tmpfs"
    with pytest.raises(RefusedByConfiguration) as refused:
        check_supported_filesystem(tmpfs / "data")
    error = refused.value
    assert error.exit_code == 78
    assert error.event == "startup.unsupported_filesystem"
    assert error.fields["filesystem"] == "tmpfs"
    assert error.fields["path"] == str(tmpfs / "data")
    assert "tmpfs" in error.message and str(tmpfs / "data") in error.message


def test_a_missing_path_is_answered_for_its_nearest_existing_ancestor(tmpfs):
    """Nothing has to exist (or be created) for the probe to answer."""
    deep = tmpfs / "a" / "b" / "c"
    probe = probe_filesystem(deep)
    assert probe.path == tmpfs
    assert probe.name == "tmpfs"
    assert not (tmpfs / "a").exists()


def test_the_filesystem_under_the_repository_is_named(tmp_path):
    """Whatever this machine uses, the probe gives it a name, never a crash."""
    name = filesystem_type(Path(__file__).parent)
    assert name and name != "unknown"


def test_a_local_filesystem_passes_silently(tmp_path):
    """ext4, xfs, btrfs...: no refusal, no warning."""
    probe = probe_filesystem(tmp_path)
    if probe.verdict != "local":
        pytest.skip(f"{tmp_path} is on {probe.name}, not a known local filesystem")
    with capture_logs() as logs:
        check_supported_filesystem(tmp_path)
    assert logs == []


@pytest.mark.parametrize("where", ["tmp_path", "tmpfs"])
def test_a_filesystem_named_by_its_device_gets_the_verdict_statfs_gives(where, request):
    """The probe skips statfs (and ctypes) when mountinfo's entry for the
    path's own device names a filesystem it knows: the answer is the one
    statfs's magic number and that name give together."""
    path = request.getfixturevalue(where)
    name = _mountinfo_name(path)[0]
    probe = probe_filesystem(path)
    assert probe.name == name
    assert probe.verdict == _verdict(_statfs_magic(path), name)


@pytest.mark.parametrize(
    ("magic", "name", "verdict"),
    [
        (0x6969, "nfs4", "unsupported"),
        (0xFF534D42, "cifs", "unsupported"),
        (0xFE534D42, "smb3", "unsupported"),
        (0x01021994, "tmpfs", "unsupported"),
        (0x858458F6, "ramfs", "unsupported"),
        (0x65735546, "fuse.sshfs", "unsupported"),
        (0x65735546, "fuse.glusterfs", "unsupported"),
        (0x00C36400, "ceph", "unsupported"),
        (0x01021997, "9p", "unsupported"),
        (0x65735546, "fuse.mystery", "unknown"),
        (0x794C7630, "overlay", "unknown"),
        (0xEF53, "ext4", "local"),
        (0x58465342, "xfs", "local"),
        (0x9123683E, "btrfs", "local"),
        (0x2FC12FC1, "zfs", "local"),
        (None, "unknown", "unknown"),
    ],
)
def test_filesystems_are_classified(magic, name, verdict):
    """Network and volatile refused, known local accepted, the rest warned about."""
    assert _verdict(magic, name) == verdict


def test_an_unknown_filesystem_starts_with_a_warning(tmp_path):
    """overlay (a container's root) is not refused, but it is said: a real
    overlay mount, skipped where mounting is denied."""
    layers = {name: tmp_path / name for name in ("lower", "upper", "work", "merged")}
    for path in layers.values():
        path.mkdir()
    options = f"lowerdir={layers['lower']},upperdir={layers['upper']},workdir={layers['work']}"
    done = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(layers["merged"])],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount an overlay here: {done.stderr.decode().strip()}")
    try:
        with capture_logs() as logs:
            probe = check_supported_filesystem(layers["merged"] / "data")
    finally:
        subprocess.run(["umount", "-l", str(layers["merged"])], check=False)
    assert (probe.name, probe.verdict) == ("overlay", "unknown")
    assert [e["event"] for e in logs] == ["startup.filesystem_unknown"]
    assert logs[0]["filesystem"] == "overlay"


def test_mountinfo_lines_are_parsed_with_escapes_and_optional_fields():
    """Mount points with spaces come as \\040; optional fields precede ' - '."""
    line = "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 shared:2 - nfs4 srv:/x rw"
    assert _parse_mountinfo_line(line) == ((98, 0), "/mnt/with space", "nfs4")
    assert _parse_mountinfo_line("garbage") is None


def test_preparing_a_store_on_tmpfs_creates_nothing(tmpfs):
    """The one check every command that can create state.db runs (serve,
    restore, bootstrap-admin): refused before the data dir is made."""
    data_dir = DataDir(tmpfs / "a" / "data")
    with pytest.raises(RefusedByConfiguration) as refused:
        data_dir.prepare_for_store()
    assert refused.value.event == "startup.unsupported_filesystem"
    assert list(tmpfs.iterdir()) == []


def test_preparing_a_store_says_which_directories_it_created(tmp_path):
    """Deepest first, so that a refused restore can remove them again."""
    data_dir = DataDir(tmp_path / "a" / "b" / "data")
    (tmp_path / "a").mkdir()
    assert data_dir.prepare_for_store() == [data_dir.path, tmp_path / "a" / "b"]
    assert data_dir.path.is_dir()
    assert data_dir.prepare_for_store() == []
    remove_created_dirs([data_dir.path, tmp_path / "a" / "b"])
    assert sorted(tmp_path.iterdir()) == [tmp_path / "a"]


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["status"], 0),
        (["status", "--json"], 0),
        (["backup", "--out", "{out}"], 5),
        (["audit", "prune"], 5),
        (["audit", "prune", "--dry-run"], 5),
        (["reset", "--confirm"], 0),
    ],
)
def test_a_command_that_only_reads_creates_no_store_even_on_tmpfs(tmpfs, cli, tmp_path, argv, code):
    """No store to read: the command says so and creates nothing (no data
    dir, no state.db, no lock), so it needs no filesystem check of its own."""
    data = tmpfs / "data"
    argv = [a.format(out=tmp_path / "b.db") for a in argv]
    run = cli("--data-dir", str(data), *argv)
    assert run.code == code, run.err
    assert list(tmpfs.iterdir()) == []
