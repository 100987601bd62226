"""The gateway's configuration, defined once: every field has a default, a `--flag`, an `APRON_*`
environment variable and a help line.

Precedence: command-line flag > environment variable > default. `apron serve --help` lists every
field with its variable and default (`add_arguments`); `ServingConfig.from_args` builds the config.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

BACKENDS = ("onnxruntime", "triton", "torch")
TORCH_DEVICES = ("cpu", "cuda")
TORCH_DTYPES = ("auto", "float32", "float16", "bfloat16")
ORT_DEVICES = ("cpu", "cuda")
LOG_FORMATS = ("json", "text")
ENV_PREFIX = "APRON_"
# One default per fact: the backends' and the micro-batcher's own defaults are these.
DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_MAX_QUEUE = 256
# --inline-min-batch: a short run under load goes on the event loop only once its batch holds this
# many requests (a lone request always may). A run costs much more than its rows (BENCHMARKS.md, cost
# vs catalog size: at 1,000 items 0.05 ms at batch 1 against ~9 µs a row at batch 256), and at 70% of
# the maximum throughput the batches are small (its tail evidence: ~4 requests a run), so the loop
# every call needs pays that cost for few calls. 4 took the loop from 89% to 74% busy there, at the
# same CPU per call at saturation, but that open loop's p99 rose in all 6 rounds (11.6 -> 15.3 ms,
# medians; benchmarks/inline_batch.py, serving/README.md): 1, every short run on the loop, stays.
DEFAULT_INLINE_MIN_BATCH = 1
MAX_PORT = 65535
# --grpc-intake: each request waiting in core is a task per Recommender method and server, made at start
MAX_GRPC_INTAKE = 1024
# --gil-switch-interval-ms: Python's own 5 ms. A tenth of it (a finished scorer run back from the
# worker thread within half a millisecond of a busy event loop) measured no consistent difference
# through whole gateways (benchmarks/switch_interval.py; serving/README.md); at most a second
GIL_SWITCH_INTERVAL_MS = 5.0
MAX_GIL_SWITCH_INTERVAL_MS = 1000.0
# --gc-gen0-threshold: Python's own is 700. Each call leaves its objects in the youngest generation
# while other calls are in flight, so at 700 the collector ran every few calls and moved every call
# in flight to the older generations, whose collections then scanned them again; 10,000
# (benchmarks/gc_threshold.py; serving/README.md has its figures) collects a few times less often.
GC_GEN0_THRESHOLD = 10_000
MAX_GC_GEN0_THRESHOLD = 1_000_000  # gc.set_threshold takes a C int; beyond this the young heap only grows


@dataclass(frozen=True)
class SplitNames:
    """What an A/B split's refusal calls its three numbers: the flags where `apron serve` was given
    them, the candidate and the primary where a rollout (LoadModel, start-up) was."""

    candidate: str
    share: str
    primary: str


SPLIT_FLAGS = SplitNames("--ab-version", "--ab-share", "--model-version")


def check_ab_split(candidate: int, share: float, primary: int, names: SplitNames) -> None:
    """The A/B split's rule, wherever one is asked for (ServingConfig before loading anything,
    models.Routing for LoadModel and start-up): a non-negative candidate version and a share of
    users in [0, 1], both or neither (a split asked for that would not happen is refused, never
    quietly dropped), and two versions, not one twice (`primary` 0: not known yet). ValueError
    naming what is wrong in `names`' terms."""
    if not 0 <= share <= 1:
        raise ValueError(f"{names.share} must be between 0 and 1, got {share:g}")
    if candidate < 0:
        raise ValueError(f"{names.candidate} must not be negative, got {candidate}")
    if (candidate > 0) != (share > 0):
        raise ValueError(
            f"an A/B split needs both {names.candidate} (the second version) and {names.share} (above 0), "
            f"got {candidate} and {share:g}"
        )
    if candidate and candidate == primary:
        raise ValueError(f"{names.candidate} {candidate} is {names.primary}: an A/B split needs two versions")


