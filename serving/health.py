"""What the gateway says about itself: liveness, readiness and its dependencies, one state behind
every way of asking (gRPC `grpc.health.v1`, HTTP `/healthz/*` on the metrics port, the gauge).

- **live** (`apron.live`, `/healthz/live`): the process answers. SERVING from the moment the gRPC
  server serves (the model versions loaded and warmed) until it stops; over HTTP the answer goes
  through the event loop, so a loop that no longer runs is not live. A liveness probe restarts
  only a process that cannot answer, never one whose dependency is down.
- **ready** (`apron.ready`, `/healthz/ready`, and the overall service `""` and `apron.v1.Recommender`
  that balancers and the client's health checking ask): Recommend can answer. The primary's
  warm-up inference succeeded, the inference backend answers (Triton's readiness; the in-process
  backends always do) and the gateway is not draining. Redis is NOT part of readiness: without it
  Recommend with a history still answers (computed uncached), and pulling every replica out of
  the Service because their shared Redis is down only turns a degraded service into no service.
- **dependencies** (`apron.redis`, `apron.inference`, and `apron_backend_up{backend=...}`): each
  watched dependency as it answers, the honest account of a degraded gateway (edits UNAVAILABLE
  while Redis is down) without taking it out of rotation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass

from grpc_health.v1 import health, health_pb2

from serving.metrics import Metrics
from serving.proto_gen.apron.v1 import recommender_pb2 as pb

LIVE = "apron.live"
READY = "apron.ready"
REDIS = "apron.redis"
INFERENCE = "apron.inference"
RECOMMENDER = pb.DESCRIPTOR.services_by_name["Recommender"].full_name  # "apron.v1.Recommender"
READINESS_SERVICES = ("", RECOMMENDER, READY)  # what a balancer or a client's health checking asks
DEPENDENCIES = {REDIS: "redis", INFERENCE: "inference"}  # service name -> apron_backend_up label
HTTP_PROBE_TIMEOUT_S = 2.0  # /healthz/*: the event loop must answer within this (probes allow 4 s)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class HealthState:
    """The facts; `live` and `ready` follow from them (pure)."""

    started: bool = False  # the gRPC server serves warmed model versions
    stopping: bool = False  # draining: nothing sets SERVING again
    inference_up: bool = True
    redis_up: bool | None = None  # None: not checked yet

    @property
    def live(self) -> bool:
        return self.started

    @property
    def ready(self) -> bool:
        return self.started and not self.stopping and self.inference_up


def statuses(state: HealthState) -> dict[str, int]:
    """Every health service name's status for `state` (pure)."""
    found = {LIVE: SERVING if state.live else NOT_SERVING}
    found.update({service: SERVING if state.ready else NOT_SERVING for service in READINESS_SERVICES})
    found[INFERENCE] = SERVING if state.started and state.inference_up else NOT_SERVING
    found[REDIS] = SERVING if state.redis_up else NOT_SERVING
    return found


class GatewayHealth:
    """The one owner of the gateway's health: changes go through `update`, which publishes the
    statuses to the gRPC health servicer and the `apron_backend_up` gauge."""

    def __init__(self, servicer: health.aio.HealthServicer, metrics: Metrics):
        self.servicer = servicer
        self.metrics = metrics
        self.state = HealthState()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def publish(self) -> None:
        """Every status as `state` says (at creation: all NOT_SERVING)."""
        self._loop = asyncio.get_running_loop()
        for service, status in statuses(self.state).items():
            await self.servicer.set(service, status)
        up = {REDIS: bool(self.state.redis_up), INFERENCE: self.state.inference_up}
        for service, label in DEPENDENCIES.items():
            self.metrics.backend_up.labels(label).set(1 if up[service] else 0)

    async def update(self, **facts: bool) -> None:
        """Change facts of the state (`started=True`, `redis_up=False`, ...) and publish. After
        `stopping`, readiness stays NOT_SERVING whatever else changes."""
        for name, value in facts.items():
            if not hasattr(self.state, name):
                raise AttributeError(f"no health fact {name!r}")
            setattr(self.state, name, value)
        await self.publish()

    async def redis_changed(self, up: bool) -> None:  # RedisWatch's on_change
        await self.update(redis_up=up)

    async def inference_changed(self, up: bool) -> None:  # the backend watch's on_change
        await self.update(inference_up=up)

    # -- HTTP probes (called from the metrics server's threads)
    def probe(self, name: str) -> bool:
        """`live` / `ready` as the event loop sees it: False when the loop does not answer within
        HTTP_PROBE_TIMEOUT_S (a blocked or dead loop is neither live nor ready)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False

        async def read() -> bool:
            return bool(getattr(self.state, name))

        try:
            answer = asyncio.run_coroutine_threadsafe(read(), loop)
        except RuntimeError:  # the loop closed meanwhile
            return False
        try:
            return answer.result(HTTP_PROBE_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            answer.cancel()  # probes of a stuck loop do not pile up in it
            return False

    def http_probes(self) -> dict[str, Callable[[], bool]]:
        return {"live": lambda: self.probe("live"), "ready": lambda: self.probe("ready")}
