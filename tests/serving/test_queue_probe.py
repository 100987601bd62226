"""serving/queue_probe.py on a real grpc.aio server: the gateway's probe, a call of a method the
server registers with core (so it waits in that method's own queue), reaches its own interceptor
over the private socket and is measured; the method's other calls, whatever key they carry, are
the method's own."""

from __future__ import annotations

import asyncio
import contextlib
import stat
from pathlib import Path

import grpc

from serving import queue_probe
from serving.queue_probe import QueueProbe
from tests.polling import eventually


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


ECHO = "/toy.Toy/Echo"


async def test_the_probe_is_measured_private_and_transparent() -> None:
    probe = QueueProbe([ECHO])
    arrivals: list[float] = []
    arrived = probe.delay.arrived

    def counted() -> None:
        arrived()
        arrivals.append(probe.delay.last_s)

    probe.delay.arrived = counted  # type: ignore[method-assign]
    server = grpc.aio.server(interceptors=[probe])
    handlers = {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("toy.Toy", handlers)])
    server.add_registered_method_handlers("toy.Toy", handlers)  # as the gateway's: a queue of its own in core
    port = server.add_insecure_port("127.0.0.1:0")
    probe.bind(server)
    socket_dir = Path(probe.addresses[0].removeprefix("unix:")).parent
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700  # only this user can reach the plaintext socket
    await server.start()
    task = asyncio.create_task(probe.run(interval_s=0.01))
    try:
        await eventually(lambda: len(arrivals) >= 3, "three probes taken up and measured")
        assert all(0 <= seconds < 60 for seconds in arrivals)
        measured = len(arrivals)
        task.cancel()  # no probe from here: what arrives now is an outsider's
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary(ECHO)
            for metadata in [None, ((queue_probe.KEY, "not-the-key"),)]:  # the method's own call, never a probe
                assert await echo(b"hi", metadata=metadata, timeout=20) == b"hi"
        assert len(arrivals) == measured  # an outsider cannot feed the estimate
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.stop(None)
        probe.close()
    assert not socket_dir.exists()


async def test_each_server_gets_its_own_probe_socket_and_probes_take_turns() -> None:
    probe = QueueProbe([ECHO, "/toy.Toy/Other"])
    taken_up: list[tuple[int, str]] = []
    servers = []
    for index in range(2):

        class Counting(grpc.aio.ServerInterceptor):
            async def intercept_service(self, continuation, details, index=index):  # type: ignore[no-untyped-def]
                taken_up.append((index, details.method))
                return await continuation(details)

        server = grpc.aio.server(interceptors=[Counting(), probe])
        probe.bind(server)
        servers.append(server)
    assert len(probe.addresses) == 2 and len(set(probe.addresses)) == 2
    for server in servers:
        await server.start()
    task = asyncio.create_task(probe.run(interval_s=0.01))
    try:
        await eventually(lambda: len(taken_up) >= 8, "eight probes taken up")
        # one in flight at a time, every method of every server in turn
        assert taken_up[:4] == [(0, ECHO), (0, "/toy.Toy/Other"), (1, ECHO), (1, "/toy.Toy/Other")] == taken_up[4:8]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for server in servers:
            await server.stop(None)
        probe.close()
