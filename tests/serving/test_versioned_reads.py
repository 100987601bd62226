"""Versioned reads (serving/cache.py): each gateway process keeps the profiles it read, and an
EditProfile, a reset or a new history acknowledged by one process is seen by the very next call on
every other one, because every read asks Redis for the user's version. Two in-process gateways on
one real redis-server, and `apron serve --workers 2`; no call waits for anything but its answer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving.cache import ProfileCache, ProfileRecord, RedisStore, StoreSkipped, version_key
from serving.catalog import history_digest
from serving.edits import EditSpec
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
from serving.redis_process import RedisProcess
from tests.serving.conftest import gateway_config, liked_history, running_gateway
from tests.serving.test_workers import DEADLINE_S, samples, serve_workers

SCALES = (0.25, 2.0, 0.5, 3.0)


def shown_edit(profile: pb.Profile, tag: str) -> float | None:
    """The scale edit a profile shows on `tag` (None: unedited)."""
    (entry,) = [w for w in profile.weights if w.prototype == tag]
    return entry.edit.scale if entry.HasField("edit") else None


def check_round(answer: pb.RecommendResponse, stored: pb.GetProfileResponse, scale: float | None) -> None:
    assert shown_edit(answer.profile, "tag2") == scale and answer.profile_from_cache
    assert [(e.prototype, e.scale) for e in stored.stored_edits] == ([("tag2", scale)] if scale is not None else [])


async def test_two_gateways_see_each_others_writes_at_once(python_repository: Path, redis_server: RedisProcess, main_tags, user_id: str) -> None:
    config = gateway_config(python_repository, redis_server.url)
    first_history, second_history = liked_history(main_tags, 0, 1), liked_history(main_tags, 3, 4)
    async with running_gateway(config) as one, running_gateway(config) as two:
        await one.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, reset=True))
        for gateway in (one, two):  # both keep the profile
            await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=first_history, k=5))
            await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
        for i, scale in enumerate(SCALES):
            writer, reader = (one, two) if i % 2 == 0 else (two, one)
            edit = pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag2", scale=scale)])
            await writer.stub.EditProfile(edit)
            answer = await reader.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
            check_round(answer, await reader.stub.GetProfile(pb.GetProfileRequest(user_id=user_id)), scale)
        await two.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, reset=True))
        answer = await one.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
        check_round(answer, await one.stub.GetProfile(pb.GetProfileRequest(user_id=user_id)), None)

        # a new history through one gateway replaces the profile the other one keeps
        fresh = await one.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=second_history, k=5))
        assert not fresh.profile_from_cache
        kept = await two.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
        assert kept.profile == fresh.profile and [i.item_id for i in kept.items] == [i.item_id for i in fresh.items]
        assert int(np.argmax([w.weight for w in kept.profile.weights])) == 3

        # the kept copies were used: most reads were one GET of the version
        for gateway in (one, two):
            assert gateway.metric("apron_profile_reads_total", kind="version") > 0


async def test_a_kept_profile_is_read_in_full_when_its_version_changes(redis_server: RedisProcess) -> None:
    """ProfileCache on a real Redis: a kept copy answers while the version holds, a write anywhere
    (here: straight into Redis, as another process would) makes the next read a full one."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_server.url, decode_responses=False)
    store = RedisStore(client, ttl_s=600)
    cache = ProfileCache(store, scorer=None, model_version=7, shape=(2, 3))  # type: ignore[arg-type]
    user = f"versioned-{time.monotonic_ns()}"
    history = np.array([1, 4], np.int64)
    try:
        await store.put_profile(7, user, ProfileRecord(np.ones((2, 3), np.float32), 2, history_digest(history), history))
        full_reads = 0
        get_profile = store.get_profile

        async def counted(*args: object) -> object:
            nonlocal full_reads
            full_reads += 1
            return await get_profile(*args)  # type: ignore[arg-type]

        store.get_profile = counted  # type: ignore[method-assign]
        first, _ = await cache.cached(user)
        second, edits = await cache.cached(user)
        assert first is second and edits == {} and full_reads == 1  # the kept copy, confirmed by the version

        other = RedisStore(client, ttl_s=600)  # another process's store
        await other.store_edits(user, {"tag1": EditSpec("tag1", "scale", 0.5)})
        third, edits = await cache.cached(user)
        assert edits == {"tag1": EditSpec("tag1", "scale", 0.5)} and full_reads == 2
        assert third is not None and np.array_equal(third.weights, first.weights)  # type: ignore[union-attr]

        await client.delete(version_key(user))  # gone (expired): never mistaken for the kept one
        await cache.cached(user)
        assert full_reads == 3
        await cache.cached(user)
        assert full_reads == 3

        off = ProfileCache(store, scorer=None, model_version=7, shape=(2, 3), local_entries=0)  # type: ignore[arg-type]
        await off.cached(user)
        await off.cached(user)
        assert full_reads == 5
    finally:
        await client.aclose()


