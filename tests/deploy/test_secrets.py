"""`make deploy-secrets` (deploy/make_secrets.py) and what uses its files: a gateway serving TLS with
the generated certificate and secret, the container health check and `apron client` speaking TLS
to it, and `apron serve` refusing development auth beyond loopback."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml

from deploy import healthcheck, make_secrets
from serving import auth, tls
from serving.client import ApronClient
from serving.redis_process import RedisProcess
from tests.deploy.conftest import DEPLOY, image_user
from tests.serving.conftest import gateway_config, running_gateway

ROOT = Path(__file__).resolve().parents[2]


def test_secrets_are_private_and_kept(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    written = make_secrets.make_secrets(out)
    every = (*make_secrets.FILES, *make_secrets.REDIS_FILES)
    assert {p.name for p in written} == set(every)
    assert out.stat().st_mode & 0o077 == 0
    for name in ("jwt_secret", "ca.key", "tls.key", "grafana_admin_password", "redis_password", "redis.key"):
        assert (out / name).stat().st_mode & 0o007 == 0, name  # never others'
        if name not in make_secrets.SHARED:  # the group reads only what a compose service needs
            assert (out / name).stat().st_mode & 0o077 == 0, name
    before = {name: (out / name).read_bytes() for name in every}
    assert make_secrets.make_secrets(out) == []  # rerunning changes nothing
    assert {name: (out / name).read_bytes() for name in every} == before
    # an older deployment's folder without Redis's files gets them, signed by its CA, the rest kept
    for name in make_secrets.REDIS_FILES:
        (out / name).unlink()
    assert {p.name for p in make_secrets.make_secrets(out)} == set(make_secrets.REDIS_FILES)
    assert {name: (out / name).read_bytes() for name in make_secrets.FILES} == {n: before[n] for n in make_secrets.FILES}
    assert "\n" not in (out / "redis_password").read_text()  # the Secret holds it verbatim
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate((out / "redis.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    assert leaf.issuer == ca.subject
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "redis-0.redis" in names
    auth.read_secret_file(out / "jwt_secret")  # a usable HS256 secret


def test_secrets_compose_services_read_are_shared_through_one_group(tmp_path: Path, compose: dict) -> None:
    """The gateway (10001), the front (101) and Grafana (472) read secret files mounted as they are on
    the host: those files are 0640 in SECRETS_GID, every service mounting one joins that group, and
    the files no container reads stay 0600."""
    probe = tmp_path / "probe"
    probe.touch()
    try:  # root, or a member of the group, in a namespace that maps it
        os.chown(probe, -1, make_secrets.SECRETS_GID)
    except OSError as error:
        pytest.skip(f"cannot give a file to group {make_secrets.SECRETS_GID} here: {error}")
    out = tmp_path / "secrets"
    make_secrets.make_secrets(out)
    for name in (*make_secrets.FILES, *make_secrets.REDIS_FILES):
        mode = stat.S_IMODE((out / name).stat().st_mode)
        if name in make_secrets.SHARED:
            assert (mode, (out / name).stat().st_gid) == (0o640, make_secrets.SECRETS_GID), name
        elif name.endswith((".key", "password")):
            assert mode == 0o600, name
    sources = {secret: Path(spec["file"]).name for secret, spec in compose["secrets"].items()}
    for file in ("docker-compose.yml", "docker-compose.cpu.yml"):
        services = yaml.safe_load((DEPLOY / file).read_text())["services"]
        for name, service in services.items():
            if "extends" in service and "secrets" not in service:
                service = yaml.safe_load((DEPLOY / service["extends"]["file"]).read_text())["services"][service["extends"]["service"]]
            shared = [s for s in service.get("secrets", []) if sources[s] in make_secrets.SHARED]
            if shared:
                assert str(make_secrets.SECRETS_GID) in service.get("group_add", []), (file, name, shared)
    assert image_user()[1] == make_secrets.SECRETS_GID  # the gateway's own group


@pytest.mark.parametrize(
    "refusal",
    [PermissionError(errno.EPERM, "not permitted"), OSError(errno.EINVAL, "a user namespace that maps no such group")],
)
def test_secrets_stay_private_where_the_group_cannot_be_set(
    refusal: OSError, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*_args: object) -> None:
        raise refusal

    monkeypatch.setattr(make_secrets.os, "chown", refuse)
    out = tmp_path / "secrets"
    make_secrets.make_secrets(out)
    assert all(stat.S_IMODE((out / name).stat().st_mode) == 0o600 for name in make_secrets.SHARED)
    assert f"sudo chgrp {make_secrets.SECRETS_GID}" in capsys.readouterr().err


async def test_gateway_health_check_and_client_speak_tls(
    python_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "secrets"
    make_secrets.make_secrets(out)
    with RedisProcess() as redis:
        config = gateway_config(
            python_repository, redis.url, auth=True, jwt_secret_file=str(out / "jwt_secret"),
            tls_cert=str(out / "tls.crt"), tls_key=str(out / "tls.key"),
        )  # fmt: skip
        async with running_gateway(config) as gateway:
            target = f"127.0.0.1:{gateway.port}"  # (sync clients run in threads: the gateway shares this loop)
            monkeypatch.setenv("APRON_TLS_CERT", str(out / "tls.crt"))
            check = ["healthcheck", target]
            assert await asyncio.to_thread(healthcheck.main, check) == 0  # TLS, trusting the chain's CA
            assert await asyncio.to_thread(healthcheck.main, ["healthcheck", "--live", target]) == 0
            monkeypatch.delenv("APRON_TLS_CERT")
            assert await asyncio.to_thread(healthcheck.main, check) == 1  # plaintext is refused

            token = auth.mint_token(auth.read_secret_file(out / "jwt_secret").key, "ops", "service")
            credentials = tls.channel_credentials(out / "ca.crt")
            with ApronClient(target, token=token, credentials=credentials) as client:
                prototypes = await asyncio.to_thread(client.prototypes)
                assert len(prototypes.prototypes) == 6
            with ApronClient(target, token=token) as plaintext, pytest.raises(grpc.RpcError) as refused:
                await asyncio.to_thread(plaintext.prototypes)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "development secret"),
        (["--no-auth"], "authentication off"),
    ],
)
def test_serve_refuses_development_auth_beyond_loopback(tmp_path: Path, flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "serve", "--host", "0.0.0.0", "--port", "0", *flags],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "APRON_LOG_FORMAT": "text"},
    )  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr and "--jwt-secret-file" in result.stderr and "--insecure-dev" in result.stderr
    assert not (tmp_path / "model_repository").exists()  # refused before building anything
