"""Prometheus metrics of the gateway, in their own registry, served on their own port (`/metrics`,
beside the HTTP health probes `/healthz/live` and `/healthz/ready`: `serve_http`).

Every name of ours starts with `apron_`; beside them the standard `process_*` (CPU, memory, file
descriptors of this process; with `--workers` the parent serves the workers' files and none).
Histograms: RPC latency by method and status code, each RPC's stages by method
(`serving/stages.py`), inference latency and batch size by model, queue wait in the micro-batcher.
Counters: profile cache hits and misses, edits by kind. Gauges: RPCs in flight by method, each
watched dependency up or down (`apron_backend_up`, serving/health.py).

The per-call series are reached through label children resolved once (`for_method`, `StageRecorder`):
`labels()` validates and locks on every call, which a cached Recommend should not pay a dozen times.
"""

from __future__ import annotations

import gc
import gzip
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder, gzip_accepted

from serving.stages import StageClock, StageRecorder

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# a stage of a cached call takes from microseconds (validation) to the model's milliseconds
STAGE_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# No `*_created` series: one more series per counter and histogram child, which nobody queries
# (rate() and increase() handle resets) and which doubles what Prometheus stores for them.
disable_created_metrics()


class MethodMetrics:
    """One RPC method's per-call series, each resolved once (a status code's on its first call):
    the boundary's metric work per call is `inc` / `dec` / `observe` on these children."""

    def __init__(self, metrics: Metrics, method: str):
        self.method = method
        self.in_flight = metrics.in_flight.labels(method)
        self._metrics = metrics
        self._latency: dict[tuple[grpc.StatusCode, str], Any] = {}
        self._rejections: dict[grpc.StatusCode, Any] = {}

    def latency(self, code: grpc.StatusCode, version: str) -> Any:
        """The RPC duration histogram's child for a status code and the model version that answered."""
        child = self._latency.get((code, version))
        if child is None:
            child = self._latency[code, version] = self._metrics.rpc_latency.labels(self.method, code.name, version)
        return child

    def rejections(self, code: grpc.StatusCode) -> Any:
        child = self._rejections.get(code)
        if child is None:
            child = self._rejections[code] = self._metrics.rejections.labels(self.method, code.name)
        return child


class BatchSeries:
    """One model's per-batch series for one backend and version, each resolved once: a run's metric
    work is `observe` / `inc` on these children."""

    def __init__(self, metrics: Metrics, model: str, backend: str, version: str):
        self.batch_size = metrics.batch_size.labels(model)
        self.latency = metrics.inference_latency.labels(model, backend, version)
        self.thread_cpu = metrics.inference_thread_cpu.labels(model, backend)
        self.queue_wait = metrics.queue_wait.labels(model)


