"""EditProfile checks its edits against the user's state and stores them only while Redis still
holds that state (its version, `RedisStore.store_edits(expected=...)`): concurrent EditProfiles can
never together store an edit set that each alone would have been refused for, which would fail every
later call of the user. A real redis-server and in-process gateways; the interleavings are forced."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import grpc
import numpy as np
import pytest
from redis.asyncio import Redis

from serving.cache import ProfileRecord, RedisStore, UserLocks, VersionChanged, edits_key, version_key
from serving.edits import EditSpec
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.redis_process import RedisProcess
from serving.servicer import EDIT_ATTEMPTS
from tests.polling import eventually
from tests.serving.conftest import gateway_config, liked_history, running_gateway


def weight_edit(tag: str, share: float) -> pb.Edit:
    return pb.Edit(prototype=tag, weight=share)


async def status(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def test_a_conditional_write_stores_only_at_the_version_it_was_given(redis_server: RedisProcess, user_id: str) -> None:
    client = Redis.from_url(redis_server.url, decode_responses=False)
    store = RedisStore(client, ttl_s=600)
    try:
        await store.put_profile(1, user_id, ProfileRecord(np.ones((2, 3), np.float32), 1, "d", np.arange(1)))
        read = await store.get_profile(1, user_id, (2, 3))
        jazz, rock = EditSpec("jazz", "scale", 0.5), EditSpec("rock", "weight", 0.2)
        assert await store.store_edits(user_id, {"jazz": jazz}, expected=read.version) == {"jazz": jazz}
        with pytest.raises(VersionChanged):  # the write above replaced the version it was read at
            await store.store_edits(user_id, {"rock": rock}, expected=read.version)
        now = await store.get_profile(1, user_id, (2, 3))
        assert now.edits == {"jazz": jazz} and now.version != read.version
        assert await store.store_edits(user_id, {"rock": rock}, reset=True, expected=now.version) == {"rock": rock}
        assert await store.store_edits(user_id, {"jazz": jazz}) == {"rock": rock, "jazz": jazz}  # unconditional
        await client.delete(version_key(user_id))  # expired since the read: changed, never mistaken for it
        with pytest.raises(VersionChanged):
            await store.store_edits(user_id, {}, reset=True, expected=now.version)
        assert await client.hlen(edits_key(user_id)) == 2
    finally:
        await client.aclose()


async def test_without_a_profile_set_shares_over_one_are_refused_and_nothing_is_stored(
    python_repository: Path, redis_server: RedisProcess, main_tags, user_id: str
) -> None:
    async with running_gateway(gateway_config(python_repository, redis_server.url)) as gateway:
        await gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, reset=True))
        first = await gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[weight_edit("tag0", 0.7)]))
        assert [(e.prototype, e.weight) for e in first.stored_edits] == [("tag0", pytest.approx(0.7))]
        code, details = await status(gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[weight_edit("tag1", 0.7)])))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "set weights sum to 1.4 > 1" in details and "nothing was stored" in details
        answer = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 0, 1), k=5))
        assert len(answer.items) == 5  # the stored set still applies (it was a lock-out before: FAILED_PRECONDITION)
        assert {w.prototype: w.weight for w in answer.profile.weights}["tag0"] == pytest.approx(0.7, abs=1e-6)


async def test_two_gateways_editing_at_once_into_a_broken_set_one_wins_one_is_refused(
    python_repository: Path, redis_server: RedisProcess, main_tags, user_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes (gateways) on one Redis: both calls read and check before either writes
    (forced): the second write finds the version the first left, checks again against the first's
    edit, and is refused."""
    store_edits = RedisStore.store_edits
    writers = 0
    both_checked = asyncio.Event()

    async def after_both_checked(self: RedisStore, user: str, edits: Mapping[str, EditSpec], reset: bool = False, expected: bytes | None = None):
        nonlocal writers
        writers += 1
        if writers == 2:
            both_checked.set()
        await both_checked.wait()
        return await store_edits(self, user, edits, reset, expected)

    config = gateway_config(python_repository, redis_server.url)
    async with running_gateway(config) as one, running_gateway(config) as two:
        await one.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, reset=True))
        await one.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 0, 1), k=5))
        monkeypatch.setattr(RedisStore, "store_edits", after_both_checked)
        results = await asyncio.gather(*(
            status(gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[weight_edit(tag, 0.6)])))
            for gateway, tag in ((one, "tag0"), (two, "tag1"))
        ))  # fmt: skip
        monkeypatch.undo()
        assert sorted(code.name for code, _ in results) == ["INVALID_ARGUMENT", "OK"], results
        assert writers == 2  # the loser found the version changed, checked again and was refused before writing
        refused = next(details for code, details in results if code == grpc.StatusCode.INVALID_ARGUMENT)
        assert "set weights sum to 1.2 > 1" in refused and "nothing was stored" in refused
        for gateway in (one, two):
            stored = await gateway.stub.GetProfile(pb.GetProfileRequest(user_id=user_id))
            assert [e.weight for e in stored.stored_edits] == [pytest.approx(0.6)]  # the winner's edit alone
            answer = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
            assert len(answer.items) == 5  # (both stored, every call of the user was FAILED_PRECONDITION)


