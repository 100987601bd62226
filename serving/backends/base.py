"""The one interface the gateway calls for inference (DESIGN.md section 4's two graphs).

Both methods take and return one user's arrays (no batch axis); batching is each backend's business
(the gateway's micro-batcher for ONNX Runtime, Triton's dynamic batcher for Triton), so the
servicer and the profile cache never see it.
"""

from __future__ import annotations

import abc

import numpy as np

from export import contract


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

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release sessions, threads and connections."""


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
