"""The asyncio micro-batcher's policy (serving/batching.py), with a plain function as the model.

No timing windows: the model blocks on a `threading.Event` the test controls, so "a run is in
progress" is a state the test creates and ends, and every wait is on a condition with a deadline.
The policy tests keep every run in the worker thread (`inline_below_s=0`: a gated run must not
block the event loop); the inline runs have their own test.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serving.batching import BatcherClosed, MicroBatcher, retry_after_s
from serving.errors import ResourceExhausted
from serving.loop_turn import nothing_else_ready

DEADLINE_S = 30.0


class GatedModel:
    """A 'model' that doubles its inputs, records each batch, and, while the gate is closed, holds
    every run until the test opens it."""

    def __init__(self, gated: bool = True):
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)  # released once per run that has begun
        if not gated:
            self.gate.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        self.started.release()
        if not self.gate.wait(DEADLINE_S):
            raise TimeoutError("the test never opened the gate")
        return [2 * x for x in items]

    async def run_started(self) -> None:
        """Wait (off the event loop) until a run has begun."""
        if not await asyncio.to_thread(self.started.acquire, timeout=DEADLINE_S):
            raise TimeoutError("no run started")


async def until(condition, what: str) -> None:
    """Yield to the event loop until `condition()` holds (deadline: DEADLINE_S)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0)


async def test_an_idle_batcher_runs_a_request_at_once_alone() -> None:
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch_size=8, name="m", inline_below_s=0)
    first = asyncio.create_task(batcher.submit(1))
    await model.run_started()  # dispatched with no other request coming: nothing waited for company
    assert model.batches == [[1]]
    model.gate.set()
    assert await first == 2
    await batcher.close()


async def test_requests_arriving_during_a_run_form_the_next_batch() -> None:
    model = GatedModel()
    observed = []
    batcher = MicroBatcher(model, max_batch_size=16, name="m", observer=lambda *args: observed.append(args), inline_below_s=0)
    first = asyncio.create_task(batcher.submit(0))
    await model.run_started()
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 6)]
    await until(lambda: batcher.queued == 5, "the five requests queue behind the run")
    model.gate.set()
    assert await first == 0 and await asyncio.gather(*rest) == [2, 4, 6, 8, 10]
    assert model.batches == [[0], [1, 2, 3, 4, 5]]  # one run for all that came during the first, in order
    assert [(name, size, len(waits)) for name, size, _, waits, _ in observed] == [("m", 1, 1), ("m", 5, 5)]
    assert all(t.startswith("apron-m") for t in model.threads)  # off the event loop
    await batcher.close()


async def test_the_next_batch_is_capped_at_max_batch_size() -> None:
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch_size=4, name="m", inline_below_s=0)
    first = asyncio.create_task(batcher.submit(0))
    await model.run_started()
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 11)]
    await until(lambda: batcher.queued == 10, "ten requests queue")
    model.gate.set()
    await asyncio.gather(first, *rest)
    assert [len(b) for b in model.batches] == [1, 4, 4, 2]
    await batcher.close()


async def test_concurrent_submissions_on_an_idle_batcher_share_one_run() -> None:
    model = GatedModel(gated=False)
    batcher = MicroBatcher(model, max_batch_size=8, name="m", inline_below_s=0)
    # gather starts all eight before the collector task first runs: they are one batch
    assert await asyncio.gather(*(batcher.submit(i) for i in range(8))) == [2 * i for i in range(8)]
    assert model.batches == [list(range(8))]
    await batcher.close()


async def test_max_wait_holds_a_partial_batch_until_it_fills() -> None:
    model = GatedModel(gated=False)
    batcher = MicroBatcher(model, max_batch_size=3, max_wait_s=DEADLINE_S, name="m", inline_below_s=0)
    first = asyncio.create_task(batcher.submit(1))
    await until(lambda: batcher.queued == 1, "the first request queues")
    second = asyncio.create_task(batcher.submit(2))
    await until(lambda: batcher.queued == 2, "the second request queues")
    assert model.batches == []  # waiting for company, as configured
    assert await asyncio.gather(first, second, batcher.submit(3)) == [2, 4, 6]
    assert model.batches == [[1, 2, 3]]
    await batcher.close()


