"""Triton backend: `apron_profile` and `apron_scorer` over tritonclient's asyncio gRPC client.

Each call sends one user (batch axis 1); Triton's dynamic batcher merges concurrent calls.
Histories go as they are: `apron_profile`'s input is ragged (Triton concatenates any lengths).
The scorer batches only requests of the same shape, so exclusions are padded with PAD_ID to the
next power of two: similar lengths meet in one batch, and PAD_ID changes nothing.
The model version comes from apron_metadata.json, so the gateway's metadata (tags, item ids)
always matches the graphs that answer.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from export import contract
from serving.backends.base import GraphSignature, Scorer, pad_rows, static_dims
from serving.catalog import ServedModel
from serving.config import BackendConfig
from serving.errors import Unavailable
from serving.metrics import Metrics

HEALTH_TIMEOUT_S = 1.0  # a readiness poll that waits longer says Triton does not answer


class TritonScorer(Scorer):
    backend = "triton"

    def __init__(self, url: str, model: ServedModel, metrics: Metrics | None = None):
        self.url = url
        self.model = model
        self.version = str(model.version)
        self.metrics = metrics
        self._client: InferenceServerClient | None = None

    @classmethod
    def from_config(cls, inference: BackendConfig, model: ServedModel, metrics: Metrics | None = None) -> TritonScorer:
        return cls(inference.triton_url, model, metrics)

    @property
    def client(self) -> InferenceServerClient:
        if self._client is None:  # created on the serving loop: grpc.aio channels belong to one loop
            self._client = InferenceServerClient(self.url)
        return self._client

    async def start(self) -> None:
        for name in (contract.PROFILE_MODEL, contract.SCORER_MODEL):
            try:
                ready = await self.client.is_model_ready(name, self.version)
            except InferenceServerException as error:
                raise Unavailable(f"Triton at {self.url} cannot be reached: {error.message()}") from error
            if not ready:
                raise Unavailable(
                    f"Triton at {self.url} does not serve {name} version {self.version} "
                    "(the version in apron_metadata.json); is it serving the same repository?"
                )

    async def signatures(self) -> dict[str, GraphSignature]:
        found = {}
        for name in (contract.PROFILE_MODEL, contract.SCORER_MODEL):
            try:
                meta = await self.client.get_model_metadata(name, self.version)
            except InferenceServerException as error:
                raise Unavailable(f"Triton at {self.url}: no metadata of {name} v{self.version}: {error.message()}") from error
            found[name] = GraphSignature(
                {t.name: static_dims(t.shape) for t in meta.inputs}, {t.name: static_dims(t.shape) for t in meta.outputs}
            )
        return found

    async def healthy(self) -> bool:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                return all([await self.client.is_model_ready(name, self.version) for name in (contract.PROFILE_MODEL, contract.SCORER_MODEL)])
        except (InferenceServerException, TimeoutError):
            return False

    async def _infer(self, name: str, arrays: dict[str, np.ndarray], outputs: tuple[str, ...]) -> list[np.ndarray]:
        inputs = []
        for tensor, array in arrays.items():
            infer_input = grpcclient.InferInput(tensor, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
            infer_input.set_data_from_numpy(array)
            inputs.append(infer_input)
        start = time.perf_counter()
        try:
            result = await self.client.infer(
                name,
                inputs,
                model_version=self.version,
                outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
            )
        except InferenceServerException as error:
            raise Unavailable(f"Triton {name} v{self.version} failed: {error.message()}") from error
        if self.metrics is not None:
            self.metrics.observe_inference(name, time.perf_counter() - start, version=self.version)
        return [result.as_numpy(o) for o in outputs]

    async def profile(self, history_ids: np.ndarray) -> tuple[np.ndarray, int]:
        history = pad_rows([np.asarray(history_ids, dtype=np.int64).reshape(-1)])  # (1, T), T >= 1
        weights, length = await self._infer(
            contract.PROFILE_MODEL, {contract.HISTORY_IDS: history}, (contract.PROFILE_WEIGHTS, contract.HISTORY_LENGTH)
        )
        return weights[0], int(length[0, 0])

    async def top_k(self, weights: np.ndarray, exclude_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        arrays = {
            contract.PROFILE_WEIGHTS: np.asarray(weights, dtype=np.float32)[None],  # (1, H, K)
            contract.EXCLUDE_IDS: pad_rows([np.asarray(exclude_ids, dtype=np.int64).reshape(-1)], bucket=True),
        }
        ids, scores = await self._infer(contract.SCORER_MODEL, arrays, (contract.TOP_IDS, contract.TOP_SCORES))
        return ids[0, :k], scores[0, :k]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