async def test_a_kept_copy_pushed_out_while_its_version_is_read_is_still_answered(redis_server: RedisProcess) -> None:
    """Other users' reads may push a kept copy out of the process's copies while its version read is
    in flight: the confirmed copy still answers (it was a KeyError, INTERNAL, before)."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_server.url, decode_responses=False)
    store = RedisStore(client, ttl_s=600)
    cache = ProfileCache(store, scorer=None, model_version=7, shape=(2, 3), local_entries=2)  # type: ignore[arg-type]
    users = [f"pushed-{i}-{time.monotonic_ns()}" for i in range(3)]
    history = np.array([1, 4], np.int64)
    try:
        for user in users:
            await store.put_profile(7, user, ProfileRecord(np.ones((2, 3), np.float32), 2, history_digest(history), history))
        kept, _ = await cache.cached(users[0])
        reading, release = asyncio.Event(), asyncio.Event()
        get_version = store.get_version

        async def held(user_id: str) -> bytes | None:
            reading.set()
            await release.wait()
            return await get_version(user_id)

        store.get_version = held  # type: ignore[method-assign]
        pending = asyncio.ensure_future(cache.cached(users[0]))
        await reading.wait()
        store.get_version = get_version  # type: ignore[method-assign]
        for user in users[1:]:  # two other users' full reads fill the two places meanwhile
            await cache.cached(user)
        release.set()
        record, edits = await pending
        assert record is kept and edits == {}
    finally:
        await client.aclose()


async def test_stored_edits_another_writer_broke_are_skipped_and_the_rest_apply(
    python_repository: Path, redis_server: RedisProcess, main_tags, user_id: str
) -> None:
    """Values in the user's edit hash that no EditProfile could have written (another writer's, a
    bad migration's) are skipped on every read: the user's calls still answer, with the good edit."""
    from redis.asyncio import Redis

    from serving.cache import edits_key

    config = gateway_config(python_repository, redis_server.url)
    client = Redis.from_url(redis_server.url, decode_responses=False)
    try:
        async with running_gateway(config) as gateway:
            await gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, reset=True))
            await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 0, 1), k=5))
            await gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag2", scale=0.5)]))
            await client.hset(edits_key(user_id), mapping={
                "tag0": b"5", "tag1": b'{"kind": "scale", "value": NaN}', "tag3": b'{"kind": "scale", "value": -2}',
                "tag4": b"[]",
            })  # fmt: skip
            await client.set(version_key(user_id), b"written-elsewhere")  # as a writer changes the version
            answer = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
            assert shown_edit(answer.profile, "tag2") == 0.5 and len(answer.items) == 5
            assert all(shown_edit(answer.profile, tag) is None for tag in ("tag0", "tag1", "tag3", "tag4"))
            assert all(np.isfinite(w.weight) for w in answer.profile.weights)
            stored = await gateway.stub.GetProfile(pb.GetProfileRequest(user_id=user_id))
            assert [(e.prototype, e.scale) for e in stored.stored_edits] == [("tag2", 0.5)]
    finally:
        await client.aclose()


def test_two_workers_see_each_others_writes_at_once(python_repository: Path, redis_server: RedisProcess, main_tags, user_id: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    with serve_workers(python_repository, redis_server.url) as (_process, output):
        banner = output.wait_for(r"APRON gateway on ([\d.]+:\d+) .*metrics: (http://\S+/metrics)", deadline)
        address, metrics_url = banner.group(1), banner.group(2)

        def served() -> dict[int, float]:
            return {int(labels["pid"]): value for labels, value in samples(metrics_url, "apron_worker_rpcs")}

        # one persistent channel per worker: new connections until the kernel gave one to each
        channels: dict[int, grpc.Channel] = {}
        while len(channels) < 2:
            assert time.monotonic() < deadline, "the kernel never gave a connection to the second worker"
            channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            before = served()
            pb_grpc.RecommenderStub(channel).ListPrototypes(pb.ListPrototypesRequest(), timeout=60)
            (pid,) = [pid for pid, value in served().items() if value > before.get(pid, 0)]
            if pid in channels:
                channel.close()
            else:
                channels[pid] = channel
        one, two = (pb_grpc.RecommenderStub(channel) for channel in channels.values())
        try:
            one.EditProfile(pb.EditProfileRequest(user_id=user_id, reset=True), timeout=60)
            for stub in (one, two):  # both workers keep the profile
                stub.Recommend(pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 0, 1), k=5), timeout=60)
                stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5), timeout=60)
            for i, scale in enumerate(SCALES):
                writer, reader = (one, two) if i % 2 == 0 else (two, one)
                writer.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag2", scale=scale)]), timeout=60)
                answer = reader.Recommend(pb.RecommendRequest(user_id=user_id, k=5), timeout=60)
                check_round(answer, reader.GetProfile(pb.GetProfileRequest(user_id=user_id), timeout=60), scale)
            reads = {labels["kind"]: value for labels, value in samples(metrics_url, "apron_profile_reads_total")}
            assert reads.get("version", 0) > 0  # the workers' kept copies were used
        finally:
            for channel in channels.values():
                channel.close()


async def test_the_stores_own_timeout_fails_a_silent_redis_as_unavailable() -> None:
    """With `timeout_s` (and no socket timeout on the client), a Redis that accepts the connection
    but never answers fails the operation with redis' TimeoutError, which the servicer answers as
    UNAVAILABLE, not the caller's DEADLINE_EXCEEDED."""
    import asyncio

    import redis.exceptions
    from redis.asyncio import Redis

    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # keep the connection open, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Redis.from_url(f"redis://127.0.0.1:{port}", socket_timeout=None)
    store = RedisStore(client, ttl_s=600, timeout_s=0.2, retry_s=0.0)  # every operation is tried
    try:
        for operation in (store.get_version("u"), store.get_profile(1, "u", (2, 3)), store.store_edits("u", {}, reset=True)):
            with pytest.raises(redis.exceptions.TimeoutError, match="did not answer within 0.2 s"):
                await operation
        assert accepted  # it was the answer that never came, not the connection
        # Once an operation failed, Redis is known down: the next ones are skipped, not tried, until
        # a check (the gateway's watch) says it answers again.
        skipping = RedisStore(client, ttl_s=600, timeout_s=0.2, retry_s=None)
        with pytest.raises(redis.exceptions.TimeoutError):
            await skipping.get_edits("u")
        assert skipping.known_down
        connections = len(accepted)
        for operation in (skipping.get_version("u"), skipping.store_edits("u", {}, reset=True)):
            with pytest.raises(StoreSkipped, match="not asked"):
                await operation
        assert len(accepted) == connections  # the skipped ones opened no connection
        skipping.mark(True)
        with pytest.raises(redis.exceptions.TimeoutError):  # tried again
            await skipping.get_edits("u")
    finally:
        await client.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_concurrent_version_reads_share_one_round_trip(redis_server: RedisProcess) -> None:
    """A version read while none is in flight is one GET; the reads that arrive meanwhile go
    together as one MGET when it returns, each with its own user's version."""
    import asyncio

    from redis.asyncio import Redis

    client = Redis.from_url(redis_server.url, decode_responses=False)
    store = RedisStore(client, ttl_s=600)
    users = [f"coalesced-{i}-{time.monotonic_ns()}" for i in range(6)]
    calls: list[tuple[str, int]] = []
    one, many = store.get_one_version, store.get_versions

    async def counted_one(user_id: str) -> bytes | None:
        calls.append(("GET", 1))
        return await one(user_id)

    async def counted_many(user_ids: list[str]) -> list[bytes | None]:
        calls.append(("MGET", len(user_ids)))
        return await many(user_ids)

    store.get_one_version, store.get_versions = counted_one, counted_many  # type: ignore[method-assign]
    try:
        for user in users[:5]:
            await store.store_edits(user, {}, reset=True)  # gives each a version
        expected = [await client.get(version_key(user)) for user in users]
        calls.clear()
        assert await asyncio.gather(*(store.get_version(user) for user in users)) == expected
        assert calls == [("GET", 1), ("MGET", 5)] and expected[-1] is None  # a user without a version: None
        assert await store.get_version(users[0]) == expected[0] and calls[-1] == ("GET", 1)  # alone again
    finally:
        await client.aclose()


