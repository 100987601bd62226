"""The gateway over a real socket with a real Redis, for both backends (in-process ONNX Runtime
and the real tritonserver): recommendations, edits, the profile cache, batching, metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from export.contract import Precision
from export.onnx_export import TOLERANCES
from export.triton_server import run_triton_server
from serving.cache import edits_key, profile_key
from serving.config import ServingConfig
from serving.errors import RETRY_AFTER_KEY
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from tests.export.fixtures import export_tiny_repository
from tests.polling import eventually
from tests.serving.conftest import IN_PROCESS, Gateway, item_index, liked_history, running_gateway

LIKED, OTHER = 0, 1  # tags of the test user's history (tag0 mostly, some tag1)


def tag_share(response: pb.RecommendResponse, main_tags: np.ndarray, tag: int) -> float:
    """Fraction of the returned items whose main tag is `tag`."""
    return float(np.mean([main_tags[item_index(item.item_id)] == tag for item in response.items]))


async def test_recommend_returns_k_items_without_heard_ones(gateway: Gateway, main_tags: np.ndarray, user_id: str) -> None:
    history = liked_history(main_tags, LIKED, OTHER)
    response = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=history, k=10))
    ids = [item.item_id for item in response.items]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert not set(ids) & set(history)
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores)) and max(scores) < 0  # log-probabilities
    assert response.model_version == 1 and response.ignored_history_items == 0
    shares = [w.weight for w in response.profile.weights]
    assert sum(shares) == pytest.approx(1.0, abs=1e-6)
    assert response.profile.history_length == len(history)
    assert [w.prototype for w in response.profile.weights] == [f"tag{k}" for k in range(6)]
    assert int(np.argmax(shares)) == LIKED  # the profile reads as the history

    heard = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=history, k=20, include_heard=True))
    assert set(history) & {item.item_id for item in heard.items}  # asked for: heard items may come back


async def test_scale_zero_edit_lowers_the_tag_share_and_persists(
    gateway: Gateway, backend_config: ServingConfig, main_tags: np.ndarray, user_id: str
) -> None:
    stub, history = gateway.stub, liked_history(main_tags, LIKED, OTHER)
    before = await stub.Recommend(pb.RecommendRequest(user_id=user_id, history=history, k=20))
    edited = await stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag0", scale=0.0)]))
    assert [e.prototype for e in edited.stored_edits] == ["tag0"]
    assert edited.profile.weights[LIKED].weight == 0.0
    assert edited.profile.weights[LIKED].base_weight == pytest.approx(before.profile.weights[LIKED].weight)

    after = await stub.Recommend(pb.RecommendRequest(user_id=user_id, history=history, k=20))
    share_before, share_after = tag_share(before, main_tags, LIKED), tag_share(after, main_tags, LIKED)
    assert share_before >= 0.5, f"the test user should get mostly tag0 items, got {share_before:.2f}"
    assert share_after <= share_before - 0.3, f"tag0's share went {share_before:.2f} -> {share_after:.2f}"
    assert after.profile.weights[LIKED].weight == 0.0 and after.profile.weights[LIKED].edit.scale == 0.0

    again = await stub.Recommend(pb.RecommendRequest(user_id=user_id, k=20))  # stored: applies to later calls
    assert [i.item_id for i in again.items] == [i.item_id for i in after.items]

    # a new gateway process on the same Redis still applies the stored edit
    await gateway.server.stop(1.0)
    async with running_gateway(backend_config) as restarted:
        profile = await restarted.stub.GetProfile(pb.GetProfileRequest(user_id=user_id))
        assert [(e.prototype, e.scale) for e in profile.stored_edits] == [("tag0", 0.0)]
        later = await restarted.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=20))
        assert [i.item_id for i in later.items] == [i.item_id for i in after.items]
        reset = await restarted.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, reset=True))
        assert not reset.stored_edits
        restored = await restarted.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=20))
        assert [i.item_id for i in restored.items] == [i.item_id for i in before.items]


async def test_one_off_edits_are_not_stored(gateway: Gateway, main_tags: np.ndarray, user_id: str) -> None:
    history = liked_history(main_tags, LIKED, OTHER)
    base = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=history, k=20))
    one_off = await gateway.stub.Recommend(
        pb.RecommendRequest(user_id=user_id, k=20, edits=[pb.Edit(prototype="tag1", weight=0.9)])
    )
    assert one_off.profile.weights[OTHER].weight == pytest.approx(0.9)
    assert tag_share(one_off, main_tags, OTHER) > tag_share(base, main_tags, OTHER)
    plain = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=20))
    assert [i.item_id for i in plain.items] == [i.item_id for i in base.items]
    profile = await gateway.stub.GetProfile(pb.GetProfileRequest(user_id=user_id))
    assert not profile.stored_edits


async def test_profile_cache_hits_and_misses(gateway: Gateway, main_tags: np.ndarray, user_id: str) -> None:
    stub, redis = gateway.stub, gateway.server.redis
    history = liked_history(main_tags, LIKED, OTHER)
    hits, misses = gateway.metric("apron_profile_cache_requests_total", result="hit"), gateway.metric(
        "apron_profile_cache_requests_total", result="miss"
    )
    first = await stub.Recommend(pb.RecommendRequest(user_id=user_id, history=history, k=5))
    assert not first.profile_from_cache
    key = profile_key(1, user_id)
    assert 0 < await redis.ttl(key) <= gateway.server.config.cache_ttl_s

    same = list(reversed(history)) + history[:2]  # order and duplicates do not change the history
    second = await stub.Recommend(pb.RecommendRequest(user_id=user_id, history=same, k=5))
    assert second.profile_from_cache
    assert [i.item_id for i in second.items] == [i.item_id for i in first.items]
    no_history = await stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
    assert no_history.profile_from_cache

    new_history = liked_history(main_tags, 3, 4)
    third = await stub.Recommend(pb.RecommendRequest(user_id=user_id, history=new_history, k=5))
    assert not third.profile_from_cache
    assert int(np.argmax([w.weight for w in third.profile.weights])) == 3  # replaced, not merged
    cached = await stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
    assert cached.profile_from_cache and [i.item_id for i in cached.items] == [i.item_id for i in third.items]
    assert not set(new_history) & {i.item_id for i in cached.items}  # the cached history is still excluded

    assert gateway.metric("apron_profile_cache_requests_total", result="hit") - hits == 3
    assert gateway.metric("apron_profile_cache_requests_total", result="miss") - misses == 2

    await stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag2", weight=0.25)]))
    assert await redis.hkeys(edits_key(user_id)) == [b"tag2"]  # one field per tag
    assert await redis.ttl(edits_key(user_id)) == -1  # edits never expire


async def test_concurrent_requests_are_batched(
    backend_config: ServingConfig, main_tags: np.ndarray, user_id: str, request: pytest.FixtureRequest
) -> None:
    n = 12
    # in-process backends: a batch of n that waits (far longer than the test) until it is full, so the
    # n concurrent calls must share one run per graph, however slowly they arrive
    config = dataclasses.replace(backend_config, max_batch_size=n, max_batch_wait_ms=600_000.0)
    triton_metrics = request.getfixturevalue("triton_server").metrics_url if config.backend == "triton" else ""
    async with running_gateway(config) as gateway:
        histories = [liked_history(main_tags, u % 6, (u + 1) % 6, seed=u) for u in range(n)]
        before = triton_counts(triton_metrics) if triton_metrics else {}
        calls = [
            gateway.stub.Recommend(pb.RecommendRequest(user_id=f"{user_id}-{u}", history=h, k=5))
            for u, h in enumerate(histories)
        ]
        responses = await asyncio.gather(*calls)
        assert all(len(r.items) == 5 for r in responses)
        if config.backend in IN_PROCESS:  # the gateway's micro-batcher: one run for all
            for model in ("apron_profile", "apron_scorer"):
                runs = gateway.metric("apron_inference_batch_size_count", model=model)
                requests = gateway.metric("apron_inference_batch_size_sum", model=model)
                assert (requests, runs) == (n, 1), f"{model}: {requests} requests in {runs} runs"
        else:  # Triton's dynamic batcher: fewer executions than requests
            models = ("apron_profile", "apron_scorer")

            def counted() -> bool:  # Triton counts a request after its response is sent: wait for all n
                after = triton_counts(triton_metrics)
                return all(after.get(m, (0.0, 0.0))[0] - before.get(m, (0.0, 0.0))[0] >= n for m in models)

            await eventually(counted, f"Triton's metrics count the {n} requests of each model")
            after = triton_counts(triton_metrics)
            for model in models:
                requests = after[model][0] - before[model][0]
                executions = after[model][1] - before[model][1]
                # >= n: a request of the gateway's start-up (warm-up) that Triton counted late adds one
                # request and one execution; the n calls still ran in fewer executions than requests
                assert requests >= n and executions < requests, f"{model}: {requests} requests in {executions} executions"


def triton_counts(metrics_url: str) -> dict[str, tuple[float, float]]:
    """Triton's own counters per model: (successful requests, executions)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    counts: dict[str, list[float]] = {}
    for match in re.finditer(r'^(nv_inference_request_success|nv_inference_exec_count)\{model="(\w+)"[^}]*\} (\S+)$', text, re.M):
        column = 0 if match[1] == "nv_inference_request_success" else 1
        counts.setdefault(match[2], [0.0, 0.0])[column] += float(match[3])
    return {model: (c[0], c[1]) for model, c in counts.items()}


