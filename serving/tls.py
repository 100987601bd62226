"""TLS for the gRPC port: server credentials from PEM files, optionally requiring client certificates.

- `server_credentials(cert, key)`: clients check the server (one-way TLS);
- `server_credentials(cert, key, client_ca=ca)`: mutual TLS, every client must present a certificate
  signed by `ca` (the handshake fails otherwise, before any RPC reaches the gateway).

Files are read and checked at start so a wrong path or a key that does not match its certificate is
a clear error naming the file, not a handshake failure on the first call.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from serving.config import SecurityConfig


class TLSConfigError(ValueError):
    """A certificate or key file is missing, not PEM, or the key does not match the certificate."""


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise TLSConfigError(f"TLS {what} {path}: {error.strerror}") from error


def _certificates(data: bytes, path: str | Path, what: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise TLSConfigError(f"TLS {what} {path}: not a PEM certificate ({error})") from error
    return certificates


def _check_pair(cert_pem: bytes, key_pem: bytes, cert_path: str | Path, key_path: str | Path) -> None:
    leaf = _certificates(cert_pem, cert_path, "certificate")[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as error:
        raise TLSConfigError(f"TLS key {key_path}: not an unencrypted PEM private key ({error})") from error
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise TLSConfigError(f"TLS key {key_path} does not belong to the certificate {cert_path}")


def server_credentials(
    cert_path: str | Path, key_path: str | Path, client_ca_path: str | Path | None = None
) -> grpc.ServerCredentials:
    """Credentials for `server.add_secure_port`; with `client_ca_path`, clients must present a
    certificate signed by that CA (mutual TLS)."""
    cert_pem, key_pem = _read(cert_path, "certificate"), _read(key_path, "key")
    _check_pair(cert_pem, key_pem, cert_path, key_path)
    client_ca = None
    if client_ca_path is not None:
        client_ca = _read(client_ca_path, "client CA")
        _certificates(client_ca, client_ca_path, "client CA")
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def channel_credentials(
    ca_path: str | Path | None = None, cert_path: str | Path | None = None, key_path: str | Path | None = None
) -> grpc.ChannelCredentials:
    """Client side: trust `ca_path` (system roots when None); present `cert_path`/`key_path` for mTLS."""
    ca = _read(ca_path, "CA") if ca_path is not None else None
    if (cert_path is None) != (key_path is None):
        raise TLSConfigError("a client certificate needs both its certificate and its key")
    cert = key = None
    if cert_path is not None and key_path is not None:
        cert, key = _read(cert_path, "client certificate"), _read(key_path, "client key")
        _check_pair(cert, key, cert_path, key_path)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def bind(server: grpc.aio.Server, address: str, config: SecurityConfig) -> int:
    """Add the gateway's port: TLS when `config.tls_cert` is set (mutual with `tls_client_ca`),
    plaintext otherwise. Returns the bound port (0 when it could not be bound)."""
    if not config.tls_cert:
        return server.add_insecure_port(address)
    credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca or None)
    return server.add_secure_port(address, credentials)
