"""Closed- and open-loop load on an async call: the two ways the gateway benchmarks drive traffic,
from one event loop (`closed_loop`, `open_loop`) or from several spawned processes (`run_load`:
the multi-process asyncio gRPC driver of `make benchmarks`).

Closed loop (`clients` callers, each sending its next request when the last one returns) finds the
maximum throughput; open loop (requests started at a fixed rate whatever the replies do) measures
latency at a given load without the coordinated-omission bias of a closed loop.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import queue
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from benchmarks.timing import Timing
from serving.metrics import GcPauses

Call = Callable[[int], Awaitable[object]]  # request number -> the RPC


class Refused(Exception):
    """What a call raises when the server refused it for its load (gRPC RESOURCE_EXHAUSTED): an
    open loop counts it and goes on (`LoadStats.refused`), as a shedding server means it to; a
    closed loop, whose callers wait for each other, fails."""


@dataclass
class LoadStats:
    """What a run saw beyond its measured latencies: every completed call (warm-up included, to set
    against a server's own counters) and, in an open loop, how late each request was sent."""

    calls: int = 0
    refused: int = 0  # open loop: calls the server refused for its load (`Refused`), in no latency
    send_lags_s: list[float] = field(default_factory=list)
    # every completed call's send and receipt, time.perf_counter summed: set against the gateway's
    # own call log (request_path.call_split), the mean time before and after its handler
    sent_sum_s: float = 0.0
    received_sum_s: float = 0.0


async def closed_loop(call: Call, clients: int, seconds: float, warmup_s: float = 1.0, stats: LoadStats | None = None) -> Timing:
    """`clients` concurrent callers for `seconds` (after `warmup_s`); failures raise."""
    stats = stats if stats is not None else LoadStats()
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
            t1 = time.perf_counter()
            stats.calls += 1
            stats.sent_sum_s += t0
            stats.received_sum_s += t1
            if measuring:
                latencies.append(t1 - t0)

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


async def open_loop(call: Call, rate: float, seconds: float, stats: LoadStats | None = None) -> Timing:
    """Start one request every 1/rate seconds for `seconds`; latency is measured from the scheduled
    start, so a stalled server shows up in the percentiles instead of slowing the sender (how late
    the sender itself was goes to `stats.send_lags_s`).

    Each request's task is created when it falls due, not all at the start: thousands of tasks
    created at once would each take a first step (reading the clock, arming a timer) in the loop's
    first turn, so the first requests would go out tens of ms late, together, and a burst the
    load generator made would count in the tail as the server's."""
    stats = stats if stats is not None else LoadStats()
    interval = 1.0 / rate
    n = max(1, int(rate * seconds))

    async def one(i: int, scheduled: float) -> float | None:
        sent = time.perf_counter()
        stats.send_lags_s.append(sent - scheduled)
        try:
            await call(i)
        except Refused:
            stats.refused += 1
            return None
        received = time.perf_counter()
        stats.calls += 1
        stats.sent_sum_s += sent
        stats.received_sum_s += received
        return received - scheduled

    start = time.perf_counter()
    tasks = []
    for i in range(n):
        scheduled = start + i * interval
        wait = scheduled - time.perf_counter()
        if wait > 0:  # else it is due already (the loop was busy): sent at the loop's next turn
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    latencies = [latency for latency in await asyncio.gather(*tasks) if latency is not None]
    return Timing(np.asarray(latencies), 1, time.perf_counter() - start)


# ----------------------------------------------------------------------------- many load processes


class CallSource(Protocol):
    """What a load process needs, picklable (processes are spawned): `open()` builds, inside the
    process's own event loop, an object whose method `method` is the call, and `close` ends it."""

    def open(self) -> Any: ...


@dataclass(frozen=True)
class ProcessLoad:
    """Load from several processes, each an asyncio loop with its own gRPC channels."""

    timing: Timing  # all processes' latencies; wall time from the common start to the last end
    cpu_s: float  # CPU seconds the load processes spent during the measured window
    processes: int
    calls_all: int = 0  # completed calls, warm-up included
    sent_sum_s: float = 0.0  # their sends and receipts, time.perf_counter summed (LoadStats)
    received_sum_s: float = 0.0
    send_lags_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # open loop: send time - scheduled time
    gc_pauses_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the load processes' collections in the window
    refused: int = 0  # open loop: calls the server refused for its load (LoadStats.refused)
    # the measured window, time.monotonic() (system-wide on Linux): the first process's start, the
    # last one's end; what other processes' CPU (the gateway's, /proc/stat) is measured over
    window: tuple[float, float] = (0.0, 0.0)


def run_load(
    source: CallSource,
    method: str,
    processes: int,
    seconds: float,
    *,
    clients: int = 0,
    rate: float = 0.0,
    warmup_s: float = 1.0,
) -> ProcessLoad:
    """Closed loop with `clients` callers in all (`rate` 0) or open loop at `rate` requests/s in
    all, split evenly over `processes` spawned processes that start together (a barrier). One
    Python process drives at most a few thousand gRPC calls a second: several let the load
    generator reach beyond the gateway it measures, on a machine with the cores for both."""
    if (clients > 0) == (rate > 0):
        raise ValueError("give clients (closed loop) or rate (open loop), not both")
    processes = max(1, min(processes, clients) if clients else processes)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start = context.Barrier(processes)
    shares = [clients // processes + (i < clients % processes) for i in range(processes)] if clients else [0] * processes
    workers = [
        context.Process(
            target=_load_process,
            args=(source, method, shares[i], rate / processes, seconds, warmup_s, start, results),
            name=f"apron-load-{i}",
        )
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        parts = []
        deadline = time.monotonic() + seconds + warmup_s + 300  # spawning and importing take a while
        while len(parts) < len(workers):
            try:
                parts.append(results.get(timeout=1.0))
            except queue.Empty:
                failed = [w for w in workers if w.exitcode not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"load process {failed[0].name} exited with {failed[0].exitcode}" if failed else "load processes hung"
                    ) from None
    finally:
        for worker in workers:
            worker.join(60)
            if worker.is_alive():
                worker.kill()
    errors = [part for part in parts if isinstance(part, str)]
    if errors:
        raise RuntimeError(f"a load process failed: {errors[0]}")
    latencies = np.concatenate([part[0] for part in parts])
    wall_s = max(part[1] for part in parts)
    return ProcessLoad(
        Timing(latencies, 1, wall_s), sum(part[2] for part in parts), processes,
        calls_all=sum(part[5] for part in parts), send_lags_s=np.concatenate([part[6] for part in parts]),
        sent_sum_s=sum(part[7] for part in parts), received_sum_s=sum(part[8] for part in parts), window=(min(part[3] for part in parts), max(part[4] for part in parts)),
        gc_pauses_s=np.concatenate([part[9] for part in parts]), refused=sum(part[10] for part in parts),
    )  # fmt: skip


def _load_process(
    source: CallSource, method: str, clients: int, rate: float, seconds: float, warmup_s: float, start: Any, results: Any
) -> None:
    try:
        results.put(asyncio.run(_load(source, method, clients, rate, seconds, warmup_s, start)))
    except Exception as error:  # reported to the parent, which raises
        results.put(f"{type(error).__name__}: {error}")


async def _load(
    source: CallSource, method: str, clients: int, rate: float, seconds: float, warmup_s: float, start: Any
) -> tuple[np.ndarray, float, float, float, float, int, np.ndarray, float, float, np.ndarray, int]:
    opened = source.open()
    call = getattr(opened, method)
    # What was imported and set up lives as long as the process: out of the collector's sight, so
    # that a full collection does not scan it (tens of ms here) and send the next requests late,
    # a pause of the load generator's own that would count as the server's latency (as the
    # gateway does after start-up, serving/runtime.py). Collections that still run are timed.
    gc.collect()
    gc.freeze()
    pauses = GcPauses()
    await asyncio.to_thread(start.wait)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    stats = LoadStats()
    with pauses:
        if clients:
            timing = await closed_loop(call, clients, seconds, warmup_s, stats)
        else:
            timing = await open_loop(call, rate, seconds, stats)
    ended = time.monotonic()
    # a closed loop's warm-up (same load, not timed) is inside the CPU window: scale it out
    cpu_s = (time.process_time() - cpu0) * timing.wall_s / (time.perf_counter() - wall0)
    await opened.close()
    return (
        timing.latencies_s, timing.wall_s, cpu_s, ended - timing.wall_s, ended,
        stats.calls, np.asarray(stats.send_lags_s), stats.sent_sum_s, stats.received_sum_s, np.asarray(pauses.seconds),
        stats.refused,
    )  # fmt: skip
