"""How calls get from grpc core to the event loop: `--grpc-intake N` requests for each method's
next call waiting in core (`CallIntake`, the default), and `--grpc-servers N` grpc.aio servers of
the same services on one port, in one process.

grpc.aio's server takes calls from grpc core one at a time per method: it asks core for the next
call, and only when that request completes (a hop through grpc's poller thread back to the event
loop) does it ask again, so it takes at most one call per method per event-loop turn. While the
loop is busy with the calls it already holds, new ones wait in core, before any handler, stage or
limit of the gateway sees them: at saturation on the 2-core machine most of a Recommend's latency
passed there (BENCHMARKS.md, "Request path", the `--grpc-intake 1` row: "before the handler").

N servers bound to the same port (SO_REUSEPORT) each ask core for their own next call, so the loop
takes up to N per turn; the kernel spreads new connections over the N listening sockets. They share
everything else: the servicers and their state, the interceptors (auth, the stream limit, the
drain), the health servicer. SO_REUSEPORT would also let another program bind the port, so unless
`--reuse-port` asks for exactly that, a port another socket holds is refused first (`refuse_taken`),
as one server alone refuses it.

`--grpc-intake N` (default 8) deepens each server's intake instead: for each method of the
Recommender service, N requests for the method's next call wait in core at once (`CallIntake`),
grpc.aio's own one and N - 1 more, each handing its call to the same dispatch grpc.aio's main
loop uses (the interceptors, the method's handler, cancellation from the client), so under load
several calls of one method enter the loop per turn, over one connection or many. That takes
grpc.aio internals (`cygrpc`'s `_MethodResolver`, `_handle_rpc`, `_schedule_rpc_coro`, `AioServer.
_request_registered_call`), read for the grpcio versions in `VERIFIED_GRPC`; on any other grpcio
the gateway logs why and keeps grpc.aio's own intake (`unsupported`), slower, never wrong.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Mapping, Sequence

import grpc

log = logging.getLogger("apron.intake")

# grpcio minor versions whose grpc/_cython/_cygrpc/aio/server.pyx.pxi was read for `CallIntake`: 1.84.0
# and 1.85.3 (the same main loop, `_handle_rpc` and `_schedule_rpc_coro`); 1.81 had no registered
# methods in grpc.aio at all
VERIFIED_GRPC = ((1, 84), (1, 85))
INTERNALS = ("_MethodResolver", "_handle_rpc", "_schedule_rpc_coro", "_RequestCallError")


def unsupported(version: str | None = None) -> str:
    """Why `CallIntake` cannot run on this grpcio ("" when it can)."""
    from grpc._cython import cygrpc

    version = grpc.__version__ if version is None else version
    try:
        release = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        release = ()
    if release not in VERIFIED_GRPC:
        known = ", ".join(f"{major}.{minor}" for major, minor in VERIFIED_GRPC)
        return f"grpcio {version}: its grpc.aio internals were read for {known} only"
    missing = [name for name in INTERNALS if not hasattr(cygrpc, name)]
    if not hasattr(cygrpc.AioServer, "_request_registered_call"):
        missing.append("AioServer._request_registered_call")
    return f"grpcio {version} lacks {', '.join(missing)}" if missing else ""


class CallIntake:
    """`depth - 1` more requests for each method's next call, beside grpc.aio's own one, on one
    server. Each call taken goes to grpc.aio's own dispatch, as its main loop's do: the server's
    interceptors, the method's handler, a client's cancellation or deadline."""

    def __init__(
        self,
        server: grpc.aio.Server,
        methods: Mapping[str, grpc.RpcMethodHandler],  # fully qualified ("/apron.v1.Recommender/Recommend")
        interceptors: Sequence[grpc.aio.ServerInterceptor],
        depth: int,
    ):
        from grpc._cython import cygrpc

        self._cygrpc = cygrpc
        self._core = server._server  # type: ignore[attr-defined]  # grpc.aio's cygrpc.AioServer
        # the methods are registered with core (servicer.add_service), so the resolver finds them there
        self._resolver = cygrpc._MethodResolver([], dict(methods))
        self._interceptors = tuple(interceptors)
        self._methods = list(methods)
        self._depth = depth
        self._takers: list[asyncio.Task[None]] = []
        self._calls: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly: these hold them
        self.taken = 0  # calls this intake took from core (grpc.aio's own intake took the rest)

    def start(self) -> None:
        """After the server's start: core refuses requests for calls before it."""
        for method in self._methods:
            for _ in range(self._depth - 1):
                taker = asyncio.create_task(self._take(method), name=f"apron-intake{method}")
                taker.add_done_callback(self._ended)
                self._takers.append(taker)

    async def stop(self) -> None:
        """After the server's stop: core fails the requests still waiting, which ends the takers; one
        whose failure has not reached the loop yet is cancelled (grpc's callback skips a cancelled
        future)."""
        for taker in self._takers:
            if not taker.done():
                taker.cancel()
        await asyncio.gather(*self._takers, return_exceptions=True)
        self._takers.clear()

    async def _take(self, method: str) -> None:
        cygrpc, core, loop = self._cygrpc, self._core, asyncio.get_running_loop()
        method_bytes = method.encode()
        while core.is_running():
            try:
                rpc_state = await core._request_registered_call(method_bytes)
            except cygrpc._RequestCallError:
                continue  # core failed the request (as it does when the server stops): ask again while serving
            self.taken += 1
            handling = cygrpc._handle_rpc(method, self._resolver, self._interceptors, rpc_state, loop, False)
            call = loop.create_task(cygrpc._schedule_rpc_coro(handling, rpc_state, loop, method), name="rpc_task")
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    def _ended(self, taker: asyncio.Task[None]) -> None:
        if not taker.cancelled() and taker.exception() is not None:  # grpc.aio's own intake goes on serving
            log.error("a gRPC call intake stopped: %r", taker.exception(), exc_info=taker.exception())


def call_intake(
    server: grpc.aio.Server,
    methods: Mapping[str, grpc.RpcMethodHandler],
    interceptors: Sequence[grpc.aio.ServerInterceptor],
    depth: int,
) -> CallIntake | None:
    """The deeper intake for `methods`, or None where grpc.aio's own one serves alone (depth 1, no
    registered methods, or a grpcio whose internals it was not written for: logged)."""
    if depth <= 1 or not methods:
        return None
    reason = unsupported()
    if reason:
        log.warning("--grpc-intake %d: %s; grpc.aio's own intake serves alone (one call per method per loop turn)", depth, reason)
        return None
    return CallIntake(server, methods, interceptors, depth)


class GrpcServers:
    """The gateway's grpc.aio servers (one or more on one port), started and stopped together, each
    with its deeper intake where there is one."""

    def __init__(self, servers: Sequence[tuple[grpc.aio.Server, CallIntake | None]]):
        if not servers:
            raise ValueError("GrpcServers needs at least one server")
        self.servers = [server for server, _ in servers]
        self.intakes = [intake for _, intake in servers if intake is not None]

    @property
    def first(self) -> grpc.aio.Server:
        return self.servers[0]

    async def start(self) -> None:
        for server in self.servers:
            await server.start()
        for intake in self.intakes:
            intake.start()

    async def stop(self, grace: float | None) -> None:
        """All at once: each refuses new calls from now and lets its in-flight ones finish for `grace`."""
        await asyncio.gather(*(server.stop(grace) for server in self.servers))
        await asyncio.gather(*(intake.stop() for intake in self.intakes))

    @property
    def taken(self) -> int:
        """Calls the deeper intakes took (0 without them)."""
        return sum(intake.taken for intake in self.intakes)

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
