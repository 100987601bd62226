"""The gateway measuring its own queue: a probe call, sent to itself every `interval_s` over a
private Unix socket, is a call of one of the Recommender's methods, so it waits in that method's
own queue in grpc core, where its calls wait (each method registered with core has one, which the
deeper intake drains, serving/intake.py), and reports how long it waited when the interceptor
takes it up (`limits.QueueDelay`). The probes take turns over the methods (and the servers of
`--grpc-servers`); the estimate is the longest of their last waits. The boundary's admission sheds
calls while that wait is over `--max-queue-delay-ms`, when set (`limits.ConcurrencyLimit`; off by
default).

(It used to wait in core's one queue of unregistered calls, every method's calls with it; that
kept the methods out of the deeper intake, and turning the limit on cost about a third of the
gateway's throughput before it shed a single call: `loadtests/shedding.py`, RELIABILITY.md.)

Why a probe: grpc.aio takes calls from grpc core one per method per event-loop turn, so under a
burst the calls wait in core, where neither the concurrency limit nor the process can count them;
only a call that waits there itself can tell how long the wait is.

The probe carries a random per-process key: a call from outside, with any other key or none, is
the method's own call and cannot move the estimate. The socket lives in a private temporary directory
(mode 0700): only this user can connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc

from serving.limits import PROBE_INTERVAL_S, QueueDelay

KEY = "apron-queue-probe"
INTERVAL_S = PROBE_INTERVAL_S  # ~20 trivial calls a second; the shedding updates at the same pace


async def _pong(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b""  # the probe's (empty) body, never parsed: no handler of the method runs


PONG = grpc.unary_unary_rpc_method_handler(_pong)


class QueueProbe(grpc.aio.ServerInterceptor):
    """Installed first: takes the probe calls (recording their wait), passes every other call on."""

    def __init__(self, methods: Sequence[str], delay: QueueDelay | None = None):
        if not methods:
            raise ValueError("the queue probe needs the methods whose queues it waits in")
        self.methods = tuple(methods)  # fully qualified: "/apron.v1.Recommender/Recommend"
        self.delay = delay or QueueDelay()
        self.key = secrets.token_hex(16)
        self._dir = Path(tempfile.mkdtemp(prefix="apron-probe-"))  # 0700
        self.addresses: list[str] = []  # one private socket per bound server (`bind`)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if handler_call_details.method in self.methods and (KEY, self.key) in (handler_call_details.invocation_metadata or ()):
            self.delay.arrived()
            return PONG
        return await continuation(handler_call_details)

    def bind(self, server: grpc.aio.Server) -> None:
        """Listen on a private socket of this server's own (plaintext: only this user can reach it).
        With --grpc-servers N each server has its own queues in core (serving/intake.py): each gets a
        socket, the probes take turns over every (server, method) and the estimate is the longest of
        their last waits."""
        address = f"unix:{self._dir / f'probe-{len(self.addresses)}.sock'}"
        if server.add_insecure_port(address) == 0:
            raise OSError(f"cannot bind the queue probe's socket {address}")
        self.addresses.append(address)
        self.delay.track(len(self.addresses) * len(self.methods))

    async def run(self, interval_s: float = INTERVAL_S) -> None:
        """Probe until cancelled: one probe in flight at a time, at most one per `interval_s`, every
        method of every bound server in turn."""
        metadata = ((KEY, self.key),)
        async with contextlib.AsyncExitStack() as stack:
            pings = []
            for address in self.addresses:
                channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
                pings += [channel.unary_unary(method, request_serializer=None, response_deserializer=None) for method in self.methods]
            for ping in itertools.cycle(pings):
                self.delay.sent()
                try:
                    await ping(b"", metadata=metadata, timeout=60)
                except grpc.aio.AioRpcError:  # no measurement (the server stopping): never shed on a guess
                    self.delay.forget()
                # one probe per interval; after a slow one at once: the end of a queue is seen as soon as possible
                await asyncio.sleep(max(0.0, interval_s - self.delay.last_s))

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
