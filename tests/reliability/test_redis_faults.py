"""Redis down at start, killed mid-load and restarted, with a real redis-server on a fixed Unix socket
(the gateway's configured Redis: the test, not the gateway, restarts it).

What must hold: Recommend with a history keeps answering (computed without the cache, counted as
`apron_profile_cache_requests_total{result="unavailable"}`); EditProfile answers UNAVAILABLE rather
than pretending; everything recovers without restarting the gateway; with AOF on, every
acknowledged edit survives a SIGKILL of Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from pathlib import Path

import grpc
import pytest

from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.redis_process import RedisProcess
from tests.polling import eventually
from tests.reliability.faults import Outcome, call
from tests.serving.conftest import gateway_config, liked_history, running_gateway

pytestmark = pytest.mark.timeout(300)

OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE
# A call's deadline here: Redis failures must end in a status, never in a hung call. Generous (a
# loaded 2-core machine); no test asserts how fast anything is.
CALL_DEADLINE_S = 60.0


def kill(redis: RedisProcess) -> None:
    """SIGKILL: no shutdown, no final AOF flush; what survives is what Redis had written."""
    assert redis.process is not None
    redis.process.send_signal(signal.SIGKILL)
    redis.process.wait(10)
    redis.stop(remove_data=False)


async def redis_is_back(stub) -> bool:
    """True once EditProfile is accepted again (a reset of a probe user: harmless)."""
    return (await call(stub.EditProfile, pb.EditProfileRequest(user_id="probe", reset=True))).code == OK


async def stored_edits(stub, user: str, history: list[str]) -> dict[str, float]:
    """The user's stored scale edits, as the gateway applies them (read through Recommend)."""
    response = await stub.Recommend(pb.RecommendRequest(user_id=user, history=history, k=1), timeout=10)
    return {w.prototype: round(w.edit.scale, 6) for w in response.profile.weights if w.HasField("edit")}


async def test_redis_down_at_start_then_back(python_repository, main_tags, tmp_path: Path) -> None:
    redis = RedisProcess(data_dir=tmp_path / "redis", aof=True).prepare()  # its address, not started yet
    config = gateway_config(python_repository, redis.url)
    history = liked_history(main_tags, 0, 1)
    try:
        async with running_gateway(config) as gateway:  # starts although Redis is down
            stub = gateway.stub
            answered = await call(stub.Recommend, pb.RecommendRequest(user_id="u1", history=history, k=5), CALL_DEADLINE_S)
            assert answered.code == OK and len(answered.response.items) == 5, answered
            assert not answered.response.profile_from_cache
            # Stored edits cannot be read: the profile shows none applied rather than guessing.
            assert not any(w.HasField("edit") for w in answered.response.profile.weights)
            # Counted once: the profile and the stored edits are read in one round trip.
            assert gateway.metric("apron_profile_cache_requests_total", result="unavailable") == 1

            edit = pb.EditProfileRequest(user_id="u1", edits=[pb.Edit(prototype="tag1", scale=0.5)])
            for method, request in [
                (stub.EditProfile, edit),
                (stub.GetProfile, pb.GetProfileRequest(user_id="u1")),
                (stub.Recommend, pb.RecommendRequest(user_id="u1", k=5)),  # no history: needs the cache
            ]:
                outcome = await call(method, request, CALL_DEADLINE_S)
                assert outcome.code == UNAVAILABLE and "Redis" in outcome.details, outcome

            redis.start()  # Redis comes up: the same gateway recovers on its own
            await eventually(lambda: redis_is_back(stub), "EditProfile accepted after Redis came up")
            assert (await call(stub.EditProfile, edit)).code == OK
            request = pb.RecommendRequest(user_id="u1", history=history, k=5)
            computed = await stub.Recommend(request, timeout=10)  # nothing was cached during the outage
            cached = await stub.Recommend(request, timeout=10)
            assert not computed.profile_from_cache and cached.profile_from_cache
            assert cached.profile.weights[1].edit.scale == 0.5
            stored = await stub.GetProfile(pb.GetProfileRequest(user_id="u1"), timeout=10)
            assert [(e.prototype, e.scale) for e in stored.stored_edits] == [("tag1", 0.5)]
    finally:
        redis.stop()


@dataclasses.dataclass
class EditLog:
    """One writer's edits of its own (user, tag): what it sent and what the gateway acknowledged."""

    user: str
    tag: str
    sent: list[float] = dataclasses.field(default_factory=list)
    acknowledged: list[float] = dataclasses.field(default_factory=list)
    codes: list[grpc.StatusCode] = dataclasses.field(default_factory=list)


