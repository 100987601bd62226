"""A generic asyncio micro-batcher: concurrent requests share one model run.

`await batcher.submit(item)` queues one item and returns its result. One batch at a time runs in
the batcher's own worker thread, so the event loop keeps accepting requests while the model runs.
The policy is adaptive, with no timer in the common path:

- an idle batcher runs a request at once (a batch of one): a lone client pays no wait;
- requests that arrive during a run queue up and form the next batch, up to `max_batch_size`, so
  the batch size follows the load instead of a timer;
- `max_wait_s` > 0 (off by default) additionally holds a batch that is not full until its oldest
  item has waited that long, trading a lone request's latency for bigger batches;
- a batch whose recent runs took less than `inline_below_s` (a few tenths of a millisecond: a small
  catalog; the CPU time on the thread that ran them where that thread does all of a run's work,
  `runs_on_caller`, else their wall time) runs on the event loop itself when it holds at least `inline_min_batch` requests (1 by
  default): handing it to the worker thread and back would cost more than the run (a thread
  wake-up, a self-pipe write, one loop iteration each way); with a larger `inline_min_batch` a
  smaller batch under load goes to the worker thread instead, leaving the loop, which every call
  needs, to the calls that form the next batch (config.DEFAULT_INLINE_MIN_BATCH: what that buys
  and costs); a lone request (nothing else ready in the loop turn) runs on the loop for runs up to
  LONE_INLINE_FACTOR times as long, as nothing else waits on it; longer runs stay in the worker
  thread;
- the queue is bounded (`max_queue` waiting items): a request beyond it is refused at once with
  `ResourceExhausted`, whose `retry_after_s` is the time the queue ahead of it needs (batches ahead
  × the run time of recent batches), so overload sheds load instead of growing every caller's
  latency without limit.

A caller that gives up (deadline, cancellation) before its batch is dispatched is skipped; one
that gives up during the run simply does not read its result.

Event-loop hops are part of every request's latency and of the gateway's CPU, so there is no
collector task: a submission on an idle batcher schedules one dispatch callback for the end of the
current loop turn (what arrives in the same turn shares the run), or, when no other callback is
ready to run in this turn (`serving/loop_turn.py`: nothing could join), dispatches at once: a lone
request then runs inline without leaving its coroutine, or reaches the worker thread a turn
sooner. The worker thread hands the finished batch back with one `call_soon_threadsafe`, whose
callback sets every caller's result and dispatches the next batch at once.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from serving import stages as stage_clock
from serving.config import DEFAULT_INLINE_MIN_BATCH, DEFAULT_MAX_QUEUE
from serving.errors import ResourceExhausted
from serving.loop_turn import nothing_else_ready

T = TypeVar("T")
R = TypeVar("R")

RUN_TIME_SMOOTHING = 0.2  # weight of the newest batch in the run-time average behind retry-after
# Runs this short run on the event loop (MicroBatcher.inline_below_s): on the 2-core machine a trip
# to the worker thread and back cost 60-100 µs of CPU and 0.2-0.4 ms of latency per batch (the
# stages scorer_queue and scorer_resume of BENCHMARKS.md's request-path table).
INLINE_BELOW_S = 0.0005
MIN_RETRY_AFTER_S = 0.001
# A lone request (dispatched at once: nothing else ready in the loop turn, serving/loop_turn.py) runs
# on the event loop for runs up to this many times `inline_below_s`: it keeps no other call waiting
# that would not wait anyway (a call arriving meanwhile queues behind this run for the scorer; one
# that needs no scorer waits at most that long), and saves the trip to the worker thread and back.
# `python -m benchmarks.loop_turn_cost` (serving/README.md): one client, 1,000 items, whose runs
# had outgrown INLINE_BELOW_S on the 2-core machine, p50 3.69 -> 3.26 ms and 13 % less CPU per call.
LONE_INLINE_FACTOR = 4


class BatchObserver(Protocol):
    def __call__(
        self, name: str, batch_size: int, run_seconds: float, queue_waits: Sequence[float], cpu_seconds: float
    ) -> None: ...


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    queued_at: float = field(default_factory=time.perf_counter)
    started: float = 0.0  # perf_counter when its batch's run started and ended (the caller's stages)
    ended: float = 0.0
    dequeued: bool = False  # taken out of the queue: into a batch, or dropped as given up
    counted: bool = False  # counted in `_abandoned`: gave up while still queued


class BatcherClosed(RuntimeError):
    """The batcher was closed before the item ran."""


def retry_after_s(queued: int, max_batch_size: int, run_s: float, running_for_s: float | None) -> float:
    """Seconds until a request refused now would find room: what is left of the run in progress plus
    the batches queued ahead of it, each taking `run_s` (recent batches' run time, or the current
    run's time so far when that is already longer)."""
    per_batch = max(run_s, running_for_s or 0.0)  # a run past the average says the average is stale
    left_of_current = 0.0 if running_for_s is None else per_batch - running_for_s
    return max(MIN_RETRY_AFTER_S, math.ceil(queued / max_batch_size) * per_batch + left_of_current)


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_wait_s: float = 0.0,
        name: str = "batcher",
        observer: BatchObserver | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        stages: tuple[str, str, str] | None = None,
        inline_below_s: float = INLINE_BELOW_S,
        inline_min_batch: int = DEFAULT_INLINE_MIN_BATCH,
        runs_on_caller: bool = False,
    ):
        if max_batch_size < 1 or max_wait_s < 0 or max_queue < 1 or inline_min_batch < 1:
            raise ValueError(
                f"max_batch_size, max_queue and inline_min_batch must be >= 1 and max_wait_s >= 0, got {max_batch_size}, "
                f"{max_queue}, {inline_min_batch}, {max_wait_s}"
            )
        self.run = run  # list of items -> one result per item, same order (called in a worker thread)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.name = name
        self.observer = observer
        self.stages = stages  # (queue, run, resume): what a request's stage clock is charged (serving/stages.py)
        self.inline_below_s = inline_below_s  # runs shorter than this (recently) run on the event loop (0: never)
        self.inline_min_batch = inline_min_batch  # ... once their batch holds this many (a lone request: always)
        self._pending: collections.deque[_Pending[T, R]] = collections.deque()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"apron-{name}")
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop that serves the requests (first submit)
        self._running: list[_Pending[T, R]] | None = None  # the batch in the worker thread
        self._dispatch_scheduled = False
        self._timer: asyncio.TimerHandle | None = None  # max_wait_s: the dispatch of a partial batch
        self._closed = False
        self._run_started: float | None = None  # perf_counter at the start of the run in progress
        self._run_s = 0.0  # smoothed run time of recent batches (0 until the first one finishes)
        # What a run would take from the loop if it ran there, smoothed (0 until the first one ends).
        # With `runs_on_caller` (the run's whole work is on the thread that calls it: a CPU session of
        # one intra-op thread) its CPU time on that thread: in the worker thread a run's wall time also
        # holds its waits for the GIL the busy loop has (its inputs stacked, its outputs built) and for
        # a core, so under load it stayed above `inline_below_s` and the batcher did not come back to
        # the loop (BENCHMARKS.md of 5bdd677, the 1k open loop: 0.41 ms runs of 3.4 requests). Otherwise
        # (helper threads, a GPU) the CPU of the calling thread says nothing of the wait: wall time.
        self.runs_on_caller = runs_on_caller
        self._run_cost_s = 0.0
        # queue entries of callers that gave up (dropped at the next dispatch, or when a full queue
        # would refuse a newcomer for them); a caller that gives up once its batch took it is not one
        self._abandoned = 0

    @property
    def queued(self) -> int:
        """Items waiting for a run (not counting the run in progress)."""
        return len(self._pending)

    @property
    def abandoned(self) -> int:
        """Queue entries whose callers gave up (counted in `queued` until dropped)."""
        return self._abandoned

    def retry_after_s(self) -> float:
        running_for = None if self._run_started is None else time.perf_counter() - self._run_started
        return retry_after_s(len(self._pending), self.max_batch_size, self._run_s, running_for)

    async def submit(self, item: T) -> R:
        if self._closed:
            raise BatcherClosed(f"{self.name} is closed")
        if len(self._pending) >= self.max_queue and self._abandoned:  # callers that gave up hold no place
            kept: collections.deque[_Pending[T, R]] = collections.deque()
            for entry in self._pending:
                if entry.future.done():
                    entry.dequeued = True
                else:
                    kept.append(entry)
            self._pending, self._abandoned = kept, 0
        if len(self._pending) >= self.max_queue:
            wait = self.retry_after_s()
            raise ResourceExhausted(
                f"the gateway is over capacity: {len(self._pending)} requests already wait for {self.name} "
                f"(--max-queue {self.max_queue}); retry in {wait * 1000:.0f} ms",
                retry_after_s=wait,
            )
        loop = self._loop = asyncio.get_running_loop()
        entry = _Pending(item, loop.create_future())
        self._pending.append(entry)
        if self._running is None:
            if nothing_else_ready(loop):  # nothing could join: dispatch now, one loop turn sooner
                self._dispatch(alone=True)
            else:
                self._schedule()  # at the end of this loop turn: what arrives meanwhile joins
        try:
            result = await entry.future
        except asyncio.CancelledError:
            if not entry.dequeued:  # counted here, free on the calls that wait to the end
                entry.counted = True
                self._abandoned += 1
            raise
        stage_clock.mark_batch(self.stages, entry.started, entry.ended)
        return result

    def _dispatch(self, alone: bool = False) -> None:
        """Start the next batch, if there is one to start (on the loop): in the worker thread, or here
        when recent runs were short (`inline_below_s`) and the batch holds `inline_min_batch` requests,
        or when it is `alone` (a lone request dispatched at once by `submit`: runs up to
        LONE_INLINE_FACTOR times as long)."""
        self._dispatch_scheduled = False
        if self._running is not None or self._closed:
            return
        while self._pending and self._pending[0].future.done():  # callers that gave up
            self._drop(self._pending.popleft())
        if not self._pending:
            return
        if self.max_wait_s > 0 and len(self._pending) < self.max_batch_size:
            waited = time.perf_counter() - self._pending[0].queued_at
            if waited < self.max_wait_s:  # hold a partial batch; a filling submit dispatches earlier
                if self._timer is None:
                    self._timer = self._loop.call_later(self.max_wait_s - waited, self._on_timer)  # type: ignore[union-attr]
                return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = []
        while self._pending and len(batch) < self.max_batch_size:
            entry = self._pending.popleft()
            if entry.future.done():  # skip callers that gave up
                self._drop(entry)
            else:
                entry.dequeued = True
                batch.append(entry)
        if not batch:
            return
        self._running = batch
        self._run_started = time.perf_counter()
        limit = self.inline_below_s * (LONE_INLINE_FACTOR if alone else 1)
        # cheaper here than a trip to the worker thread and back, unless a small batch would take the
        # loop from the calls that are about to form a bigger one
        if 0 < self._run_cost_s < limit and (alone or len(batch) >= self.inline_min_batch):
            results, error, cpu = self._run([entry.item for entry in batch])
            self._finish(batch, results, error, self._run_started, time.perf_counter(), cpu, then_dispatch=False)
            if self._pending:
                self._schedule()
            return
        self._executor.submit(self._work, batch, [entry.item for entry in batch], self._loop)

    def _drop(self, entry: _Pending[T, R]) -> None:
        """A given-up caller's entry leaves the queue (its future is done: cancelled)."""
        entry.dequeued = True
        if entry.counted:
            self._abandoned -= 1

    def _schedule(self) -> None:
        if not self._dispatch_scheduled:
            self._dispatch_scheduled = True
            self._loop.call_soon(self._dispatch)  # type: ignore[union-attr]

    def _run(self, items: list[T]) -> tuple[Sequence[R] | None, Exception | None, float]:
        """`run(items)` checked: (results, None), or (None, the error every caller of the batch gets),
        with the CPU seconds the run took on this thread (a runtime's other worker threads not counted)."""
        cpu = time.thread_time()
        try:
            results = self.run(items)
            if len(results) != len(items):
                raise RuntimeError(f"{self.name}: run returned {len(results)} results for {len(items)} items")
        except Exception as error:
            return None, error, time.thread_time() - cpu
        return results, None, time.thread_time() - cpu

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _work(self, batch: list[_Pending[T, R]], items: list[T], loop: asyncio.AbstractEventLoop) -> None:
        """One run, in the worker thread; its outcome goes back to the loop in one callback."""
        start = time.perf_counter()
        results, error, cpu = self._run(items)
        with contextlib.suppress(RuntimeError):  # the loop is gone (closed during the run): nobody waits
            loop.call_soon_threadsafe(self._finish, batch, results, error, start, time.perf_counter(), cpu)

    def _finish(
        self,
        batch: list[_Pending[T, R]],
        results: Sequence[R] | None,
        error: BaseException | None,
        start: float,
        ended: float,
        cpu_seconds: float,
        then_dispatch: bool = True,
    ) -> None:
        """On the loop: every caller's result, the run's metrics, and the next batch at once."""
        if self._running is batch:
            self._running = None
            self._run_started = None
        seconds = ended - start
        self._run_s = seconds if self._run_s == 0 else (1 - RUN_TIME_SMOOTHING) * self._run_s + RUN_TIME_SMOOTHING * seconds
        cost = max(cpu_seconds, 1e-9) if self.runs_on_caller else seconds  # > 0 once a run is seen
        self._run_cost_s = cost if self._run_cost_s == 0 else (1 - RUN_TIME_SMOOTHING) * self._run_cost_s + RUN_TIME_SMOOTHING * cost
        for entry, result in zip(batch, results if results is not None else [None] * len(batch), strict=True):
            if entry.future.done():  # gave up during the run, or failed by close()
                continue
            if error is not None:
                entry.future.set_exception(error)
            else:
                entry.started, entry.ended = start, ended
                entry.future.set_result(result)  # type: ignore[arg-type]
        if self.observer is not None:
            self.observer(self.name, len(batch), seconds, [start - entry.queued_at for entry in batch], cpu_seconds)
        if then_dispatch and self._pending and not self._closed:
            self._dispatch()

    async def close(self) -> None:
        """Stop dispatching; items still waiting, and the callers of a batch still running, fail with
        BatcherClosed."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for entry in self._running or []:
            if not entry.future.done():
                entry.future.set_exception(BatcherClosed(f"{self.name} closed during the run"))
        while self._pending:
            entry = self._pending.popleft()
            if not entry.future.done():
                entry.future.set_exception(BatcherClosed(f"{self.name} closed before this request ran"))
        # the run in progress ends before the model it runs is released (the caller's next step), but
        # off the loop: a retired version's last batch must not stop every other call meanwhile
        await asyncio.to_thread(self._executor.shutdown, True)
