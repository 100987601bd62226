"""The gateway's watch on Redis: health follows it, and the private redis-server is restarted.

Every `interval_s` the watch
1. reaps the private redis-server (the embedded default) if it died, and starts it again on the same
   socket and data directory (its append-only file is replayed: acknowledged edits are back);
2. PINGs Redis (private or configured) and reports a change: the server sets gRPC health to
   NOT_SERVING while Redis does not answer, SERVING again once it does.

Recommend keeps answering while Redis is down (profiles computed uncached); EditProfile and GetProfile
need Redis, and retry once after `reachable()` saw it answer again (the servicer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from serving.redis_process import RedisProcess, RedisServerError

log = logging.getLogger("apron.redis")

WATCH_INTERVAL_S = 0.1  # a crash is seen, and the private server restarted, well within 2 s
REDIS_ERRORS = (RedisError, RedisClusterException, OSError)


async def ping(redis: Redis | RedisCluster) -> bool:
    """Whether Redis answers a PING (within a second)."""
    try:
        async with asyncio.timeout(1.0):
            return bool(await redis.ping())
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


class RedisWatch:
    def __init__(
        self,
        redis: Redis | RedisCluster,
        process: RedisProcess | None,
        on_change: Callable[[bool], Awaitable[None]],
        interval_s: float = WATCH_INTERVAL_S,
    ):
        self.redis = redis
        self.process = process
        self.on_change = on_change  # called with True (Redis answers) / False (it does not)
        self.interval_s = interval_s
        self.up: bool | None = None  # unknown until the first check
        self._closing = asyncio.Event()

    async def check(self) -> bool:
        """One round: restart a dead private server, PING, report a change. Whether Redis answers."""
        if self.process is not None and not self.process.running() and not self._closing.is_set():
            code = self.process.process.returncode if self.process.process is not None else None
            log.error("the private redis-server died (exit code %s): restarting it", code)
            await self._report(False)
            try:
                # On the event loop, not in a thread: a stopping gateway cancels this task and then
                # stops the process, which must not race a restart still under way (a start takes
                # tens of milliseconds; Recommend waits that long once).
                self.process.restart()
            except RedisServerError as error:
                log.error("restarting the private redis-server failed (next try in %.1f s): %s", self.interval_s, error)
                return False
            log.info("the private redis-server is back", extra={"fields": {"restarts": self.process.restarts}})
        up = await ping(self.redis)
        await self._report(up)
        return up

    async def _report(self, up: bool) -> None:
        if self._closing.is_set():  # the gateway is stopping: health is its to set now
            return
        if up != self.up:
            self.up = up
            if not up:
                log.warning("Redis does not answer: health NOT_SERVING until it does")
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
