"""Redis bounded and never blocking (serving/redis_process.py, serving/cache.py's RedisStore), with
real redis-servers and gateways:

- the private Redis full (its maxmemory reached): cached profiles are evicted, stored edits never;
  once only edits are left, Recommend with a history answers uncached and EditProfile answers
  UNAVAILABLE saying the store is full, never INTERNAL;
- kill -9 of the private Redis with an AOF it takes a while to replay: the supervisor's restart
  blocks no call (held in its LOADING state with SIGSTOP, so the calls provably ran during the
  replay), and the replayed edits are all there;
- a configured Redis stopped (SIGSTOP): Recommend with a history answers, what needs Redis answers
  UNAVAILABLE, and once Redis is known down the calls do not wait for it at all;
- `apron serve` on a data directory another one serves from is refused; SIGTERM while it starts
  leaves no redis-server behind.

Durations are printed (`pytest -s`) for RELIABILITY.md, never asserted."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
from pathlib import Path

import grpc
import psutil
import pytest
import redis
import redis.asyncio

from loadtests.faults import redis_child
from loadtests.gateway_process import APRON, CODE_ROOT, GatewayProcessError, start_gateway
from serving import auth
from serving.cache import edits_key
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.redis_process import RedisProcess, _ping
from serving.resources import RedisSupervisor, Resources
from tests.polling import eventually, wait_until
from tests.reliability.faults import Outcome, call
from tests.reliability.test_redis_faults import CALL_DEADLINE_S, redis_is_back, stored_edits
from tests.serving.conftest import gateway_config, liked_history, running_gateway

pytestmark = pytest.mark.timeout(300)

OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE
FILL_VALUE = b"x" * 1024  # one filler edit's value: the store fills in a few thousand writes
OVER_LIMIT_MARGIN = 256 * 1024  # bytes by which the full store is held over its limit (far above buffer noise)


def edit(user: str, tag: str, scale: float) -> pb.EditProfileRequest:
    return pb.EditProfileRequest(user_id=user, edits=[pb.Edit(prototype=tag, scale=scale)])


def report(what: str, outcomes: list[Outcome]) -> None:
    print(f"\n{what}: " + ", ".join(f"{o.code.name} {o.seconds * 1000:.0f} ms" for o in outcomes))


async def fill_with_edits(client: redis.asyncio.Redis) -> int:
    """Write edit-like keys (no TTL) until Redis refuses one for its maxmemory; how many it took."""
    written = 0
    while True:
        try:
            await client.hset(f"apron:edits:{{filler-{written}}}", "tag0", FILL_VALUE)
        except redis.exceptions.OutOfMemoryError:
            return written
        written += 1


async def test_a_full_private_redis_evicts_only_cached_profiles_and_never_answers_internal(
    python_repository, main_tags, tmp_path: Path
) -> None:
    config = gateway_config(python_repository, "", redis_dir=str(tmp_path / "redis"), redis_maxmemory_mb=2, edit_rate=0.0)
    history = liked_history(main_tags, 0, 1)
    async with running_gateway(config) as gateway:
        stub = gateway.stub
        private = gateway.server.resources.redis_process
        assert private is not None
        client = redis.asyncio.Redis.from_url(private.url)
        try:
            assert await client.config_get("maxmemory-policy") == {"maxmemory-policy": "volatile-lru"}
            assert (await call(stub.EditProfile, edit("keeper", "tag1", 0.5))).code == OK
            for i in range(10):  # cached profiles (with a TTL): what a full store may evict
                assert (await call(stub.Recommend, pb.RecommendRequest(user_id=f"cached-{i}", history=history, k=3))).code == OK
            assert len([key async for key in client.scan_iter(match="apron:profile:*")]) == 10

            filled = await fill_with_edits(client)  # Redis refuses writes only once nothing with a TTL is left
            assert [key async for key in client.scan_iter(match="apron:profile:*")] == []  # the cache was evicted...
            assert len([key async for key in client.scan_iter(match="apron:edits:*")]) == filled + 1  # ...never an edit
            assert await client.hgetall(edits_key("keeper")) != {}
            # Redis refuses a write only while its used memory is over maxmemory, and that figure moves
            # by a few KB (query and reply buffers): the refused 1 KB filler does not make a smaller
            # edit's refusal certain. Set the limit well below what is used now, so that every write
            # below is refused whatever those buffers do; the original limit comes back afterwards.
            used = (await client.info("memory"))["used_memory"]
            await client.config_set("maxmemory", used - OVER_LIMIT_MARGIN)

            outcomes = [
                await call(stub.Recommend, pb.RecommendRequest(user_id="newcomer", history=history, k=3)),
                await call(stub.Recommend, pb.RecommendRequest(user_id="keeper", history=history, k=3)),
                await call(stub.EditProfile, edit("newcomer", "tag2", 0.5)),
                await call(stub.EditProfile, edit("keeper", "tag2", 0.5)),
            ]
            report("Redis full: Recommend newcomer, Recommend keeper, EditProfile newcomer, EditProfile keeper", outcomes)
            for answered in outcomes[:2]:  # answered, just not cached
                assert answered.code == OK and len(answered.response.items) == 3, answered
                assert not answered.response.profile_from_cache
            for refused in outcomes[2:]:  # nothing stored, and the caller is told why and what to do
                assert refused.code == UNAVAILABLE and "full" in refused.details and "maxmemory" in refused.details, refused
            assert await client.hgetall(edits_key("newcomer")) == {}

            await client.config_set("maxmemory", config.redis_maxmemory_mb * 2**20)
            await client.delete(*[f"apron:edits:{{filler-{i}}}" for i in range(filled)])  # room again: all works
            assert (await call(stub.EditProfile, edit("newcomer", "tag2", 0.5))).code == OK
            assert (await stored_edits(stub, "keeper", history)) == {"tag1": 0.5}
        finally:
            await client.aclose()


def log_since_last_start(process: RedisProcess) -> str:
    return process.log_tail(200).rsplit("Redis is starting", 1)[-1]


def stopped(pid: int) -> bool:
    return psutil.Process(pid).status() == psutil.STATUS_STOPPED


async def test_private_redis_replaying_its_aof_after_kill_9_blocks_no_call(python_repository, main_tags, tmp_path: Path) -> None:
    """The restarted redis-server is caught replaying (it answers LOADING) and frozen there with
    SIGSTOP: the calls below provably run during the replay. `--key-load-delay` (a redis-server
    debugging option) stretches a small AOF's replay so that it can be caught."""
    config = gateway_config(python_repository, "", edit_rate=0.0)
    process = RedisProcess(tmp_path / "redis", aof=True, extra_args=("--key-load-delay", "300")).start()  # µs per key
    supervisor = RedisSupervisor(process).start()
    resources = Resources(dataclasses.replace(config, redis_url=process.url), auth.setup(config.security, config.host), process, supervisor)
    history = liked_history(main_tags, 0, 1)
    try:
        async with running_gateway(config, resources) as gateway:
            stub = gateway.stub
            assert (await call(stub.EditProfile, edit("keeper", "tag1", 0.5))).code == OK
            client = redis.asyncio.Redis.from_url(process.url)
            async with client.pipeline(transaction=False) as pipe:
                for i in range(10_000):  # ~3 s of replay at the delay above
                    pipe.set(f"filler-{i}", i)
                await pipe.execute()
            await client.aclose()

            loading = None
            for _attempt in range(5):  # a replay that ended before the SIGSTOP landed is replayed again
                dead = process.pid
                assert dead is not None
                os.kill(dead, signal.SIGKILL)

                async def replaying(dead: int = dead) -> bool:
                    pid = process.pid
                    return pid not in (None, dead) and await asyncio.to_thread(_ping, process._address()) is None

                await eventually(replaying, "the restarted redis-server replaying its AOF (LOADING)")
                loading = process.pid
                assert loading is not None
                os.kill(loading, signal.SIGSTOP)
                wait_until(lambda pid=loading: stopped(pid), "the replaying redis-server stopped")
                if "DB loaded" not in log_since_last_start(process):
                    break  # frozen mid-replay
                os.kill(loading, signal.SIGCONT)
                wait_until(lambda: _ping(process._address()) is True, "the redis-server answering")
            else:
                pytest.fail("the AOF replay ended before it could be caught, 5 times")

            # the watch's PING to the frozen server times out: from then on, calls skip Redis
            await eventually(lambda: gateway.server.models.store.known_down, "Redis known down")
            outcomes = [
                await call(stub.ListPrototypes, pb.ListPrototypesRequest(), CALL_DEADLINE_S),
                await call(stub.Recommend, pb.RecommendRequest(user_id="reader", history=history, k=3), CALL_DEADLINE_S),
                await call(stub.EditProfile, edit("keeper", "tag2", 0.25), CALL_DEADLINE_S),
                await call(stub.ListPrototypes, pb.ListPrototypesRequest(), CALL_DEADLINE_S),
            ]
            report("private Redis replaying its AOF: ListPrototypes, Recommend, EditProfile, ListPrototypes", outcomes)
            assert "DB loaded" not in log_since_last_start(process) and process.pid == loading  # all during the replay
            assert outcomes[0].code == OK and outcomes[3].code == OK and len(outcomes[0].response.prototypes) > 0
            assert outcomes[1].code == OK and not outcomes[1].response.profile_from_cache
            assert outcomes[2].code == UNAVAILABLE and "not asked" in outcomes[2].details

            os.kill(loading, signal.SIGCONT)  # the replay goes on: the same server finishes it, none is killed for time
            await eventually(lambda: redis_is_back(stub), "EditProfile accepted after the replay")
            assert process.pid == loading
            assert await stored_edits(stub, "keeper", history) == {"tag1": 0.5}
    finally:
        if process.pid is not None:
            os.kill(process.pid, signal.SIGCONT)
        resources.close()


