"""serving/intake.py: `--grpc-servers N` (N grpc.aio servers on one port in one gateway process,
every one of them serving, a taken port still refused, and all of them stopped together) and
`--grpc-intake N` (N requests for each method's next call waiting in core: the calls they take meet
the same interceptors, handlers and errors, and stop with the server)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import grpc
import psutil
import pytest

from serving import intake
from serving.config import MAX_GRPC_INTAKE, ServingConfig
from serving.intake import VERIFIED_GRPC, refuse_taken, unsupported
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
from serving.redis_process import RedisProcess
from serving.server import create_server
from tests.polling import eventually
from tests.serving.conftest import gateway_config, liked_history, running_gateway

SERVERS = 3
CONNECTIONS = 12  # the kernel spreads connections over the listening sockets: all 12 on one of 3 has odds 3 / 3**12


def listening_sockets(port: int) -> int:
    return sum(
        1 for c in psutil.Process().net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
    )


async def test_every_server_on_the_port_answers(python_repository: Path, redis_server: RedisProcess, main_tags) -> None:
    config = gateway_config(python_repository, redis_server.url, grpc_servers=SERVERS)
    history = liked_history(main_tags, 0, 1)
    async with running_gateway(config) as gateway:
        await eventually(lambda: listening_sockets(gateway.port) == SERVERS, f"{SERVERS} sockets listening on the port")
        # one connection each (no shared subchannel pool): a server that does not serve fails its share
        channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}", options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(CONNECTIONS)
        ]
        try:
            replies = await asyncio.gather(*(
                pb_grpc.RecommenderStub(channel).Recommend(pb.RecommendRequest(user_id=f"intake-{i}", history=history, k=5), timeout=60)
                for i, channel in enumerate(channels)
            ))  # fmt: skip
        finally:
            for channel in channels:
                await channel.close()
        assert all(len(reply.items) == 5 for reply in replies)
        port = gateway.port
    await eventually(lambda: listening_sockets(port) == 0, "every server's socket closed by the stop")  # stopped together


@contextlib.contextmanager
def listening_elsewhere() -> socket.socket:  # type: ignore[misc]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder


@pytest.mark.parametrize("servers", [1, SERVERS])
async def test_a_taken_port_is_refused_however_many_servers(python_repository: Path, redis_server: RedisProcess, servers: int) -> None:
    with listening_elsewhere() as holder:
        port = holder.getsockname()[1]
        config = gateway_config(python_repository, redis_server.url, port=port, grpc_servers=servers)
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            await create_server(config)
        assert listening_sockets(port) == 1  # the other program's socket only: nothing of the gateway's left


def test_a_host_that_is_not_this_machines_is_refused_as_such() -> None:
    with pytest.raises(OSError, match="cannot bind 192.0.2.1:50999: not an address to listen on here"):
        refuse_taken("192.0.2.1", 50999)  # TEST-NET-1: no machine's address


def test_grpc_servers_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="grpc_servers must be at least 1"):
        ServingConfig(grpc_servers=0)


@pytest.mark.parametrize(("field", "value"), [("port", -1), ("port", 65536), ("http_port", 65536), ("metrics_port", -2)])
def test_ports_outside_the_range_are_refused_by_the_configuration(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=f"{field} must be"):
        ServingConfig(**{field: value})


def test_grpc_intake_must_be_at_least_one_and_at_most_the_bound() -> None:
    with pytest.raises(ValueError, match="grpc_intake must be at least 1"):
        ServingConfig(grpc_intake=0)
    with pytest.raises(ValueError, match=f"grpc_intake must be at most {MAX_GRPC_INTAKE} .*got 1000000"):
        ServingConfig(grpc_intake=1_000_000)  # a task per method and server each: refused before any is made
    assert ServingConfig(grpc_intake=MAX_GRPC_INTAKE).grpc_intake == MAX_GRPC_INTAKE


class Recording(grpc.aio.ServerInterceptor):
    """Every call's method, as the server's interceptors see it."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        self.methods.append(handler_call_details.method)
        return await continuation(handler_call_details)


def intake_tasks() -> list[asyncio.Task]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("apron-intake")]


INTAKE = 4
SEQUENTIAL = 12


@pytest.mark.skipif(unsupported() != "", reason="the deeper intake runs on the grpcio versions in VERIFIED_GRPC only")
async def test_calls_the_deeper_intake_takes_meet_the_interceptors_handlers_and_errors(
    python_repository: Path, redis_server: RedisProcess, main_tags
) -> None:
    recording = Recording()
    config = gateway_config(python_repository, redis_server.url, grpc_intake=INTAKE)
    server, port = await create_server(config, interceptors=[recording])
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = pb_grpc.RecommenderStub(channel)
        assert len(intake_tasks()) == (INTAKE - 1) * len(pb.DESCRIPTOR.services_by_name["Recommender"].methods)
        history = liked_history(main_tags, 0, 1)
        for i in range(SEQUENTIAL):  # core hands a method's calls to its waiting requests in turn
            reply = await stub.Recommend(pb.RecommendRequest(user_id=f"deep-{i}", history=history, k=5), timeout=60)
            assert len(reply.items) == 5
        # of INTAKE requests waiting, grpc.aio's own is one: it took at most one call in INTAKE - 1 in turn
        assert server.grpc_server.taken >= SEQUENTIAL // 2, server.grpc_server.taken
        replies = await asyncio.gather(*(
            stub.Recommend(pb.RecommendRequest(user_id=f"deep-many-{i}", history=history, k=3), timeout=60) for i in range(32)
        ))  # fmt: skip
        assert all(len(reply.items) == 3 for reply in replies)
        before = server.grpc_server.taken
        for _ in range(SEQUENTIAL):  # a client's mistake: the same status and message whichever intake took it
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Recommend(pb.RecommendRequest(user_id="deep-bad", history=history, k=0), timeout=60)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
            assert "k" in (refused.value.details() or "")
        assert server.grpc_server.taken - before >= SEQUENTIAL // 2
        assert recording.methods.count("/apron.v1.Recommender/Recommend") == 2 * SEQUENTIAL + 32
    finally:
        await channel.close()
        await server.stop(2.0)
    assert intake_tasks() == []  # the takers ended with the server


async def test_on_a_grpcio_it_was_not_written_for_grpc_aios_own_intake_serves(
    python_repository: Path, redis_server: RedisProcess, main_tags, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(intake, "unsupported", lambda: "grpcio 9.9.9: its grpc.aio internals were read for 1.85 only")
    config = gateway_config(python_repository, redis_server.url, grpc_intake=INTAKE)
    with caplog.at_level("WARNING", logger="apron.intake"):
        async with running_gateway(config) as gateway:
            assert intake_tasks() == []
            reply = await gateway.stub.Recommend(
                pb.RecommendRequest(user_id="own-intake", history=liked_history(main_tags, 0, 1), k=5), timeout=60
            )
            assert len(reply.items) == 5
            assert gateway.server.grpc_server.taken == 0
    assert "grpcio 9.9.9" in caplog.text and "grpc.aio's own intake serves alone" in caplog.text


def test_only_the_grpcio_versions_read_are_supported() -> None:
    assert "1.81" in unsupported("1.81.1") and "read for 1.84, 1.85 only" in unsupported("1.81.1")
    assert unsupported("not-a-version") != ""
    installed = tuple(int(part) for part in grpc.__version__.split(".")[:2])
    assert (unsupported() == "") == (installed in VERIFIED_GRPC)
