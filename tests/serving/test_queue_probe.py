"""serving/queue_probe.py on a real grpc.aio server: the gateway's probe reaches its own interceptor
over the private socket and is measured; nobody else can use the probe method; other calls pass."""

from __future__ import annotations

import asyncio
import contextlib
import stat
from pathlib import Path

import grpc
import pytest

from serving import queue_probe
from serving.queue_probe import QueueProbe
from tests.polling import eventually


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def test_the_probe_is_measured_private_and_transparent() -> None:
    probe = QueueProbe()
    arrivals: list[float] = []
    arrived = probe.delay.arrived

    def counted() -> None:
        arrived()
        arrivals.append(probe.delay.last_s)

    probe.delay.arrived = counted  # type: ignore[method-assign]
    server = grpc.aio.server(interceptors=[probe])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("toy.Toy", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)})])
    port = server.add_insecure_port("127.0.0.1:0")
    probe.bind(server)
    socket_dir = Path(probe.addresses[0].removeprefix("unix:")).parent
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700  # only this user can reach the plaintext socket
    await server.start()
    task = asyncio.create_task(probe.run(interval_s=0.01))
    try:
        await eventually(lambda: len(arrivals) >= 3, "three probes taken up and measured")
        assert all(0 <= seconds < 60 for seconds in arrivals)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await channel.unary_unary("/toy.Toy/Echo")(b"hi", timeout=20) == b"hi"  # passed on
            ping = channel.unary_unary(queue_probe.METHOD)
            for metadata in [None, ((queue_probe.KEY, "not-the-key"),)]:  # an outsider cannot feed the estimate
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await ping(b"", metadata=metadata, timeout=20)
                assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.stop(None)
        probe.close()
    assert not socket_dir.exists()


async def test_each_server_gets_its_own_probe_socket_and_probes_take_turns() -> None:
    probe = QueueProbe()
    taken_up: list[int] = []
    servers = []
    for index in range(2):

        class Counting(grpc.aio.ServerInterceptor):
            async def intercept_service(self, continuation, details, index=index):  # type: ignore[no-untyped-def]
                if details.method == queue_probe.METHOD:
                    taken_up.append(index)
                return await continuation(details)

        server = grpc.aio.server(interceptors=[Counting(), probe])
        probe.bind(server)
        servers.append(server)
    assert len(probe.addresses) == 2 and len(set(probe.addresses)) == 2
    for server in servers:
        await server.start()
    task = asyncio.create_task(probe.run(interval_s=0.01))
    try:
        await eventually(lambda: len(taken_up) >= 4, "four probes taken up")
        assert taken_up[:4] == [0, 1, 0, 1]  # one in flight at a time, the servers in turn
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for server in servers:
            await server.stop(None)
        probe.close()