async def test_a_stopped_redis_holds_no_call(python_repository, main_tags, tmp_path: Path) -> None:
    """SIGSTOP of a configured Redis: it accepts connections and never answers. The first calls are
    bounded by --redis-timeout-s; once Redis is known down (the watch's PING, or a failed call),
    the calls skip it: they say so, and nothing waits for Redis at all."""
    redis_server = RedisProcess(data_dir=tmp_path / "redis", aof=True).start()
    config = gateway_config(python_repository, redis_server.url, edit_rate=0.0, redis_timeout_s=0.5)
    history = liked_history(main_tags, 0, 1)
    assert redis_server.pid is not None
    try:
        async with running_gateway(config) as gateway:
            stub, store = gateway.stub, gateway.server.models.store
            assert (await call(stub.EditProfile, edit("keeper", "tag1", 0.5))).code == OK
            assert (await call(stub.Recommend, pb.RecommendRequest(user_id="keeper", history=history, k=3))).code == OK

            os.kill(redis_server.pid, signal.SIGSTOP)
            first = await call(stub.Recommend, pb.RecommendRequest(user_id="reader", history=history, k=3), CALL_DEADLINE_S)
            await eventually(lambda: store.known_down, "Redis known down")
            outcomes = [
                await call(stub.Recommend, pb.RecommendRequest(user_id="reader", history=history, k=3), CALL_DEADLINE_S),
                await call(stub.EditProfile, edit("keeper", "tag2", 0.25), CALL_DEADLINE_S),
                await call(stub.GetProfile, pb.GetProfileRequest(user_id="keeper"), CALL_DEADLINE_S),
                await call(stub.Recommend, pb.RecommendRequest(user_id="keeper", k=3), CALL_DEADLINE_S),  # no history
            ]
            report("external Redis SIGSTOPped, first Recommend", [first])
            report("then, known down: Recommend, EditProfile, GetProfile, Recommend without history", outcomes)
            for answered in (first, outcomes[0]):
                assert answered.code == OK and not answered.response.profile_from_cache, answered
            for refused in outcomes[1:]:  # skipped: Redis was not asked, so nothing waited for it
                assert refused.code == UNAVAILABLE and "not asked" in refused.details, refused

            os.kill(redis_server.pid, signal.SIGCONT)
            await eventually(lambda: redis_is_back(stub), "EditProfile accepted after SIGCONT")
            assert not store.known_down
            assert await stored_edits(stub, "keeper", history) == {"tag1": 0.5}
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
        redis_server.stop()


