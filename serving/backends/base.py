"""The one interface the gateway calls for inference (DESIGN.md section 4's two graphs).

Both methods take and return one user's arrays (no batch axis); batching is each backend's business
(the gateway's micro-batcher for ONNX Runtime, Triton's dynamic batcher for Triton), so the
servicer and the profile cache never see it.
"""

from __future__ import annotations

import abc
import asyncio
import os
from dataclasses import dataclass

import numpy as np

from export import contract
from serving import stages
from serving.batching import BatchObserver, MicroBatcher
from serving.config import DEFAULT_INLINE_MIN_BATCH, DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_QUEUE, BatchingConfig


@dataclass(frozen=True)
class GraphSignature:
    """A graph's tensors as its backend declares them: name -> dims, the batch axis first, None for
    a dimension the graph leaves open."""

    inputs: dict[str, tuple[int | None, ...]]
    outputs: dict[str, tuple[int | None, ...]]


def static_dims(shape: object) -> tuple[int | None, ...]:
    """A backend's shape (ints, -1, None or symbolic names) -> dims with None for every open one."""
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)  # type: ignore[attr-defined]


class Scorer(abc.ABC):
    backend: str  # "onnxruntime" | "triton" (metric labels, logs)

    @abc.abstractmethod
    async def profile(self, history_ids: np.ndarray) -> tuple[np.ndarray, int]:
        """`apron_profile`: internal item indices (T,) int64 -> (weights (H, K) float32, distinct
        valid ids in the history)."""

    @abc.abstractmethod
    async def top_k(self, weights: np.ndarray, exclude_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`apron_scorer`: (edited) weights or shares (H, K) and excluded indices (E,) -> the best
        `k` (ids (k,) int64, scores (k,) float32), best first, excluded items scored -inf."""

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Connect / warm up; raise if the backend cannot serve."""

    async def signatures(self) -> dict[str, GraphSignature]:
        """The graphs' declared inputs and outputs by model name (checked against apron_metadata
        before the first inference: serving/models.py); {} for a backend without graphs (torch)."""
        return {}

    @property
    def threads(self) -> dict[str, int]:
        """Each graph's intra-op CPU threads by model name, for the start-up log ({}: a backend
        that does not set them here: Triton's server, torch's process-wide setting)."""
        return {}

    async def healthy(self) -> bool:
        """Whether the backend can answer now (the gateway's readiness polls it every second): an
        in-process backend can whenever it started; a remote one asks its server."""
        return True

    async def warm_up(
        self, history_ids: np.ndarray, exclude_ids: np.ndarray, k: int
    ) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
        """One inference through both graphs before this scorer serves (serving/models.py): the
        profile of `history_ids`, then its top `k` without `exclude_ids`: (weights, history
        length, ids, scores), at most `k` of each (fewer when the graph returns fewer)."""
        weights, length = await self.profile(history_ids)
        ids, scores = await self.top_k(np.asarray(weights, np.float32), exclude_ids, k)
        return np.asarray(weights), length, ids, scores

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release sessions, threads and connections."""


def batcher_options(batching: BatchingConfig) -> dict[str, float | int]:
    """A BatchedScorer's keyword arguments from the gateway's batching section."""
    return {
        "max_batch_size": batching.max_batch_size, "max_wait_s": batching.max_batch_wait_ms / 1000.0,
        "max_queue": batching.max_queue, "inline_min_batch": batching.inline_min_batch,
    }  # fmt: skip


# one request to the micro-batched scorer: profile weights (H, K), excluded ids (E,), how many it wants
ScorerRequest = tuple[np.ndarray, np.ndarray, int]


class BatchedScorer(Scorer):
    """An in-process scorer: each graph behind its own micro-batcher (`serving/batching.py`), so
    concurrent requests share one run. Subclasses implement the two batch runs, which the batchers
    call in their worker threads."""

    def __init__(
        self,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_s: float = 0.0,
        observer: BatchObserver | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        inline_min_batch: int = DEFAULT_INLINE_MIN_BATCH,
        on_caller: tuple[bool, bool] = (False, False),
    ):
        """`on_caller`: whether the thread that calls `_run_profiles` / `_run_scorer` does all of its
        work (MicroBatcher's `runs_on_caller`: a CPU session of one intra-op thread)."""
        self._profiles: MicroBatcher[np.ndarray, tuple[np.ndarray, int]] = MicroBatcher(
            self._run_profiles,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
            name=contract.PROFILE_MODEL,
            observer=observer,
            max_queue=max_queue,
            inline_min_batch=inline_min_batch,
            stages=stages.PROFILE_BATCH,
            runs_on_caller=on_caller[0],
        )
        self._scores: MicroBatcher[ScorerRequest, tuple[np.ndarray, np.ndarray]] = MicroBatcher(
            self._run_scorer,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
            name=contract.SCORER_MODEL,
            observer=observer,
            max_queue=max_queue,
            inline_min_batch=inline_min_batch,
            stages=stages.SCORER_BATCH,
            runs_on_caller=on_caller[1],
        )

    @abc.abstractmethod
    def _run_profiles(self, histories: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        """One apron_profile run: histories (T_i,) -> (weights (H, K), distinct valid ids) each."""

    @abc.abstractmethod
    def _run_scorer(self, requests: list[ScorerRequest]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One apron_scorer run: (weights (H, K), exclude (E,), k) -> (ids, scores) each, best first,
        at least k of them (up to K_MAX: the caller keeps the first k)."""

    async def warm_up(
        self, history_ids: np.ndarray, exclude_ids: np.ndarray, k: int
    ) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
        """Both batch runs called directly, in a thread: not through the micro-batchers, whose
        batches may wait for company (--max-batch-wait-ms) and whose metrics count served calls."""
        history = np.asarray(history_ids, dtype=np.int64).reshape(-1)
        exclude = np.asarray(exclude_ids, dtype=np.int64).reshape(-1)

        def run() -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
            [(weights, length)] = self._run_profiles([history])
            [(ids, scores)] = self._run_scorer([(np.asarray(weights, np.float32), exclude, k)])
            return np.asarray(weights), length, ids[:k], scores[:k]

        return await asyncio.to_thread(run)

    async def profile(self, history_ids: np.ndarray) -> tuple[np.ndarray, int]:
        return await self._profiles.submit(np.asarray(history_ids, dtype=np.int64).reshape(-1))

    async def top_k(self, weights: np.ndarray, exclude_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, scores = await self._scores.submit(
            (np.asarray(weights, dtype=np.float32), np.asarray(exclude_ids, dtype=np.int64).reshape(-1), k)
        )
        return ids[:k], scores[:k]

    async def close(self) -> None:
        await self._profiles.close()
        await self._scores.close()


def pad_rows(rows: list[np.ndarray], min_width: int = 1, bucket: bool = False) -> np.ndarray:
    """1-D int64 id arrays -> (B, T) padded with PAD_ID to the longest row (at least `min_width`;
    with `bucket`, to the next power of two so that requests of similar length share a shape)."""
    width = max([min_width, *(len(row) for row in rows)])
    if bucket:
        width = 1 << (width - 1).bit_length()
    out = np.full((len(rows), width), contract.PAD_ID, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


# A scorer graph at least this large (its weights, every one of which each run reads) runs long
# enough that the gateway waits on the scorer, not on its event loop: the scorer then gets every core.
# Measured on 2 cores (`python -m benchmarks.threads_bench`, three runs in serving/README.md): at
# 10,000 items (26 MiB) the cores less one served more requests at 64 clients in every run, at 1,000
# (5 MiB) the runs disagreed, at 41,000 (97 MiB) every core served as many or more, and one client
# sooner, in every run. The threshold lies between 26 and 97 MiB.
WIDE_SCORER_BYTES = 64 * 2**20


def default_threads() -> int:
    """All the cores this process may use but one, which the event loop needs."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


def scorer_threads(graph_bytes: int) -> int:
    """Intra-op threads for a scorer graph of `graph_bytes` (`--ort-threads 0`): every core for a
    graph of WIDE_SCORER_BYTES or more, else the cores less one (`default_threads`)."""
    return len(os.sched_getaffinity(0)) if graph_bytes >= WIDE_SCORER_BYTES else default_threads()
