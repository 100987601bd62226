"""Building, starting and stopping one gateway (nothing process-wide: that is serving/runtime.py).

    server, port = await create_server(config)   # binds the ports (0: a free one), nothing runs yet
    await server.start()                         # model versions loaded and warmed, gRPC (+ HTTP) serving, /metrics up
    await server.stop(grace)                     # readiness NOT_SERVING, drain in-flight calls, release all

Health (liveness, readiness, dependencies) is serving/health.py's; this module feeds it the facts.

`serving.runtime.run_gateway` runs one until SIGTERM / SIGINT (SIGHUP: `server.models.reload()`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
import sys
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

from export.metadata import ExportMetadata
from serving import limits, tls
from serving.admin import ADMIN_SERVICE_NAME, ModelAdminServicer
from serving.backends import create_scorer
from serving.backends.base import Scorer
from serving.cache import RedisStore, migrate_legacy_edits
from serving.catalog import ServedModel
from serving.config import ServingConfig
from serving.control_page import page_routes
from serving.drain import Drain
from serving.front_refusals import FrontRefusals, open_front_refusals
from serving.health import RECOMMENDER, GatewayHealth
from serving.http import HttpServer, build_app, rpc_path
from serving.intake import CallIntake, GrpcServers, call_intake, refuse_taken
from serving.metrics import Metrics
from serving.models import ModelLoadError, ModelSet, Routing, available_versions
from serving.proto_gen.apron.v1 import admin_pb2
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.queue_probe import QueueProbe
from serving.redis_watch import RedisWatch, Watch
from serving.resources import Resources, Serving
from serving.servicer import RecommenderServicer, add_service
from serving.streams import StreamLimit

log = logging.getLogger("apron.gateway")
# the one-time move of stored edits to hash-tagged keys at start (a SCAN of every edit key): given up
# beyond this (it is safe to interrupt, and runs again at the next start)
MIGRATE_TIMEOUT_S = 60.0
SERVICE_NAME = RECOMMENDER  # "apron.v1.Recommender"
BACKEND_WATCH_INTERVAL_S = 1.0  # the inference backend's readiness (Triton: is_model_ready) is asked this often


def load_model(config: ServingConfig) -> ServedModel:
    """The repository's model (`apron serve` builds the demo model there first when it holds none:
    serving/cli.py, so this library never imports the training stack)."""
    return ServedModel.load(config.repository, config.model_version)


SECRET_QUERY_KEYS = frozenset({"password"})  # redis-py reads a password from the query string too


def redacted_url(url: str) -> str:
    """`url` with its password masked, for logs (a Redis URL may carry one: rediss://:PASSWORD@host,
    or redis://host?password=PASSWORD)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None:
        netloc = parts.netloc.rpartition("@")[2]
        user = f"{parts.username}:" if parts.username else ":"
        parts = parts._replace(netloc=f"{user}***@{netloc}")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if any(key.lower() in SECRET_QUERY_KEYS for key, _ in query):
        masked = [(key, "***" if key.lower() in SECRET_QUERY_KEYS else value) for key, value in query]
        parts = parts._replace(query=urllib.parse.urlencode(masked, safe="/*"))
    return urllib.parse.urlunsplit(parts)


def batch_settings_warnings(config: ServingConfig, metadata: ExportMetadata) -> list[str]:
    """Batch settings of the gateway and of its repository that cannot all hold at once, each said
    in a line at start-up (the defaults themselves are one per fact: serving.config's
    DEFAULT_MAX_BATCH_SIZE / DEFAULT_MAX_QUEUE for the gateway, export.triton_repository's for Triton,
    recorded in the metadata as `triton_max_batch_size`)."""
    found = []
    limit = config.max_concurrent_rpcs
    if limit and config.max_batch_size > limit:
        found.append(
            f"--max-batch-size {config.max_batch_size} exceeds --max-concurrent-rpcs {limit}: the micro-batcher never "
            f"sees more than {limit} requests at once"
        )
    if config.max_queue < config.max_batch_size:
        found.append(f"--max-queue {config.max_queue} is below --max-batch-size {config.max_batch_size}: a full batch can never queue")
    triton = metadata.triton_max_batch_size
    if config.backend == "triton" and triton and limit and limit < triton:
        found.append(
            f"--max-concurrent-rpcs {limit} is below Triton's max_batch_size {triton} (apron_metadata.json): one gateway "
            "never fills Triton's batches"
        )
    if config.backend != "triton" and triton and config.max_batch_size > triton:
        found.append(
            f"--max-batch-size {config.max_batch_size} exceeds the max_batch_size {triton} this repository was exported "
            f"with for Triton: export with --max-batch-size {config.max_batch_size} to batch alike on both"
        )
    return found


def initial_routing(config: ServingConfig, repository_versions: Sequence[int]) -> Routing:
    """What a gateway serves at start: `--model-version` pinned, else the newest version; plus the
    `--ab-version` split."""
    if config.model_version:
        primary = config.model_version
    elif repository_versions:
        primary = max(repository_versions)
    else:
        raise ModelLoadError(
            f"{config.repository} holds no model version: run `apron export CHECKPOINT --repository {config.repository}`"
        )
    try:
        return Routing(primary, config.ab_version, config.ab_share, pinned=bool(config.model_version))
    except ValueError as error:  # unpinned, the newest version is --ab-version's (pinned, config refuses it)
        raise ModelLoadError(f"{error} (the newest version in {config.repository} is {primary}; pin --model-version)") from error


@dataclass
class ApronServer:
    config: ServingConfig
    grpc_server: GrpcServers  # --grpc-servers of them on the port (serving/intake.py)
    port: int
    models: ModelSet
    redis: Redis | RedisCluster
    metrics: Metrics
    health: health.aio.HealthServicer
    status: GatewayHealth  # what `health` (and /healthz/*, apron_backend_up) says, and why
    resources: Resources
    owns_resources: bool  # a test's gateway opened its own; `apron serve`'s belong to the runtime
    metrics_port: int | None = None
    front_refusals: FrontRefusals | None = None  # --front-refusals-port: the front's refusals, counted on /metrics
    http: HttpServer | None = None  # --http-port: the same calls as HTTP/JSON (serving/http.py)
    redis_watch: RedisWatch | None = None
    queue_probe: QueueProbe | None = None  # measures the wait before the loop takes a call up (admission)
    drain: Drain = field(default_factory=Drain)  # its interceptor is on grpc_server: calls cut at the grace's end say so
    _watches: list[tuple[Watch, asyncio.Task]] = field(default_factory=list)
    _tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def model(self) -> ServedModel:
        """The primary version's model (an A/B candidate answers only its share of users)."""
        return self.models.primary.model

    @property
    def scorer(self) -> Scorer:
        return self.models.primary.scorer

    @property
    def service_token(self) -> str | None:  # reliability: minted for the development key only
        return self.resources.security.service_token

    async def start(self) -> None:
        try:  # reliability: start without Redis; Recommend answers uncached until it is back
            # the client has no socket timeout: a hung Redis must not hang the start
            async with asyncio.timeout(self.config.redis_timeout_s):
                await self.redis.ping()
                if self.models.store.pipe is not None:  # the version reads' own connection (serving/redis_pipe.py)
                    await self.models.store.pipe.connect()
            if not self.config.redis_cluster:
                async with asyncio.timeout(MIGRATE_TIMEOUT_S):
                    moved = await migrate_legacy_edits(self.redis)
                if moved:
                    log.info("stored edits moved to hash-tagged keys", extra={"fields": {"users": moved}})
        except (RedisConnectionError, RedisTimeoutError, RedisClusterException, TimeoutError) as error:
            log.warning("Redis unreachable at start (%s): profiles are computed uncached, EditProfile "
                        "answers UNAVAILABLE and health service apron.redis NOT_SERVING until it is back",
                        error or "no answer in time")
        versions = await asyncio.to_thread(available_versions, self.config.repository)
        await self.models.apply(initial_routing(self.config, versions))  # loaded and warmed before serving
        for warning in batch_settings_warnings(self.config, self.model.metadata):
            log.warning("batch settings: %s", warning)
        await self.grpc_server.start()
        if self.http is not None:
            await self.http.start()
        if self.config.metrics_port >= 0:
            self.front_refusals = open_front_refusals(self.config.front_refusals_host or self.config.host, self.config.front_refusals_port, self.metrics.registry)
            self.metrics_port = self.metrics.serve(self.config.metrics_port, self.config.host, self.status.http_probes())
        # reliability: the dependencies' health is watched (the runtime restarts a private redis-server that died);
        # readiness follows the inference backend, not Redis (serving/health.py); while Redis is known down
        # the store skips it at once (`on_check`)
        self.redis_watch = RedisWatch(
            self.redis, self.status.redis_changed, on_check=self.models.store.mark, timeout_s=self.config.redis_timeout_s
        )
        backend_watch = Watch(
            f"the inference backend ({self.config.backend})", self.models.healthy, self.status.inference_changed,
            BACKEND_WATCH_INTERVAL_S, "readiness NOT_SERVING until it does", log,
        )  # fmt: skip
        for name, watch in (("apron-redis-watch", self.redis_watch), ("apron-backend-watch", backend_watch)):
            await watch.check()
            self._watches.append((watch, asyncio.create_task(watch.run(), name=name)))
        if self.queue_probe is not None:
            self._tasks.append(asyncio.create_task(self.queue_probe.run(), name="apron-queue-probe"))
        await self.status.update(started=True)  # live; ready unless the backend does not answer
        if self.config.watch_repository:
            self._tasks.append(asyncio.create_task(self.models.watch(self.config.watch_interval_s), name="apron-repository-watch"))
        log.info(
            "serving",
            extra={
                "fields": {
                    "port": self.port,
                    "metrics_port": self.metrics_port,
                    "front_refusals_port": self.front_refusals.port if self.front_refusals is not None else None,
                    "http_port": self.http_port,
                    "model_version": self.model.version,
                    "backend": self.scorer.backend,
                    # the exported graphs' (fp32 | fp16 | int8: `apron export --int8`); --backend torch reads fp32 weights
                    "graph_precision": self.model.metadata.precision,
                    "threads": self.scorer.threads,
                    # the process's (`apron serve` sets --gil-switch-interval-ms; an in-process server leaves Python's)
                    "gil_switch_interval_ms": round(sys.getswitchinterval() * 1e3, 3),
                    "gc_gen0_threshold": gc.get_threshold()[0],  # likewise (--gc-gen0-threshold)
                    "redis": "private redis-server" if self.resources.redis_process else redacted_url(self.config.redis_url),
                }
            },
        )

    async def stop(self, grace: float | None = None, drain_delay_s: float = 0.0) -> None:
        """Report NOT_SERVING, keep serving for `drain_delay_s` (clients move away), let in-flight
        calls finish for `grace` seconds (new ones are refused), then close the backend, Redis and
        the metrics endpoint."""
        grace = self.config.shutdown_grace_s if grace is None else grace
        for watch, task in self._watches:  # first: nothing may set SERVING again
            await watch.close(task)
        self._watches.clear()
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        # readiness NOT_SERVING, liveness still SERVING: the process answers while it drains
        await self.status.update(stopping=True)
        if drain_delay_s:  # still serving, not ready: health-checking clients and balancers move away
            await asyncio.sleep(drain_delay_s)
        stopping = [asyncio.create_task(self.grpc_server.stop(grace))]  # new calls refused from here
        if self.http is not None:  # the HTTP port drains beside it (its calls are in the same drain)
            stopping.append(asyncio.create_task(self.http.stop(grace)))
        await self.drain.finish(grace)  # in-flight calls finish; those left at the end: CANCELLED + apron-draining
        await asyncio.gather(*stopping)
        if self.queue_probe is not None:
            self.queue_probe.close()
        await self.models.close()
        await self.models.store.aclose()  # its client is self.redis
        if self.owns_resources:
            self.resources.close()
        self.metrics.shutdown()
        if self.front_refusals is not None:
            self.front_refusals.close()
        log.info("stopped", extra={"fields": {"port": self.port}})

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()

    def serving_info(self) -> Serving:
        meta = self.model.metadata
        return Serving(
            self.config, self.port, self.metrics_port, meta.model_version, meta.tag_names, meta.prototype_item_ids,
            meta.n_items, self.scorer.backend, self.service_token, http_port=self.http_port,
        )  # fmt: skip


def _grpc_server(
    servicer: RecommenderServicer,
    admin: ModelAdminServicer,
    health_servicer: health.aio.HealthServicer,
    interceptors: list[grpc.aio.ServerInterceptor],
    options: list[tuple[str, int]],
    intake_depth: int,
) -> tuple[grpc.aio.Server, CallIntake | None]:
    """One grpc.aio server of the gateway's services (Recommender, ModelAdmin, health, reflection),
    and the deeper intake for the Recommender's methods (None: grpc.aio's own alone)."""
    # no maximum_concurrent_rpcs: the gateway's own limit is the servicer's (--max-concurrent-rpcs),
    # which the deeper intake's calls meet as every other call does
    server = grpc.aio.server(interceptors=interceptors, options=options)
    methods = add_service(server, servicer, pb.DESCRIPTOR.services_by_name["Recommender"])
    add_service(server, admin, admin_pb2.DESCRIPTOR.services_by_name["ModelAdmin"])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, ADMIN_SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    return server, call_intake(server, methods, interceptors, intake_depth)


async def create_server(
    config: ServingConfig,
    *,
    resources: Resources | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[ApronServer, int]:
    """Everything the gateway needs, wired and bound to `config.port` (0: a free port); the model
    versions are loaded and warmed by `start()`. Without `resources` (tests), the gateway opens
    its own (a private redis-server when there is no `redis_url`) and closes them when it stops."""
    owns_resources = resources is None
    if resources is None:
        resources = Resources.open(config)
    config = dataclasses.replace(config, redis_url=resources.config.redis_url)
    probe: QueueProbe | None = None
    try:
        metrics = Metrics()
        # reliability: fail fast when Redis is down (redis-py's default retries for ~3 s per command).
        # No socket timeout: the store bounds each operation itself (asyncio.timeout, --redis-timeout-s),
        # which costs no task per command, and skips Redis at once while it is known down.
        client = RedisCluster if config.redis_cluster else Redis  # the cluster client finds the other nodes itself
        redis = client.from_url(
            config.redis_url, decode_responses=False, socket_connect_timeout=1.0, socket_timeout=None,
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
        )  # fmt: skip
        # known down, Redis is skipped until the watch (`start`, a PING every 0.1 s) sees it answer: no trial calls
        store = RedisStore(
            redis, config.cache_ttl_s, timeout_s=config.redis_timeout_s, retry_s=None, pipelined=config.redis_pipe
        )
        make_scorer = functools.partial(create_scorer, config.inference, config.batching, config.repository, metrics=metrics)
        models = ModelSet(config.repository, store, make_scorer, metrics, config.backend)
        # reliability: shed a queue, never grow it; the probe waits in each Recommender method's own queue
        recommender = [rpc_path(method) for method in pb.DESCRIPTOR.services_by_name["Recommender"].methods]
        probe = QueueProbe(recommender) if config.max_queue_delay_ms > 0 else None
        servicer = RecommenderServicer(config.server, config.security, models, store, metrics, probe and probe.delay)
        # --grpc-servers N: N servers on the port (serving/intake.py), so SO_REUSEPORT whenever N > 1
        shared_port = config.workers > 1 or config.reuse_port
        if not shared_port:  # a clear error for a taken port, before N servers with SO_REUSEPORT could share it
            refuse_taken(config.host, config.port)
        options = [
            *limits.message_size_options(limits.max_request_bytes(config.security)),
            # --workers: every worker listens on the port; one gateway alone refuses a taken port
            ("grpc.so_reuseport", 1 if shared_port or config.grpc_servers > 1 else 0),
            # refuse before work: without BDP probing a stream's receive window stays grpc's 64 KiB
            # until the handler reads, so a call refused unread (auth.py) holds no more than that of
            # its body (with it, 200 token-less 1.3 MB calls held ~100 MB in grpc core)
            ("grpc.http2.bdp_probe", 0),
            *limits.admission_options(),
            *limits.connection_options(config.server),
        ]
        streams = StreamLimit(config.max_open_streams, metrics)  # reliability: token-less streams are bounded
        drain = Drain()  # innermost: it sees the servicer's own handlers
        admin = ModelAdminServicer(config.server, config.security, models, metrics, servicer.concurrency)
        health_servicer = health.aio.HealthServicer()
        servers = GrpcServers([
            _grpc_server(
                servicer, admin, health_servicer,
                [*([probe] if probe else []), streams, *resources.security.interceptors, *interceptors, drain.interceptor()],
                options, config.grpc_intake,
            )
            for _ in range(config.grpc_servers)
        ])  # fmt: skip
        status = GatewayHealth(health_servicer, metrics)
        await status.publish()  # every service NOT_SERVING until start() has the versions warmed
        port = tls.bind(servers.first, f"{config.host}:{config.port}", config.security)  # reliability: TLS when configured
        if port == 0:
            raise OSError(f"cannot bind {config.host}:{config.port}")
        for other in servers.servers[1:]:  # the same port (0 above: the one it picked)
            if tls.bind(other, f"{config.host}:{port}", config.security) == 0:
                raise OSError(f"cannot bind a second gRPC server to {config.host}:{port}")
        if probe is not None:  # a private socket on each server: each has its own queue in core
            for each in servers.servers:
                probe.bind(each)
        http = None
        if config.http_port >= 0:
            http = HttpServer(build_app(servicer, resources.security, config, page_routes(resources.security), drain), config)
    except BaseException:
        if owns_resources:
            resources.close()
        if probe is not None:
            probe.close()
        raise
    gateway = ApronServer(
        config, servers, port, models, redis, metrics, health_servicer, status, resources, owns_resources, drain=drain, http=http,
        queue_probe=probe,
    )
    return gateway, port
