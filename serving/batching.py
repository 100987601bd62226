"""A generic asyncio micro-batcher: concurrent requests share one model run.

`await batcher.submit(item)` queues one item and returns its result. A single collector task runs
one batch at a time in its own worker thread, so the event loop keeps accepting requests while the
model runs. The policy is adaptive, with no timer in the common path:

- an idle batcher runs a request at once (a batch of one): a lone client pays no wait;
- requests that arrive during a run queue up and form the next batch, up to `max_batch_size`, so
  the batch size follows the load instead of a timer;
- `max_wait_s` > 0 (off by default) additionally holds a batch that is not full until its oldest
  item has waited that long, trading a lone request's latency for bigger batches;
- the queue is bounded (`max_queue` waiting items): a request beyond it is refused at once with
  `ResourceExhausted`, whose `retry_after_s` is the time the queue ahead of it needs (batches ahead
  × the run time of recent batches), so overload sheds load instead of growing every caller's
  latency without limit.

A caller that gives up (deadline, cancellation) before its batch is dispatched is skipped; one
that gives up during the run simply does not read its result.
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

from serving.config import DEFAULT_MAX_QUEUE
from serving.errors import ResourceExhausted

T = TypeVar("T")
R = TypeVar("R")

RUN_TIME_SMOOTHING = 0.2  # weight of the newest batch in the run-time average behind retry-after
MIN_RETRY_AFTER_S = 0.001


class BatchObserver(Protocol):
    def __call__(self, name: str, batch_size: int, run_seconds: float, queue_waits: Sequence[float]) -> None: ...


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    queued_at: float = field(default_factory=time.perf_counter)


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
    ):
        if max_batch_size < 1 or max_wait_s < 0 or max_queue < 1:
            raise ValueError(
                f"max_batch_size and max_queue must be >= 1 and max_wait_s >= 0, got {max_batch_size}, "
                f"{max_queue}, {max_wait_s}"
            )
        self.run = run  # list of items -> one result per item, same order (called in a worker thread)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.name = name
        self.observer = observer
        self._pending: collections.deque[_Pending[T, R]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"apron-{name}")
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._run_started: float | None = None  # perf_counter at the start of the run in progress
        self._run_s = 0.0  # smoothed run time of recent batches (0 until the first one finishes)

    @property
    def queued(self) -> int:
        """Items waiting for a run (not counting the run in progress)."""
        return len(self._pending)

    def retry_after_s(self) -> float:
        running_for = None if self._run_started is None else time.perf_counter() - self._run_started
        return retry_after_s(len(self._pending), self.max_batch_size, self._run_s, running_for)

    async def submit(self, item: T) -> R:
        if self._closed:
            raise BatcherClosed(f"{self.name} is closed")
        if len(self._pending) >= self.max_queue:
            wait = self.retry_after_s()
            raise ResourceExhausted(
                f"the gateway is over capacity: {len(self._pending)} requests already wait for {self.name} "
                f"(--max-queue {self.max_queue}); retry in {wait * 1000:.0f} ms",
                retry_after_s=wait,
            )
        if self._task is None:  # created lazily: it must live on the loop that serves the requests
            self._task = asyncio.create_task(self._collect(), name=f"apron-{self.name}-collector")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(item, future))
        self._wakeup.set()
        return await future

    async def _collect(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.max_wait_s > 0 and len(self._pending) < self.max_batch_size:
                waited = time.perf_counter() - self._pending[0].queued_at
                if waited < self.max_wait_s:
                    self._wakeup.clear()  # woken by the next submit, to re-check the batch size
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.max_wait_s - waited):
                            await self._wakeup.wait()
                    continue
            batch = []
            while self._pending and len(batch) < self.max_batch_size:
                entry = self._pending.popleft()
                if not entry.future.done():  # skip callers that gave up
                    batch.append(entry)
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending[T, R]]) -> None:
        start = self._run_started = time.perf_counter()
        waits = [start - entry.queued_at for entry in batch]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self.run, [entry.item for entry in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: run returned {len(results)} results for {len(batch)} items")
        except (Exception, asyncio.CancelledError) as error:  # every caller of the batch gets the failure
            closed = isinstance(error, asyncio.CancelledError)
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(BatcherClosed(f"{self.name} closed during the run") if closed else error)
            if closed:
                raise
            return
        finally:
            seconds = time.perf_counter() - start
            self._run_started = None
            self._run_s = seconds if self._run_s == 0 else (1 - RUN_TIME_SMOOTHING) * self._run_s + RUN_TIME_SMOOTHING * seconds
            if self.observer is not None:
                self.observer(self.name, len(batch), seconds, waits)
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)

    async def close(self) -> None:
        """Stop collecting; items still waiting fail with BatcherClosed."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            entry = self._pending.popleft()
            if not entry.future.done():
                entry.future.set_exception(BatcherClosed(f"{self.name} closed before this request ran"))
        self._executor.shutdown(wait=True)
