"""Stage timing (`serving/stages.py`): the clock's arithmetic, and the `apron_stage_seconds` series
a real gateway (auth on, ONNX Runtime, real redis-server) records for each kind of call."""

from __future__ import annotations

import asyncio
from dataclasses import astuple
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry, Histogram

from serving import auth, stages
from serving.batching import MicroBatcher
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.redis_process import RedisProcess
from tests.serving.conftest import Gateway, gateway_config, liked_history, running_gateway

SECRET = b"stage-test-secret-" + b"s" * 16
FIRST = (stages.AUTH, stages.DISPATCH, stages.ADMISSION, stages.VALIDATE)
LAST = (stages.RESPONSE, stages.RECORD)
CACHED_RECOMMEND = {*FIRST, stages.REDIS_READ, stages.EDITS, *stages.SCORER_BATCH, stages.SCORER, *LAST}
FRESH_RECOMMEND = CACHED_RECOMMEND | {*stages.PROFILE_BATCH, stages.PROFILE, stages.REDIS_WRITE}
EDIT_PROFILE = {*FIRST, stages.REDIS_READ, stages.EDITS, stages.REDIS_WRITE, *LAST}
GET_PROFILE = {*FIRST, stages.REDIS_READ, stages.EDITS, *LAST}


def test_marks_charge_the_time_since_the_previous_mark() -> None:
    clock = stages.StageClock(10.0)
    clock.mark("a", 10.5)
    clock.mark("b", 12.0)
    clock.mark("a", 12.25)  # a stage passed twice adds up
    assert clock.spent == {"a": 0.75, "b": 1.5} and clock.last == 12.25


def test_a_batched_request_is_charged_queue_run_and_resume() -> None:
    async def main() -> dict[str, float]:
        batcher: MicroBatcher[int, int] = MicroBatcher(lambda items: [i * 2 for i in items], max_batch_size=4, stages=("q", "r", "h"))
        clock, token = stages.begin(0.0)
        try:
            assert await batcher.submit(21) == 42
        finally:
            stages.end(token)
            await batcher.close()
        return clock.spent

    spent = asyncio.run(main())
    assert set(spent) == {"q", "r", "h"} and all(seconds >= 0 for seconds in spent.values())
    assert stages.current() is None


def test_outside_a_call_marks_are_ignored() -> None:
    stages.mark(stages.VALIDATE)  # no clock: nothing to charge, no error
    assert stages.current() is None


def test_the_recorder_observes_each_stage_a_call_went_through() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("t_stage_seconds", "test", ["method", "stage"], registry=registry)
    recorder = stages.StageRecorder(histogram)
    clock = stages.StageClock(0.0)
    clock.mark(stages.VALIDATE, 0.001)
    clock.mark(stages.RESPONSE, 0.003)
    recorder.observe("GetProfile", clock)

    def count(stage: str) -> float | None:
        return registry.get_sample_value("t_stage_seconds_count", {"method": "GetProfile", "stage": stage})

    assert count(stages.VALIDATE) == 1 and count(stages.RESPONSE) == 1
    assert count(stages.REDIS_READ) == 0  # resolved at start-up, never observed
    assert registry.get_sample_value("t_stage_seconds_sum", {"method": "GetProfile", "stage": stages.RESPONSE}) == pytest.approx(0.002)


def test_the_call_log_gets_each_finished_call_and_splits_a_phase_at_the_handler(tmp_path: Path) -> None:
    from benchmarks.request_path import call_split

    registry = CollectorRegistry()
    recorder = stages.StageRecorder(Histogram("t_log_seconds", "test", ["method", "stage"], registry=registry))
    log = tmp_path / "calls.log"
    with log.open("a", buffering=1) as sink:
        stages.log_calls(sink)
        try:
            for start, end, method in ((10.0, 10.5, "Recommend"), (11.0, 11.25, "Recommend"), (11.0, 11.1, "GetProfile")):
                clock = stages.StageClock(start)
                clock.mark(stages.RESPONSE, end)
                recorder.observe(method, clock)
        finally:
            stages.log_calls(None)
        recorder.observe("Recommend", stages.StageClock(12.0))  # off again: not logged
    assert log.read_text().splitlines() == ["Recommend 10.0 10.5", "Recommend 11.0 11.25", "GetProfile 11.0 11.1"]
    # two Recommend calls sent at 9.9 and 10.8, received at 10.6 and 11.5
    split = call_split(log, "Recommend", (9.0, 12.0), 2, 9.9 + 10.8, 10.6 + 11.5)
    assert split is not None and astuple(split) == pytest.approx((150_000, 375_000, 175_000))  # before, in, after
    # a call outside the window is not the phase's; a count that does not match the log gives no split
    later = call_split(log, "Recommend", (10.9, 12.0), 1, 10.8, 11.5)
    assert later is not None and astuple(later) == pytest.approx((200_000, 250_000, 250_000))
    assert call_split(log, "Recommend", (9.0, 12.0), 3, 0.0, 0.0) is None


