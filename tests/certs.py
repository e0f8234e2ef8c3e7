"""Test-time X.509 material: a CA, server and client certificates it signs, and a rogue CA.

Generated with `cryptography` for each test session (EC P-256 keys: fast to make), written as PEM
files, so TLS tests never depend on files checked into the repository or on the clock of the day
they were made.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its key as PEM files (the CA's own cert doubles as its trust anchor)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class TestPKI:
    """Everything a TLS test needs, under one directory."""

    ca: Issued
    server: Issued
    client: Issued
    rogue_ca: Issued
    rogue_client: Issued
    # A valid certificate paired with the key of another certificate: must be refused at startup.
    mismatched_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_path = directory / f"{stem}.crt"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Issued(cert_path, key_path)


def _builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    cert = (
        _builder(common_name, _name(common_name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common_name: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    server: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    builder = (
        _builder(common_name, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path) -> TestPKI:
    """Create the CA, a server cert for localhost/127.0.0.1, a client cert, and a rogue CA with
    its own client cert, as PEM files in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _ca("expert-router test CA")
    rogue_cert, rogue_key = _ca("rogue CA")
    server_cert, server_key = _leaf("localhost", ca_cert, ca_key, server=True)
    client_cert, client_key = _leaf("test-router", ca_cert, ca_key, server=False)
    rogue_client_cert, rogue_client_key = _leaf("intruder", rogue_cert, rogue_key, server=False)
    pki = TestPKI(
        ca=_write(directory, "ca", ca_cert, ca_key),
        server=_write(directory, "server", server_cert, server_key),
        client=_write(directory, "client", client_cert, client_key),
        rogue_ca=_write(directory, "rogue-ca", rogue_cert, rogue_key),
        rogue_client=_write(directory, "rogue-client", rogue_client_cert, rogue_client_key),
        mismatched_key=directory / "client.key",
    )
    return pki
