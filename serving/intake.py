"""How calls get from grpc core to the event loop: `--grpc-servers N` grpc.aio servers of the same
services on one port, in one process.

grpc.aio's server takes calls from grpc core one at a time per method: it asks core for the next
call, and only when that request completes (a hop through grpc's poller thread back to the event
loop) does it ask again, so it takes at most one call per method per event-loop turn. While the
loop is busy with the calls it already holds, new ones wait in core, before any handler, stage or
limit of the gateway sees them: at saturation on the 2-core machine, about 85% of a Recommend's
latency passed there (BENCHMARKS.md, "Request path": "before the handler").

N servers bound to the same port (SO_REUSEPORT) each ask core for their own next call, so the loop
takes up to N per turn; the kernel spreads new connections over the N listening sockets. They share
everything else: the servicers and their state, the interceptors (auth, the stream limit, the
drain), the health servicer. SO_REUSEPORT would also let another program bind the port, so unless
`--reuse-port` asks for exactly that, a port another socket holds is refused first (`refuse_taken`),
as one server alone refuses it.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Sequence

import grpc


class GrpcServers:
    """The gateway's grpc.aio servers (one or more on one port), started and stopped together."""

    def __init__(self, servers: Sequence[grpc.aio.Server]):
        if not servers:
            raise ValueError("GrpcServers needs at least one server")
        self.servers = list(servers)

    @property
    def first(self) -> grpc.aio.Server:
        return self.servers[0]

    async def start(self) -> None:
        for server in self.servers:
            await server.start()

    async def stop(self, grace: float | None) -> None:
        """All at once: each refuses new calls from now and lets its in-flight ones finish for `grace`."""
        await asyncio.gather(*(server.stop(grace) for server in self.servers))

    async def wait_for_termination(self) -> None:
        await asyncio.gather(*(server.wait_for_termination() for server in self.servers))


def refuse_taken(host: str, port: int) -> None:
    """OSError when `host:port` is bound by another socket (a listening one, or one bound without
    SO_REUSEPORT): what a server without SO_REUSEPORT would report. Port 0 (any free port) passes."""
    if port == 0:
        return
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError:  # no such address family here (IPv6 off): grpc's own bind decides
        return
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc binds: TIME_WAIT is no owner
        try:
            probe.bind((address, port))
        except OSError as error:  # a taken port, or a host that is not an address of this machine
            why = "the port is taken" if error.errno == errno.EADDRINUSE else "not an address to listen on here"
            raise OSError(f"cannot bind {host}:{port}: {why} ({error.strerror or error})") from error