def stage_counts(gateway: Gateway, method: str) -> dict[str, float]:
    return {stage: gateway.metric("apron_stage_seconds_count", method=method, stage=stage) for stage in stages.METHOD_STAGES[method]}


def observed(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Stages observed between two readings, with how many observations each."""
    return {stage: after[stage] - before[stage] for stage in after if after[stage] != before[stage]}


async def test_each_call_records_its_stages(python_repository: Path, redis_server: RedisProcess, tmp_path: Path, main_tags) -> None:
    secret = tmp_path / "jwt_secret"
    secret.write_bytes(SECRET)
    config = gateway_config(python_repository, redis_server.url, auth=True, jwt_secret_file=str(secret))
    metadata = auth.bearer_metadata(auth.mint_token(SECRET, "stage-user", auth.Role.USER))
    history = liked_history(main_tags, 0, 1)
    async with running_gateway(config) as gateway:
        stub = gateway.stub

        async def stages_of(method: str, call: object) -> dict[str, float]:
            before = stage_counts(gateway, method)
            await call  # type: ignore[misc]
            return observed(before, stage_counts(gateway, method))

        await stub.EditProfile(pb.EditProfileRequest(user_id="stage-user", reset=True), metadata=metadata)
        fresh = await stages_of("Recommend", stub.Recommend(pb.RecommendRequest(user_id="stage-user", history=history, k=5), metadata=metadata))
        assert fresh == dict.fromkeys(FRESH_RECOMMEND, 1)
        cached = await stages_of("Recommend", stub.Recommend(pb.RecommendRequest(user_id="stage-user", k=5), metadata=metadata))
        assert cached == dict.fromkeys(CACHED_RECOMMEND, 1)
        edit = pb.EditProfileRequest(user_id="stage-user", edits=[pb.Edit(prototype="tag0", scale=0.5)])
        assert await stages_of("EditProfile", stub.EditProfile(edit, metadata=metadata)) == dict.fromkeys(EDIT_PROFILE, 1)
        got = await stages_of("GetProfile", stub.GetProfile(pb.GetProfileRequest(user_id="stage-user"), metadata=metadata))
        assert got == dict.fromkeys(GET_PROFILE, 1)

        # failed calls: the rest of the call is charged to `error`
        before = stage_counts(gateway, "GetProfile")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetProfile(pb.GetProfileRequest(user_id="stage-user-none"), metadata=auth.bearer_metadata(
                auth.mint_token(SECRET, "stage-user-none", auth.Role.USER)))  # fmt: skip
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert observed(before, stage_counts(gateway, "GetProfile")) == dict.fromkeys(
            {*FIRST, stages.REDIS_READ, stages.ERROR, stages.RECORD}, 1
        )
        before = stage_counts(gateway, "Recommend")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Recommend(pb.RecommendRequest(user_id="stage-user", k=5))  # no token
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert observed(before, stage_counts(gateway, "Recommend")) == dict.fromkeys(
            {stages.AUTH, stages.DISPATCH, stages.ERROR, stages.RECORD}, 1
        )


async def test_without_auth_the_clock_starts_at_the_boundary(python_repository: Path, redis_server: RedisProcess, main_tags) -> None:
    config = gateway_config(python_repository, redis_server.url)  # auth off: no interceptor
    async with running_gateway(config) as gateway:
        history = liked_history(main_tags, 0, 1)
        await gateway.stub.Recommend(pb.RecommendRequest(user_id="stage-noauth", history=history, k=5))
        before = stage_counts(gateway, "Recommend")
        await gateway.stub.Recommend(pb.RecommendRequest(user_id="stage-noauth", history=history, k=5))
        assert observed(before, stage_counts(gateway, "Recommend")) == dict.fromkeys(
            CACHED_RECOMMEND - {stages.AUTH}, 1  # dispatch: the request is parsed in the boundary
        )


async def test_garbage_collections_are_timed_by_generation(python_repository: Path, redis_server: RedisProcess, main_tags) -> None:
    import gc

    config = gateway_config(python_repository, redis_server.url)  # in this process: its collections are ours
    async with running_gateway(config) as gateway:
        before = gateway.metric("apron_gc_pause_seconds_count", generation="2")
        gc.collect()  # a full collection; observed by the next call's bookkeeping
        await gateway.stub.ListPrototypes(pb.ListPrototypesRequest())
        assert gateway.metric("apron_gc_pause_seconds_count", generation="2") >= before + 1