async def test_a_full_queue_sheds_with_resource_exhausted_and_a_retry_after() -> None:
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch_size=2, max_queue=3, name="m", inline_below_s=0)
    first = asyncio.create_task(batcher.submit(0))
    await model.run_started()
    queued = [asyncio.create_task(batcher.submit(i)) for i in range(1, 4)]
    await until(lambda: batcher.queued == 3, "the queue fills")
    with pytest.raises(ResourceExhausted) as refused:
        await batcher.submit(99)
    assert refused.value.retry_after_s > 0
    assert "--max-queue 3" in str(refused.value)
    assert batcher.queued == 3  # the refused request took no place
    model.gate.set()
    assert await first == 0 and await asyncio.gather(*queued) == [2, 4, 6]
    assert await batcher.submit(5) == 10  # room again once the queue drains
    assert model.batches == [[0], [1, 2], [3], [5]]
    await batcher.close()


async def test_callers_that_gave_up_hold_no_place_in_a_full_queue() -> None:
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch_size=2, max_queue=3, name="m", inline_below_s=0)
    first = asyncio.create_task(batcher.submit(0))
    await model.run_started()  # the run in progress holds the rest in the queue
    gave_up = [asyncio.create_task(batcher.submit(i)) for i in range(1, 4)]
    await until(lambda: batcher.queued == 3, "the queue fills")
    for task in gave_up:  # their deadlines passed
        task.cancel()
    await asyncio.gather(*gave_up, return_exceptions=True)
    assert batcher.abandoned == 3
    waiting = asyncio.create_task(batcher.submit(7))  # taken, not refused for callers nobody waits for
    await until(lambda: batcher.queued == 1, "the new caller queued alone")
    model.gate.set()
    assert await first == 0 and await waiting == 14
    assert model.batches == [[0], [7]]
    assert batcher.abandoned == 0
    await batcher.close()


async def test_only_callers_that_gave_up_while_queued_count_as_abandoned() -> None:
    """A caller that gives up once its batch took it holds no queue entry: counting it would make a
    full queue look for entries to drop that are not there."""
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch_size=2, max_queue=4, name="m", inline_below_s=0)
    running = [asyncio.create_task(batcher.submit(i)) for i in range(2)]
    await model.run_started()  # both were taken into the run in progress
    queued = [asyncio.create_task(batcher.submit(i)) for i in range(2, 4)]
    await until(lambda: batcher.queued == 2, "two queue behind the run")
    for task in (*running, queued[0]):
        task.cancel()
    await asyncio.gather(*running, queued[0], return_exceptions=True)
    assert batcher.abandoned == 1  # the queued one only
    model.gate.set()
    assert await queued[1] == 6  # its batch dropped the one that gave up
    assert batcher.abandoned == 0 and batcher.queued == 0
    assert model.batches == [[0, 1], [3]]
    await batcher.close()


async def test_close_waits_for_the_run_in_progress_off_the_event_loop() -> None:
    """A retired version's batcher closes while its last run goes on: the loop keeps serving
    meanwhile, and close returns only once that run is over (its model may be released then)."""
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch_size=2, name="m", inline_below_s=0)
    running = asyncio.create_task(batcher.submit(0))
    await model.run_started()
    turned = threading.Event()
    # opens the gate once the loop turned during close (or, if close holds the loop, when the wait
    # ends: the test then fails instead of hanging)
    opener = threading.Thread(target=lambda: (turned.wait(DEADLINE_S), model.gate.set()), daemon=True)
    opener.start()
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0)  # close starts, and waits for the run
    assert not model.gate.is_set(), "close held the event loop until the run ended"
    turned.set()
    await closing
    assert model.gate.is_set()  # close returned after the run, not before
    with pytest.raises(BatcherClosed):
        await running
    opener.join()


def test_retry_after_counts_the_batches_ahead_and_the_run_in_progress() -> None:
    # 5 queued at 2 per batch: 3 batches of 10 ms, after the 4 ms left of the current 10 ms run
    assert retry_after_s(5, 2, 0.010, 0.006) == pytest.approx(0.034)
    # a run already past the average stretches every estimate to its length so far
    assert retry_after_s(2, 2, 0.010, 0.050) == pytest.approx(0.050)
    # nothing known yet (no run finished): still a positive hint
    assert retry_after_s(1, 8, 0.0, None) > 0


async def test_a_failing_run_fails_every_caller_of_the_batch() -> None:
    def broken(items: list[int]) -> list[int]:
        raise ValueError("model exploded")

    batcher = MicroBatcher(broken, max_batch_size=4, name="m", inline_below_s=0)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ValueError) and "exploded" in str(r) for r in results)
    await batcher.close()


