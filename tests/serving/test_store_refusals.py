"""A Redis that answers but refuses writes (serving/cache.py's StoreRefused), each on a private
real redis-server put in that state: a read-only replica (READONLY, as a primary is after a
failover) and failed persistence (MISCONF). What needs a write answers UNAVAILABLE saying why and
what mends it, never INTERNAL; Recommend with a history answers uncached, as with Redis down; and
once Redis takes writes again the very next call does, without waiting for a watch. And a full
Redis (its maxmemory reached, only stored edits left): Recommend still follows the edits it holds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from redis.asyncio import Redis

from serving.cache import edits_key, version_key
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.redis_process import RedisProcess
from serving.redis_watch import ping
from tests.polling import eventually
from tests.serving.conftest import Gateway, gateway_config, liked_history, running_gateway

# Redis counts as down when an operation or the watch's PING outlasts --redis-timeout-s (1 s): on a
# loaded CI machine one did, and the refusal these tests look for was then skipped, not asked. They
# test what Redis answers, not how fast.
SLOW_MACHINE_S = 30.0

pytestmark = pytest.mark.timeout(300)

Code = grpc.StatusCode


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    """A redis-server of the test's own: the states put on it never reach the other tests' Redis."""
    with RedisProcess() as server:
        yield server


async def status_of(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details()
    return Code.OK, ""


async def refusals_are_unavailable(
    gateway: Gateway,
    client: Redis,
    history: list[str],
    code: str,
    mend: str,
    refuse: Callable[[], Awaitable[object]],
    restore: Callable[[], Awaitable[object]],
) -> None:
    """With Redis refusing writes (`refuse`, for `code`): every call that needs a write answers
    UNAVAILABLE saying why (`code`) and what mends it (`mend`), Recommend with a history answers
    uncached, and after `restore` the next EditProfile is stored."""
    stub, store = gateway.stub, gateway.server.models.store
    keeper = f"keeper-{code}"
    await stub.Recommend(pb.RecommendRequest(user_id=keeper, history=history, k=3))
    await stub.EditProfile(pb.EditProfileRequest(user_id=keeper, edits=[pb.Edit(prototype="tag1", scale=0.5)]))
    await refuse()
    try:
        for user in (f"newcomer-{code}", keeper):  # no profile; a profile cached under another history
            answer = await stub.Recommend(pb.RecommendRequest(user_id=user, history=history[:-1], k=3))
            assert len(answer.items) == 3 and not answer.profile_from_cache
            # the keeper's stored edit applied all the same: Redis still serves the read of it
            assert shown(answer.profile, "tag1")[1] == (0.5 if user == keeper else None), user
        edit = pb.EditProfileRequest(user_id=keeper, edits=[pb.Edit(prototype="tag2", scale=2.0)])
        refused = {
            "EditProfile": (await status_of(stub.EditProfile(edit)), "nothing was stored"),
            "GetProfile": (await status_of(stub.GetProfile(pb.GetProfileRequest(user_id=f"stranger-{code}"))), "was not read"),
        }
        for method, ((status, details), what) in refused.items():
            assert status == Code.UNAVAILABLE, (method, status, details)
            assert code in details and mend in details and what in details, (method, details)
        assert not store.known_down  # it answers: calls keep asking it rather than being skipped
    finally:
        await restore()
    assert await client.hgetall(edits_key(keeper)) == {b"tag1": b'{"kind": "scale", "value": 0.5}'}
    stored = await stub.EditProfile(edit)  # at once: nothing to wait for
    assert [(e.prototype, e.scale) for e in stored.stored_edits] == [("tag1", 0.5), ("tag2", 2.0)]


async def test_a_read_only_replica_answers_unavailable_and_recommend_goes_on_uncached(
    python_repository: Path, private_redis: RedisProcess, main_tags: np.ndarray
) -> None:
    client = Redis.from_url(private_redis.url)

    async def refuse() -> None:
        await client.execute_command("REPLICAOF", "127.0.0.1", "1")  # a replica of a primary that is not there
        assert (await client.execute_command("ROLE"))[0] == b"slave"

    try:
        async with running_gateway(gateway_config(python_repository, private_redis.url, redis_timeout_s=SLOW_MACHINE_S)) as gateway:
            await refusals_are_unavailable(
                gateway, client, liked_history(main_tags, 0, 1), "READONLY", "point --redis-url at the current primary",
                refuse, lambda: client.execute_command("REPLICAOF", "NO", "ONE"),
            )
    finally:
        await client.aclose()


async def test_a_redis_that_cannot_persist_answers_unavailable_and_recommend_goes_on_uncached(
    python_repository: Path, private_redis: RedisProcess, main_tags: np.ndarray, tmp_path: Path
) -> None:
    client = Redis.from_url(private_redis.url)

    async def refuse() -> None:  # persistence fails, as on a full or read-only disk: a snapshot into a directory that is gone
        unwritable = tmp_path / "unwritable"
        unwritable.mkdir()
        await client.config_set("stop-writes-on-bgsave-error", "yes")
        await client.config_set("save", "3600 1")
        await client.config_set("dir", str(unwritable))
        unwritable.rmdir()
        await client.bgsave()
        await eventually(lambda: rdb_failed(client), "the snapshot failed")
        with pytest.raises(redis.exceptions.ResponseError, match="MISCONF"):
            await client.set("probe", "1")
        with pytest.raises(redis.exceptions.ResponseError, match="MISCONF"):
            await client.ping()  # Redis refuses PING too in this state ...
        assert await ping(client)  # ... which the health watch reads as an answer: Redis is up

    async def restore() -> None:  # no snapshot at exit either (a failing one would hold redis-server's shutdown)
        await client.config_set("stop-writes-on-bgsave-error", "no")
        await client.config_set("save", "")
        await client.config_set("dir", str(tmp_path))

    try:
        async with running_gateway(gateway_config(python_repository, private_redis.url, redis_timeout_s=SLOW_MACHINE_S)) as gateway:
            await refusals_are_unavailable(
                gateway, client, liked_history(main_tags, 0, 1), "MISCONF", "it takes writes again once a save succeeds",
                refuse, restore,
            )
    finally:
        await client.aclose()


async def rdb_failed(client: Redis) -> bool:
    return (await client.info("persistence"))["rdb_last_bgsave_status"] == "err"


OVER_LIMIT_MARGIN = 256 * 1024  # bytes the full store is held over its limit (tests/reliability/test_redis_bounds.py)


async def fill(client: Redis) -> None:
    """Redis at its maxmemory with only stored edits left: filler edits (no TTL) until it refuses
    one, every key with a TTL (cached profiles, versions) evicted on the way (volatile-lru, as the
    private redis-server runs); then its limit well below what it uses, so every write is refused
    whatever its buffers do."""
    await client.config_set("maxmemory-policy", "volatile-lru")
    await client.config_set("maxmemory", (await client.info("memory"))["used_memory"] + 200_000)
    written = 0
    while True:
        try:
            await client.hset(f"apron:edits:{{filler-{written}}}", "tag0", b"x" * 1024)
        except redis.exceptions.OutOfMemoryError:
            break
        written += 1
    await client.config_set("maxmemory", (await client.info("memory"))["used_memory"] - OVER_LIMIT_MARGIN)


def shown(profile: pb.Profile, tag: str) -> tuple[float, float | None]:
    """(share, the scale edit shown) of `tag` in a response's profile."""
    (entry,) = [w for w in profile.weights if w.prototype == tag]
    return entry.weight, entry.edit.scale if entry.HasField("edit") else None


