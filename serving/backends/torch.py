"""In-process torch backend (`--backend torch --device cuda|cpu`): the modules of
`export/served_model.py` loaded from the `model.safetensors` files `apron export` writes beside the
graphs, behind the same micro-batchers as ONNX Runtime (`BatchedScorer`). No training code needed.

CPU: fp32, eager. CUDA (written for the lent H100; NOT run on a GPU here, CI has none):
- the catalog table and f in fp16 (default) or bf16; shares and sums stay fp32;
- one CUDA graph per batch-size bucket (powers of two up to --max-batch-size, captured at start):
  shares -> u -> f -> log-sum-exp into static buffers. A batch is padded with zero rows to its
  bucket (a zero profile scores finite numbers that nobody reads);
- APRON's edit penalty branches on the data (it costs nothing unless a prototype was removed), which
  a captured graph cannot: the graphs score without it, and the rows whose host-side shares have a
  0 get it afterwards (`ServedScorer.penalise_rows`: the removed prototypes' table rows, their
  log-sum-exp again);
- exclusions are written as -inf into the graph's logits by one `index_put_` of the batch's valid
  (row, id) pairs, then top-k runs on the GPU: exclusion lists have any length, so they stay out of
  the captured graph instead of multiplying the graphs by length buckets;
- inputs go through pinned host buffers with non-blocking copies, and results come back the same
  way, so each batch pays one synchronisation;
- the profile (O(history), a few small kernels) runs eagerly.
The CPU path runs the very same steps on the same static bucket buffers, minus graph capture and
pinned memory, so the tests exercise the bucketing, padding and exclusion logic.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export import contract
from export.served_model import (
    ServedProfile,
    ServedScorer,
    load_tensors,
    profile_from_tensors,
    scorer_from_tensors,
)
from serving.backends.base import BatchedScorer, ScorerRequest, batcher_options, default_threads
from serving.batching import BatchObserver
from serving.catalog import ServedModel
from serving.config import (
    DEFAULT_INLINE_MIN_BATCH,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE,
    BackendConfig,
    BatchingConfig,
)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TORCH_DTYPES = ("auto", *DTYPES)


def weights_path(repository: str | Path, model_name: str, version: int) -> Path:
    return Path(repository) / model_name / str(version) / contract.TORCH_WEIGHTS_FILENAME


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """"auto": fp16 on CUDA (what gpu_ceiling.py measures), fp32 on CPU (half is slow there)."""
    if name == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    return DTYPES[name]


def batch_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to and including max_batch_size: one captured graph each."""
    sizes = [1 << i for i in range(max_batch_size.bit_length()) if 1 << i < max_batch_size]
    return [*sizes, max_batch_size]


@dataclass
class _Bucket:
    """Static buffers of one batch size and the CUDA graph that fills them (None on CPU)."""

    size: int
    weights: torch.Tensor  # (b, H, K) fp32 input
    logits: torch.Tensor | None = None  # (b, N) f's dtype
    normaliser: torch.Tensor | None = None  # (b, 1) fp32
    graph: torch.cuda.CUDAGraph | None = None


