"""The load generator's open loop: requests go out on their schedule, each created when it falls due."""

from __future__ import annotations

import asyncio
import math
import time

from benchmarks.load import LoadStats, open_loop


def requests_alive() -> int:
    """open_loop's request tasks that exist now (created and not finished)."""
    return sum(1 for task in asyncio.all_tasks() if task.get_coro().__qualname__ == "open_loop.<locals>.one")


async def test_open_loop_creates_each_request_when_it_falls_due() -> None:
    rate, seconds = 1000.0, 0.3
    seen: list[tuple[int, int]] = []  # (requests alive, requests due) at each call's start

    async def call(i: int) -> None:
        seen.append((requests_alive(), math.floor((time.perf_counter() - before) * rate) + 1))
        await asyncio.sleep(0)

    stats = LoadStats()
    before = time.perf_counter()  # no later than open_loop's start, so "due" here is never too low
    timing = await open_loop(call, rate, seconds, stats)
    n = int(rate * seconds)
    assert timing.calls == stats.calls == len(seen) == n
    assert len(stats.send_lags_s) == n and min(stats.send_lags_s) >= 0  # none sent before its time
    assert (timing.latencies_s >= 0).all()
    # every task created up front would have all n alive at the first call, each first step delaying
    # the next request's send: a burst of the load generator's own making
    assert all(alive <= due for alive, due in seen), max(seen)
