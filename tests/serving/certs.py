"""Certificates for the TLS tests (serving/pki.py): a CA, a server certificate for
127.0.0.1/localhost, a client certificate, and a CA and client the server does not trust."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from serving.pki import SERVER_NAMES, Pem, issue, make_ca


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    other_ca: Pem  # a CA the server does not trust
    stranger: Pem  # a client certificate signed by other_ca


def make_pki(directory: Path) -> Pki:
    ca = make_ca(directory, "apron test CA", days=1)
    other = make_ca(directory, "untrusted CA", days=1)
    return Pki(
        ca=ca.pem,
        server=issue(directory, "server", ca, server_names=SERVER_NAMES, days=1),
        client=issue(directory, "client", ca, days=1),
        other_ca=other.pem,
        stranger=issue(directory, "stranger", other, days=1),
    )