@pytest.mark.parametrize("read_on", ["pipe", "redis-py"])
async def test_a_cached_recommend_scores_the_kept_copy_while_redis_confirms_its_version(
    python_repository: Path, redis_server: RedisProcess, main_tags, user_id: str, read_on: str
) -> None:
    """The version read and the scorer overlap: here the read's answer is held back until the scorer
    has been asked for this call's top k, so a gateway that read first and scored after would never
    answer. On the pipe the GET itself goes out before the scorer is asked; on redis-py (no pipe:
    a cluster) the whole read runs beside it as a task."""
    config = gateway_config(python_repository, redis_server.url)
    history = liked_history(main_tags, 0, 1)
    async with running_gateway(config) as gateway:
        first = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=history, k=5))  # computed, kept
        store, scorer = gateway.server.models.store, gateway.server.scorer
        assert store.pipe is not None and store.pipe.connected  # connected at start
        scoring = asyncio.Event()
        get_version, send_version_read, top_k = store.get_version, store.send_version_read, scorer.top_k
        sent_before_scoring: list[bool] = []
        on_pipe: list[bool] = []

        async def version_once_scoring(user: str, sent: asyncio.Future[bytes | None] | None = None) -> bytes | None:
            await scoring.wait()
            return await get_version(user, sent)

        def send_noting_when(user: str) -> asyncio.Future[bytes | None] | None:
            sent_before_scoring.append(not scoring.is_set())
            sent = send_version_read(user)
            on_pipe.append(sent is not None)
            return sent

        async def top_k_seen(*args: object, **kwargs: object) -> object:
            scoring.set()
            return await top_k(*args, **kwargs)  # type: ignore[arg-type]

        if read_on == "redis-py":
            store.pipe = None
        store.get_version = version_once_scoring  # type: ignore[method-assign]
        store.send_version_read = send_noting_when  # type: ignore[method-assign]
        scorer.top_k = top_k_seen  # type: ignore[method-assign]
        reads = gateway.metric("apron_profile_reads_total", kind="version")
        # the timeout only ends a test that would otherwise hang: the call waits on no clock
        answer = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=history, k=5), timeout=60)
        assert answer.profile_from_cache and answer.items == first.items and answer.profile == first.profile
        assert gateway.metric("apron_profile_reads_total", kind="version") == reads + 1  # confirmed by its version
        # started before the scorer was asked (without a pipe, get_version asks again inside the task)
        assert sent_before_scoring[0] is True and on_pipe[0] == (read_on == "pipe")


