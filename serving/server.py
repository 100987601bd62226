"""Building, starting and stopping the gateway.

    server, port = await create_server(config)   # binds the port (0: a free one), nothing runs yet
    await server.start()                         # backend ready, gRPC serving, /metrics up, health SERVING
    await server.stop(grace)                     # health NOT_SERVING, drain in-flight calls, release all

`run_until_signalled(config)` is one `apron serve` process: it runs until SIGTERM / SIGINT and then
stops gracefully; `serving.workers.serve(config)` runs it, or with `--workers N` N such gateways in
processes sharing the port (the workers import this module, never the other way round).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

from serving import auth, limits, tls
from serving.backends import create_scorer
from serving.backends.base import Scorer
from serving.cache import RedisStore, migrate_legacy_edits
from serving.catalog import ServedModel
from serving.config import ServingConfig
from serving.metrics import Metrics
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
from serving.redis_process import RedisProcess
from serving.redis_watch import RedisWatch
from serving.servicer import RecommenderServicer

log = logging.getLogger("apron.gateway")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name  # "apron.v1.Recommender"


def load_model(config: ServingConfig) -> ServedModel:
    """The repository's model (`apron serve` builds the demo model there first when it holds none:
    serving/cli.py, so this library never imports the training stack)."""
    return ServedModel.load(config.repository, config.model_version)


@dataclass
class ApronServer:
    config: ServingConfig
    grpc_server: grpc.aio.Server
    port: int
    model: ServedModel
    scorer: Scorer
    redis: Redis | RedisCluster
    metrics: Metrics
    health: health.aio.HealthServicer
    redis_process: RedisProcess | None = None
    service_token: str | None = None  # reliability: printed for the development key only
    metrics_port: int | None = None
    redis_watch: RedisWatch | None = None
    _watch_task: asyncio.Task | None = None

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def start(self) -> None:
        try:  # reliability: start without Redis; Recommend answers uncached until it is back
            await self.redis.ping()
            if not self.config.redis_cluster:
                moved = await migrate_legacy_edits(self.redis)
                if moved:
                    log.info("stored edits moved to hash-tagged keys", extra={"fields": {"users": moved}})
        except (RedisConnectionError, RedisTimeoutError, RedisClusterException) as error:
            log.warning("Redis unreachable at start (%s): profiles are computed uncached, EditProfile "
                        "answers UNAVAILABLE and health NOT_SERVING until it is back", error)
        await self.scorer.start()
        await self.grpc_server.start()
        if self.config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(self.config.metrics_port, self.config.host)
        self.metrics.model_info.labels(str(self.model.version), self.scorer.backend).set(1)
        # reliability: health follows Redis; the private redis-server is restarted when it dies
        self.redis_watch = RedisWatch(self.redis, self.redis_process, self._set_health)
        await self.redis_watch.check()
        self._watch_task = asyncio.create_task(self.redis_watch.run(), name="apron-redis-watch")
        log.info(
            "serving",
            extra={
                "fields": {
                    "port": self.port,
                    "metrics_port": self.metrics_port,
                    "model_version": self.model.version,
                    "backend": self.scorer.backend,
                    "redis": "private redis-server" if self.redis_process else self.config.redis_url,
                }
            },
        )

    async def stop(self, grace: float | None = None, drain_delay_s: float = 0.0) -> None:
        """Report NOT_SERVING, keep serving for `drain_delay_s` (clients move away), let in-flight
        calls finish for `grace` seconds (new ones are refused), then close the backend, Redis and
        the metrics endpoint."""
        grace = self.config.shutdown_grace_s if grace is None else grace
        if self._watch_task is not None and self.redis_watch is not None:  # first: nothing may set
            await self.redis_watch.close(self._watch_task)  # SERVING again, or restart Redis
            self._watch_task = None
        await self.health.enter_graceful_shutdown()
        if drain_delay_s:  # still serving, NOT_SERVING: health-checking clients and balancers move away
            await asyncio.sleep(drain_delay_s)
        await self.grpc_server.stop(grace)
        await self.scorer.close()
        await self.redis.aclose()
        if self.redis_process is not None:
            self.redis_process.stop()
        self.metrics.shutdown()
        log.info("stopped", extra={"fields": {"port": self.port}})

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


async def create_server(
    config: ServingConfig,
    *,
    model: ServedModel | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[ApronServer, int]:
    """Everything the gateway needs, wired and bound to `config.port` (0: a free port)."""
    if model is None:
        model = await asyncio.to_thread(load_model, config)
    redis_process = None
    redis_url = config.redis_url
    if not redis_url:  # the embedded default: a private redis-server for this process
        redis_process = RedisProcess(data_dir=config.redis_dir or None, aof=config.redis_aof).start()
        redis_url = redis_process.url
    try:
        metrics = Metrics()
        scorer = create_scorer(config, model, metrics)
        # reliability: fail fast when Redis is down (redis-py's default retries for ~3 s per command)
        client = RedisCluster if config.redis_cluster else Redis  # the cluster client finds the other nodes itself
        redis = client.from_url(
            redis_url, decode_responses=False, socket_connect_timeout=1.0, socket_timeout=2.0,
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
        )  # fmt: skip
        servicer = RecommenderServicer(config, model, scorer, RedisStore(redis, config.cache_ttl_s), metrics)
        options = [
            *limits.message_size_options(config.max_message_bytes),
            # --workers: every worker listens on the port; one gateway alone refuses a taken port
            ("grpc.so_reuseport", 1 if config.workers > 1 or config.reuse_port else 0),
        ]
        security = auth.setup(config)  # reliability: token check (none with --no-auth)
        server = grpc.aio.server(interceptors=[*security.interceptors, *interceptors], options=options)
        pb_grpc.add_RecommenderServicer_to_server(servicer, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for service in ("", SERVICE_NAME):  # NOT_SERVING until start() has the backend ready
            await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
        port = tls.bind(server, f"{config.host}:{config.port}", config)  # reliability: TLS when configured
        if port == 0:
            raise OSError(f"cannot bind {config.host}:{config.port}")
    except BaseException:
        if redis_process is not None:
            redis_process.stop()
        raise
    gateway = ApronServer(
        config, server, port, model, scorer, redis, metrics, health_servicer, redis_process, security.service_token
    )
    return gateway, port


def apron_command() -> str:
    """The `apron` command as this process was started (`.venv/bin/apron` under `make serve`), so
    the printed lines run as they are from the same directory; `apron` when started otherwise."""
    argv0 = sys.argv[0] if sys.argv else ""
    return shlex.quote(argv0) if Path(argv0).name == "apron" else "apron"


def try_it_lines(
    address: str,
    tag_names: list[str],
    prototype_item_ids: list[str],
    token: str | None,
    auth: bool,
    apron: str = "apron",
    tls: bool = False,
) -> list[str]:
    """Commands that work exactly as printed against the gateway at `address`: a list for a
    history of the three most used tags' prototype items, an edit that removes the first of
    those tags, and the list again, which the edit changes (tests/serving/test_demo.py runs them).
    `apron client` finds a token itself (APRON_TOKEN, else one minted from the development secret);
    grpcurl is given the development `token` when there is one, else $APRON_TOKEN. With `tls` the
    lines trust the CA in $APRON_TLS_CA (the gateway knows its certificate, not who signed it)."""
    history = " ".join(f"--history {item}" for item in prototype_item_ids[:3])
    tag = tag_names[0]
    tag_arg = shlex.quote(tag)  # "female vocalists" is one shell word
    header = ""
    if auth:
        header = f'-H "authorization: Bearer {token if token else "$APRON_TOKEN"}" '
    client = f"{apron} client --target {address}" + (' --tls-ca "$APRON_TLS_CA"' if tls else "")
    transport = '-cacert "$APRON_TLS_CA"' if tls else "-plaintext"
    return [
        f"{client} prototypes",
        f"{client} recommend --user alice {history} --k 10",
        f"{client} edit --user alice --scale {tag_arg}=0",
        f"{client} recommend --user alice --k 10",
        f"grpcurl {transport} {header}-d '{{\"user_id\": \"alice\", \"k\": 5}}' {address} apron.v1.Recommender/Recommend",
    ]


def usage_hint(
    config: ServingConfig, port: int, metrics_port: int | None, model: ServedModel, backend: str, service_token: str | None
) -> str:
    """How to call the running gateway, with real ids from its catalog."""
    meta = model.metadata
    address = f"{config.host}:{port}"
    metrics = f"http://{config.host}:{metrics_port}/metrics" if metrics_port else "off"
    tls = bool(config.tls_cert)
    lines = try_it_lines(address, meta.tag_names, meta.prototype_item_ids, service_token, config.auth, apron_command(), tls)
    if tls:
        lines.insert(0, "export APRON_TLS_CA=<the PEM CA that signed --tls-cert>   # the gateway speaks TLS")
    return "\n".join(
        [
            f"APRON gateway on {address} (model version {meta.model_version}, {backend} backend, "
            f"{len(meta.tag_names)} prototypes, {meta.n_items} items); metrics: {metrics}",
            "try it:",
            *(f"  {line}" for line in lines),
            "stop with Ctrl-C (in-flight calls are drained)",
        ]
    )


async def run_until_signalled(config: ServingConfig, on_serving: Callable[[], None] | None = None) -> None:
    """One gateway until SIGTERM / SIGINT, then a graceful stop. Without `on_serving` it prints the
    banner once serving (`apron serve`); a `--workers` process calls `on_serving` instead."""
    server, _ = await create_server(config)
    # Handlers before the banner: a SIGTERM sent as soon as it is printed must still drain and
    # stop the private redis-server, not kill the process with it orphaned.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await server.start()
    if on_serving is not None:
        on_serving()
    else:
        banner = usage_hint(config, server.port, server.metrics_port, server.model, server.scorer.backend, server.service_token)
        print(banner, flush=True)
        if server.service_token:  # reliability: the quick start works with auth on
            print(f"development service token (any user; `apron token --sub USER` mints more):\n  {server.service_token}", flush=True)
    waiter = asyncio.create_task(server.wait_for_termination())
    await asyncio.wait([waiter, asyncio.create_task(stopping.wait())], return_when=asyncio.FIRST_COMPLETED)
    log.info("shutting down: draining in-flight calls", extra={"fields": {"grace_s": config.shutdown_grace_s}})
    await server.stop(drain_delay_s=config.drain_delay_s)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
