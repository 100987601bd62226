"""`apron serve --workers N`: N gateway processes on one port, one Redis, one `/metrics`.

One Python process tops out at one event loop's worth of gRPC, protobuf and Redis work, whatever the
cores. With N workers the kernel spreads new connections over N processes that each listen on the
same port (SO_REUSEPORT, Linux), each a complete gateway (`serving.server`) with its own scorer
sessions and micro-batchers; they share:

- the port: the parent reserves it (a bound, not listening, SO_REUSEPORT socket, so `--port 0` picks
  one free port for all) and the workers bind it with `grpc.so_reuseport`; `--http-port` alike (each
  worker serves HTTP/JSON on the shared port with SO_REUSEPORT, serving/http.py);
- Redis: `--redis-url`, or the one private redis-server of the parent's runtime (`serving/runtime.py`
  starts it and restarts it when it dies, exactly as for one process);
- the metrics: the workers write prometheus_client's multiprocess files into a directory the
  parent creates (PROMETHEUS_MULTIPROC_DIR) and removes; the parent alone serves `/metrics`, summed
  over workers (`apron_worker_rpcs` keeps one series per worker pid).

This module only spawns and stops: the runtime owns Redis, the key and the signals (SIGTERM / SIGINT
are forwarded and each worker drains its in-flight calls; SIGHUP is forwarded and each worker rolls
out the newest model version), and the CLI prints the banner once all workers serve. Any worker's
death stops the group: a supervisor (Kubernetes, systemd) restarts the whole group.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.catalog import ServedModel
    from serving.config import ServingConfig
    from serving.front_refusals import FrontRefusals
    from serving.resources import OnServing, Resources

log = logging.getLogger("apron.gateway")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
START_TIMEOUT_S = 600.0  # a worker loads the model and warms its sessions before it serves


class WorkerFailed(RuntimeError):
    """A worker process exited before it served, or while the others were serving."""


@contextlib.contextmanager
def reserved_port(host: str, port: int) -> Iterator[int]:
    """Hold `host:port` (0: a free port) with an SO_REUSEPORT socket that never listens, so that the
    workers can bind the same port and no other program takes it meanwhile."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
        yield sock.getsockname()[1]


@contextlib.contextmanager
def optional_reserved_port(host: str, port: int) -> Iterator[int]:
    """`reserved_port` for a port that may be off (-1, kept as is)."""
    if port < 0:
        yield port
        return
    with reserved_port(host, port) as reserved:
        yield reserved