def _option(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class ServingConfig:
    repository: str = _option("model_repository", "model repository written by `apron export` (holds apron_metadata.json)")
    model_version: int = _option(
        0,
        "model version to serve, pinned: SIGHUP and --watch-repository keep it (0: the newest in the repository, "
        "and SIGHUP or the watch roll out a newer one without a restart)",
    )
    watch_repository: bool = _option(
        False, "roll out a newer model version as soon as the repository holds one (polled every --watch-interval-s)"
    )
    watch_interval_s: float = _option(2.0, "how often --watch-repository looks for a newer version (seconds)")
    ab_version: int = _option(
        0, "A/B split: a second model version that answers --ab-share of the users (by a hash of the user id; 0: none)"
    )
    ab_share: float = _option(0.0, "A/B split: share of users, in [0, 1], that --ab-version answers")
    build_demo: bool = _option(
        True, "when the repository holds no model, train and export a small demo model into it first"
    )
    demo_dataset: str = _option(
        "auto",
        "the demo model's data: lastfm-2k (real artists, Last.fm tags; downloaded when there is no copy), "
        "synthetic, or auto (lastfm-2k when a copy is on this machine, else synthetic)",
        ("auto", "lastfm-2k", "synthetic"),
    )
    host: str = _option("127.0.0.1", "address the gRPC server binds (0.0.0.0 / [::] for every interface)")
    port: int = _option(50051, "gRPC port (0: any free port)")
    workers: int = _option(
        1, "gateway processes sharing the port (SO_REUSEPORT, Linux): an event loop each, one Redis, /metrics summed over them"
    )
    grpc_servers: int = _option(
        1,
        "gRPC servers of the same services on the port in each gateway process (SO_REUSEPORT, Linux; a taken port "
        "is still an error unless --reuse-port): grpc.aio takes one call per method per event-loop turn from grpc "
        "core, so under load calls queue there before any handler runs; N servers take up to N, over N connections "
        "at least (--grpc-intake does the same over any connections, and is on by default). Not the default: during a --reuse-port restart a "
        "connection the kernel gives to a closing server's socket is reset; with 4 servers a side one test run in five "
        "saw a client's retry reset so, and whether more sockets make that likelier is not measured",
    )
    grpc_intake: int = _option(
        8,
        "requests for the next call of each Recommender method that wait in grpc core at once, on each gRPC server: "
        "grpc.aio alone keeps one, so under load it takes one call per method per event-loop turn and the rest "
        "queue in core before any handler (serving/intake.py; BENCHMARKS.md, Request path: the default against 1). "
        "1: grpc.aio's own intake alone; on a grpcio whose internals it was not written for, 1 with a warning",
    )
    metrics_port: int = _option(9464, "Prometheus /metrics port (0: any free port; -1: no metrics server)")
    front_refusals_port: int = _option(
        -1,
        "UDP port, on --host, that the nginx front (python -m serving.front --refusals-to) reports each call it "
        "refused to: counted as apron_front_refused_total on /metrics, read only when scraped "
        "(serving/front_refusals.py; -1: off; 0: any free port)",
    )
    front_refusals_host: str = _option(
        "",
        "address the --front-refusals-port socket binds (empty: --host); 127.0.0.1 where the front runs beside the "
        "gateway (the k8s pod): anyone who can send it a datagram can raise apron_front_refused_total",
    )
    http_port: int = _option(
        -1,
        "HTTP/JSON port beside gRPC, same calls, tokens and limits, with /v1/openapi.json and the control page at / "
        "(-1: off; 0: any free port); shared by --workers like the gRPC port",
    )
    redis_url: str = _option(
        "", "Redis URL, e.g. redis://redis:6379/0 (empty: start a private redis-server for this process)"
    )
    redis_cluster: bool = _option(
        False,
        "--redis-url names a node of a Redis Cluster: use redis-py's cluster client (a user's keys share one "
        "hash slot, so a Recommend still reads in one round trip)",
    )
    redis_aof: bool = _option(
        True, "with the private redis-server: persist with an append-only file, each write on disk before Redis "
        "acknowledges it (appendfsync always)"
    )
    redis_dir: str = _option(
        "artifacts/redis", "with the private redis-server: its data directory, kept across restarts (empty: a temp dir)"
    )
    redis_maxmemory_mb: int = _option(
        1024,
        "with the private redis-server: its memory limit in MiB (0: none). Full, it evicts cached profiles only "
        "(volatile-lru: they have a TTL, stored edits have none); once only edits are left, EditProfile answers "
        "UNAVAILABLE and Recommend answers uncached",
    )
    redis_timeout_s: float = _option(
        1.0,
        "longest one Redis operation, or the health watch's PING, may take (seconds): then Recommend with a history answers uncached, calls "
        "that need Redis answer UNAVAILABLE, and Redis is skipped until it answers again",
    )
    redis_pipe: bool = _option(
        True,
        "read users' versions (every cached Recommend's one Redis command) on a pipelined connection of their own "
        "(serving/redis_pipe.py) rather than redis-py's pool; not on a cluster",
    )
    backend: str = _option("onnxruntime", "inference backend", BACKENDS)
    triton_url: str = _option("127.0.0.1:8001", "Triton gRPC address (host:port) for --backend triton")
    ort_device: str = _option("cpu", "ONNX Runtime execution provider for --backend onnxruntime", ORT_DEVICES)
    ort_threads: int = _option(
        0,
        "ONNX Runtime intra-op threads per model (0: the machine's cores less one, kept for the event loop; every core "
        "for a large scorer graph, whose runs rather than the event loop bound the gateway: serving/backends/base.py "
        "WIDE_SCORER_BYTES)",
    )
    ort_spinning: bool = _option(
        False,
        "let ONNX Runtime's idle worker threads spin for work (faster alone on a machine; off: they leave the "
        "CPU to the event loop between batches)",
    )
    device: str = _option("cpu", "torch device for --backend torch", TORCH_DEVICES)
    torch_dtype: str = _option(
        "auto", "--backend torch: precision of the catalog table and f (auto: float16 on cuda, float32 on cpu)", TORCH_DTYPES
    )
    cuda_graphs: bool = _option(True, "--backend torch --device cuda: replay one CUDA graph per batch-size bucket")
    max_batch_size: int = _option(DEFAULT_MAX_BATCH_SIZE, "micro-batcher (in-process backends): most requests in one run")
    max_batch_wait_ms: float = _option(
        0.0,
        "micro-batcher: longest a request waits for others to join its batch (0: an idle scorer runs a request at "
        "once; requests arriving during a run form the next batch)",
    )
    max_queue: int = _option(
        DEFAULT_MAX_QUEUE, "micro-batcher: most requests waiting for a run; more are refused with RESOURCE_EXHAUSTED and a retry-after"
    )
    inline_min_batch: int = _option(
        DEFAULT_INLINE_MIN_BATCH,
        "micro-batcher: under load, a batch whose recent runs were short runs on the event loop only from this many "
        "requests on (smaller ones go to its worker thread, leaving the loop to the calls; a lone request runs on the "
        "loop either way; 1: every short run)",
    )
    cache_ttl_s: int = _option(7 * 24 * 3600, "how long a cached profile lives in Redis (seconds)")
    max_history: int = _option(10_000, "most history ids one request may carry")
    max_edits: int = _option(256, "most edits one request may carry")
    max_message_bytes: int = _option(
        0,
        "largest gRPC request accepted (bytes; 0: the largest valid request under --max-history and --max-edits, "
        "1.35 MB with their defaults)",
    )
    request_timeout_s: float = _option(10.0, "longest a call may run, whatever deadline the client sets (seconds)")
    shutdown_grace_s: float = _option(10.0, "on SIGTERM: how long in-flight calls may finish (seconds)")
    reuse_port: bool = _option(
        False,
        "let another gateway listen on the same port (SO_REUSEPORT): start the new one, then SIGTERM the old one "
        "for a restart without refused connections (off: a taken port is an error)",
    )
    drain_delay_s: float = _option(
        0.0,
        "on SIGTERM: keep serving this long after health turns NOT_SERVING, so load balancers and "
        "health-checking clients move away before new calls are refused (seconds; rolling restarts)",
    )
    log_level: str = _option("INFO", "log level", ("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = _option(
        "text", "log line format: text for a person at a terminal, json for a log pipeline (the deploy files set json)", LOG_FORMATS
    )
    access_log_rate: float = _option(
        0.01, "share of successful RPCs written to the access log, at random (failed RPCs are always logged; 1: all)"
    )
    # --- reliability and security (serving/auth.py, serving/tls.py, serving/limits.py) ---
    auth: bool = _option(True, "require signed bearer tokens (JWT); --no-auth lets anyone read and edit any profile")
    jwt_secret_file: str = _option(
        "", "HS256 secret file for tokens (empty: a development secret created at artifacts/auth/jwt_secret)"
    )
    jwt_public_key: str = _option("", "PEM public key (RSA / EC / Ed25519) that verifies tokens instead of a secret")
    jwt_issuer: str = _option("apron", "the `iss` claim every token must carry")
    jwt_audience: str = _option("", "the `aud` claim every token must carry (empty: not checked)")
    jwt_max_lifetime_s: float = _option(
        30 * 24 * 3600.0, "longest token lifetime accepted, exp - iat (seconds): a token minted for years is refused"
    )
    insecure_dev: bool = _option(
        False,
        "allow the development secret or --no-auth on an address other than loopback (a trusted test network "
        "only: anyone who can reach the port can mint a token or needs none)",
    )
    behind_tls_proxy: bool = _option(
        False,
        "serve plaintext beyond loopback because TLS ends in front of the gateway on a network only it and that "
        "front reach (a mesh sidecar, a load balancer on a private network); without it, an address other than "
        "loopback needs --tls-cert: bearer tokens never cross a network in the clear",
    )
    tls_cert: str = _option("", "PEM server certificate chain: serve TLS (with --tls-key)")
    tls_key: str = _option("", "PEM private key of --tls-cert")
    tls_client_ca: str = _option("", "PEM CA bundle: require client certificates signed by it (mutual TLS)")
    edit_rate: float = _option(10.0, "EditProfile calls per second per user, refilled continuously (0: no limit)")
    edit_burst: int = _option(30, "EditProfile calls one user may make at once before --edit-rate applies")
    recommend_rate: float = _option(0.0, "Recommend calls per second per user, refilled continuously (0: no limit)")
    recommend_burst: int = _option(50, "Recommend calls one user may make at once before --recommend-rate applies")
    max_concurrent_rpcs: int = _option(
        256, "most calls handled at once; more are shed with RESOURCE_EXHAUSTED and a retry-after (0: no limit)"
    )
    max_queue_delay_ms: float = _option(
        0.0,
        "shed every call (RESOURCE_EXHAUSTED + retry-after) while calls wait longer than this to be taken up by the "
        "gateway, in grpc's queue before the event loop, and a share of them (PIE) while they wait over half of it, "
        "e.g. 250: a burst is refused instead of queued, at a cost in throughput at saturation when clients retry in "
        "a closed loop (RELIABILITY.md; 0: off)",
    )
    gil_switch_interval_ms: float = _option(
        GIL_SWITCH_INTERVAL_MS,
        "how long a thread may hold the GIL while another waits for it (sys.setswitchinterval; the default is "
        "Python's own). The micro-batcher's worker thread hands each finished scorer run back by taking the GIL, "
        "and while the event loop runs Python it waits up to this long, a wait the batcher times as part of the "
        "run; 0.5 measured no consistent difference on 2 cores (benchmarks/switch_interval.py)",
    )
    gc_gen0_threshold: int = _option(
        GC_GEN0_THRESHOLD,
        "how many objects (allocations less deallocations) may build up before the cyclic garbage collector "
        "collects the youngest generation (gc.set_threshold's first value; Python's own is 700; the older "
        "generations keep Python's own thresholds); fewer collections of the objects of the calls in flight "
        "(benchmarks/gc_threshold.py)",
    )
    max_open_streams: int = _option(
        1000,
        "most health-watch and reflection streams open at once (they need no token); more are refused with "
        "RESOURCE_EXHAUSTED (a client with grpc health checking holds one per connection)",
    )
    max_connection_idle_s: float = _option(120.0, "close a client connection with no call in flight for this long (seconds)")
    max_connection_age_s: float = _option(
        1800.0,
        "ask a client to reconnect after this long (seconds; its calls get --shutdown-grace-s more): spreads clients "
        "over new replicas and bounds what one connection holds",
    )
    triton_fallback: bool = _option(
        False, "--backend triton: score with in-process ONNX Runtime while Triton is unreachable (off: UNAVAILABLE)"
    )
    # --- end reliability and security ---

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}")
            value = getattr(self, f.name)
            # NaN passes every range check below (each comparison is False): "nan" would switch a limit off
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
        positive = (
            "workers", "grpc_servers", "grpc_intake", "max_batch_size", "max_queue", "inline_min_batch", "max_history", "max_edits",
            "cache_ttl_s",
            "edit_burst", "recommend_burst", "jwt_max_lifetime_s", "max_open_streams", "max_connection_idle_s",
            "max_connection_age_s",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.gc_gen0_threshold <= MAX_GC_GEN0_THRESHOLD:
            raise ValueError(
                f"gc_gen0_threshold must be at least 1 and at most {MAX_GC_GEN0_THRESHOLD:,} (Python's own is 700), "
                f"got {self.gc_gen0_threshold}"
            )
        if not 0 < self.gil_switch_interval_ms <= MAX_GIL_SWITCH_INTERVAL_MS:
            raise ValueError(
                f"gil_switch_interval_ms must be above 0 and at most {MAX_GIL_SWITCH_INTERVAL_MS:g} "
                f"(Python's own is 5), got {self.gil_switch_interval_ms}"
            )
        for name in ("max_batch_wait_ms", "redis_maxmemory_mb", "shutdown_grace_s", "ort_threads", "model_version",
                     "edit_rate", "recommend_rate", "max_concurrent_rpcs", "drain_delay_s", "max_message_bytes",
                     "max_queue_delay_ms"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.grpc_intake > MAX_GRPC_INTAKE:  # a task each per method and server: a typo must not stall the start
            raise ValueError(
                f"grpc_intake must be at most {MAX_GRPC_INTAKE} (requests waiting per method; 8 is the default), "
                f"got {self.grpc_intake}"
            )
        if not 0 <= self.port <= MAX_PORT:  # checked here, not by the first bind: a clear error, not a socket's OverflowError
            raise ValueError(f"port must be 0 (any free port) or a port up to {MAX_PORT}, got {self.port}")
        for name in ("http_port", "metrics_port", "front_refusals_port"):
            if not -1 <= getattr(self, name) <= MAX_PORT:
                raise ValueError(f"{name} must be -1 (off), 0 (any free port) or a port up to {MAX_PORT}, got {getattr(self, name)}")
        if self.front_refusals_port >= 0 and self.metrics_port < 0:
            raise ValueError("front_refusals_port counts on /metrics: it needs metrics_port (not -1)")
        if self.redis_cluster and not self.redis_url:
            raise ValueError("redis_cluster needs redis_url (a node of the cluster); the private redis-server is not a cluster")
        # model_version 0 (the newest) is not known before loading: Routing checks that pair at start-up
        check_ab_split(self.ab_version, self.ab_share, self.model_version, SPLIT_FLAGS)
        for name in ("redis_timeout_s", "request_timeout_s"):  # 0 s would fail every call that waits on anything
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be above 0, got {getattr(self, name)}")
        if self.watch_interval_s <= 0:
            raise ValueError(f"watch_interval_s must be above 0, got {self.watch_interval_s}")
        if not 0 <= self.access_log_rate <= 1:
            raise ValueError(f"access_log_rate must be between 0 and 1, got {self.access_log_rate}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together (set both to serve TLS, or neither)")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")

    # The sections (each component takes only its own): built once per config, on first use.
    @functools.cached_property
    def model(self) -> ModelConfig:
        return section(self, ModelConfig)

    @functools.cached_property
    def server(self) -> ServerConfig:
        return section(self, ServerConfig)

    @functools.cached_property
    def store(self) -> StoreConfig:
        return section(self, StoreConfig)

    @functools.cached_property
    def batching(self) -> BatchingConfig:
        return section(self, BatchingConfig)

    @functools.cached_property
    def security(self) -> SecurityConfig:
        return section(self, SecurityConfig)

    @functools.cached_property
    def inference(self) -> BackendConfig:
        """The backend section (`backend` itself is the field naming the backend)."""
        return section(self, BackendConfig)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServingConfig:
        """Defaults < APRON_* variables < keyword overrides."""
        values = env_values(os.environ if environ is None else environ)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServingConfig:
        """From a namespace built by `add_arguments` (whose defaults already include APRON_*)."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


# ----------------------------------------------------------------------------- sections
# Each component takes only its own section (`config.server`, `config.store`, ...), never the whole
# ServingConfig. A section names its fields; their defaults, flags, variables and help stay defined
# once, on ServingConfig above (tests/serving/test_config.py checks every field is in one section).


@dataclass(frozen=True)
class ModelConfig:
    """Which versions of which repository are served (serving/models.py, serving/cli.py's demo)."""

    repository: str
    model_version: int
    watch_repository: bool
    watch_interval_s: float
    ab_version: int
    ab_share: float
    build_demo: bool
    demo_dataset: str


@dataclass(frozen=True)
class ServerConfig:
    """The gRPC server and the process (serving/server.py, runtime.py, workers.py, the servicer's boundary)."""

    host: str
    port: int
    workers: int
    grpc_servers: int
    grpc_intake: int
    metrics_port: int
    front_refusals_port: int
    front_refusals_host: str
    http_port: int
    request_timeout_s: float
    shutdown_grace_s: float
    reuse_port: bool
    drain_delay_s: float
    max_concurrent_rpcs: int
    max_queue_delay_ms: float
    gil_switch_interval_ms: float
    gc_gen0_threshold: int
    max_open_streams: int
    max_connection_idle_s: float
    max_connection_age_s: float
    log_level: str
    log_format: str
    access_log_rate: float


@dataclass(frozen=True)
class StoreConfig:
    """Redis (serving/resources.py, cache.py)."""

    redis_url: str
    redis_cluster: bool
    redis_aof: bool
    redis_dir: str
    redis_maxmemory_mb: int
    redis_timeout_s: float
    redis_pipe: bool
    cache_ttl_s: int


@dataclass(frozen=True)
class BatchingConfig:
    """The in-process backends' micro-batchers (serving/batching.py)."""

    max_batch_size: int
    max_batch_wait_ms: float
    max_queue: int
    inline_min_batch: int


@dataclass(frozen=True)
class SecurityConfig:
    """Who may call and how much (serving/auth.py, tls.py, limits.py, validation's limits)."""

    auth: bool
    jwt_secret_file: str
    jwt_public_key: str
    jwt_issuer: str
    jwt_audience: str
    jwt_max_lifetime_s: float
    insecure_dev: bool
    behind_tls_proxy: bool
    tls_cert: str
    tls_key: str
    tls_client_ca: str
    edit_rate: float
    edit_burst: int
    recommend_rate: float
    recommend_burst: int
    max_history: int
    max_edits: int
    max_message_bytes: int


@dataclass(frozen=True)
class BackendConfig:
    """The inference backend (serving/backends/)."""

    backend: str
    triton_url: str
    triton_fallback: bool
    ort_device: str
    ort_threads: int
    ort_spinning: bool
    device: str
    torch_dtype: str
    cuda_graphs: bool


SECTIONS = {
    "model": ModelConfig, "server": ServerConfig, "store": StoreConfig, "batching": BatchingConfig,
    "security": SecurityConfig, "inference": BackendConfig,
}  # fmt: skip
S = TypeVar("S")


def section(config: ServingConfig, kind: type[S]) -> S:
    return kind(**{f.name: getattr(config, f.name) for f in dataclasses.fields(kind)})  # type: ignore[arg-type]


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _backend_readers(config: ServingConfig) -> dict[str, bool]:
    """The settings that only some backends read, and whether this gateway's backend reads them
    (ONNX Runtime's also for Triton with --triton-fallback; --ort-threads sizes torch on the CPU too)."""
    onnxruntime = config.backend == "onnxruntime" or (config.backend == "triton" and config.triton_fallback)
    return {
        "triton_url": config.backend == "triton", "triton_fallback": config.backend == "triton",
        "device": config.backend == "torch", "torch_dtype": config.backend == "torch", "cuda_graphs": config.backend == "torch",
        "ort_device": onnxruntime, "ort_spinning": onnxruntime,
    }  # fmt: skip


def ignored_settings(config: ServingConfig) -> list[str]:
    """A line for each backend setting `config` sets away from its default that its --backend never
    reads (a --triton-url given to an onnxruntime gateway does nothing): `apron serve` logs them."""
    defaults = {f.name: f.default for f in dataclasses.fields(ServingConfig)}
    return [
        f"{flag_name(name)} ({env_name(name)}) is {getattr(config, name)!r}, but --backend {config.backend} never reads it"
        for name, read in _backend_readers(config).items()
        if not read and getattr(config, name) != defaults[name]
    ]


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _kind(f: dataclasses.Field) -> type:
    """A field's type (annotations are strings under `from __future__ import annotations`)."""
    return _TYPES[f.type] if isinstance(f.type, str) else f.type


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = _kind(f)
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{env_name(f.name)}={raw!r}: expected true/false")
    try:
        return kind(raw)
    except ValueError as error:
        raise ValueError(f"{env_name(f.name)}={raw!r}: expected {kind.__name__}") from error


def env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The fields set by APRON_* variables, parsed to their types (ValueError names the variable)."""
    return {f.name: _parse(f, environ[env_name(f.name)]) for f in dataclasses.fields(ServingConfig) if env_name(f.name) in environ}


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """One flag per field; its default is the APRON_* variable when set, else the field's default.

    A bad APRON_* value is reported through `parser.error` (exit 2, naming the variable)."""
    try:
        from_env = env_values(os.environ if environ is None else environ)
    except ValueError as error:
        parser.error(str(error))
    group = parser.add_argument_group("gateway configuration (flag > environment variable > default)")
    for f in dataclasses.fields(ServingConfig):
        default = from_env.get(f.name, f.default)
        help_text = f"{f.metadata['help']} [env {env_name(f.name)}; default: {f.default!r}]"
        if _kind(f) is bool:
            group.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            group.add_argument(
                flag_name(f.name), type=_kind(f), default=default, choices=f.metadata.get("choices"), help=help_text
            )