def test_one_data_directory_one_gateway_and_sigterm_while_starting_leaves_no_redis(python_repository, tmp_path: Path) -> None:
    args = ["--repository", str(python_repository), "--no-build-demo", "--no-auth", "--redis-dir", str(tmp_path / "redis")]
    first = start_gateway(args, tmp_path / "first")
    try:
        with pytest.raises(GatewayProcessError, match="another process runs a redis-server in"):
            start_gateway(args, tmp_path / "second")  # exits: it would write the same AOF
        assert first.health() is not None  # the first one is untouched
    finally:
        assert first.terminate() == 0

    # SIGTERM as soon as `apron serve` has started its private redis-server, before it serves
    log_path = tmp_path / "starting.log"
    command = [*APRON, "serve", "--port", "0", "--metrics-port", "0", "--log-format", "text", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(CODE_ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "wb") as log:
        starting = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: redis_child(starting.pid) is not None or starting.poll() is not None, "its redis-server started")
        child = redis_child(starting.pid)
        assert child is not None, log_path.read_text()
        starting.send_signal(signal.SIGTERM)
        starting.wait(60)
        wait_until(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, "its redis-server gone")
        # and the directory is free again: a new gateway serves from it
        again = start_gateway(args, tmp_path / "again")
        assert again.terminate() == 0
    finally:
        if starting.poll() is None:
            starting.kill()
            starting.wait()
