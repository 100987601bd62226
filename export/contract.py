"""The export contract (DESIGN.md section 4): model and tensor names shared by export and serving.

One source of truth: `export/` writes these names into the ONNX graphs, config.pbtxt files and
apron_metadata.json; `serving/` imports them to build requests. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

# Models in the Triton repository (folder name = model name).
PROFILE_MODEL = "apron_profile"  # history ids -> per-head prototype weights (Eq. 13 before A^v)
SCORER_MODEL = "apron_scorer"  # (edited) profile weights -> top-K_MAX items, in-graph TopK
ITEM_ENCODER_MODEL = "apron_item_encoder"  # new items' features -> prototype weights (Eq. 12)
ENSEMBLE_MODEL = "apron_recommend"  # profile -> scorer, the no-edit no-cache path
MODELS = (PROFILE_MODEL, SCORER_MODEL, ITEM_ENCODER_MODEL, ENSEMBLE_MODEL)
ONNX_MODELS = (PROFILE_MODEL, SCORER_MODEL, ITEM_ENCODER_MODEL)  # the ensemble has no graph of its own

# Tensor names (identical for the onnxruntime and python-backend variants).
# apron_profile's histories are ragged: a Triton request carries one history (1, T); the graph
# gets a batch's histories one after another (T_total,) plus each one's end offset, which Triton's
# ragged batching fills in (batch_input BATCH_ACCUMULATED_ELEMENT_COUNT, INT32 or FP32 only).
HISTORY_IDS = "history_ids"  # int64: internal item indices; PAD_ID and ids outside [0, N) are ignored
HISTORY_ENDS = "history_ends"  # int32 (B,): end offset of each history in history_ids (graph input)
PROFILE_WEIGHTS = "profile_weights"  # fp32 (B, H, K)
HISTORY_LENGTH = "history_length"  # int64 (B, 1): distinct valid ids in the history
EXCLUDE_IDS = "exclude_ids"  # int64 (B, E), padded with PAD_ID
TOP_IDS = "top_ids"  # int64 (B, top_k), best first
TOP_SCORES = "top_scores"  # fp32 (B, top_k): log-softmax over the catalog; -inf for excluded items
# int64 (1,), optional: how many of the best items apron_scorer returns, in [1, K_MAX]. An
# initializer that is also a graph input (ONNX's default value for an input): a caller that does not
# feed it (Triton's config.pbtxt, an older client) gets K_MAX; the in-process backend feeds its
# batch's largest k, so that a k = 10 request selects 10 items rather than sorting K_MAX of them.
TOP_K = "top_k"
ITEM_FEATURES = "item_features"  # fp32 (B, D)
ITEM_PROTOTYPE_WEIGHTS = "item_prototype_weights"  # fp32 (B, H, K)

PAD_ID = -1  # padding in history_ids / exclude_ids; ids outside [0, n_items) are ignored too
DEFAULT_K_MAX = 1000
ONNX_OPSET = 17
ONNX_FILENAME = "model.onnx"
PYTHON_BACKEND_FILENAME = "model.py"
METADATA_FILENAME = "apron_metadata.json"
METADATA_FORMAT = "apron-metadata/2"  # 2: apron_profile takes ragged histories (history_ends)
TORCH_WEIGHTS_FILENAME = "model.safetensors"  # beside model.onnx: the torch backend's weights


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "int64" | "float32"
    dims: tuple[int, ...]  # without the batch axis; -1 = variable
    ragged: bool = False  # Triton concatenates requests' values (allow_ragged_batch) instead of stacking


@dataclass(frozen=True)
class BatchInputSpec:
    """A graph input that Triton computes from the formed batch (config.pbtxt `batch_input`)."""

    name: str
    dtype: str
    kind: str  # Triton's BatchInput.Kind name
    source: str  # the ragged input it describes


BATCH_INPUTS = {
    PROFILE_MODEL: (BatchInputSpec(HISTORY_ENDS, "int32", "BATCH_ACCUMULATED_ELEMENT_COUNT", HISTORY_IDS),),
}


def model_io(n_heads: int, n_prototypes: int, feature_dim: int, k_max: int) -> dict[str, tuple]:
    """(inputs, outputs) per model as a Triton request sees them, shapes without the batch axis
    (Triton's `dims`). apron_profile's graph also takes BATCH_INPUTS, and its history_ids is flat."""
    h, k = n_heads, n_prototypes
    return {
        PROFILE_MODEL: (
            (TensorSpec(HISTORY_IDS, "int64", (-1,), ragged=True),),
            (TensorSpec(PROFILE_WEIGHTS, "float32", (h, k)), TensorSpec(HISTORY_LENGTH, "int64", (1,))),
        ),
        SCORER_MODEL: (
            (TensorSpec(PROFILE_WEIGHTS, "float32", (h, k)), TensorSpec(EXCLUDE_IDS, "int64", (-1,))),
            (TensorSpec(TOP_IDS, "int64", (k_max,)), TensorSpec(TOP_SCORES, "float32", (k_max,))),
        ),
        ITEM_ENCODER_MODEL: (
            (TensorSpec(ITEM_FEATURES, "float32", (feature_dim,)),),
            (TensorSpec(ITEM_PROTOTYPE_WEIGHTS, "float32", (h, k)),),
        ),
        ENSEMBLE_MODEL: (
            (TensorSpec(HISTORY_IDS, "int64", (-1,)),),
            (TensorSpec(TOP_IDS, "int64", (k_max,)), TensorSpec(TOP_SCORES, "float32", (k_max,))),
        ),
    }


def ragged_batch(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """1-D id arrays -> apron_profile's graph inputs: (history_ids (T_total,) int64, the rows one
    after another; history_ends (B,) int32, each row's end offset). Nothing is padded."""
    ends = np.cumsum([len(row) for row in rows], dtype=np.int64).astype(np.int32)
    ids = np.concatenate([np.asarray(row, dtype=np.int64).reshape(-1) for row in rows]) if rows else np.zeros(0, np.int64)
    return ids, ends


class Precision(StrEnum):
    """An export's numeric precision, as its metadata records it (`precision`)."""

    FP32 = "fp32"
    FP16 = "fp16"  # the catalog table and f in half precision (GPU)
    INT8 = "int8"  # the scorer's f with int8 weights (export/quantize.py; ONNX Runtime on the CPU)

    @classmethod
    def of(cls, fp16: bool, int8: bool) -> Precision:
        """From the export's two flags (`apron export --fp16 / --int8`), which exclude each other."""
        if fp16 and int8:
            raise ValueError("--fp16 and --int8 exclude each other: int8 quantizes the fp32 f for the CPU, fp16 halves it for the GPU")
        return cls.FP16 if fp16 else cls.INT8 if int8 else cls.FP32

    def of_graph(self, graph: str) -> Precision:
        """The precision of one of the export's graphs: int8 quantizes the scorer's f alone (the
        profile graph, the item encoder and every weights file stay fp32)."""
        return Precision.FP32 if self is Precision.INT8 and graph != SCORER_MODEL else self