async def test_a_full_redis_still_applies_the_edits_it_holds_or_answers_unavailable(
    python_repository: Path, private_redis: RedisProcess, main_tags: np.ndarray
) -> None:
    """Redis full: the user's version (with a TTL) is evicted, its stored edits (none) are not, and
    the versioned read, which would write a new version, is refused. Recommend with a history
    answers uncached with those edits; when even they cannot be read, UNAVAILABLE, never an answer
    that ignores them. GetProfile says its read was refused."""
    client = Redis.from_url(private_redis.url)
    user, history = "edited", liked_history(main_tags, 0, 1)
    recommend = pb.RecommendRequest(user_id=user, history=history, k=5)
    try:
        async with running_gateway(gateway_config(python_repository, private_redis.url, redis_timeout_s=SLOW_MACHINE_S)) as gateway:
            stub = gateway.stub
            unedited = await stub.Recommend(recommend)
            assert shown(unedited.profile, "tag0")[0] > 0.1  # the user's main tag
            await stub.EditProfile(pb.EditProfileRequest(user_id=user, edits=[pb.Edit(prototype="tag0", scale=0)]))
            edited = await stub.Recommend(recommend)
            assert shown(edited.profile, "tag0") == (0.0, 0.0)

            await fill(client)
            assert await client.exists(version_key(user)) == 0 and await client.hgetall(edits_key(user)) != {}
            full = await stub.Recommend(recommend)
            assert not full.profile_from_cache and shown(full.profile, "tag0") == (0.0, 0.0)
            assert [i.item_id for i in full.items] == [i.item_id for i in edited.items] != [i.item_id for i in unedited.items]
            code, details = await status_of(stub.GetProfile(pb.GetProfileRequest(user_id=user)))
            assert code == Code.UNAVAILABLE and "full" in details and "the profile was not read" in details, details

            await client.execute_command("ACL", "SETUSER", "default", "-hgetall")  # the edits' own read fails too
            code, details = await status_of(stub.Recommend(recommend))
            assert code == Code.UNAVAILABLE and "full" in details and "stored edits could not be read either" in details, details
    finally:
        await client.aclose()
