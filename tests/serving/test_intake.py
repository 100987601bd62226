"""`--grpc-servers N` (serving/intake.py): N grpc.aio servers on one port in one gateway process,
every one of them serving, a taken port still refused, and all of them stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import grpc
import psutil
import pytest

from serving.config import ServingConfig
from serving.intake import refuse_taken
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