async def test_an_edit_elsewhere_while_a_kept_copy_is_scored_is_in_the_very_next_answer(
    python_repository: Path, redis_server: RedisProcess, main_tags, user_id: str
) -> None:
    """The reader scores the copy it keeps, finds the version changed by the other gateway's edit, and
    answers with the edited profile scored again: its items are the writer's, not the copy's."""
    config = gateway_config(python_repository, redis_server.url)
    history = liked_history(main_tags, 0, 1)
    request = pb.RecommendRequest(user_id=user_id, history=history, k=10)
    async with running_gateway(config) as writer, running_gateway(config) as reader:
        await writer.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, reset=True))
        before = await writer.stub.Recommend(request)
        assert (await reader.stub.Recommend(request)).items == before.items  # the reader keeps the profile
        top = max(before.profile.weights, key=lambda w: w.weight).prototype
        await writer.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype=top, scale=0.0)]))
        runs = reader.metric("apron_inference_batch_size_count", model="apron_scorer")
        after = await reader.stub.Recommend(request)
        assert reader.metric("apron_inference_batch_size_count", model="apron_scorer") == runs + 2  # the copy, then the edit
        assert shown_edit(after.profile, top) == 0.0 and after.profile_from_cache
        assert after.items == (await writer.stub.Recommend(request)).items
        assert [i.item_id for i in after.items] != [i.item_id for i in before.items]  # the edit changed them



async def test_a_computed_profile_keeps_its_own_weights_not_its_batchs(redis_server: RedisProcess) -> None:
    """A backend answers each profile of a batch with a view of the batch's output; the record the
    cache keeps (and stores) holds its own copy, or every kept copy would keep its whole batch alive."""
    from redis.asyncio import Redis

    batch = np.random.default_rng(0).random((32, 2, 3), dtype=np.float32)  # one run's output, 32 rows

    class BatchScorer:
        async def profile(self, history_ids: np.ndarray) -> tuple[np.ndarray, int]:
            return batch[5], len(history_ids)  # row 5: a view, as the backends return it

    client = Redis.from_url(redis_server.url, decode_responses=False)
    cache = ProfileCache(RedisStore(client, ttl_s=600), scorer=BatchScorer(), model_version=7, shape=(2, 3))  # type: ignore[arg-type]
    user = f"batch-view-{time.monotonic_ns()}"
    try:
        record, from_cache, _ = await cache.resolve(user, np.array([1, 4], np.int64))
        assert not from_cache and np.array_equal(record.weights, batch[5])
        assert record.weights.base is None and record.weights.flags.owndata  # not a view of the (32, 2, 3) output
        kept, _ = await cache.cached(user)  # the copy kept for the next call: the same record
        assert kept is record
    finally:
        await client.aclose()
