"""A generic asyncio micro-batcher: concurrent requests share one model run.

`await batcher.submit(item)` queues one item and returns its result. A single collector task
forms batches: it dispatches as soon as `max_batch_size` items wait, or when the oldest waiting item
has waited `max_wait_s`. It runs one batch at a time in its own worker thread, so the event loop
keeps accepting requests while the model runs. Items that arrive during a run form the next batch,
which is how the batch size grows with load without a longer wait.

A caller that gives up (deadline, cancellation) before its batch is dispatched is skipped; one
that gives up during the run simply does not read its result.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class BatchObserver(Protocol):
    def __call__(self, name: str, batch_size: int, run_seconds: float, queue_waits: Sequence[float]) -> None: ...


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    queued_at: float = field(default_factory=time.perf_counter)


class BatcherClosed(RuntimeError):
    """The batcher was closed before the item ran."""


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        name: str = "batcher",
        observer: BatchObserver | None = None,
    ):
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch_size must be >= 1 and max_wait_s >= 0, got {max_batch_size}, {max_wait_s}")
        self.run = run  # list of items -> one result per item, same order (called in a worker thread)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.name = name
        self.observer = observer
        self._pending: collections.deque[_Pending[T, R]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"apron-{name}")
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def submit(self, item: T) -> R:
        if self._closed:
            raise BatcherClosed(f"{self.name} is closed")
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
            if len(self._pending) < self.max_batch_size:
                waited = time.perf_counter() - self._pending[0].queued_at
                if waited < self.max_wait_s:
                    self._wakeup.clear()  # woken by the next submit, to re-check the batch size
                    try:
                        async with asyncio.timeout(self.max_wait_s - waited):
                            await self._wakeup.wait()
                    except TimeoutError:
                        pass
                    continue
            batch = [self._pending.popleft() for _ in range(min(self.max_batch_size, len(self._pending)))]
            batch = [entry for entry in batch if not entry.future.done()]  # skip callers that gave up
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending[T, R]]) -> None:
        start = time.perf_counter()
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
            if self.observer is not None:
                self.observer(self.name, len(batch), time.perf_counter() - start, waits)
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