async def test_redis_killed_mid_load_and_restarted(python_repository, main_tags, tmp_path: Path) -> None:
    redis = RedisProcess(data_dir=tmp_path / "redis", aof=True).start()
    config = gateway_config(python_repository, redis.url, edit_rate=0.0)
    history = liked_history(main_tags, 0, 1)
    stop = asyncio.Event()
    recommends: list[Outcome] = []
    try:
        async with running_gateway(config) as gateway:
            stub = gateway.stub

            async def writer(log: EditLog) -> None:
                step = 0
                while not stop.is_set():
                    step += 1
                    scale = round(1.0 + step / 1000, 6)  # every edit distinct: the stored value says which won
                    log.sent.append(scale)
                    request = pb.EditProfileRequest(user_id=log.user, edits=[pb.Edit(prototype=log.tag, scale=scale)])
                    outcome = await call(stub.EditProfile, request, CALL_DEADLINE_S)
                    log.codes.append(outcome.code)
                    if outcome.code == OK:
                        log.acknowledged.append(scale)
                    await asyncio.sleep(0.01)

            async def reader(user: str) -> None:
                while not stop.is_set():
                    recommends.append(
                        await call(stub.Recommend, pb.RecommendRequest(user_id=user, history=history, k=5), CALL_DEADLINE_S)
                    )
                    await asyncio.sleep(0.01)

            logs = [EditLog(f"w{i % 3}", f"tag{i}") for i in range(6)]  # 3 users x 2 tags each
            tasks = [asyncio.create_task(writer(log)) for log in logs]
            tasks += [asyncio.create_task(reader(f"r{i}")) for i in range(4)]
            await eventually(lambda: _all_acknowledged_some(logs), "load running before the fault")

            kill(redis)
            failed_before = sum(code == UNAVAILABLE for log in logs for code in log.codes)
            during_start = len(recommends)
            await eventually(
                lambda: _some_unavailable(logs, failed_before), "EditProfile answering UNAVAILABLE while down"
            )
            await eventually(  # the load goes on against a dead Redis, and Recommend still answers
                lambda: any(o.code == OK for o in recommends[during_start:]), "a Recommend answered while Redis was down"
            )

            redis.start()  # same port, same directory: the AOF is replayed
            await eventually(lambda: _all_recent_ok(logs), "every writer acknowledged again after the restart")
            stop.set()
            await asyncio.gather(*tasks)

            assert {o.code for o in recommends} <= {OK, UNAVAILABLE}, "no INTERNAL, no deadline overrun"
            for log in logs:
                assert set(log.codes) <= {OK, UNAVAILABLE}, log.codes
                stored = (await stored_edits(stub, log.user, history))[log.tag]
                # No lost update: the stored value is the last acknowledged edit, or a later one whose
                # acknowledgement was lost with the connection; never an older one.
                last = log.sent.index(log.acknowledged[-1])
                assert stored in log.sent[last:], (log.tag, stored, log.acknowledged[-1])
    finally:
        stop.set()
        redis.stop()


async def _all_acknowledged_some(logs: list[EditLog]) -> bool:
    return all(len(log.acknowledged) >= 3 for log in logs)


async def _some_unavailable(logs: list[EditLog], before: int) -> bool:
    return sum(code == UNAVAILABLE for log in logs for code in log.codes) > before


async def _all_recent_ok(logs: list[EditLog]) -> bool:
    return all(log.codes[-1] == OK for log in logs)


@pytest.mark.parametrize("aof", [True, False], ids=["aof", "no-aof-control"])
async def test_acknowledged_edits_survive_a_redis_kill(python_repository, main_tags, tmp_path: Path, aof: bool) -> None:
    """AOF on: SIGKILL Redis right after the acknowledgements, restart it, every edit is there.
    AOF off: the same kill loses them (the control that shows this test can fail)."""
    redis = RedisProcess(data_dir=tmp_path / "redis", aof=aof).start()
    history = liked_history(main_tags, 0, 1)
    try:
        async with running_gateway(gateway_config(python_repository, redis.url, edit_rate=0.0)) as gateway:
            expected = {f"tag{t}": round(1 + t / 10, 6) for t in range(6)}
            for tag, scale in expected.items():
                request = pb.EditProfileRequest(user_id="aof", edits=[pb.Edit(prototype=tag, scale=scale)])
                await gateway.stub.EditProfile(request, timeout=10)
            kill(redis)
            redis.start()
            await eventually(lambda: redis_is_back(gateway.stub), "Redis back")
            assert await stored_edits(gateway.stub, "aof", history) == (expected if aof else {})
    finally:
        redis.stop()