async def test_callers_that_gave_up_while_queued_are_skipped() -> None:
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch_size=8, name="m", inline_below_s=0)
    first = asyncio.create_task(batcher.submit(0))
    await model.run_started()
    doomed = asyncio.create_task(batcher.submit(99))
    kept = asyncio.create_task(batcher.submit(1))
    await until(lambda: batcher.queued == 2, "both queue")
    doomed.cancel()
    model.gate.set()
    assert await first == 0 and await kept == 2
    assert model.batches == [[0], [1]]
    await batcher.close()


async def test_close_fails_queued_callers_and_refuses_new_work() -> None:
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch_size=1, name="m", inline_below_s=0)
    running = asyncio.create_task(batcher.submit(0))
    await model.run_started()
    waiting = asyncio.create_task(batcher.submit(1))
    await until(lambda: batcher.queued == 1, "the second request queues")
    model.gate.set()  # close() waits for the worker thread; the run must be able to end
    await batcher.close()
    results = await asyncio.gather(running, waiting, return_exceptions=True)
    assert all(isinstance(r, BatcherClosed) or r == 0 for r in results)
    assert isinstance(results[1], BatcherClosed)
    with pytest.raises(BatcherClosed):
        await batcher.submit(2)


async def test_a_lone_request_is_dispatched_without_a_loop_turn_and_concurrent_ones_still_share_a_run() -> None:
    model = GatedModel(gated=False)
    batcher = MicroBatcher(model, max_batch_size=4, name="m", inline_below_s=DEADLINE_S)  # every known run is short
    assert await batcher.submit(1) == 2  # the first run's time is unknown: the worker thread
    loop = asyncio.get_running_loop()
    await until(lambda: nothing_else_ready(loop), "no other callback ready")
    lone = batcher.submit(3)  # driven by hand: it must finish without yielding to the loop once
    with pytest.raises(StopIteration) as done:
        lone.send(None)
    assert done.value.value == 6 and model.batches[-1] == [3]
    other = asyncio.ensure_future(batcher.submit(5))  # its first step is ready in this turn: it joins
    assert await batcher.submit(4) == 8 and await other == 10
    assert model.batches[-1] == [4, 5]
    await batcher.close()


async def test_a_lone_request_runs_on_the_loop_for_runs_a_batch_would_hand_to_the_worker() -> None:
    model = GatedModel(gated=False)
    batcher = MicroBatcher(model, max_batch_size=4, name="m", inline_below_s=10.0)
    assert await batcher.submit(1) == 2  # the first run's time is unknown: the worker thread
    # recent runs took 3 x inline_below_s (a real run here is ~0 s: the smoothed time stays above it)
    batcher._run_cost_s = 3 * batcher.inline_below_s
    loop = asyncio.get_running_loop()
    await until(lambda: nothing_else_ready(loop), "no other callback ready")
    lone = batcher.submit(3)
    with pytest.raises(StopIteration) as done:  # alone: on the loop (under LONE_INLINE_FACTOR x)
        lone.send(None)
    assert done.value.value == 6 and threading.current_thread().name in model.threads
    model.threads.clear()
    assert await asyncio.gather(*(batcher.submit(i) for i in range(3))) == [0, 2, 4]  # not alone: the worker
    assert model.batches[-1] == [0, 1, 2] and all(t.startswith("apron-m") for t in model.threads)
    await batcher.close()


class WaitingModel(GatedModel):
    """Its first run waits 20 ms without CPU (as a run in the worker thread waits for the GIL or a
    core, or for helper threads or a GPU that do its work)."""

    def __call__(self, items: list[int]) -> list[int]:
        if len(self.batches) == 0:
            threading.Event().wait(0.02)
        return super().__call__(items)


@pytest.mark.parametrize(("runs_on_caller", "where"), [(True, "the loop"), (False, "the worker")])
async def test_a_run_that_waited_counts_its_cpu_where_its_thread_does_all_its_work(runs_on_caller: bool, where: str) -> None:
    """Where the calling thread does all of a run's work (a CPU session of one intra-op thread), the
    choice follows the runs' CPU time: their wait in the worker thread says nothing of what they would
    take from the loop, and short runs come back to it (on wall time they stayed in the thread under
    load). Where helper threads or a GPU do the work, the calling thread's CPU says nothing of the
    wait: wall time, and a slow run stays in the worker thread."""
    model = WaitingModel(gated=False)
    batcher = MicroBatcher(model, max_batch_size=4, name="m", inline_below_s=0.005, runs_on_caller=runs_on_caller)
    assert await batcher.submit(1) == 2  # the first run's time is unknown: the worker thread
    assert batcher._run_s >= 0.02 > batcher.inline_below_s  # its wall time: 4 x the limit
    model.threads.clear()
    assert await asyncio.gather(*(batcher.submit(i) for i in range(3))) == [0, 2, 4]
    on_loop = model.threads == {threading.current_thread().name}
    assert on_loop == (where == "the loop"), model.threads
    await batcher.close()