class TorchModel:
    """The served modules on one device, batch in, batch out (numpy at the edges)."""

    def __init__(
        self,
        profile: ServedProfile,
        scorer: ServedScorer,
        device: str = "cpu",
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        cuda_graphs: bool = True,
        buckets: list[int] | None = None,
    ):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.profile_module = profile.to(self.device).eval()
        self.scorer_module = scorer.to(self.device).eval()
        self.n_heads, self.n_prototypes = profile.n_heads, profile.n_prototypes
        self.k_max = scorer.k_max
        self.buckets = {
            size: _Bucket(size, torch.zeros(size, self.n_heads, self.n_prototypes, device=self.device))
            for size in sorted(buckets or batch_buckets(max_batch_size))
        }
        if max(self.buckets) < max_batch_size:
            raise ValueError(f"the largest bucket {max(self.buckets)} is smaller than max_batch_size {max_batch_size}")
        self.cuda_graphs = cuda_graphs and self.cuda
        # pinned staging for host->device and device->host copies (CUDA only: pinning needs a driver)
        self._pinned_weights = torch.zeros(max_batch_size, self.n_heads, self.n_prototypes, pin_memory=self.cuda)
        self._pinned_ids = torch.zeros(max_batch_size, self.k_max, dtype=torch.int64, pin_memory=self.cuda)
        self._pinned_scores = torch.zeros(max_batch_size, self.k_max, dtype=torch.float32, pin_memory=self.cuda)
        self._lock = threading.Lock()  # the static buffers belong to one batch at a time

    @classmethod
    def load(
        cls,
        repository: str | Path,
        version: int,
        device: str = "cpu",
        dtype: str = "auto",
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        cuda_graphs: bool = True,
    ) -> TorchModel:
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda: torch sees no CUDA device here; use --device cpu")
        paths = [weights_path(repository, name, version) for name in (contract.PROFILE_MODEL, contract.SCORER_MODEL)]
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} does not exist: the repository was exported without the torch backend's weights; "
                    "export the checkpoint again (`apron export`)"
                )
        chosen = resolve_dtype(dtype, device)
        profile = profile_from_tensors(*load_tensors(str(paths[0]), device), chosen)
        scorer = scorer_from_tensors(*load_tensors(str(paths[1]), device), chosen)
        return cls(profile, scorer, device, max_batch_size, cuda_graphs)

    # ---- scorer: a graph (or eager run) per bucket, then exclusions and top-k ------------------

    def _fill(self, bucket: _Bucket) -> None:
        """The bucket's static computation: weights -> logits, normaliser (what a graph captures),
        without the edit penalty, which `top_k` adds to the rows that need it."""
        bucket.logits, bucket.normaliser = self.scorer_module.normalised_logits(bucket.weights, penalise=False)

    def capture(self) -> None:
        """Warm up and capture one CUDA graph per bucket (on CPU: one eager warm-up run each)."""
        with torch.inference_mode():
            for bucket in self.buckets.values():
                if not self.cuda_graphs:
                    self._fill(bucket)
                    continue
                # torch.cuda.graphs: warm up on a side stream (lazy init, cuBLAS workspaces), then capture
                stream = torch.cuda.Stream(self.device)
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):
                    for _ in range(3):
                        self._fill(bucket)
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                # thread_local: a rollout captures the new version while the old one serves from
                # its batcher's thread; "global" (the default) would forbid that thread's unsafe
                # calls (allocations, pinned host memory) for the whole capture and fail its
                # batches. Checked on the GPU by `make gpu-check` (gpu_stages.check_rollout).
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self._fill(bucket)  # the buffers it assigns are the graph's static outputs
                bucket.graph = graph

    def _bucket(self, batch: int) -> _Bucket:
        return self.buckets[next(size for size in self.buckets if size >= batch)]

    def top_k(self, weights: np.ndarray, excludes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """weights (B, H, K) fp32, one exclusion array per row -> (ids, scores) (B, K_MAX) numpy."""
        batch = len(weights)
        rows = np.repeat(np.arange(batch), [len(e) for e in excludes])  # (E_total,)
        columns = np.concatenate([np.asarray(e, np.int64).reshape(-1) for e in excludes]) if excludes else rows
        valid = (columns >= 0) & (columns < self.scorer_module.n_items)  # padding / unknown ids exclude nothing
        with self._lock, torch.inference_mode():
            bucket = self._bucket(batch)
            host = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))
            staged = self._pinned_weights[:batch]
            staged.copy_(host)
            bucket.weights[:batch].copy_(staged, non_blocking=True)
            bucket.weights[batch:].zero_()  # padding rows: a zero profile, never read
            if bucket.graph is not None:
                bucket.graph.replay()
            else:
                self._fill(bucket)
            logits = bucket.logits[:batch]  # (B, N), a view of the static buffer
            normaliser = bucket.normaliser[:batch]
            if self.scorer_module.penalised:  # decided on the host copy: no device synchronisation
                removed = self.scorer_module.removed(host)
                logits, normaliser = self.scorer_module.penalise_rows(logits, normaliser, removed)
            if valid.any():
                index = torch.from_numpy(np.stack([rows[valid], columns[valid]]))  # (2, E_valid)
                index = index.pin_memory().to(self.device, non_blocking=True) if self.cuda else index
                logits.index_put_((index[0], index[1]), torch.tensor(float("-inf"), dtype=logits.dtype, device=self.device))
            ids, scores = self.scorer_module.top(logits, normaliser)  # on the device
            out_ids, out_scores = self._pinned_ids[:batch], self._pinned_scores[:batch]
            out_ids.copy_(ids, non_blocking=True)
            out_scores.copy_(scores, non_blocking=True)
            if self.cuda:
                torch.cuda.current_stream(self.device).synchronize()  # the batch's one synchronisation
            return out_ids.numpy().copy(), out_scores.numpy().copy()

    # ---- profile: ragged gather, eager ----------------------------------------------------------

    def profiles(self, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Histories (T_i,) -> (weights (B, H, K) fp32, distinct valid ids (B,))."""
        ids, ends = contract.ragged_batch(histories)
        with torch.inference_mode():
            flat = torch.from_numpy(ids).to(self.device, non_blocking=True)
            offsets = torch.from_numpy(ends).to(self.device, non_blocking=True)
            weights, lengths = self.profile_module(flat, offsets)
            return weights.cpu().numpy(), lengths[:, 0].cpu().numpy()


class TorchScorer(BatchedScorer):
    backend = "torch"

    def __init__(
        self,
        model: TorchModel,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_wait_s: float = 0.0,
        observer: BatchObserver | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        inline_min_batch: int = DEFAULT_INLINE_MIN_BATCH,
    ):
        self.model = model
        super().__init__(
            max_batch_size=max_batch_size, max_wait_s=max_wait_s, observer=observer, max_queue=max_queue,
            inline_min_batch=inline_min_batch,
        )  # fmt: skip

    @classmethod
    def from_config(
        cls, inference: BackendConfig, batching: BatchingConfig, repository: str, model: ServedModel, observer: BatchObserver | None = None
    ) -> TorchScorer:
        if inference.device == "cpu":  # the machine's cores less one, like ONNX Runtime's default
            torch.set_num_threads(inference.ort_threads or default_threads())
        torch_model = TorchModel.load(
            repository,
            model.version,
            inference.device,
            inference.torch_dtype,
            batching.max_batch_size,
            inference.cuda_graphs,
        )
        return cls(torch_model, observer=observer, **batcher_options(batching))

    async def start(self) -> None:
        import asyncio

        await asyncio.to_thread(self.model.capture)  # minutes of nothing on the loop otherwise

    def _run_profiles(self, histories: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        weights, lengths = self.model.profiles(histories)
        return [(weights[i], int(lengths[i])) for i in range(len(histories))]

    def _run_scorer(self, requests: list[ScorerRequest]) -> list[tuple[np.ndarray, np.ndarray]]:
        # K_MAX each (its CUDA graphs are captured for one output width); the caller keeps the first k
        ids, scores = self.model.top_k(np.stack([w for w, _, _ in requests]), [e for _, e, _ in requests])
        return [(ids[i], scores[i]) for i in range(len(requests))]
