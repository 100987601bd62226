"""The gateway's watches on its dependencies: Redis here, the inference backend through the same `Watch`.

Every `interval_s` a watch asks its probe (Redis: a PING) and reports a change to the gateway's
health (`serving/health.py`): the `apron.redis` health service and `apron_backend_up{backend="redis"}`
say whether Redis answers. Readiness does not follow Redis (serving/health.py says why). A private
redis-server that died is restarted by the process's runtime (`serving/runtime.py`), not here.

Each check's result also goes to `on_check` (the gateway's `RedisStore.mark`): while Redis is known
down the store skips it at once instead of waiting for each call's timeout.

Recommend keeps answering while Redis is down (profiles computed uncached); EditProfile and GetProfile
need Redis, and retry once after `reachable()` saw it answer again (the servicer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisClusterException, RedisError, ResponseError

log = logging.getLogger("apron.redis")

WATCH_INTERVAL_S = 0.1  # an outage is seen, and health changed, well within a second
REDIS_ERRORS = (RedisError, RedisClusterException, OSError)


async def ping(redis: Redis | RedisCluster, timeout_s: float = 1.0) -> bool:
    """Whether Redis answers a PING within `timeout_s` (the gateway's: --redis-timeout-s, the
    longest one Redis operation may take)."""
    try:
        async with asyncio.timeout(timeout_s):
            return bool(await redis.ping())
    except ResponseError:  # it answered, if only to refuse: a Redis that cannot persist refuses PING
        return True  # too (MISCONF); the store's operations say what each refusal means
    except (*REDIS_ERRORS, TimeoutError):
        return False


async def reachable(redis: Redis | RedisCluster, timeout_s: float, poll_s: float = 0.05) -> bool:
    """Wait (at most `timeout_s`) until Redis answers a PING; whether it did."""
    deadline = time.monotonic() + timeout_s
    while not await ping(redis):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


class Watch:
    """Polls `probe` every `interval_s` and reports each change to `on_change`."""

    def __init__(
        self,
        name: str,
        probe: Callable[[], Awaitable[bool]],
        on_change: Callable[[bool], Awaitable[None]],
        interval_s: float,
        while_down: str,
        logger: logging.Logger,
        on_check: Callable[[bool], None] | None = None,
    ):
        self.name = name
        self.probe = probe
        self.on_change = on_change  # called with True (it answers) / False (it does not)
        self.on_check = on_check  # called with every check's result (changed or not)
        self.interval_s = interval_s
        self.while_down = while_down  # what that means, for the log line
        self.log = logger
        self.up: bool | None = None  # unknown until the first check
        self._closing = asyncio.Event()

    async def check(self) -> bool:
        """One round: probe, report a change. Whether it answers (a probe that raises: it does not,
        and the watch goes on: a watch that died would leave health as it last was)."""
        try:
            up = await self.probe()
        except Exception:
            self.log.exception("%s: its health probe failed", self.name)
            up = False
        if self.on_check is not None:
            self.on_check(up)
        await self._report(up)
        return up

    async def _report(self, up: bool) -> None:
        if self._closing.is_set():  # the gateway is stopping: health is its to set now
            return
        if up != self.up:
            was, self.up = self.up, up
            if not up:
                self.log.warning("%s does not answer: %s", self.name, self.while_down)
            elif was is False:
                self.log.info("%s answers again", self.name)
            await self.on_change(up)

    async def run(self) -> None:
        """Check every `interval_s` until `close()`."""
        while not self._closing.is_set():
            try:  # the wait ends early on close(): no cancellation needed (redis-py may swallow one)
                await asyncio.wait_for(self._closing.wait(), self.interval_s)
            except TimeoutError:
                await self.check()

    async def close(self, task: asyncio.Task, timeout_s: float = 5.0) -> None:
        """Stop `task` (running `run()`): ask, wait for it, cancel only if it does not end."""
        self._closing.set()
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            task.cancel()


class RedisWatch(Watch):
    def __init__(
        self,
        redis: Redis | RedisCluster,
        on_change: Callable[[bool], Awaitable[None]],
        interval_s: float = WATCH_INTERVAL_S,
        on_check: Callable[[bool], None] | None = None,
        timeout_s: float = 1.0,
    ):
        while_down = "Recommend answers uncached, EditProfile and GetProfile UNAVAILABLE (skipped at once), until it does"
        super().__init__("Redis", lambda: ping(redis, timeout_s), on_change, interval_s, while_down, log, on_check)
        self.redis = redis
