"""A bound on the long-lived streams anyone may open: `grpc.health.v1.Health/Watch` and reflection
need no token (load balancers, grpcurl), and each open stream holds a task, a grpc call and its
buffers for as long as the caller keeps it (12,500 watches took the gateway up by 200 MB).

`StreamLimit` admits at most `--max-open-streams` response-streaming calls at once; the next is
answered RESOURCE_EXHAUSTED with `retry-after-ms` at once, logged and counted in
`apron_rpc_rejections_total{method}` like the boundary's refusals. Unary calls pass untouched (the
boundary admits them: `limits.ConcurrencyLimit`). Idle and old connections are bounded by grpc's own
options (`limits.connection_options`).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from serving.errors import RETRY_AFTER_KEY
from serving.metrics import Metrics

log = logging.getLogger("apron.gateway")
RETRY_AFTER_S = 1.0  # a refused watcher: an open stream rarely ends sooner


class StreamLimit(grpc.aio.ServerInterceptor):
    def __init__(self, limit: int, metrics: Metrics):
        if limit < 1:
            raise ValueError(f"a stream limit must be at least 1, got {limit}")
        self.limit = limit
        self.metrics = metrics
        self.open = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not handler.response_streaming:
            return handler
        method = handler_call_details.method.rsplit("/", 2)
        name = f"{method[-2].rsplit('.', 1)[-1]}.{method[-1]}" if len(method) == 3 else handler_call_details.method
        if self.open >= self.limit:
            return self._refusal(handler, name)
        return self._counted(handler)

    def _counted(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
        if inspect.isasyncgenfunction(behavior):

            async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
                self.open += 1
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    self.open -= 1

        elif inspect.iscoroutinefunction(behavior):  # writes with context.write (Health.Watch)

            async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:  # type: ignore[misc]
                self.open += 1
                try:
                    return await behavior(request, context)
                finally:
                    self.open -= 1

        else:  # a synchronous generator runs in grpc's thread pool, which bounds it
            return handler
        codecs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(counted, **codecs)
        return grpc.unary_stream_rpc_method_handler(counted, **codecs)

    def _refusal(self, handler: grpc.RpcMethodHandler, name: str) -> grpc.RpcMethodHandler:
        message = (
            f"the gateway has {self.limit} streams open (health watches, reflection: --max-open-streams); "
            f"retry in {RETRY_AFTER_S:g} s"
        )

        async def refuse(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            self.metrics.for_method(name).rejections(code).inc()
            log.info("rpc", extra={"fields": {"method": name, "code": code.name, "error": message}})
            await context.abort(code, message, ((RETRY_AFTER_KEY, str(math.ceil(RETRY_AFTER_S * 1000))),))

        # request-streaming whatever the method: the request is never read
        return grpc.stream_stream_rpc_method_handler(refuse, response_serializer=handler.response_serializer)