async def test_metrics_expose_the_histograms(gateway: Gateway, main_tags: np.ndarray, user_id: str) -> None:
    await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 2, 3), k=5))
    with pytest.raises(grpc.aio.AioRpcError):
        await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=0))
    text = gateway.metrics_text()
    for family in (
        "apron_rpc_duration_seconds_bucket",
        "apron_inference_duration_seconds_bucket",
        "apron_rpcs_in_flight",
        "apron_profile_cache_requests_total",
        "apron_model_info",
    ):
        assert family in text
    assert gateway.metric("apron_rpc_duration_seconds_count", method="Recommend", code="OK") >= 1
    assert gateway.metric("apron_rpc_duration_seconds_count", method="Recommend", code="INVALID_ARGUMENT") == 1
    backend = gateway.server.scorer.backend
    assert gateway.metric("apron_inference_duration_seconds_count", model="apron_scorer", backend=backend) >= 1
    assert gateway.metric("apron_rpcs_in_flight", method="Recommend") == 0
    if backend in IN_PROCESS:
        assert gateway.metric("apron_batch_queue_wait_seconds_count", model="apron_profile") >= 1
        # the runs' own CPU, beside the process's: a real run takes some, never more than the process
        cpu = gateway.metric("apron_inference_thread_cpu_seconds_total", model="apron_scorer", backend=backend)
        assert 0 < cpu <= gateway.metric("process_cpu_seconds_total")