def run_workers(
    resources: Resources, model: ServedModel, worker_main: Callable[[ServingConfig, Any], None], on_serving: OnServing | None = None
) -> None:
    """`apron serve --workers N` (N > 1): spawns the workers on `resources` (the private Redis and
    the key belong to the runtime, which also restarts Redis) and runs until SIGTERM / SIGINT or a
    worker's death; SIGHUP is forwarded (each worker rolls out the newest model version)."""
    from prometheus_client import CollectorRegistry, multiprocess

    from serving.front_refusals import open_front_refusals
    from serving.metrics import serve_http, stop_http
    from serving.resources import Serving, forwarded_signals

    config = resources.config
    stopping = False
    serving = False  # SIGHUP goes to the workers only once they handle it (before, it would kill them)
    draining = False
    workers: list[BaseProcess] = []

    def stop() -> None:
        nonlocal stopping
        if stopping and draining:
            # a second Ctrl-C / SIGTERM while the workers drain: stop them now (an acknowledged edit
            # is already in Redis; calls still in flight get UNAVAILABLE), and still clean up below
            log.warning("stop signal while the workers drain: killing them now")
            for process in workers:
                if process.is_alive():
                    process.kill()
        stopping = True

    def hang_up() -> None:
        if not serving:
            log.warning("SIGHUP before every worker serves: ignored (each worker loads the newest version as it starts)")
            return
        for process in workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)

    metrics_dir = tempfile.mkdtemp(prefix="apron-metrics-")
    metrics_server = None
    front_refusals: FrontRefusals | None = None  # in the process that serves /metrics: this one
    # the handlers stay for the drain: with the default ones back, a second Ctrl-C raised
    # KeyboardInterrupt inside the joins and left the workers and their metrics directory behind
    with forwarded_signals(stop, hang_up):
        try:
            with (
                reserved_port(config.host, config.port) as port,
                optional_reserved_port(config.host, config.http_port) as http_port,
            ):
                worker_config = dataclasses.replace(
                    config, port=port, http_port=http_port, metrics_port=-1, front_refusals_port=-1, build_demo=False,
                    # the cores split between the workers' ONNX Runtime sessions, not cores - 1 threads each
                    ort_threads=config.ort_threads or max(1, len(os.sched_getaffinity(0)) // config.workers),
                )  # fmt: skip
                os.environ[MULTIPROC_ENV] = metrics_dir  # read by prometheus_client when a worker imports it
                context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked gRPC or ORT state
                ready = []
                for _ in range(config.workers):
                    event = context.Event()
                    process = context.Process(target=_worker, args=(worker_main, worker_config, event, os.getpid()), name="apron-worker")
                    process.start()
                    workers.append(process)
                    ready.append(event)
                _wait_until_serving(workers, ready, lambda: stopping)
                serving = True
                if config.metrics_port >= 0:
                    registry = CollectorRegistry()
                    multiprocess.MultiProcessCollector(registry, path=metrics_dir)
                    # the parent's probes: live while it runs; ready while every worker serves and none is stopping
                    # (each worker's own health answers on the shared gRPC port)
                    probes = {"live": lambda: True, "ready": lambda: not stopping and all(p.is_alive() for p in workers)}
                    front_refusals = open_front_refusals(config.front_refusals_host or config.host, config.front_refusals_port, registry)
                    metrics_server = serve_http(config.metrics_port, config.host, registry, probes)
                metrics_port = metrics_server.server_port if metrics_server is not None else None
                if on_serving is not None and not stopping:
                    meta = model.metadata
                    on_serving(Serving(
                        config, port, metrics_port, meta.model_version, meta.tag_names, meta.prototype_item_ids, meta.n_items,
                        f"{config.backend} × {config.workers} workers", resources.security.service_token,
                        tuple(p.pid for p in workers if p.pid is not None), http_port if http_port >= 0 else None,
                    ))  # fmt: skip
                while not stopping:
                    dead = [p for p in workers if not p.is_alive()]
                    if dead:
                        raise WorkerFailed(f"gateway worker {dead[0].pid} exited with {dead[0].exitcode}; stopping the others")
                    multiprocessing.connection.wait([p.sentinel for p in workers], timeout=1.0)
                log.info("shutting down: the workers drain their in-flight calls", extra={"fields": {"grace_s": config.shutdown_grace_s}})
        finally:
            serving, draining = False, True
            _stop_workers(workers, config.shutdown_grace_s, metrics_dir)
            if metrics_server is not None:
                stop_http(metrics_server)
            if front_refusals is not None:
                front_refusals.close()
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(metrics_dir, ignore_errors=True)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent(parent_pid: int) -> None:
    """Linux: this process gets SIGTERM (and drains) when its parent dies, even by SIGKILL
    (prctl PR_SET_PDEATHSIG): a worker never outlives the runtime that owns its port, Redis and
    metrics directory (orphaned workers kept serving on the shared port, and a new runtime would
    share it with them). Elsewhere, nothing."""
    # the signal follows the parent *thread* that started the worker: run_workers runs on the main
    # thread (it installs the signal handlers), which lives as long as the runtime
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the request: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(worker_main: Callable[[ServingConfig, Any], None], config: ServingConfig, ready: Any, parent_pid: int) -> None:
    exit_with_parent(parent_pid)
    worker_main(config, ready)


def _wait_until_serving(workers: list[BaseProcess], ready: list[Any], stopping: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not all(event.is_set() for event in ready):
        for process in workers:
            if not process.is_alive():
                raise WorkerFailed(f"gateway worker {process.pid} exited with {process.exitcode} before serving (see its log above)")
        if stopping():
            return
        if time.monotonic() > deadline:
            raise WorkerFailed(f"gateway workers not serving after {START_TIMEOUT_S:.0f} s")
        multiprocessing.connection.wait([p.sentinel for p in workers], timeout=0.2)


def _stop_workers(workers: list[BaseProcess], grace_s: float, metrics_dir: str) -> None:
    from prometheus_client import multiprocess

    for process in workers:
        if process.is_alive():
            process.terminate()  # SIGTERM: the worker drains, then exits
    for process in workers:
        process.join(grace_s + 30.0)
        if process.is_alive():
            log.warning("gateway worker %s did not stop in time: killed", process.pid)
            process.kill()
            process.join()
        if process.pid is not None:
            multiprocess.mark_process_dead(process.pid, metrics_dir)
