"""Optional fallback (`--triton-fallback`, off by default): when Triton cannot be reached, score with
the in-process ONNX Runtime backend on the same repository instead of answering UNAVAILABLE.

Off by default because it changes the gateway's footprint when Triton fails: every replica suddenly
runs the models on its own CPU, which is fine for a small catalogue and a short outage and can take
a busy gateway down with it otherwise. Only `Unavailable` (Triton unreachable, or its model not
ready) falls back; any other error is a bug and is not hidden. Each fallback call is counted
(`on_fallback`), so an outage that the fallback hides still shows on the dashboard.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from serving.backends.base import GraphSignature, Scorer
from serving.errors import Unavailable

log = logging.getLogger(__name__)


class FallbackScorer(Scorer):
    def __init__(self, primary: Scorer, fallback: Scorer, on_fallback: Callable[[str], None] | None = None):
        self.primary = primary
        self.fallback = fallback
        self.on_fallback = on_fallback  # called with the method name ("profile" / "top_k")
        self.backend = primary.backend  # metric labels keep naming the configured backend

    def _falling_back(self, method: str, error: Unavailable) -> None:
        log.warning(
            "%s unavailable (%s); %s served by %s", self.primary.backend, error, method, self.fallback.backend
        )
        if self.on_fallback is not None:
            self.on_fallback(method)

    async def start(self) -> None:
        await self.fallback.start()
        try:
            await self.primary.start()
        except Unavailable as error:  # start anyway: the fallback serves until the primary returns
            log.warning(
                "starting with %s unavailable (%s): serving with %s",
                self.primary.backend,
                error,
                self.fallback.backend,
            )

    async def signatures(self) -> dict[str, GraphSignature]:
        return await self.fallback.signatures()  # the same repository's graphs; Triton may be down at start

    @property
    def threads(self) -> dict[str, int]:
        return self.fallback.threads  # the in-process fallback's (Triton sets its own)

    async def healthy(self) -> bool:
        return await self.fallback.healthy()  # whether Triton answers or not, the fallback does

    async def profile(self, history_ids: np.ndarray) -> tuple[np.ndarray, int]:
        try:
            return await self.primary.profile(history_ids)
        except Unavailable as error:
            self._falling_back("profile", error)
            return await self.fallback.profile(history_ids)

    async def top_k(
        self, weights: np.ndarray, exclude_ids: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        try:
            return await self.primary.top_k(weights, exclude_ids, k)
        except Unavailable as error:
            self._falling_back("top_k", error)
            return await self.fallback.top_k(weights, exclude_ids, k)

    async def close(self) -> None:
        try:
            await self.primary.close()
        finally:
            await self.fallback.close()
