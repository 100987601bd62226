"""A small private PKI for TLS: a CA, server certificates for given names, client certificates.

`apron` never needs a public CA to run encrypted: `deploy/make_secrets.py` (`make deploy-secrets`)
writes a CA and a server certificate for the gateway at deploy time (compose, Kubernetes), and the
tests build theirs the same way. Keys are EC P-256; files are PEM, keys written mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    pem: Pem
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
    directory.mkdir(parents=True, exist_ok=True)
    pem = Pem(directory / f"{stem}.crt", directory / f"{stem}.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(pem.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # private from the first byte
    os.fchmod(fd, 0o600)  # open's mode applies only to a new file: a key written over an old one keeps its mode
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_bytes)
    return pem


def _validity(days: float) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def make_ca(directory: Path, name: str = "apron CA", days: float = 365) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Authority(_write(directory, name.replace(" ", "_"), cert, key), cert, key)


def load_ca(cert: Path, key: Path) -> Authority:
    """An existing CA from its PEM files (e.g. the deployment's, to sign one more certificate)."""
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key}: not an EC private key")
    return Authority(Pem(cert, key), x509.load_pem_x509_certificate(cert.read_bytes()), loaded)


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def issue(
    directory: Path,
    stem: str,
    ca: Authority,
    *,
    server_names: Sequence[str] = (),
    days: float = 365,
) -> Pem:
    """A certificate signed by `ca`: for a server when `server_names` (its DNS names / IPs) are
    given, else a client certificate whose common name is `stem`."""
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(server_names[0] if server_names else stem))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server_names:
        builder = builder.add_extension(_san(server_names), critical=False)
    return _write(directory, stem, builder.sign(ca.key, hashes.SHA256()), key)
