"""Inference backends behind one `Scorer` interface (`base.py`): in-process ONNX Runtime or torch
(`export/served_model.py` on CPU or CUDA) with the gateway's micro-batcher, or Triton over gRPC
with Triton's dynamic batcher. torch is imported only when its backend is chosen."""

from __future__ import annotations

import functools

from serving.backends.base import Scorer
from serving.catalog import ServedModel
from serving.config import BackendConfig, BatchingConfig
from serving.metrics import Metrics


def create_scorer(
    inference: BackendConfig, batching: BatchingConfig, repository: str, model: ServedModel, metrics: Metrics | None = None
) -> Scorer:
    """The backend `inference.backend` names, for `model` (imports only the backend it builds)."""
    batch_observer = functools.partial(metrics.observe_batch, version=str(model.version)) if metrics else None
    if inference.backend == "onnxruntime":
        from serving.backends.onnxruntime import OnnxRuntimeScorer

        return OnnxRuntimeScorer.from_config(inference, batching, repository, model, batch_observer)
    if inference.backend == "torch":
        try:
            from serving.backends.torch import TorchScorer
        except ModuleNotFoundError as error:  # a serve-only install (the gateway image) has no torch
            raise RuntimeError(
                f"--backend torch needs {error.name}: pip install 'apron-recsys[serve-torch]'"
            ) from error
        observer = functools.partial(batch_observer, backend=TorchScorer.backend) if batch_observer else None
        return TorchScorer.from_config(inference, batching, repository, model, observer)
    if inference.backend == "triton":
        from serving.backends.triton import TritonScorer

        triton = TritonScorer.from_config(inference, model, metrics)
        if inference.triton_fallback:  # reliability: in-process ONNX Runtime while Triton is unreachable
            from serving.backends.fallback import FallbackScorer
            from serving.backends.onnxruntime import OnnxRuntimeScorer

            local = OnnxRuntimeScorer.from_config(inference, batching, repository, model, batch_observer)
            count = (lambda method: metrics.fallbacks.labels(method).inc()) if metrics else None
            return FallbackScorer(triton, local, on_fallback=count)
        return triton
    raise ValueError(f"unknown backend {inference.backend!r}")