async def test_both_backends_give_the_same_answers(
    ort_config: ServingConfig, request: pytest.FixtureRequest, main_tags: np.ndarray, user_id: str
) -> None:
    triton = request.getfixturevalue("triton_server")
    triton_config = dataclasses.replace(ort_config, backend="triton", triton_url=triton.grpc_url)
    torch_config = dataclasses.replace(ort_config, backend="torch")
    edits = [pb.Edit(prototype="tag1", scale=0.0), pb.Edit(prototype="tag4", weight=0.3)]
    answers = {}
    for config in (ort_config, triton_config, torch_config):
        async with running_gateway(config) as gateway:
            for u, (liked, other) in enumerate([(0, 1), (2, 5), (4, 3)]):
                history = liked_history(main_tags, liked, other, seed=u)
                for tag, one_off in (("plain", []), ("edited", edits)):
                    response = await gateway.stub.Recommend(
                        pb.RecommendRequest(user_id=f"{user_id}-{config.backend}-{u}", history=history, k=20, edits=one_off)
                    )
                    answers[config.backend, u, tag] = response
    for (backend, u, tag), ort in answers.items():
        if backend != "onnxruntime":
            continue
        for other_backend in ("triton", "torch"):
            other = answers[other_backend, u, tag]
            assert [i.item_id for i in ort.items] == [i.item_id for i in other.items], (other_backend, u, tag)
            np.testing.assert_allclose([i.score for i in ort.items], [i.score for i in other.items], atol=1e-5)
            np.testing.assert_allclose(
                [w.weight for w in ort.profile.weights], [w.weight for w in other.profile.weights], atol=1e-6
            )


