"""The end of a graceful stop: calls still running when the grace runs out are cancelled by the
gateway itself, each with trailing metadata `apron-draining: 1`, so a client knows its call was
cut by a draining server (not by its own deadline or a network fault) and may retry it elsewhere
(`serving/client.py` retries CANCELLED only with this signal).

grpc's own `server.stop(grace)` cancels what is left at the end of the grace with a bare
CANCELLED (an RST_STREAM carries no trailers), so the gateway ends them a moment before:

    drain = Drain()                                   # its interceptor goes on the gRPC server
    stopping = asyncio.create_task(grpc_server.stop(grace))   # new calls refused from here
    await drain.finish(grace)                         # wait for in-flight calls, cancel the rest with the signal
    await stopping

Only the unary calls of apron's own services are tracked (health and reflection are not: a health
watch is not work a client would retry). A call racing the stop itself, refused by grpc before any
handler ran, still gets grpc's bare CANCELLED or UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

log = logging.getLogger("apron.gateway")
T = TypeVar("T")

DRAINING_KEY = "apron-draining"  # trailing metadata of a call the draining server cancelled
DRAINING_MESSAGE = "the gateway is shutting down and cancelled this call: retry it (another replica answers)"
MARGIN_S = 0.5  # cancel this long before grpc's own end of the grace (at most half the grace)
TRACKED_PREFIX = "/apron."  # apron.v1.Recommender, apron.v1.ModelAdmin


def cut_at(grace_s: float) -> float:
    """Seconds into the grace at which the remaining calls are cancelled with the signal (pure)."""
    return max(0.0, grace_s - min(MARGIN_S, grace_s / 2))


class Drain:
    def __init__(self) -> None:
        self.in_flight: set[asyncio.Task[Any]] = set()
        self._cut: set[asyncio.Task[Any]] = set()  # cancelled by finish(): they answer with the signal
        self._idle = asyncio.Event()
        self._idle.set()
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}  # per method, built on its first call

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _DrainInterceptor(self)

    async def finish(self, grace_s: float) -> int:
        """Wait (at most `cut_at(grace_s)`) for the calls in flight to end, then cancel the rest,
        each answering CANCELLED with the signal; how many were cancelled."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), cut_at(grace_s))
        remaining = [task for task in self.in_flight if not task.done()]
        for task in remaining:
            self._cut.add(task)
            task.cancel()
        if remaining:
            log.warning("grace over: %d calls still in flight cancelled (trailer %s)", len(remaining), DRAINING_KEY)
        return len(remaining)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` (the servicer's, the same for every call of `method`) with its calls tracked."""
        found = self._wrapped.get(method)
        if found is None:
            behavior = self._tracked(handler.unary_unary)
            found = grpc.unary_unary_rpc_method_handler(
                behavior, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
            )
            self._wrapped[method] = found
        return found

    async def run(self, call: Callable[[], Awaitable[T]], when_cut: Callable[[], Awaitable[T]]) -> T:
        """`call()` as a call in flight (the current task): if `finish` cancels it, what `when_cut()`
        answers instead (the signal, in the transport's terms: gRPC here, HTTP/JSON in serving/http.py)."""
        task = asyncio.current_task()
        assert task is not None
        self.in_flight.add(task)
        self._idle.clear()
        try:
            return await call()
        except asyncio.CancelledError:
            if task not in self._cut:
                raise
            task.uncancel()  # our own cancellation, answered below: the task goes on to send it
            return await when_cut()
        finally:
            self.in_flight.discard(task)
            self._cut.discard(task)
            if not self.in_flight:
                self._idle.set()

    def _tracked(self, behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Callable:
        async def tracked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async def cut() -> Any:
                context.set_trailing_metadata(((DRAINING_KEY, "1"),))
                await context.abort(grpc.StatusCode.CANCELLED, DRAINING_MESSAGE)

            return await self.run(lambda: behavior(request, context), cut)

        return tracked


class _DrainInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, drain: Drain):
        self.drain = drain

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler.request_streaming
            or handler.response_streaming
            or not handler_call_details.method.startswith(TRACKED_PREFIX)
        ):
            return handler
        return self.drain.wrap(handler_call_details.method, handler)
