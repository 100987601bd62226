"""Inference backends behind one `Scorer` interface (`base.py`): in-process ONNX Runtime or torch
(`export/served_model.py` on CPU or CUDA) with the gateway's micro-batcher, or Triton over gRPC
with Triton's dynamic batcher. torch is imported only when its backend is chosen."""

from __future__ import annotations

import functools

from serving.backends.base import Scorer
from serving.catalog import ServedModel
from serving.config import ServingConfig
from serving.metrics import Metrics


def create_scorer(config: ServingConfig, model: ServedModel, metrics: Metrics | None = None) -> Scorer:
    """The backend `config.backend` names, for `model` (imports only the backend it builds)."""
    if config.backend == "onnxruntime":
        from serving.backends.onnxruntime import OnnxRuntimeScorer

        return OnnxRuntimeScorer.from_config(config, model, metrics.observe_batch if metrics else None)
    if config.backend == "torch":
        try:
            from serving.backends.torch import TorchScorer
        except ModuleNotFoundError as error:  # a serve-only install (the gateway image) has no torch
            raise RuntimeError(
                f"--backend torch needs {error.name}: pip install 'apron-recsys[serve-torch]'"
            ) from error
        observer = functools.partial(metrics.observe_batch, backend=TorchScorer.backend) if metrics else None
        return TorchScorer.from_config(config, model, observer)
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
