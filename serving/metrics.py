"""Prometheus metrics of the gateway, in their own registry, served on their own port (`/metrics`).

Every name starts with `apron_`. Histograms: RPC latency by method and status code, inference
latency and batch size by model, queue wait in the micro-batcher. Counters: profile cache hits and
misses, edits by kind. Gauge: RPCs in flight by method.
"""

from __future__ import annotations

from collections.abc import Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
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
        self._server: WSGIServer | None = None

    # -- observers handed to the backends
    def observe_batch(
        self,
        model: str,
        batch_size: int,
        run_seconds: float,
        queue_waits: Sequence[float],
        backend: str = "onnxruntime",
        version: str = "",
    ) -> None:
        self.batch_size.labels(model).observe(batch_size)
        self.inference_latency.labels(model, backend, version).observe(run_seconds)
        for wait in queue_waits:
            self.queue_wait.labels(model).observe(wait)

    def observe_inference(self, model: str, seconds: float, backend: str = "triton", version: str = "") -> None:
        self.inference_latency.labels(model, backend, version).observe(seconds)

    # -- the HTTP endpoint
    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start `/metrics` on `port` (0: a free one) in a daemon thread; returns the bound port."""
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
