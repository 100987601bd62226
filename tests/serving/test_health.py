"""The gateway's health state (serving/health.py) and its HTTP endpoint (serving/metrics.py): which
facts make each service name SERVING, and that `/healthz/live` asks the event loop itself."""

from __future__ import annotations

import asyncio
import gzip
import logging
import threading
import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry

from serving import health
from serving.health import NOT_SERVING, SERVING, HealthState, statuses
from serving.metrics import http_answer
from serving.redis_watch import Watch
from tests.serving.conftest import Gateway


def test_readiness_needs_warm_versions_and_the_backend_not_redis() -> None:
    assert set(statuses(HealthState()).values()) == {NOT_SERVING}  # before start: nothing
    up = statuses(HealthState(started=True, redis_up=True))
    assert set(up.values()) == {SERVING}
    redis_down = statuses(HealthState(started=True, redis_up=False))
    assert redis_down[health.REDIS] == NOT_SERVING
    assert all(redis_down[s] == SERVING for s in (health.LIVE, health.READY, "", health.RECOMMENDER, health.INFERENCE))
    backend_down = statuses(HealthState(started=True, redis_up=True, inference_up=False))
    assert backend_down[health.LIVE] == SERVING
    assert all(backend_down[s] == NOT_SERVING for s in (*health.READINESS_SERVICES, health.INFERENCE))
    draining = statuses(HealthState(started=True, redis_up=True, stopping=True))
    assert draining[health.LIVE] == SERVING  # still answering while it drains: no restart mid-drain
    assert all(draining[s] == NOT_SERVING for s in health.READINESS_SERVICES)


def test_http_answers_metrics_probes_and_404() -> None:
    registry = CollectorRegistry()
    probes = {"live": lambda: True, "ready": lambda: False}
    assert http_answer("/metrics", registry, probes)[0] == 200
    # the format and encoding Prometheus asks for, as prometheus_client's own server answered them
    _, headers, body = http_answer("/metrics", registry, probes, "application/openmetrics-text; version=1.0.0", "gzip")
    assert headers["Content-Type"].startswith("application/openmetrics-text") and headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body).endswith(b"# EOF\n")
    assert http_answer("/healthz/live", registry, probes)[0] == 200
    assert http_answer("/healthz/ready?verbose=1", registry, probes)[0] == 503
    for path in ("/", "/healthz", "/healthz/", "/healthz/other", "/metrics/x", "/favicon.ico"):
        assert http_answer(path, registry, probes)[0] == 404, path


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


async def test_liveness_is_the_event_loop_answering(ort_gateway: Gateway) -> None:
    port = ort_gateway.server.metrics_port
    assert port and await asyncio.to_thread(http_status, port, "/healthz/live") == 200
    answered = threading.Event()

    def probe() -> int:
        try:
            return http_status(port, "/healthz/live")
        finally:
            answered.set()

    probing = asyncio.get_running_loop().run_in_executor(None, probe)
    answered.wait(timeout=60)  # blocks the event loop (on purpose) until the probe has its answer
    assert await probing == 503  # a loop that does not run is not live
    assert await asyncio.to_thread(http_status, port, "/healthz/live") == 200
    assert await asyncio.to_thread(http_status, port, "/healthz/ready") == 200


async def test_a_probe_that_raises_reports_down_and_the_watch_goes_on() -> None:
    reported: list[bool] = []
    answers = iter([True, RuntimeError("backend client broke"), True])

    async def probe() -> bool:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def on_change(up: bool) -> None:
        reported.append(up)

    watch = Watch("a backend", probe, on_change, 1.0, "not ready", logging.getLogger("test"))
    assert [await watch.check() for _ in range(3)] == [True, False, True]
    assert reported == [True, False, True]