async def test_a_full_batch_queue_answers_resource_exhausted_with_retry_after(
    ort_config: ServingConfig, main_tags: np.ndarray, user_id: str
) -> None:
    # One place in the profile graph's queue, and a batch of two that waits (far longer than the
    # test) for its second request: the first request to reach the batcher holds the place, the
    # other is refused at once, whichever order they arrive in.
    config = dataclasses.replace(
        ort_config, max_batch_size=2, max_queue=1, max_batch_wait_ms=600_000.0, request_timeout_s=600.0
    )
    async with running_gateway(config) as gateway:
        calls = [
            gateway.stub.Recommend(
                pb.RecommendRequest(user_id=f"{user_id}-{u}", history=liked_history(main_tags, u, u + 1), k=3)
            )
            for u in range(2)
        ]
        tasks = [asyncio.ensure_future(call.code()) for call in calls]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        (refused,) = [calls[tasks.index(task)] for task in done]
        assert await refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-queue 1" in await refused.details()
        retry_after_ms = dict(await refused.trailing_metadata())[RETRY_AFTER_KEY]
        assert int(retry_after_ms) >= 1
        assert len(pending) == 1  # the other still waits in the batcher
        for call in calls:
            call.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def test_profile_view_selects_how_much_profile_comes_back(ort_gateway: Gateway, main_tags: np.ndarray, user_id: str) -> None:
    stub, history = ort_gateway.stub, liked_history(main_tags, LIKED, OTHER)
    await stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag1", scale=2.0)]))
    default = await stub.Recommend(pb.RecommendRequest(user_id=user_id, history=history, k=5))
    everything = await stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5, profile_view=pb.PROFILE_VIEW_ALL))
    assert [w.prototype for w in default.profile.weights] == [f"tag{k}" for k in range(6)]  # unset: every prototype
    assert everything.profile == default.profile

    none = await stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5, profile_view=pb.PROFILE_VIEW_NONE))
    assert not none.HasField("profile") and [i.item_id for i in none.items] == [i.item_id for i in default.items]
    assert none.ByteSize() < default.ByteSize()

    top = await stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5, profile_view=pb.PROFILE_VIEW_TOP, profile_top_n=2))
    ranked = sorted(default.profile.weights, key=lambda w: -w.weight)
    assert list(top.profile.weights) == ranked[:2]  # shares, base shares and edits as in the full profile
    assert {w.prototype for w in top.profile.weights} == {f"tag{LIKED}", f"tag{OTHER}"}
    assert [w.edit.scale for w in top.profile.weights if w.prototype == f"tag{OTHER}"] == [2.0]  # its edit shown
    assert top.profile.history_length == default.profile.history_length
    more = await stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5, profile_view=pb.PROFILE_VIEW_TOP, profile_top_n=100))
    assert list(more.profile.weights) == ranked  # more than there are: all of them, largest first


async def test_an_int8_export_serves_the_fp32_answers_within_its_tolerance_in_process_and_in_triton(
    ort_config: ServingConfig, tiny_checkpoint: Path, tmp_path: Path, main_tags: np.ndarray, user_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`apron export --int8` through the gateway: each answer's scores, best first, lie within the
    int8 parity tolerance of the fp32 repository's, edits and exclusions included; Triton's python
    backend serves the same int8 graph with the in-process backend's answers."""
    int8_repository = tmp_path / "int8" / "model_repository"
    assert export_tiny_repository(tiny_checkpoint, int8_repository, int8=True).metadata.precision == "int8"
    int8_config = dataclasses.replace(ort_config, repository=str(int8_repository))
    edits = [pb.Edit(prototype="tag1", scale=0.0), pb.Edit(prototype="tag4", weight=0.3)]
    answers = {}
    caplog.set_level(logging.INFO, logger="apron.gateway")
    with run_triton_server(int8_repository) as triton:
        triton_config = dataclasses.replace(int8_config, backend="triton", triton_url=triton.grpc_url)
        for name, config in (("fp32", ort_config), ("int8", int8_config), ("int8 triton", triton_config)):
            async with running_gateway(config) as gateway:
                for u, (liked, other) in enumerate([(0, 1), (2, 5), (4, 3)]):
                    history = liked_history(main_tags, liked, other, seed=u)
                    for tag, one_off in (("plain", []), ("edited", edits)):
                        request = pb.RecommendRequest(user_id=f"{user_id}-{name}-{u}", history=history, k=20, edits=one_off)
                        response = await gateway.stub.Recommend(request)
                        assert not {i.item_id for i in response.items} & set(history)
                        answers[name, u, tag] = response
    started = [r.fields["graph_precision"] for r in caplog.records if r.getMessage() == "serving"]
    assert started == ["fp32", "int8", "int8"]  # the start-up line says what each gateway serves
    atol, rtol = TOLERANCES[Precision.INT8]
    for (name, u, tag), fp32 in answers.items():
        if name != "fp32":
            continue
        int8, triton_int8 = answers["int8", u, tag], answers["int8 triton", u, tag]
        np.testing.assert_allclose([i.score for i in int8.items], [i.score for i in fp32.items], atol=atol, rtol=rtol)
        assert len({i.item_id for i in int8.items} & {i.item_id for i in fp32.items}) >= 15, (u, tag)
        assert [i.item_id for i in triton_int8.items] == [i.item_id for i in int8.items], (u, tag)
        np.testing.assert_allclose([i.score for i in triton_int8.items], [i.score for i in int8.items], atol=1e-5)