class GcPauses:
    """This process's garbage collections from `start()` until `stop()` (or over a `with` block):
    `pauses`, (generation, seconds) each, in order (`gc.callbacks`).

    A collection can start anywhere, also inside prometheus_client while it holds a lock, so the
    callback only appends to a list (atomic under the GIL, no lock of ours)."""

    def __init__(self) -> None:
        self._started = 0.0
        self.pauses: list[tuple[int, float]] = []

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))

    @property
    def seconds(self) -> list[float]:
        return [seconds for _, seconds in self.pauses]

    def start(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def stop(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def __enter__(self) -> GcPauses:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GcTimer(GcPauses):
    """Times every garbage collection of this process into `histogram` (label: generation), from
    `start()` until `stop()`: `flush()`, called from ordinary code, moves the pauses into it."""

    def __init__(self, histogram: Histogram):
        super().__init__()
        self._children = [histogram.labels(str(generation)) for generation in range(3)]

    def flush(self) -> None:
        while self.pauses:
            generation, seconds = self.pauses.pop()
            self._children[generation].observe(seconds)

    def stop(self) -> None:
        super().stop()
        self.flush()


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds...
        self.rpc_latency = Histogram(
            "apron_rpc_duration_seconds", "gRPC call latency, by the model version that answered (none: refused before one was chosen)",
            ["method", "code", "version"], buckets=LATENCY_BUCKETS, registry=r
        )
        # multiprocess_mode: how `--workers` sums a gauge over processes (ignored by one process)
        self.in_flight = Gauge(
            "apron_rpcs_in_flight", "gRPC calls being handled", ["method"], registry=r, multiprocess_mode="livesum"
        )
        self.worker_rpcs = Gauge(
            "apron_worker_rpcs",
            "RPCs this gateway process has answered (with --workers: one series per worker pid)",
            registry=r,
            multiprocess_mode="all",
        )
        self.inference_latency = Histogram(
            "apron_inference_duration_seconds",
            "one inference run (a whole batch for the in-process backend, one call for Triton), by model version",
            ["model", "backend", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # the model's own CPU beside the gateway's (process_cpu_seconds_total): on the 2-core
        # machine ONNX Runtime runs a small scorer on the calling thread, so this is all of it there
        self.inference_thread_cpu = Counter(
            "apron_inference_thread_cpu_seconds",
            "CPU time of the thread that ran each in-process inference run (the event loop's or the micro-batcher's "
            "worker); a runtime's other intra-op threads are not counted",
            ["model", "backend"],
            registry=r,
        )
        self.batch_size = Histogram(
            "apron_inference_batch_size", "requests per in-process inference run", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "apron_batch_queue_wait_seconds",
            "time a request waited in the micro-batcher before its run started",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cache = Counter(
            "apron_profile_cache_requests",
            "profile lookups by model version and result (hit / miss / recovered: recomputed from the history cached under "
            "another version / unavailable: Redis down, served uncached)",
            ["result", "version"], registry=r,
        )
        self.profile_reads = Counter(
            "apron_profile_reads",
            "Redis reads of a profile by kind: version (this process's copy confirmed by the user's version, one GET) or "
            "full (profile, edits and version in one script)",
            ["kind"],
            registry=r,
        )
        self.edits = Counter(
            "apron_profile_edits", "edits by kind (scale / weight / reset) and where they apply", ["kind", "scope"], registry=r
        )
        self.model_info = Gauge(
            "apron_model_info",
            "the served model versions: the primary (value 1) and an A/B candidate (value: its share of users)",
            ["version", "backend", "role"], registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.model_loads = Counter(
            "apron_model_loads", "model rollouts (SIGHUP, the admin RPC, the repository watch) by result: ok / failed",
            ["result"], registry=r,
        )  # fmt: skip
        self.rejections = Counter(  # reliability: refused callers (bad token, not theirs, over a limit)
            "apron_rpc_rejections", "calls refused by status code: UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED",
            ["method", "code"], registry=r,
        )  # fmt: skip
        self.fallbacks = Counter(  # reliability: --triton-fallback at work
            "apron_backend_fallbacks", "inference calls served in-process while Triton was unreachable", ["method"], registry=r
        )
        self.backend_up = Gauge(  # reliability: a degraded gateway says so without leaving the rotation
            "apron_backend_up", "whether a dependency answers (1) or not (0): redis, inference (serving/health.py)",
            ["backend"], registry=r, multiprocess_mode="min",
        )  # fmt: skip
        self.stage_seconds = Histogram(
            "apron_stage_seconds",
            "one stage of an RPC (serving/stages.py: auth, redis_read, scorer_run, response, ...)",
            ["method", "stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.stages = StageRecorder(self.stage_seconds)
        self.gc_pauses = Histogram(  # garbage collections stop the event loop: a tail-latency suspect
            "apron_gc_pause_seconds",
            "one garbage collection in the gateway process, by generation (0, 1, 2)",
            ["generation"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self._gc_timer = GcTimer(self.gc_pauses)
        self._gc_timer.start()  # until shutdown(): also in --workers processes, which serve no /metrics
        self._methods: dict[str, MethodMetrics] = {}
        self._batches: dict[tuple[str, str, str], BatchSeries] = {}  # (model, backend, version)
        self._inference_latency: dict[tuple[str, str, str], Any] = {}  # Triton's calls: (model, backend, version)
        self._server: ThreadingHTTPServer | None = None

    def observe_call(self, method: str, clock: StageClock) -> None:
        """A finished call's stages, and the garbage collections since the last call."""
        self.stages.observe(method, clock)
        self._gc_timer.flush()

    def for_method(self, method: str) -> MethodMetrics:
        """`method`'s per-call series (created on its first call, then reused)."""
        found = self._methods.get(method)
        if found is None:
            found = self._methods[method] = MethodMetrics(self, method)
        return found

    # -- observers handed to the backends
    def observe_batch(
        self,
        model: str,
        batch_size: int,
        run_seconds: float,
        queue_waits: Sequence[float],
        cpu_seconds: float,
        backend: str = "onnxruntime",
        version: str = "",
    ) -> None:
        key = (model, backend, version)
        series = self._batches.get(key)
        if series is None:  # a model's first run: its series, once
            series = self._batches[key] = BatchSeries(self, *key)
        series.batch_size.observe(batch_size)
        series.latency.observe(run_seconds)
        series.thread_cpu.inc(cpu_seconds)
        for wait in queue_waits:
            series.queue_wait.observe(wait)

    def observe_inference(self, model: str, seconds: float, backend: str = "triton", version: str = "") -> None:
        key = (model, backend, version)
        child = self._inference_latency.get(key)
        if child is None:  # resolved once per model, backend and version, as the batches' series are
            child = self._inference_latency[key] = self.inference_latency.labels(*key)
        child.observe(seconds)

    # -- the HTTP endpoint
    def serve(self, port: int, host: str = "127.0.0.1", probes: Mapping[str, Probe] | None = None) -> int:
        """Start `/metrics` and the `probes` (`/healthz/<name>`) on `port` (0: a free one) in a
        daemon thread; returns the bound port."""
        self._server = serve_http(port, host, self.registry, probes or {})
        return int(self._server.server_port)

    def shutdown(self) -> None:
        self._gc_timer.stop()
        if self._server is not None:
            stop_http(self._server)
            self._server = None


# ------------------------------------------------------------------------------ the HTTP endpoint

Probe = Callable[[], bool]  # True: 200, False: 503
HEALTH_PREFIX = "/healthz/"


def http_answer(
    path: str, registry: CollectorRegistry, probes: Mapping[str, Probe], accept: str = "", accept_encoding: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) for a GET of `path`: `/metrics` (in the format and encoding the
    client accepts, as prometheus_client's own server chooses them: OpenMetrics, gzip),
    `/healthz/<probe>` (200 / 503), else 404."""
    route = path.split("?", 1)[0]
    text = {"Content-Type": "text/plain; charset=utf-8"}
    if route == "/metrics":
        encoder, content_type = choose_encoder(accept)
        body, headers = encoder(registry), {"Content-Type": content_type}
        if gzip_accepted(accept_encoding):
            body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
        return 200, headers, body
    probe = probes.get(route.removeprefix(HEALTH_PREFIX)) if route.startswith(HEALTH_PREFIX) else None
    if probe is None:
        return 404, text, b"not found\n"
    return (200, text, b"ok\n") if probe() else (503, text, b"not ok\n")


def serve_http(port: int, host: str, registry: CollectorRegistry, probes: Mapping[str, Probe]) -> ThreadingHTTPServer:
    """`/metrics` of `registry` and `/healthz/<name>` of `probes` on `port` (0: a free one), each
    request in its own daemon thread (the standard library's server: no dependency added; a probe
    that waits on the event loop never holds up a scrape)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            status, headers, body = http_answer(
                self.path, registry, probes, self.headers.get("Accept", ""), self.headers.get("Accept-Encoding", "")
            )
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
            pass  # scrapes and probes every few seconds: not worth a log line each

    class Server(ThreadingHTTPServer):
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]  # IPv4 or IPv6
        daemon_threads = True

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="apron-metrics-http", daemon=True).start()
    return server


def stop_http(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()
