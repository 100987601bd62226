"""`apron serve --workers 2` as a real process tree: two worker processes on one port (SO_REUSEPORT),
and on one HTTP/JSON port alike, one real Redis, and `/metrics` summed over both by the parent."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
from prometheus_client.parser import text_string_to_metric_families

from serving.front_refusals import REPORT_SUFFIX
from serving.proto_gen.apron.v1 import recommender_pb2 as pb
from serving.proto_gen.apron.v1 import recommender_pb2_grpc as pb_grpc
from serving.redis_process import RedisProcess
from tests.polling import wait_until
from tests.serving.conftest import liked_history

DEADLINE_S = 240.0
ROOT = Path(__file__).resolve().parents[2]


class Lines:
    """A process's stdout, line by line, read by a thread so that waits can have a deadline."""

    def __init__(self, stream):
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.lines.put(line)

    def wait_for(self, pattern: str, deadline: float) -> re.Match[str]:
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no line matching {pattern!r}; output so far:\n{''.join(self.seen)}") from None
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match


@contextlib.contextmanager
def serve_workers(repository: Path, redis_url: str, *args: str) -> Iterator[tuple[subprocess.Popen, Lines]]:
    command = [
        sys.executable, "-m", "cli", "serve", "--workers", "2", "--port", "0", "--metrics-port", "0", "--http-port", "0",
        "--repository", str(repository), "--redis-url", redis_url, "--no-build-demo", "--no-auth",
        "--log-format", "text", "--access-log-rate", "0", *args,
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield process, Lines(process.stdout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def samples(metrics_url: str, name: str) -> list[tuple[dict[str, str], float]]:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def test_two_workers_share_the_port_redis_and_metrics(
    python_repository: Path, redis_server: RedisProcess, main_tags, user_id: str
) -> None:
    deadline = time.monotonic() + DEADLINE_S
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # a free UDP port for the front's reports
        probe.bind(("127.0.0.1", 0))
        refusals_port = probe.getsockname()[1]
    with serve_workers(python_repository, redis_server.url, "--front-refusals-port", str(refusals_port)) as (process, output):
        banner = output.wait_for(r"APRON gateway on ([\d.]+:\d+) .*metrics: (http://\S+/metrics)", deadline)
        address, metrics_url = banner.group(1), banner.group(2)
        http_base = output.wait_for(r"OpenAPI: (http://\S+)/v1/openapi.json", deadline).group(1)
        worker_pids = {int(pid) for pid in output.wait_for(r"worker pids: ([\d ]+)", deadline).group(1).split()}
        assert len(worker_pids) == 2 and all(psutil.Process(pid).ppid() == process.pid for pid in worker_pids)

        history = liked_history(main_tags, 0, 1)
        calls, answered = 0, set()
        while answered != worker_pids:  # new connections until the kernel has given some to each worker
            assert time.monotonic() < deadline, f"only workers {answered} of {worker_pids} answered in {calls} calls"
            with grpc.insecure_channel(address) as channel:  # a new channel is a new TCP connection
                reply = pb_grpc.RecommenderStub(channel).Recommend(
                    pb.RecommendRequest(user_id=user_id, history=history, k=3), timeout=60
                )
            assert len(reply.items) == 3
            assert reply.profile_from_cache == (calls > 0)  # one Redis: cached by the first call, whichever worker asks
            calls += 1
            answered = {int(labels["pid"]) for labels, value in samples(metrics_url, "apron_worker_rpcs") if value > 0}

        # HTTP/JSON on the shared port: each new connection to any worker, until both have answered
        by_grpc = {int(labels["pid"]): value for labels, value in samples(metrics_url, "apron_worker_rpcs")}
        answered = set()
        while answered != worker_pids:
            assert time.monotonic() < deadline, f"only workers {answered} of {worker_pids} answered HTTP in {calls} calls"
            body = json.dumps({"user_id": user_id, "k": 3}).encode()
            call = urllib.request.Request(f"{http_base}/apron.v1.Recommender/Recommend", body, {"content-type": "application/json"})
            with urllib.request.urlopen(call, timeout=60) as response:
                assert len(json.loads(response.read())["items"]) == 3  # urlopen: one connection per request
            calls += 1
            counts = samples(metrics_url, "apron_worker_rpcs")
            answered = {int(labels["pid"]) for labels, value in counts if value > by_grpc.get(int(labels["pid"]), 0)}

        # the parent's /metrics sums every worker's histograms and counters
        recommends = sum(
            value
            for labels, value in samples(metrics_url, "apron_rpc_duration_seconds_count")
            if labels == {"method": "Recommend", "code": "OK", "version": "1"}
        )
        assert recommends == calls
        per_worker = {int(labels["pid"]): value for labels, value in samples(metrics_url, "apron_worker_rpcs")}
        assert sum(per_worker.values()) == calls and set(per_worker) == worker_pids
        cache = {labels["result"]: value for labels, value in samples(metrics_url, "apron_profile_cache_requests_total")}
        assert (cache.get("miss"), cache.get("hit")) == (1, calls - 1)
        assert [value for labels, value in samples(metrics_url, "apron_backend_up") if labels == {"backend": "redis"}] == [1]
        # the front's refusals, reported to the parent (which serves /metrics), counted once each
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as front:
            for _ in range(3):
                front.sendto(b"<190>Dec  5 11:00:00 " + REPORT_SUFFIX, ("127.0.0.1", refusals_port))
        assert [value for _, value in samples(metrics_url, "apron_front_refused_total")] == [3]
        # the parent's probes beside its /metrics: live while it runs, ready while every worker serves
        for probe in ("live", "ready"):
            with urllib.request.urlopen(metrics_url.replace("/metrics", f"/healthz/{probe}"), timeout=10) as response:
                assert response.status == 200, probe

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=max(1.0, deadline - time.monotonic())) == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in worker_pids)


