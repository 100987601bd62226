"""Every client mistake gets a clear status over a real socket (ONNX Runtime backend, real Redis),
plus health checking, reflection, deadlines and a draining shutdown."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from redis.asyncio import Redis

from serving.cache import edits_key
from serving.config import ServingConfig
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.redis_process import RedisProcess
from tests.polling import eventually
from tests.serving.conftest import Gateway, liked_history, running_gateway

Code = grpc.StatusCode


async def status_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details()


async def test_recommend_mistakes(ort_gateway: Gateway, main_tags: np.ndarray, user_id: str) -> None:
    stub, history = ort_gateway.stub, liked_history(main_tags, 0, 1)
    await stub.Recommend(pb.RecommendRequest(user_id=user_id, history=history, k=5))
    cases = [
        (pb.RecommendRequest(user_id="", k=5), Code.INVALID_ARGUMENT, "user_id is required"),
        (pb.RecommendRequest(user_id="nobody-" + user_id, k=5), Code.NOT_FOUND, "send the user's history"),
        (pb.RecommendRequest(user_id=user_id, k=0), Code.INVALID_ARGUMENT, r"k must be in [1, 20]"),
        (pb.RecommendRequest(user_id=user_id, k=-1), Code.INVALID_ARGUMENT, r"k must be in [1, 20]"),
        (pb.RecommendRequest(user_id=user_id, k=21), Code.INVALID_ARGUMENT, r"k must be in [1, 20]"),
        (
            pb.RecommendRequest(user_id=user_id, k=5, edits=[pb.Edit(prototype="polka", scale=0)]),
            Code.INVALID_ARGUMENT,
            "'polka' is not a prototype of this model; valid names: tag0, tag1, tag2, tag3, tag4, tag5",
        ),
        (
            pb.RecommendRequest(user_id=user_id, k=5, edits=[pb.Edit(prototype="tag0", scale=float("nan"))]),
            Code.INVALID_ARGUMENT,
            "edits[0].scale (tag0) must be a finite number",
        ),
        (
            pb.RecommendRequest(user_id=user_id, k=5, edits=[pb.Edit(prototype="tag0", scale=-1)]),
            Code.INVALID_ARGUMENT,
            "edits[0].scale (tag0) must be >= 0",
        ),
        (
            pb.RecommendRequest(user_id=user_id, k=5, edits=[pb.Edit(prototype="tag0", weight=1.5)]),
            Code.INVALID_ARGUMENT,
            "edits[0].weight (tag0) is a share and must be in [0, 1]",
        ),
        (
            pb.RecommendRequest(user_id=user_id, k=5, edits=[pb.Edit(prototype="tag0")]),
            Code.INVALID_ARGUMENT,
            "must set `scale` or `weight`",
        ),
        (
            pb.RecommendRequest(user_id=user_id, k=5, history=["no-such-track", "nor-this"]),
            Code.INVALID_ARGUMENT,
            "none of the 2 history ids is in the catalog",
        ),
        (
            pb.RecommendRequest(user_id=user_id, k=5, history=["track-0001"] * 10_001),
            Code.INVALID_ARGUMENT,
            "history has 10001 items; at most 10000",
        ),
        (
            pb.RecommendRequest(user_id=user_id, k=5, edits=[pb.Edit(prototype=f"tag{t}", scale=0) for t in range(6)]),
            Code.INVALID_ARGUMENT,
            "remove every prototype",
        ),
        (pb.RecommendRequest(user_id=user_id, k=5, profile_view=9), Code.INVALID_ARGUMENT, "profile_view 9 is not one of"),
        (
            pb.RecommendRequest(user_id=user_id, k=5, profile_view=pb.PROFILE_VIEW_TOP),
            Code.INVALID_ARGUMENT,
            "profile_top_n must be at least 1",
        ),
        (
            pb.RecommendRequest(user_id=user_id, k=5, profile_view=pb.PROFILE_VIEW_NONE, profile_top_n=3),
            Code.INVALID_ARGUMENT,
            "profile_top_n (3) only applies with profile_view PROFILE_VIEW_TOP",
        ),
    ]
    for request, code, text in cases:
        got_code, details = await status_of(stub.Recommend(request))
        assert (got_code, text in details) == (code, True), f"{request}: {got_code} {details}"


async def test_unknown_history_ids_are_ignored_and_counted(ort_gateway: Gateway, main_tags: np.ndarray, user_id: str) -> None:
    history = liked_history(main_tags, 2, 3)
    clean = await ort_gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=history, k=5))
    noisy = await ort_gateway.stub.Recommend(
        pb.RecommendRequest(user_id=user_id, history=[*history, "ghost-1", "ghost-2"], k=5)
    )
    assert noisy.ignored_history_items == 2 and noisy.profile_from_cache  # same known history: same profile
    assert [i.item_id for i in noisy.items] == [i.item_id for i in clean.items]


async def test_edit_profile_mistakes_store_nothing(ort_gateway: Gateway, main_tags: np.ndarray, user_id: str) -> None:
    stub = ort_gateway.stub
    await stub.Recommend(pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 0, 1), k=5))
    cases = [
        (pb.EditProfileRequest(user_id=user_id), "needs at least one edit, or reset"),
        (pb.EditProfileRequest(user_id="", edits=[pb.Edit(prototype="tag0", scale=0)]), "user_id is required"),
        (pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tagz", scale=0)]), "valid names: tag0"),
        (
            pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag0", weight=0.7), pb.Edit(prototype="tag1", weight=0.6)]),
            "sum to 1.3",
        ),
        (
            pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag0", scale=0), pb.Edit(prototype="tag0", scale=1)]),
            "edited twice",
        ),
        (
            pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype=f"tag{t}", scale=0) for t in range(6)]),
            "nothing was stored",
        ),
        (
            pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag0", scale=1)] * 257),
            "257 edits in one request; at most 256",
        ),
    ]
    for request, text in cases:
        code, details = await status_of(stub.EditProfile(request))
        assert code == Code.INVALID_ARGUMENT and text in details, f"{code} {details}"
    profile = await stub.GetProfile(pb.GetProfileRequest(user_id=user_id))
    assert not profile.stored_edits
    code, details = await status_of(stub.GetProfile(pb.GetProfileRequest(user_id="nobody-" + user_id)))
    assert code == Code.NOT_FOUND and "a Recommend call with the user's history creates it" in details


async def test_weight_edit_sets_the_reported_share(ort_gateway: Gateway, main_tags: np.ndarray, user_id: str) -> None:
    stub = ort_gateway.stub
    await stub.Recommend(pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 0, 1), k=5))
    response = await stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag3", weight=0.5)]))
    weights = {w.prototype: w for w in response.profile.weights}
    assert weights["tag3"].weight == pytest.approx(0.5)
    assert sum(w.weight for w in weights.values()) == pytest.approx(1.0)
    # tag3 grew from its base share, so every other prototype gave up mass (per-head ratios: test_edits.py)
    assert weights["tag3"].base_weight < 0.5
    assert all(w.weight < w.base_weight for name, w in weights.items() if name != "tag3")
    # edits of different tags accumulate; an edit of the same tag replaces the stored one
    await stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag0", scale=0.5)]))
    final = await stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag3", weight=0.2)]))
    assert [(e.prototype, e.WhichOneof("change")) for e in final.stored_edits] == [("tag0", "scale"), ("tag3", "weight")]
    assert {w.prototype: w.weight for w in final.profile.weights}["tag3"] == pytest.approx(0.2)


async def test_edits_before_any_history_are_stored(ort_gateway: Gateway, main_tags: np.ndarray, user_id: str) -> None:
    stub = ort_gateway.stub
    response = await stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag0", scale=0)]))
    assert not response.HasField("profile") and [e.prototype for e in response.stored_edits] == ["tag0"]
    recommended = await stub.Recommend(pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 0, 1), k=5))
    assert recommended.profile.weights[0].weight == 0.0


async def test_a_new_users_edits_that_no_profile_could_take_are_refused_and_not_stored(
    ort_gateway: Gateway, redis_server: RedisProcess, main_tags: np.ndarray, user_id: str
) -> None:
    """Without a profile, EditProfile refuses (INVALID_ARGUMENT, nothing stored) a set that would
    empty every profile, with the message a user with a profile gets; stored, it would refuse every
    later Recommend and GetProfile until a reset. A set some profile takes is stored."""
    stub, history = ort_gateway.stub, liked_history(main_tags, 0, 1)
    tags = [p.name for p in (await stub.ListPrototypes(pb.ListPrototypesRequest())).prototypes]
    removed = [pb.Edit(prototype=tag, scale=0) for tag in tags]
    half = [pb.Edit(prototype=tags[0], weight=0.5), *removed[1:]]
    client = Redis.from_url(redis_server.url)
    try:
        await stub.Recommend(pb.RecommendRequest(user_id=f"{user_id}-old", history=history, k=5))
        for edits, text in [
            (removed, "these edits remove every prototype that has weight in the profile; nothing was stored"),
            (half, "no other prototype has weight left to take the remaining 0.5; nothing was stored"),
        ]:
            with_profile = await status_of(stub.EditProfile(pb.EditProfileRequest(user_id=f"{user_id}-old", edits=edits)))
            code, details = await status_of(stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=edits)))
            assert code == Code.INVALID_ARGUMENT and text in details, f"{code} {details}"
            assert (code, details) == with_profile
            assert await client.hgetall(edits_key(user_id)) == {}
        answer = await stub.Recommend(pb.RecommendRequest(user_id=user_id, history=history, k=5))  # not locked out
        assert len(answer.items) == 5 and not any(w.HasField("edit") for w in answer.profile.weights)

        # the whole head set on one prototype, the others removed: a profile with weight there takes it
        whole = [pb.Edit(prototype=tags[0], weight=1.0), *removed[1:]]
        fresh = f"{user_id}-whole"
        stored = await stub.EditProfile(pb.EditProfileRequest(user_id=fresh, edits=whole))
        assert len(stored.stored_edits) == len(tags) and not stored.HasField("profile")
        answer = await stub.Recommend(pb.RecommendRequest(user_id=fresh, history=history, k=5))
        assert {w.prototype: w.weight for w in answer.profile.weights}[tags[0]] == pytest.approx(1.0)
    finally:
        await client.aclose()


async def test_oversized_request_is_refused(ort_config: ServingConfig, user_id: str) -> None:
    config = dataclasses.replace(ort_config, max_message_bytes=4096)
    async with running_gateway(config) as gateway:
        request = pb.RecommendRequest(user_id=user_id, k=5, history=[f"track-{i % 150:04d}" for i in range(1000)])
        code, details = await status_of(gateway.stub.Recommend(request))
        assert code == Code.RESOURCE_EXHAUSTED and "4096" in details


async def test_server_deadline(ort_config: ServingConfig, main_tags: np.ndarray, user_id: str) -> None:
    config = dataclasses.replace(ort_config, request_timeout_s=1e-6)  # no call can finish in a microsecond
    async with running_gateway(config) as gateway:
        request = pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 0, 1), k=5)
        code, details = await status_of(gateway.stub.Recommend(request))
        assert code == Code.DEADLINE_EXCEEDED and "deadline" in details
        assert gateway.metric("apron_rpc_duration_seconds_count", method="Recommend", code="DEADLINE_EXCEEDED") == 1


async def test_health_and_reflection(ort_gateway: Gateway) -> None:
    health = health_pb2_grpc.HealthStub(ort_gateway.channel)
    for service in ("", "apron.v1.Recommender"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    # reflection, as grpcurl uses it: the sync client API over a separate channel
    with grpc.insecure_channel(f"127.0.0.1:{ort_gateway.port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = await asyncio.to_thread(database.get_services)
        assert {"apron.v1.Recommender", "grpc.health.v1.Health"} <= set(services)
        descriptor = await asyncio.to_thread(database.FindFileContainingSymbol, "apron.v1.Recommender")
        assert descriptor.name == "apron/v1/recommender.proto"
        assert "Recommend" in [method.name for method in descriptor.service[0].method]


async def test_shutdown_drains_in_flight_calls(ort_config: ServingConfig, main_tags: np.ndarray, user_id: str) -> None:
    # the server's own deadline far beyond the test's waits: a held call must not time out on a slow machine
    async with running_gateway(dataclasses.replace(ort_config, request_timeout_s=600.0)) as gateway:
        # Hold every Recommend inside the scorer until released: the calls are certainly in flight
        # when the stop begins, whatever the machine's speed.
        release, scorer = asyncio.Event(), gateway.server.scorer
        top_k = scorer.top_k

        async def held_top_k(*args: object, **kwargs: object) -> object:
            await release.wait()
            return await top_k(*args, **kwargs)

        scorer.top_k = held_top_k  # type: ignore[method-assign]
        calls = [
            asyncio.ensure_future(
                gateway.stub.Recommend(pb.RecommendRequest(user_id=f"{user_id}-{u}", history=liked_history(main_tags, u, 5 - u), k=3))
            )
            for u in range(5)
        ]
        await eventually(lambda: gateway.metric("apron_rpcs_in_flight", method="Recommend") == 5, "5 calls in flight")
        stopping = asyncio.ensure_future(gateway.server.stop(60.0))  # graceful: the held calls may finish
        refused = pb.ListPrototypesRequest()
        await eventually(lambda: _refused(gateway, refused), "new calls refused once the stop began")
        assert not any(call.done() for call in calls)
        release.set()
        responses = await asyncio.gather(*calls)
        assert all(len(r.items) == 3 for r in responses)
        await stopping


async def _refused(gateway: Gateway, request: pb.ListPrototypesRequest) -> bool:
    """Whether a new call is refused: UNAVAILABLE, or CANCELLED for one that raced the stop itself
    (taken by grpc as the server stopped accepting, never handled; see RELIABILITY.md)."""
    try:
        await gateway.stub.ListPrototypes(request, timeout=10)
    except grpc.aio.AioRpcError as error:
        assert error.code() in (Code.UNAVAILABLE, Code.CANCELLED), error
        return True
    return False


async def test_list_prototypes(ort_gateway: Gateway) -> None:
    response = await ort_gateway.stub.ListPrototypes(pb.ListPrototypesRequest())
    assert [p.name for p in response.prototypes] == [f"tag{k}" for k in range(6)]
    assert [p.group for p in response.prototypes] == ["genre", "genre", "genre", "mood", "mood", "era"]
    assert response.prototypes[2].item_id == "track-0002" and response.k_max == 20 and response.model_version == 1
