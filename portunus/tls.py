"""TLS material for the API: load ``server.crt`` / ``server.key``, or make a
self-signed ECDSA P-256 pair the first time.

Refuses (78) a private key that group or others can read, an incomplete
pair, and material Python's ``ssl`` cannot load. A self-generated
certificate that has expired is replaced with a warning; an operator's own
certificate is never touched.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from portunus import durable
from portunus.errors import RefusedByConfiguration
from portunus.ownership import give_to_directory_owner

log = structlog.get_logger()

# The organisation name marks a certificate as ours to regenerate.
SELF_SIGNED_ORG = "portunus-server self-signed"
VALIDITY = timedelta(days=365)
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class TlsMaterial:
    cert_path: Path
    key_path: Path
    not_after: datetime
    self_signed: bool
    context: ssl.SSLContext


def load_or_generate(
    cert_path: Path, key_path: Path, *, may_generate: bool, extra_names: tuple[str, ...] = ()
) -> TlsMaterial:
    """The pair at ``cert_path`` / ``key_path``, generated when both are
    absent and ``may_generate`` (the data dir's default location)."""
    present = [p for p in (cert_path, key_path) if os.path.lexists(p)]
    if not present and may_generate:
        generate_self_signed(cert_path, key_path, extra_names)
        log.info(
            "startup.tls_generated",
            msg="generated a self-signed certificate",
            cert=str(cert_path),
            key_path=str(key_path),
        )
    elif len(present) < 2:
        raise _invalid(
            f"TLS pair incomplete: {_missing(cert_path, key_path)} does not exist",
            _incomplete_hint(present, may_generate),
            cert_path,
        )
    check_key_permissions(key_path)
    cert = _read_certificate(cert_path)
    if _expired(cert) and is_self_generated(cert) and may_generate:
        generate_self_signed(cert_path, key_path, extra_names)
        log.warning(
            "startup.tls_regenerated_expired",
            msg="the self-generated certificate had expired; generated a new one",
            hint="clients that pinned the old certificate must fetch the new server.crt",
            cert=str(cert_path),
            expired_at=cert.not_valid_after_utc.isoformat(),
        )
        cert = _read_certificate(cert_path)
    elif _expired(cert):
        log.warning(
            "startup.tls_certificate_expired",
            msg="the configured certificate has expired; clients will refuse it",
            hint="renew the certificate at tls_cert_path",
            cert=str(cert_path),
            expired_at=cert.not_valid_after_utc.isoformat(),
        )
    return TlsMaterial(
        cert_path,
        key_path,
        cert.not_valid_after_utc,
        is_self_generated(cert),
        server_context(cert_path, key_path),
    )


def check_key_permissions(key_path: Path) -> None:
    """Refuse a key that is not a regular file, or that group or others can
    read. A symlink is followed (certbot's live/ -> archive/ layout): what
    is checked is the file the key is read from."""
    target = Path(os.path.realpath(key_path))
    try:
        info = target.stat()
    except OSError as exc:  # a dangling symlink, an unreadable directory
        raise _invalid(f"cannot read {key_path}: {exc.strerror}", "fix the path", key_path) from exc
    via = f" (the symlink {key_path} points there)" if target != key_path else ""
    if not stat.S_ISREG(info.st_mode):
        raise _invalid(
            f"{target} is not a regular file{via}", "use a plain file, mode 0600", key_path
        )
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise RefusedByConfiguration(
            f"{target} is accessible by group or others (mode {mode:04o}){via}",
            event="startup.tls_key_permissions",
            hint=f"chmod 600 {target}",
            path=str(key_path),
            mode=f"{stat.S_IMODE(info.st_mode):04o}",
        )


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError) as exc:
        raise _invalid(
            f"cannot load the TLS pair {cert_path} / {key_path}: {exc}",
            "check that the key matches the certificate and both are PEM",
            cert_path,
        ) from exc
    return context


def generate_self_signed(cert_path: Path, key_path: Path, extra_names: tuple[str, ...]) -> None:
    """A fresh ECDSA P-256 key and a certificate for this host, each written
    atomically (the key 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed_certificate(key, subject_alt_names(extra_names))
    durable.write_atomically(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    durable.write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    for path in (key_path, cert_path):
        give_to_directory_owner(path)


def subject_alt_names(extra_names: tuple[str, ...] = ()) -> list[x509.GeneralName]:
    """This host's name, localhost, 127.0.0.1, ::1, plus e.g. the listen host."""
    names: list[x509.GeneralName] = []
    for name in (socket.gethostname(), "localhost", "127.0.0.1", "::1", *extra_names):
        entry = _general_name(name)
        if entry is not None and entry not in names:
            names.append(entry)
    return names


def is_self_generated(cert: x509.Certificate) -> bool:
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return cert.issuer == cert.subject and any(o.value == SELF_SIGNED_ORG for o in orgs)


def _self_signed_certificate(
    key: ec.EllipticCurvePrivateKey, names: list[x509.GeneralName]
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname()[:64] or "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SELF_SIGNED_ORG),
        ]
    )
    now = datetime.now(UTC)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _general_name(name: str) -> x509.GeneralName | None:
    name = name.strip("[]")
    if not name or name in ("0.0.0.0", "::"):
        return None  # wildcard listen addresses are not names a client dials
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        return x509.DNSName(name.encode("idna").decode("ascii"))
    except UnicodeError:
        return None


def _read_certificate(cert_path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (ValueError, OSError) as exc:
        raise _invalid(
            f"cannot read the certificate {cert_path}: {exc}",
            "check the file is a PEM certificate",
            cert_path,
        ) from exc


def _expired(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc <= datetime.now(UTC)


def _incomplete_hint(present: list[Path], may_generate: bool) -> str:
    """Name the files the operator can act on, where they are."""
    if not may_generate:
        return "fix tls_cert_path and tls_key_path in server.toml: both must name existing files"
    return f"put the missing file back, or remove {present[0]} to have a new pair generated"


def _missing(*paths: Path) -> str:
    return " and ".join(str(p) for p in paths if not os.path.lexists(p))


def _invalid(message: str, hint: str, path: Path) -> RefusedByConfiguration:
    return RefusedByConfiguration(
        message, event="startup.tls_material_invalid", hint=hint, path=str(path)
    )
