"""The asyncio micro-batcher (serving/batching.py) with a plain function as the model."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serving.batching import BatcherClosed, MicroBatcher


class Recorder:
    """A 'model' that doubles its inputs and records each run's batch."""

    def __init__(self, delay: float = 0.0):
        self.batches: list[list[int]] = []
        self.delay = delay
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        self.batches.append(list(items))
        return [2 * x for x in items]


async def test_concurrent_requests_share_one_run() -> None:
    model = Recorder()
    observed = []
    batcher = MicroBatcher(
        model, max_batch_size=8, max_wait_s=0.05, name="m", observer=lambda *args: observed.append(args)
    )
    results = await asyncio.gather(*(batcher.submit(i) for i in range(8)))
    await batcher.close()
    assert results == [2 * i for i in range(8)]
    assert model.batches == [list(range(8))]  # one run, arrival order kept
    name, size, run_seconds, waits = observed[0]
    assert (name, size, len(waits)) == ("m", 8, 8) and run_seconds >= 0
    assert all(t.startswith("apron-m") for t in model.threads)  # off the event loop


async def test_max_batch_size_splits_and_max_wait_bounds_the_wait() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, max_batch_size=4, max_wait_s=0.01, name="m")
    await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert [len(b) for b in model.batches] == [4, 4, 2]
    start = time.perf_counter()
    assert await batcher.submit(7) == 14  # alone: dispatched after max_wait, not stuck waiting for company
    assert time.perf_counter() - start < 0.5
    await batcher.close()


async def test_requests_arriving_during_a_run_form_the_next_batch() -> None:
    model = Recorder(delay=0.1)
    batcher = MicroBatcher(model, max_batch_size=16, max_wait_s=0.0, name="m")
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0.03)  # the first run is in progress
    rest = await asyncio.gather(*(batcher.submit(i) for i in range(1, 6)))
    assert await first == 0 and rest == [2, 4, 6, 8, 10]
    assert model.batches == [[0], [1, 2, 3, 4, 5]]
    await batcher.close()


async def test_a_failing_run_fails_every_caller_of_the_batch() -> None:
    def broken(items: list[int]) -> list[int]:
        raise ValueError("model exploded")

    batcher = MicroBatcher(broken, max_batch_size=4, max_wait_s=0.01, name="m")
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) and "exploded" in str(r) for r in results)
    await batcher.close()


async def test_cancelled_callers_are_skipped() -> None:
    model = Recorder()
    batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0.05, name="m")
    doomed = asyncio.create_task(batcher.submit(99))
    kept = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    doomed.cancel()
    assert await kept == 2
    assert model.batches == [[1]]
    await batcher.close()


async def test_closed_batcher_refuses_work() -> None:
    batcher = MicroBatcher(Recorder(), max_batch_size=2, max_wait_s=0.0, name="m")
    assert await batcher.submit(1) == 2
    await batcher.close()
    with pytest.raises(BatcherClosed):
        await batcher.submit(2)
