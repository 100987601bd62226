"""The process-level resources of `apron serve`, owned by its runtime (`serving/runtime.py`).

- the private redis-server (the embedded default, no `--redis-url`): started once per `apron serve`,
  before any gateway, and restarted by a supervisor thread when it dies (reaped, same socket, same
  AOF replayed). A thread, not the event loop: a restart and its AOF replay never stall calls (the
  gateway meanwhile skips Redis: `serving/cache.py`'s `RedisStore`), however long the replay takes
  (`RedisProcess` waits as long as the server makes progress), and the `--workers` parent (which
  runs no event loop) uses the very same code;
- the verification key and the development token (`auth.setup`: the development secret is created
  once, by the process that opens the resources; the workers only read it);
- `forwarded_signals` for a process without an event loop (the `--workers` parent).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from serving import auth
from serving.config import ServingConfig
from serving.redis_process import RedisProcess, RedisServerError

log = logging.getLogger("apron.gateway")
SUPERVISE_INTERVAL_S = 0.1  # a dead private redis-server is seen, and restarted, well within a second


@dataclass(frozen=True)
class Serving:
    """What `on_serving` is told once the gateway (every worker) serves: enough for the banner."""

    config: ServingConfig
    port: int
    metrics_port: int | None
    model_version: int
    tag_names: list[str]
    prototype_item_ids: list[str]
    n_items: int
    backend: str
    service_token: str | None
    worker_pids: tuple[int, ...] = ()
    http_port: int | None = None  # --http-port: HTTP/JSON and the control page


OnServing = Callable[[Serving], None]


class RedisSupervisor:
    """Restarts the private redis-server whenever it has died (a daemon thread)."""

    def __init__(self, process: RedisProcess, interval_s: float = SUPERVISE_INTERVAL_S):
        self.process = process
        self.interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="apron-redis-supervisor", daemon=True)

    def start(self) -> RedisSupervisor:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            if self.process.running():
                continue
            code = self.process.process.returncode if self.process.process is not None else None
            log.error("the private redis-server died (exit code %s): restarting it (same socket, same AOF)", code)
            try:
                self.process.restart()
            except (RedisServerError, OSError) as error:  # OSError: it could not even be spawned (fork, files)
                log.error("restarting the private redis-server failed (next try in %.1f s): %s", self.interval_s, error)
                continue
            log.info("the private redis-server is back", extra={"fields": {"restarts": self.process.restarts}})

    def stop(self) -> None:
        """Stop supervising (before the server itself is stopped, so no restart races the stop)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()


@dataclass
class Resources:
    """The process-level resources of one `apron serve` (or of one test's gateway)."""

    config: ServingConfig  # with `redis_url` pointing at the private redis-server when one runs
    security: auth.AuthSetup
    redis_process: RedisProcess | None = None
    supervisor: RedisSupervisor | None = None

    @classmethod
    def open(cls, config: ServingConfig) -> Resources:
        security = auth.setup(config.security, config.host)  # first: refuses development auth beyond loopback before anything starts
        if config.redis_url:
            return cls(config, security)
        store = config.store
        process = RedisProcess(data_dir=store.redis_dir or None, aof=store.redis_aof, maxmemory_mb=store.redis_maxmemory_mb).start()
        try:
            supervisor = RedisSupervisor(process).start()
        except BaseException:
            process.stop()
            raise
        return cls(dataclasses.replace(config, redis_url=process.url), security, process, supervisor)

    def close(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.redis_process is not None:
            self.redis_process.stop()

    def __enter__(self) -> Resources:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def forwarded_signals(on_stop: Callable[[], None], on_hangup: Callable[[], None]) -> Iterator[None]:
    """SIGTERM / SIGINT -> `on_stop`, SIGHUP -> `on_hangup` for a process without an event loop
    (the `--workers` parent), restoring the previous handlers afterwards."""
    handlers = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop, signal.SIGHUP: on_hangup}
    previous = {sig: signal.signal(sig, lambda _signum, _frame, act=act: act()) for sig, act in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
