"""The load generator's open loop: requests go out on their schedule, each created when it falls due;
its processes freeze their set-up out of the collector's sight and time the collections that run."""

from __future__ import annotations

import asyncio
import gc
import math
import time

import pytest

from benchmarks.load import LoadStats, Refused, closed_loop, open_loop, run_load
from serving.metrics import GcPauses


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


def test_gc_pauses_times_each_collection_while_the_block_runs() -> None:
    with GcPauses() as pauses:
        gc.collect()
        gc.collect(0)
    assert len(pauses.seconds) == 2 and all(seconds >= 0 for seconds in pauses.seconds)
    assert pauses not in gc.callbacks
    gc.collect()
    assert len(pauses.seconds) == 2  # nothing after the block


class FrozenHeapCheck:
    """A call source for `run_load` whose calls fail unless the load process froze its heap, and
    which collects now and then, so that the process has collections to time."""

    def open(self) -> FrozenHeapCheck:
        return self

    async def call(self, i: int) -> None:
        if gc.get_freeze_count() == 0:
            raise AssertionError("the load process's heap was not frozen before its calls")
        if i % 20 == 0:
            gc.collect(0)

    async def close(self) -> None:
        pass


def test_load_processes_freeze_their_heap_and_report_their_collections() -> None:
    load = run_load(FrozenHeapCheck(), "call", 2, 0.3, rate=200.0)
    assert load.calls_all == len(load.timing.latencies_s) > 0  # every call passed the check
    assert len(load.gc_pauses_s) >= 2 and (load.gc_pauses_s >= 0).all()  # each process collected at least once


class RefusesEveryThird:
    """A call source whose server refuses every third call for its load."""

    def open(self) -> RefusesEveryThird:
        return self

    async def call(self, i: int) -> None:
        if i % 3 == 2:
            raise Refused("the gateway is at its limit")

    async def close(self) -> None:
        pass


def test_an_open_loop_counts_the_calls_a_server_refused_for_load_and_goes_on() -> None:
    """A shedding server's RESOURCE_EXHAUSTED is an outcome an open loop reports (it ended a whole
    benchmark run before), in no latency; across the load processes too."""
    load = run_load(RefusesEveryThird(), "call", 2, 0.3, rate=200.0)
    # each process sends int(100 req/s × 0.3 s) = 30 requests numbered 0..29: 10 refused, 20 answered
    assert load.refused == 20 and len(load.timing.latencies_s) == load.calls_all == 40


async def test_a_closed_loop_still_fails_on_a_refusal() -> None:
    with pytest.raises(Refused):
        await closed_loop(RefusesEveryThird().call, 2, 0.05, warmup_s=0.0)