async def test_one_gateways_edits_of_a_user_take_turns_and_never_lose_a_write(
    python_repository: Path, redis_server: RedisProcess, main_tags, user_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within one process the same two calls wait for each other (`UserLocks`): the second checks
    against the first's stored edit and is refused without a write; no conditional write is lost."""
    store_edits = RedisStore.store_edits
    writes: list[bool] = []

    async def recorded(self: RedisStore, user: str, edits: Mapping[str, EditSpec], reset: bool = False, expected: bytes | None = None):
        try:
            stored = await store_edits(self, user, edits, reset, expected)
        except VersionChanged:
            writes.append(False)
            raise
        writes.append(True)
        return stored

    async with running_gateway(gateway_config(python_repository, redis_server.url)) as gateway:
        await gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, reset=True))
        await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 0, 1), k=5))
        monkeypatch.setattr(RedisStore, "store_edits", recorded)
        results = await asyncio.gather(*(
            status(gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[weight_edit(tag, 0.6)])))
            for tag in ("tag0", "tag1")
        ))  # fmt: skip
        monkeypatch.undo()
        assert sorted(code.name for code, _ in results) == ["INVALID_ARGUMENT", "OK"], results
        assert writes == [True]


def test_user_locks_are_kept_only_while_held_or_awaited() -> None:
    async def scenario() -> None:
        locks = UserLocks()
        order: list[str] = []
        entered = asyncio.Event()

        async def first() -> None:
            async with locks.hold("u"):
                entered.set()
                order.append("first in")
                await asyncio.sleep(0)
                order.append("first out")

        async def second() -> None:
            await entered.wait()
            async with locks.hold("u"):
                order.append("second")

        waiter = asyncio.ensure_future(second())
        await asyncio.gather(first(), waiter)
        assert order == ["first in", "first out", "second"] and locks.kept() == {}
        async with locks.hold("u"):  # a waiter cancelled while waiting leaves nothing behind
            assert locks.kept() == {"u": 1}
            cancelled = asyncio.ensure_future(locks.hold("u").__aenter__())
            await eventually(lambda: locks.kept() == {"u": 2}, "the second call waits for u's lock")
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            assert locks.kept() == {"u": 1}  # the holder's count only
        assert locks.kept() == {}

    asyncio.run(scenario())


async def test_an_edit_overtaken_by_other_writes_every_time_is_aborted_and_stores_nothing(
    python_repository: Path, redis_server: RedisProcess, main_tags, user_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_edits = RedisStore.store_edits
    attempts = 0

    async def overtaken(self: RedisStore, user: str, edits: Mapping[str, EditSpec], reset: bool = False, expected: bytes | None = None):
        nonlocal attempts
        attempts += 1
        await self.redis.set(version_key(user), f"another-writer-{attempts}".encode())  # lands first, every time
        return await store_edits(self, user, edits, reset, expected)

    async with running_gateway(gateway_config(python_repository, redis_server.url)) as gateway:
        await gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, reset=True))
        await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=liked_history(main_tags, 0, 1), k=5))
        monkeypatch.setattr(RedisStore, "store_edits", overtaken)
        code, details = await status(gateway.stub.EditProfile(pb.EditProfileRequest(user_id=user_id, edits=[weight_edit("tag0", 0.3)])))
        monkeypatch.undo()
        assert code == grpc.StatusCode.ABORTED and "nothing was stored" in details and "send the request again" in details
        assert attempts == EDIT_ATTEMPTS
        stored = await gateway.stub.GetProfile(pb.GetProfileRequest(user_id=user_id))
        assert list(stored.stored_edits) == []
