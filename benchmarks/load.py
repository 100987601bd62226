"""Closed- and open-loop load on an async call: the two ways the gateway benchmarks drive traffic.

Closed loop (`clients` callers, each sending its next request when the last one returns) finds the
maximum throughput; open loop (requests started at a fixed rate whatever the replies do) measures
latency at a given load without the coordinated-omission bias of a closed loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np

from benchmarks.timing import Timing

Call = Callable[[int], Awaitable[object]]  # request number -> the RPC


async def closed_loop(call: Call, clients: int, seconds: float, warmup_s: float = 1.0) -> Timing:
    """`clients` concurrent callers for `seconds` (after `warmup_s`); failures raise."""
    latencies: list[float] = []
    counter = iter(range(1 << 62))
    measuring = False
    stop_at = 0.0

    async def client() -> None:
        while True:
            now = time.perf_counter()
            if measuring and now >= stop_at:
                return
            t0 = time.perf_counter()
            await call(next(counter))
            if measuring:
                latencies.append(time.perf_counter() - t0)

    async def clock() -> tuple[float, float]:
        nonlocal measuring, stop_at
        await asyncio.sleep(warmup_s)
        start = time.perf_counter()
        stop_at = start + seconds
        measuring = True
        return start, stop_at

    clock_task = asyncio.ensure_future(clock())
    await asyncio.gather(*(client() for _ in range(clients)))
    start, _ = clock_task.result()
    return Timing(np.asarray(latencies), 1, time.perf_counter() - start)


async def open_loop(call: Call, rate: float, seconds: float) -> Timing:
    """Start one request every 1/rate seconds for `seconds`; latency is measured from the scheduled
    start, so a stalled server shows up in the percentiles instead of slowing the sender."""
    interval = 1.0 / rate
    n = max(1, int(rate * seconds))
    start = time.perf_counter()

    async def one(i: int) -> float:
        scheduled = start + i * interval
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        await call(i)
        return time.perf_counter() - scheduled

    latencies = await asyncio.gather(*(one(i) for i in range(n)))
    return Timing(np.asarray(latencies), 1, time.perf_counter() - start)
