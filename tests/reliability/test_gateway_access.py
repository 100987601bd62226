"""Access control, TLS and limits on the real gateway (in-process, ONNX Runtime, real Redis).

The rules themselves are unit-tested in test_auth.py / test_limits.py; here the whole stack answers:
UNAUTHENTICATED without a valid token, PERMISSION_DENIED for another user's profile (and nothing is
stored), health and reflection open to all, and each limit with its own clear status."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serving import auth, tls
from serving.config import ServingConfig
from serving.errors import RETRY_AFTER_KEY
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
from serving.redis_process import RedisProcess
from serving.server import create_server
from tests.polling import eventually
from tests.reliability.conftest import Tokens
from tests.serving.certs import make_pki
from tests.serving.conftest import gateway_config, liked_history, running_gateway

TIMEOUT = 20.0  # generous: a loaded 2-core CI machine


def open_channel(target: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)


@contextlib.asynccontextmanager
async def gateway_channel(
    config: ServingConfig, credentials: grpc.ChannelCredentials | None = None
) -> AsyncIterator[tuple[grpc.aio.Channel, str]]:
    """A started gateway, a channel to it and its address."""
    server, port = await create_server(config)
    await server.start()
    target = f"127.0.0.1:{port}"
    channel = open_channel(target, credentials)
    try:
        yield channel, target
    finally:
        await channel.close()
        await server.stop(1.0)


def secured(repository: Path, redis: RedisProcess, tokens: Tokens, **overrides: object) -> ServingConfig:
    return gateway_config(repository, redis.url, auth=True, jwt_secret_file=str(tokens.path), **overrides)


async def code_of(call: grpc.aio.UnaryUnaryMultiCallable, request: object, **kwargs: object) -> grpc.StatusCode:
    try:
        await call(request, timeout=TIMEOUT, **kwargs)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_tokens_and_roles(python_repository, redis_server, tokens: Tokens, main_tags) -> None:
    history = liked_history(main_tags, 0, 1)
    recommend = pb.RecommendRequest(user_id="alice", history=history, k=5)
    edit_bob = pb.EditProfileRequest(user_id="bob", edits=[pb.Edit(prototype="tag2", scale=0.5)])
    async with gateway_channel(secured(python_repository, redis_server, tokens)) as (channel, target):
        stub = pb_grpc.RecommenderStub(channel)
        alice, service = tokens.user("alice"), tokens.service()

        # No token, a token signed with another key, an expired one, another issuer's: UNAUTHENTICATED.
        wrong_key = auth.bearer_metadata(auth.mint_token(b"k" * 32, "alice", "service"))
        expired = auth.bearer_metadata(auth.mint_token(tokens.secret, "alice", "user", ttl_s=-3600))
        foreign = auth.bearer_metadata(auth.mint_token(tokens.secret, "alice", "service", issuer="someone-else"))
        for metadata in (None, wrong_key, expired, foreign, (("authorization", "alice"),)):
            assert await code_of(stub.Recommend, recommend, metadata=metadata) == grpc.StatusCode.UNAUTHENTICATED
            assert await code_of(stub.EditProfile, edit_bob, metadata=metadata) == grpc.StatusCode.UNAUTHENTICATED
            assert await code_of(stub.ListPrototypes, pb.ListPrototypesRequest(), metadata=metadata) == (
                grpc.StatusCode.UNAUTHENTICATED
            )

        # A user: their own profile only.
        assert await code_of(stub.Recommend, recommend, metadata=alice) == grpc.StatusCode.OK
        assert await code_of(stub.GetProfile, pb.GetProfileRequest(user_id="alice"), metadata=alice) == grpc.StatusCode.OK
        own_edit = pb.EditProfileRequest(user_id="alice", edits=[pb.Edit(prototype="tag1", scale=2.0)])
        assert await code_of(stub.EditProfile, own_edit, metadata=alice) == grpc.StatusCode.OK
        assert await code_of(stub.ListPrototypes, pb.ListPrototypesRequest(), metadata=alice) == grpc.StatusCode.OK
        bob_recommend = pb.RecommendRequest(user_id="bob", history=history, k=5)
        assert await code_of(stub.Recommend, bob_recommend, metadata=alice) == grpc.StatusCode.PERMISSION_DENIED
        assert await code_of(stub.GetProfile, pb.GetProfileRequest(user_id="bob"), metadata=alice) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert await code_of(stub.EditProfile, edit_bob, metadata=alice) == grpc.StatusCode.PERMISSION_DENIED

        # A service: anyone. Alice's denied edit of bob's profile stored nothing.
        assert await code_of(stub.Recommend, bob_recommend, metadata=service) == grpc.StatusCode.OK
        bob = await stub.GetProfile(pb.GetProfileRequest(user_id="bob"), metadata=service, timeout=TIMEOUT)
        assert list(bob.stored_edits) == []
        mine = await stub.GetProfile(pb.GetProfileRequest(user_id="alice"), metadata=service, timeout=TIMEOUT)
        assert [(e.prototype, e.scale) for e in mine.stored_edits] == [("tag1", 2.0)]

        # Health checks and reflection need no token.
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT
        )
        services = [s.name async for r in reflect for s in r.list_services_response.service]
        assert "apron.v1.Recommender" in services


async def test_rejections_are_logged_without_the_token_and_counted(
    python_repository, redis_server, tokens: Tokens, main_tags, caplog: pytest.LogCaptureFixture
) -> None:
    """One boundary decides: a bad token, another user's profile and a token for another audience
    are answered there, logged with the reason (never the token) and counted by status code."""
    config = secured(python_repository, redis_server, tokens, jwt_audience="apron-gateway", jwt_max_lifetime_s=3600.0)
    history = liked_history(main_tags, 0, 1)
    async with running_gateway(config) as gateway:
        stub = gateway.stub
        good = auth.mint_token(tokens.secret, "carol", "user", audience="apron-gateway")
        other_audience = auth.mint_token(tokens.secret, "carol", "service", audience="billing")
        too_long = auth.mint_token(tokens.secret, "carol", "service", audience="apron-gateway", ttl_s=7200)
        request = pb.RecommendRequest(user_id="carol", history=history, k=5)
        assert await code_of(stub.Recommend, request, metadata=auth.bearer_metadata(good)) == grpc.StatusCode.OK
        with caplog.at_level("INFO", logger="apron.gateway"):
            for token in (other_audience, too_long):
                metadata = auth.bearer_metadata(token)
                assert await code_of(stub.Recommend, request, metadata=metadata) == grpc.StatusCode.UNAUTHENTICATED
            dave = pb.RecommendRequest(user_id="dave", history=history, k=5)
            assert await code_of(stub.Recommend, dave, metadata=auth.bearer_metadata(good)) == (
                grpc.StatusCode.PERMISSION_DENIED
            )
            assert await code_of(stub.ListPrototypes, pb.ListPrototypesRequest()) == grpc.StatusCode.UNAUTHENTICATED
        assert gateway.metric("apron_rpc_rejections_total", method="Recommend", code="UNAUTHENTICATED") == 2
        assert gateway.metric("apron_rpc_rejections_total", method="Recommend", code="PERMISSION_DENIED") == 1
        assert gateway.metric("apron_rpc_rejections_total", method="ListPrototypes", code="UNAUTHENTICATED") == 1
    lines = [record for record in caplog.records if record.getMessage() == "rpc"]
    reasons = [record.fields.get("error", "") for record in lines]  # type: ignore[attr-defined]
    assert any("audience 'apron-gateway'" in reason for reason in reasons), reasons
    assert any("--jwt-max-lifetime-s" in reason for reason in reasons), reasons
    assert any("another user's profile" in reason for reason in reasons), reasons
    for token in (good, other_audience, too_long):
        assert token not in caplog.text and token.split(".")[2] not in caplog.text


async def test_mutual_tls_gateway(python_repository, redis_server, tokens: Tokens, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    config = secured(
        python_repository,
        redis_server,
        tokens,
        tls_cert=str(pki.server.cert),
        tls_key=str(pki.server.key),
        tls_client_ca=str(pki.ca.cert),
    )
    good = tls.channel_credentials(pki.ca.cert, pki.client.cert, pki.client.key)
    async with gateway_channel(config, good) as (channel, target):
        stub = pb_grpc.RecommenderStub(channel)
        prototypes = await stub.ListPrototypes(pb.ListPrototypesRequest(), metadata=tokens.service(), timeout=TIMEOUT)
        assert len(prototypes.prototypes) == 6
        # TLS does not replace the token: a client with a certificate but no token is still refused.
        assert await code_of(stub.ListPrototypes, pb.ListPrototypesRequest()) == grpc.StatusCode.UNAUTHENTICATED
        for credentials in (None, tls.channel_credentials(pki.ca.cert)):  # plaintext; TLS without a client cert
            async with open_channel(target, credentials) as other:
                call = pb_grpc.RecommenderStub(other).ListPrototypes
                assert await code_of(call, pb.ListPrototypesRequest(), metadata=tokens.service()) == (
                    grpc.StatusCode.UNAVAILABLE
                )


async def test_limits_answer_clear_statuses(python_repository, redis_server, tokens: Tokens, main_tags) -> None:
    config = secured(
        python_repository, redis_server, tokens, max_message_bytes=16_384, max_history=50, max_edits=3,
        edit_rate=0.001, edit_burst=3,
    )  # fmt: skip
    history = liked_history(main_tags, 0, 1)
    async with gateway_channel(config) as (channel, target):
        stub = pb_grpc.RecommenderStub(channel)
        service = tokens.service()

        async def status(call, request) -> tuple[grpc.StatusCode, str]:
            try:
                await call(request, metadata=service, timeout=TIMEOUT)
            except grpc.aio.AioRpcError as error:
                return error.code(), error.details() or ""
            return grpc.StatusCode.OK, ""

        huge = pb.RecommendRequest(user_id="u-limits", history=["x" * 100] * 200, k=5)  # ~20 kB > 16 kB
        assert (await status(stub.Recommend, huge))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        long = pb.RecommendRequest(user_id="u-limits", history=[*history] * 5, k=5)  # 55 > 50
        code, details = await status(stub.Recommend, long)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "history" in details and "50" in details
        code, details = await status(stub.Recommend, pb.RecommendRequest(user_id="u-limits", history=history, k=21))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "k must be in [1, 20]" in details
        many = [pb.Edit(prototype=f"tag{t}", scale=1.0) for t in range(4)]
        code, details = await status(stub.EditProfile, pb.EditProfileRequest(user_id="u-limits", edits=many))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "4 edits" in details

        # The rate limit, charged after validation (the rejected request above cost nothing), and
        # given back when the edit is refused against the stored ones (nothing stored: set weights
        # summing past 1): the burst of 3, then RESOURCE_EXHAUSTED with a retry hint; another user is
        # unaffected. The rate is so slow that no token comes back by itself during the test (refill
        # timing: test_limits.py).
        weight = pb.EditProfileRequest(user_id="u-limits", edits=[pb.Edit(prototype="tag1", weight=0.6)])
        assert (await status(stub.EditProfile, weight))[0] == grpc.StatusCode.OK
        too_much = pb.EditProfileRequest(user_id="u-limits", edits=[pb.Edit(prototype="tag2", weight=0.6)])
        for _ in range(3):  # each refused against the stored tag1, none charged
            code, details = await status(stub.EditProfile, too_much)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "nothing was stored" in details, details
        edit = pb.EditProfileRequest(user_id="u-limits", edits=[pb.Edit(prototype="tag0", scale=1.5)])
        assert [(await status(stub.EditProfile, edit))[0] for _ in range(2)] == [grpc.StatusCode.OK] * 2
        call = stub.EditProfile(edit, metadata=service, timeout=TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await call
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--edit-rate" in limited.value.details()
        retry_ms = int(dict(await call.trailing_metadata())[RETRY_AFTER_KEY])
        assert 0 < retry_ms <= 1000_000  # one token every 1000 s
        other = pb.EditProfileRequest(user_id="u-other", edits=[pb.Edit(prototype="tag0", scale=1.5)])
        assert (await status(stub.EditProfile, other))[0] == grpc.StatusCode.OK


async def test_load_shedding_answers_resource_exhausted_with_retry_after(python_repository, redis_server, main_tags) -> None:
    """At --max-concurrent-rpcs calls at once the next is shed (not queued); a per-user Recommend
    rate is charged only after validation. Held calls, not timing, make the gateway busy."""
    config = gateway_config(
        python_repository, redis_server.url, max_concurrent_rpcs=2, recommend_rate=0.001, recommend_burst=2,
        request_timeout_s=600.0,  # held calls must not hit the server's own deadline on a slow machine
    )
    history = liked_history(main_tags, 0, 1)
    async with running_gateway(config) as gateway:
        stub, release = gateway.stub, asyncio.Event()
        top_k = gateway.server.scorer.top_k

        async def held_top_k(*args: object, **kwargs: object) -> object:
            await release.wait()
            return await top_k(*args, **kwargs)

        gateway.server.scorer.top_k = held_top_k  # type: ignore[method-assign]
        held = [
            asyncio.ensure_future(stub.Recommend(pb.RecommendRequest(user_id=f"busy-{i}", history=history, k=5), timeout=TIMEOUT))
            for i in range(2)
        ]
        await eventually(lambda: gateway.metric("apron_rpcs_in_flight", method="Recommend") == 2, "2 calls in flight")
        call = stub.ListPrototypes(pb.ListPrototypesRequest(), timeout=TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as shed:
            await call
        assert shed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-concurrent-rpcs" in shed.value.details()
        assert int(dict(await call.trailing_metadata())[RETRY_AFTER_KEY]) > 0
        release.set()
        assert all(len(response.items) == 5 for response in await asyncio.gather(*held))
        assert (await code_of(stub.ListPrototypes, pb.ListPrototypesRequest())) == grpc.StatusCode.OK  # a slot again

        # per-user Recommend rate: an invalid request is not charged; the burst of 2, then shed
        user = pb.RecommendRequest(user_id="rated", history=history, k=5)
        assert await code_of(stub.Recommend, pb.RecommendRequest(user_id="rated", history=history, k=0)) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        assert [await code_of(stub.Recommend, user) for _ in range(2)] == [grpc.StatusCode.OK] * 2
        call = stub.Recommend(user, timeout=TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await call
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--recommend-rate" in limited.value.details()
        assert int(dict(await call.trailing_metadata())[RETRY_AFTER_KEY]) > 0
        assert await code_of(stub.Recommend, pb.RecommendRequest(user_id="other", history=history, k=5)) == grpc.StatusCode.OK
        assert gateway.metric("apron_rpc_rejections_total", code="RESOURCE_EXHAUSTED") == 2
