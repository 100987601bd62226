"""The gateway's Redis state on a real 3-node Redis Cluster (three redis-server processes, slots
assigned with CLUSTER ADDSLOTS and joined with CLUSTER MEET), through redis-py's cluster client;
and the move of the first key layout's edits on a single node."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from redis.asyncio import Redis, RedisCluster
from redis.cluster import key_slot

from serving.cache import (
    KEYS_VERSION_KEY,
    ProfileRecord,
    RedisStore,
    edits_key,
    migrate_legacy_edits,
    profile_key,
    version_key,
)
from serving.config import ServingConfig
from serving.edits import EditSpec
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.redis_process import RedisProcess, RedisServerError
from tests.serving.conftest import gateway_config, liked_history, running_gateway

SLOTS = 16384
NODES = 3
BUS_PORT_OFFSET = 10_000  # redis-server's cluster bus listens on port + 10000
DEADLINE_S = 60.0
USERS = ["alice", "bob", "{braced}", "a}b{c", "ünïcode", "x" * 200]


def cluster_port() -> int:
    """A free port whose cluster-bus port (+10000, so at most 55535) is free too."""
    for _ in range(100):
        with socket.socket() as low:
            low.bind(("127.0.0.1", 0))
            port = low.getsockname()[1]
            if port > 55535:
                continue
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + BUS_PORT_OFFSET))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


def start_cluster_node(data: Path, args: tuple[str, ...], attempts: int = 5) -> RedisProcess:
    """A cluster node on a checked-free port pair. The pair cannot be held while redis-server binds
    it, so a node that lost its port to another process (it exits, or a foreign server answers the
    PING: the pid tells) is started again on another pair."""
    for attempt in range(attempts):
        node = RedisProcess(port=cluster_port(), data_dir=data, extra_args=args)
        try:
            node.start()
        except RedisServerError:
            if attempt == attempts - 1:
                raise
            continue
        with redis.Redis(port=node.port) as client:
            if client.info("server")["process_id"] == node.pid:
                return node
        node.stop(remove_data=False)
    raise RedisServerError(f"no cluster node started on a free port pair in {attempts} attempts")


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisProcess]]:
    """Three cluster-enabled redis-servers, each owning a third of the slots, in state ok."""
    with contextlib.ExitStack() as stack:
        nodes = []
        for i in range(NODES):
            data = tmp_path_factory.mktemp(f"cluster-node-{i}")
            args = ("--cluster-enabled", "yes", "--cluster-config-file", str(data / "nodes.conf"))
            node = start_cluster_node(data, args)
            stack.callback(node.stop)
            nodes.append(node)
        clients = [redis.Redis(port=node.port) for node in nodes]
        for i, client in enumerate(clients):
            client.execute_command("CLUSTER ADDSLOTS", *range(i * SLOTS // NODES, (i + 1) * SLOTS // NODES))
        for node in nodes[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port)
        deadline = time.monotonic() + DEADLINE_S
        while not all(
            (info := c.cluster("info"))["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == NODES
            for c in clients
        ):
            assert time.monotonic() < deadline, f"cluster not ok after {DEADLINE_S:.0f} s: {clients[0].cluster('info')}"
            time.sleep(0.1)
        for client in clients:
            client.close()
        yield nodes


def cluster_url(nodes: list[RedisProcess]) -> str:
    return nodes[0].url.rsplit("/", 1)[0]  # a cluster has no database number


def test_a_users_keys_share_one_slot() -> None:
    for user in USERS:
        assert key_slot(profile_key(3, user).encode()) == key_slot(edits_key(user).encode()), user


async def test_profiles_and_edits_on_a_cluster(redis_cluster: list[RedisProcess]) -> None:
    client = RedisCluster.from_url(cluster_url(redis_cluster), decode_responses=False)
    store = RedisStore(client, ttl_s=600)
    try:
        owners = set()
        for n, user in enumerate(USERS):
            record = ProfileRecord(np.full((2, 3), n + 1, np.float32), n + 1, f"digest-{n}", np.arange(n + 1))
            await store.put_profile(1, user, record)  # MULTI/EXEC: valid only within one slot
            stored = await store.store_edits(user, {"jazz": EditSpec("jazz", "scale", 0.5)})
            assert stored == {"jazz": EditSpec("jazz", "scale", 0.5)}
            read = await store.get_profile(1, user, (2, 3))  # one script, one node
            cached, edits = read.record, read.edits
            assert cached is not None and cached.digest == f"digest-{n}" and cached.history_length == n + 1
            assert np.array_equal(cached.weights, record.weights) and edits == stored
            assert await store.get_version(user) == read.version  # the version key shares the slot
            assert key_slot(version_key(user).encode()) == key_slot(edits_key(user).encode())
            owners.add(client.get_node_from_key(edits_key(user)).port)
        assert len(owners) > 1  # the users really are spread over the nodes
        # concurrent reads' versions in one call, whichever nodes hold them
        assert await store.get_versions(list(USERS)) == [await store.get_one_version(user) for user in USERS]
    finally:
        await client.aclose()


async def test_the_gateway_serves_from_a_cluster(
    redis_cluster: list[RedisProcess], python_repository: Path, main_tags: np.ndarray, user_id: str
) -> None:
    config: ServingConfig = dataclasses.replace(
        gateway_config(python_repository, cluster_url(redis_cluster)), redis_cluster=True
    )
    async with running_gateway(config) as gateway:
        history = liked_history(main_tags, 0, 1)
        first = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, history=history, k=5))
        again = await gateway.stub.Recommend(pb.RecommendRequest(user_id=user_id, k=5))
        assert not first.profile_from_cache and again.profile_from_cache
        assert [i.item_id for i in again.items] == [i.item_id for i in first.items]
        edited = await gateway.stub.EditProfile(
            pb.EditProfileRequest(user_id=user_id, edits=[pb.Edit(prototype="tag1", scale=0.0)])
        )
        assert [e.prototype for e in edited.stored_edits] == ["tag1"]
        profile = await gateway.stub.GetProfile(pb.GetProfileRequest(user_id=user_id))
        assert {w.prototype: w.weight for w in profile.profile.weights}["tag1"] == 0.0
        # an id whose hash tag would be empty spreads its keys over slots: refused for what it is
        # (it was INTERNAL: "all keys must map to the same key slot")
        for call in (
            gateway.stub.Recommend(pb.RecommendRequest(user_id="}" + user_id, history=history, k=5)),
            gateway.stub.EditProfile(pb.EditProfileRequest(user_id="}" + user_id, reset=True)),
            gateway.stub.GetProfile(pb.GetProfileRequest(user_id="}" + user_id)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "must not begin with '}'" in refused.value.details()


async def test_edits_of_the_first_layout_move_to_hash_tagged_keys() -> None:
    with RedisProcess() as server:
        client = Redis.from_url(server.url)
        try:
            await client.hset("apron:edits:alice", mapping={"jazz": '{"kind": "scale", "value": 0.0}', "rock": "old"})
            await client.hset("apron:edits:{alice}", mapping={"rock": '{"kind": "weight", "value": 0.2}'})  # newer
            await client.hset("apron:edits:bob", mapping={"pop": '{"kind": "scale", "value": 2.0}'})
            assert await migrate_legacy_edits(client) == 2
            assert await client.hgetall(edits_key("alice")) == {
                b"jazz": b'{"kind": "scale", "value": 0.0}',
                b"rock": b'{"kind": "weight", "value": 0.2}',  # the new key's edit wins
            }
            assert await client.hgetall(edits_key("bob")) == {b"pop": b'{"kind": "scale", "value": 2.0}'}
            assert not await client.exists("apron:edits:alice", "apron:edits:bob")
            assert await client.get(KEYS_VERSION_KEY) == b"2"
            await client.hset("apron:edits:carol", mapping={"x": "1"})  # written after: not this layout's job
            assert await migrate_legacy_edits(client) == 0  # once per Redis
        finally:
            await client.aclose()
