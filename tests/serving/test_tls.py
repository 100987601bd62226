"""serving/tls.py: one-way and mutual TLS on a real grpc.aio server with self-signed certificates."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving import tls
from tests.serving.certs import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


async def _serve(credentials: grpc.ServerCredentials) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, port


async def _check(port: int, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    if credentials is None:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    else:
        channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)
    async with channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def test_one_way_tls(pki) -> None:
    server, port = await _serve(tls.server_credentials(pki.server.cert, pki.server.key))
    try:
        assert await _check(port, tls.channel_credentials(pki.ca.cert)) == grpc.StatusCode.OK
        assert await _check(port, None) == grpc.StatusCode.UNAVAILABLE  # plaintext cannot talk to it
        # A client that trusts another CA refuses the server's certificate.
        assert await _check(port, tls.channel_credentials(pki.other_ca.cert)) == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)


async def test_mutual_tls(pki) -> None:
    credentials = tls.server_credentials(pki.server.cert, pki.server.key, client_ca_path=pki.ca.cert)
    server, port = await _serve(credentials)
    try:
        ok = tls.channel_credentials(pki.ca.cert, pki.client.cert, pki.client.key)
        assert await _check(port, ok) == grpc.StatusCode.OK
        assert await _check(port, tls.channel_credentials(pki.ca.cert)) == grpc.StatusCode.UNAVAILABLE
        stranger = tls.channel_credentials(pki.ca.cert, pki.stranger.cert, pki.stranger.key)
        assert await _check(port, stranger) == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)


def test_configuration_errors_name_the_file(pki, tmp_path) -> None:
    with pytest.raises(tls.TLSConfigError, match="nope.crt"):
        tls.server_credentials(tmp_path / "nope.crt", pki.server.key)
    with pytest.raises(
        tls.TLSConfigError, match=r"client.key does not belong to the certificate .*server.crt"
    ):
        tls.server_credentials(pki.server.cert, pki.client.key)
    (tmp_path / "junk.pem").write_text("-----BEGIN NOTHING-----\n")
    with pytest.raises(tls.TLSConfigError, match="junk.pem: not a PEM certificate"):
        tls.server_credentials(tmp_path / "junk.pem", pki.server.key)
    with pytest.raises(tls.TLSConfigError, match="junk.pem: not an unencrypted PEM private key"):
        tls.server_credentials(pki.server.cert, tmp_path / "junk.pem")
    with pytest.raises(tls.TLSConfigError, match="junk.pem: not a PEM certificate"):
        tls.server_credentials(pki.server.cert, pki.server.key, client_ca_path=tmp_path / "junk.pem")
    with pytest.raises(tls.TLSConfigError, match="both"):
        tls.channel_credentials(pki.ca.cert, pki.client.cert, None)


def test_a_key_written_over_an_older_file_is_private_too(tmp_path) -> None:
    from serving import pki

    old = tmp_path / "apron_CA.key"  # make_ca's file for its default name
    old.write_text("an older, world-readable file")
    old.chmod(0o644)
    authority = pki.make_ca(tmp_path)
    assert authority.pem.key == old and old.stat().st_mode & 0o777 == 0o600
