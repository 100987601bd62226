"""The one owner of `apron serve`'s process-level resources, for one process and for N workers alike.

    with Resources.open(config) as resources:   # auth key (+ development token), private Redis, its supervisor
        serve(config, on_serving)                 # one gateway, or N workers (serving/workers.py only spawns)

What lives here and nowhere else:
- the process-level resources (`serving/resources.py`): the private redis-server and its
  supervisor, the verification key and the development token, opened once per `apron serve`;
- signals: SIGTERM / SIGINT stop (in-flight calls drain), SIGHUP rolls out the newest model version
  (`serving/models.py`); a `--workers` parent forwards them to its workers;
- the drain on stop.

`serving/server.py` only builds, starts and stops one gateway; `serving/cli.py` prints the banner
through the `on_serving` callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Iterator

from serving import tracing
from serving.config import ServingConfig, ignored_settings
from serving.models import ModelLoadError
from serving.resources import OnServing, Resources
from serving.server import create_server, load_model
from serving.workers import run_workers

log = logging.getLogger("apron.gateway")


def serve(config: ServingConfig, on_serving: OnServing | None = None) -> None:
    """`apron serve`: one gateway process, or with `--workers N` a parent and N worker processes,
    until SIGTERM / SIGINT (or a worker's death)."""
    for line in ignored_settings(config):
        log.warning(line)
    model = load_model(config)  # a repository without the model is refused before anything starts
    tracing.exporter_names(os.environ)  # so are OTEL_* variables asking for what it cannot export
    with unwinding_on_sigterm():
        if config.workers > 1:
            with Resources.open(config) as resources:
                run_workers(resources, model, worker_main, on_serving)
            return
        with Resources.open(config) as resources:
            asyncio.run(run_gateway(resources.config, resources, on_serving))


@contextlib.contextmanager
def unwinding_on_sigterm() -> Iterator[None]:
    """Until the gateway's own handlers take over (run_gateway's, the --workers parent's): SIGTERM
    unwinds like Ctrl-C, so a private redis-server already started is stopped, never orphaned, and
    SIGHUP is ignored (before serving there is nothing to roll out)."""

    def unwind(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, unwind), signal.SIGHUP: signal.signal(signal.SIGHUP, signal.SIG_IGN)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def run_gateway(config: ServingConfig, resources: Resources, on_serving: OnServing | None = None) -> None:
    """One gateway until SIGTERM / SIGINT, then a graceful stop; SIGHUP rolls out the newest model."""
    tracing.configure_from_env()  # per process (each --workers process exports its own spans)
    sys.setswitchinterval(config.server.gil_switch_interval_ms / 1e3)  # per process too (--gil-switch-interval-ms)
    gc.set_threshold(config.server.gc_gen0_threshold, *gc.get_threshold()[1:])  # and --gc-gen0-threshold
    try:
        await _run_gateway(config, resources, on_serving)
    finally:
        tracing.shutdown()  # spans still queued go out before the process ends


async def _run_gateway(config: ServingConfig, resources: Resources, on_serving: OnServing | None) -> None:
    server, _ = await create_server(config, resources=resources)
    # Handlers before anything is announced: a SIGTERM sent as soon as the banner shows must still
    # drain, and the resources' owner (the caller) then stops the private redis-server.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task] = set()

    async def reload() -> None:
        with contextlib.suppress(ModelLoadError):  # logged and counted; the old version keeps serving
            await server.models.reload()

    def on_hangup() -> None:
        task = loop.create_task(reload(), name="apron-sighup-reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        try:
            await server.start()
        except BaseException:
            await server.stop(grace=0)  # closes what start() opened; the caller closes the resources
            raise
        if on_serving is not None:
            on_serving(server.serving_info())
        waiter = asyncio.create_task(server.wait_for_termination())
        await asyncio.wait([waiter, asyncio.create_task(stopping.wait())], return_when=asyncio.FIRST_COMPLETED)
        log.info("shutting down: draining in-flight calls", extra={"fields": {"grace_s": config.shutdown_grace_s}})
        await server.stop(drain_delay_s=config.drain_delay_s)
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def worker_main(config: ServingConfig, ready: object) -> None:
    """A `--workers` process (spawned: nothing inherited): the same `run_gateway` as one process,
    on the parent's Redis (`config.redis_url`) and the parent's key; `ready.set()` once serving."""
    from serving.logs import configure_logging

    configure_logging(config.log_level, config.log_format)
    with unwinding_on_sigterm(), Resources.open(config) as resources:  # owns nothing but the key: redis_url is set
        asyncio.run(run_gateway(config, resources, lambda _serving: ready.set()))  # type: ignore[attr-defined]
