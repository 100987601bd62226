"""Fixtures of the reliability tests: the serving tests' tiny repository, real redis-servers and
gateways (in-process for access control, subprocesses for faults), and signed tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving import auth
from tests.serving.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    main_tags,
    python_repository,
    redis_server,
    tiny_checkpoint,
)


class Tokens:
    """Mints tokens signed with the test secret (HS256, issuer "apron")."""

    def __init__(self, secret: bytes, path: Path):
        self.secret = secret
        self.path = path  # the gateway's --jwt-secret-file

    def user(self, subject: str) -> tuple[tuple[str, str], ...]:
        return auth.bearer_metadata(auth.mint_token(self.secret, subject, auth.Role.USER))

    def service(self, subject: str = "batch-job") -> tuple[tuple[str, str], ...]:
        return auth.bearer_metadata(auth.mint_token(self.secret, subject, auth.Role.SERVICE))


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    secret = b"reliability-test-secret-" + b"x" * 16
    path = tmp_path_factory.mktemp("auth") / "jwt_secret"
    path.write_bytes(secret)
    return Tokens(secret, path)
