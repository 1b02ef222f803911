"""TLS material: generated once, loaded after, refused when unsafe."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from portunus import tls
from portunus.errors import RefusedByConfiguration


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "server.crt", tmp_path / "server.key"


def write_certificate(cert_path: Path, key_path: Path, *, org: str, expired: bool) -> None:
    """A pair made outside the module: self-signed with ``org``, maybe expired."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)])
    now = datetime.now(UTC)
    end = now - timedelta(days=1) if expired else now + timedelta(days=30)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=60))
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)


def handshake(material: tls.TlsMaterial, server_hostname: str) -> bytes:
    """A real TLS handshake on loopback, the client trusting only the certificate."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        with material.context.wrap_socket(conn, server_side=True) as tls_conn:
            tls_conn.sendall(b"hello")

    thread = threading.Thread(target=answer)
    thread.start()
    client = ssl.create_default_context(cafile=str(material.cert_path))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client.wrap_socket(raw, server_hostname=server_hostname) as conn,
        ):
            return conn.recv(5)
    finally:
        thread.join()
        listener.close()


def test_a_missing_pair_is_generated_with_a_0600_key_and_loads(pair):
    """ECDSA P-256, key 0600, a certificate a strict client accepts."""
    cert_path, key_path = pair
    with capture_logs() as logs:
        material = tls.load_or_generate(cert_path, key_path, may_generate=True)
    assert [e["event"] for e in logs] == ["startup.tls_generated"]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert material.self_signed
    assert handshake(material, "localhost") == b"hello"
    assert handshake(material, "127.0.0.1") == b"hello"
    assert sorted(os.listdir(cert_path.parent)) == ["server.crt", "server.key"]  # no temp files


def test_the_certificate_names_the_host_and_the_listen_address(pair):
    """SAN: hostname, localhost, 127.0.0.1, ::1, plus an extra listen host."""
    tls.generate_self_signed(*pair, ("10.1.2.3",))
    cert = x509.load_pem_x509_certificate(pair[0].read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) >= {socket.gethostname(), "localhost"}
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert ips == {"127.0.0.1", "::1", "10.1.2.3"}
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"


def test_an_existing_pair_is_loaded_not_replaced(pair):
    """The second start reuses the first start's material byte for byte."""
    tls.load_or_generate(*pair, may_generate=True)
    before = pair[0].read_bytes(), pair[1].read_bytes()
    with capture_logs() as logs:
        tls.load_or_generate(*pair, may_generate=True)
    assert (pair[0].read_bytes(), pair[1].read_bytes()) == before
    assert logs == []


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_key_readable_by_group_or_others_is_refused_78(pair, mode):
    """Refused before the key is ever read."""
    tls.generate_self_signed(*pair, ())
    pair[1].chmod(mode)
    with pytest.raises(RefusedByConfiguration) as refused:
        tls.load_or_generate(*pair, may_generate=True)
    assert refused.value.event == "startup.tls_key_permissions"
    assert refused.value.exit_code == 78
    assert "chmod 600" in refused.value.hint


def test_a_symlinked_key_is_followed_and_its_target_checked(tmp_path):
    """certbot's live/ -> archive/ layout: a 0600 target loads; a 0644 target
    is refused naming the target; a dangling link is refused, not a crash."""
    archive, live = tmp_path / "archive", tmp_path / "live"
    archive.mkdir()
    live.mkdir()
    tls.generate_self_signed(archive / "cert1.pem", archive / "privkey1.pem", ())
    for name in ("cert1.pem", "privkey1.pem"):
        (live / name.replace("1", "")).symlink_to(archive / name)
    material = tls.load_or_generate(live / "cert.pem", live / "privkey.pem", may_generate=False)
    assert material.context is not None

    (archive / "privkey1.pem").chmod(0o644)
    with pytest.raises(RefusedByConfiguration) as refused:
        tls.load_or_generate(live / "cert.pem", live / "privkey.pem", may_generate=False)
    assert refused.value.event == "startup.tls_key_permissions"
    assert refused.value.hint == f"chmod 600 {archive / 'privkey1.pem'}"

    (archive / "privkey1.pem").unlink()
    with pytest.raises(RefusedByConfiguration) as refused:
        tls.load_or_generate(live / "cert.pem", live / "privkey.pem", may_generate=False)
    assert refused.value.exit_code == 78


@pytest.mark.parametrize("missing", [0, 1], ids=["cert", "key"])
def test_half_a_pair_is_refused_not_overwritten(pair, missing):
    """One file alone might be the operator's: never replaced silently."""
    tls.generate_self_signed(*pair, ())
    kept = pair[1 - missing]
    content = kept.read_bytes()
    pair[missing].unlink()
    with pytest.raises(RefusedByConfiguration) as refused:
        tls.load_or_generate(*pair, may_generate=True)
    assert refused.value.event == "startup.tls_material_invalid"
    assert refused.value.hint == (
        f"put the missing file back, or remove {kept} to have a new pair generated"
    )
    assert kept.read_bytes() == content


def test_a_key_that_does_not_match_the_certificate_is_refused(pair, tmp_path):
    """ssl's own check, reported as a 78 with the paths."""
    tls.generate_self_signed(*pair, ())
    other = tmp_path / "other.crt", tmp_path / "other.key"
    tls.generate_self_signed(*other, ())
    pair[1].write_bytes(other[1].read_bytes())
    with pytest.raises(RefusedByConfiguration) as refused:
        tls.load_or_generate(*pair, may_generate=True)
    assert refused.value.event == "startup.tls_material_invalid"


def test_configured_paths_that_do_not_exist_are_refused_not_generated(pair):
    """tls_cert_path / tls_key_path are the operator's: nothing is made there,
    and the hint points at the setting, not at the data dir."""
    with pytest.raises(RefusedByConfiguration) as refused:
        tls.load_or_generate(*pair, may_generate=False)
    assert "tls_cert_path and tls_key_path in server.toml" in refused.value.hint
    assert not pair[0].exists() and not pair[1].exists()
    assert not pair[0].exists() and not pair[1].exists()


def test_an_expired_self_generated_certificate_is_regenerated_with_a_warning(pair):
    """Ours to renew: a new, valid pair replaces it."""
    write_certificate(*pair, org=tls.SELF_SIGNED_ORG, expired=True)
    old = pair[0].read_bytes()
    with capture_logs() as logs:
        material = tls.load_or_generate(*pair, may_generate=True)
    assert [e["event"] for e in logs] == ["startup.tls_regenerated_expired"]
    assert pair[0].read_bytes() != old
    assert material.not_after > datetime.now(UTC)
    assert handshake(material, "localhost") == b"hello"


def test_an_expired_operator_certificate_is_kept_with_a_warning(pair):
    """Not ours: warn, never replace it."""
    write_certificate(*pair, org="Example Corp", expired=True)
    old = pair[0].read_bytes()
    with capture_logs() as logs:
        tls.load_or_generate(*pair, may_generate=True)
    assert [e["event"] for e in logs] == ["startup.tls_certificate_expired"]
    assert pair[0].read_bytes() == old


def test_no_log_line_carries_key_material(pair):
    """The events name files, never their contents."""
    with capture_logs() as logs:
        tls.load_or_generate(*pair, may_generate=True)
    key_pem = pair[1].read_text()
    assert all(key_pem not in str(entry) for entry in logs)
