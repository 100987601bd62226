"""Inference backends behind one `Scorer` interface (`base.py`): in-process ONNX Runtime with the
gateway's micro-batcher, or Triton over gRPC with Triton's dynamic batcher."""

from __future__ import annotations

from serving.backends.base import Scorer
from serving.catalog import ServedModel
from serving.config import ServingConfig
from serving.metrics import Metrics


def create_scorer(config: ServingConfig, model: ServedModel, metrics: Metrics | None = None) -> Scorer:
    """The backend `config.backend` names, for `model` (imports only the backend it builds)."""
    if config.backend == "onnxruntime":
        from serving.backends.onnxruntime import OnnxRuntimeScorer

        return OnnxRuntimeScorer.from_config(config, model, metrics.observe_batch if metrics else None)
    if config.backend == "triton":
        from serving.backends.triton import TritonScorer

        triton = TritonScorer.from_config(config, model, metrics)
        if config.triton_fallback:  # reliability: in-process ONNX Runtime while Triton is unreachable
            from serving.backends.fallback import FallbackScorer
            from serving.backends.onnxruntime import OnnxRuntimeScorer

            local = OnnxRuntimeScorer.from_config(config, model, metrics.observe_batch if metrics else None)
            count = (lambda method: metrics.fallbacks.labels(method).inc()) if metrics else None
            return FallbackScorer(triton, local, on_fallback=count)
        return triton
    raise ValueError(f"unknown backend {config.backend!r}")