def test_workers_exit_when_their_parent_is_killed(python_repository: Path, redis_server: RedisProcess) -> None:
    """kill -9 of the runtime (OOM killer, a test's cleanup): its workers drain and exit instead of
    serving on as orphans on the shared port."""
    deadline = time.monotonic() + DEADLINE_S
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # a free UDP port for the front's reports
        probe.bind(("127.0.0.1", 0))
        refusals_port = probe.getsockname()[1]
    with serve_workers(python_repository, redis_server.url, "--front-refusals-port", str(refusals_port)) as (process, output):
        worker_pids = {int(pid) for pid in output.wait_for(r"worker pids: ([\d ]+)", deadline).group(1).split()}
        workers = [psutil.Process(pid) for pid in worker_pids]
        process.kill()
        process.wait()
        _, alive = psutil.wait_procs(workers, timeout=max(1.0, deadline - time.monotonic()))
        assert not alive, f"workers {[p.pid for p in alive]} outlived their parent"


def test_a_second_stop_signal_during_the_drain_stops_the_workers_and_still_cleans_up(tmp_path: Path) -> None:
    """Ctrl-C, then Ctrl-C again while the workers drain (theirs never ends here): the parent kills
    them, removes their metrics directory and returns, instead of dying of KeyboardInterrupt
    halfway through its cleanup."""
    command = [sys.executable, "-m", "tests.serving.stub_workers", str(tmp_path)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers: list[psutil.Process] = []
    try:
        wait_until(lambda: len(list(tmp_path.glob("ready-*"))) == 2, "both stub workers serve", DEADLINE_S)
        ready = list(tmp_path.glob("ready-*"))
        workers = [psutil.Process(int(path.name.split("-")[1])) for path in ready]
        metrics_dir = Path(ready[0].read_text())
        assert metrics_dir.is_dir()
        process.send_signal(signal.SIGINT)
        wait_until(lambda: len(list(tmp_path.glob("draining-*"))) == 2, "both stub workers drain", DEADLINE_S)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=DEADLINE_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
            for worker in workers:  # their drain never ends by itself
                with contextlib.suppress(psutil.NoSuchProcess):
                    worker.kill()
    assert process.returncode == 0, output
    assert "stopped" in output and "killing them now" in output
    assert not metrics_dir.exists()
    _, alive = psutil.wait_procs(workers, timeout=DEADLINE_S)
    assert not alive