def test_a_loop_that_keeps_no_ready_queue_where_asyncio_does_is_never_taken_for_idle() -> None:
    class OtherLoop:  # e.g. uvloop: its callbacks are not in a `_ready` deque
        _ready = None

    assert not nothing_else_ready(OtherLoop())  # type: ignore[arg-type]  # its callers defer, as before


async def test_runs_shorter_than_a_thread_hop_run_on_the_event_loop() -> None:
    model = GatedModel(gated=False)
    batcher = MicroBatcher(model, max_batch_size=4, name="m", inline_below_s=DEADLINE_S)  # every known run is short
    assert await batcher.submit(1) == 2  # the first run's time is unknown: the worker thread
    assert model.threads == {next(iter(model.threads))} and next(iter(model.threads)).startswith("apron-m")
    assert await asyncio.gather(*(batcher.submit(i) for i in range(6))) == [2 * i for i in range(6)]
    assert threading.current_thread().name in model.threads  # then on the loop, still in batches
    assert [len(b) for b in model.batches] == [1, 4, 2]
    await batcher.close()

    slow = GatedModel()
    threaded = MicroBatcher(slow, max_batch_size=4, name="s", inline_below_s=1e-9)  # no real run is this short
    first = asyncio.create_task(threaded.submit(1))
    await slow.run_started()
    slow.gate.set()
    assert await first == 2 and await threaded.submit(2) == 4
    assert all(t.startswith("apron-s") for t in slow.threads)
    await threaded.close()


def burn_cpu(seconds: float) -> None:
    """Keep this thread busy until it has used `seconds` of CPU (a condition, not a wall-clock window)."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


async def test_each_run_reports_the_cpu_its_thread_spent_in_the_worker_and_on_the_loop() -> None:
    observed: list[tuple] = []

    def model(items: list[int]) -> list[int]:
        burn_cpu(0.002)
        return items

    batcher = MicroBatcher(model, max_batch_size=4, name="m", observer=lambda *args: observed.append(args), inline_below_s=DEADLINE_S)
    assert await batcher.submit(1) == 1  # the first run: in the worker thread
    assert await asyncio.gather(*(batcher.submit(i) for i in range(4))) == [0, 1, 2, 3]  # a short run's full batch: on the loop
    assert len(observed) == 2
    for _, _, run_seconds, _, cpu_seconds in observed:
        assert cpu_seconds >= 0.002  # what the run burnt on its thread, whichever thread that was
        assert cpu_seconds <= run_seconds + 0.001  # one thread's CPU cannot outrun the wall time (clock granularity aside)
    await batcher.close()


async def test_a_failed_run_still_reports_its_cpu() -> None:
    observed: list[tuple] = []

    def broken(items: list[int]) -> list[int]:
        burn_cpu(0.002)
        raise ValueError("bad batch")

    batcher = MicroBatcher(broken, max_batch_size=4, name="m", observer=lambda *args: observed.append(args), inline_below_s=0)
    with pytest.raises(ValueError):
        await batcher.submit(1)
    assert observed and observed[0][4] >= 0.002
    await batcher.close()


async def test_under_load_a_short_run_goes_on_the_loop_only_once_its_batch_is_big_enough() -> None:
    model = GatedModel(gated=False)
    batcher = MicroBatcher(model, max_batch_size=8, name="m", inline_below_s=DEADLINE_S, inline_min_batch=3)
    assert await batcher.submit(1) == 2  # the first run's time is unknown: the worker thread
    here = threading.current_thread().name
    model.threads.clear()
    assert await asyncio.gather(*(batcher.submit(i) for i in range(2))) == [0, 2]  # not alone, 2 < 3: the worker
    assert model.batches[-1] == [0, 1] and here not in model.threads
    model.threads.clear()
    assert await asyncio.gather(*(batcher.submit(i) for i in range(3))) == [0, 2, 4]  # 3 requests: on the loop
    assert model.batches[-1] == [0, 1, 2] and model.threads == {here}
    await batcher.close()


def test_inline_min_batch_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="inline_min_batch"):
        MicroBatcher(lambda items: items, max_batch_size=4, inline_min_batch=0)
