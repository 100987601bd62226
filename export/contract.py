"""The export contract (DESIGN.md section 4): model and tensor names shared by export and serving.

One source of truth: `export/` writes these names into the ONNX graphs, config.pbtxt files and
apron_metadata.json; `serving/` imports them to build requests. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

# Models in the Triton repository (folder name = model name).
PROFILE_MODEL = "apron_profile"  # history ids -> per-head prototype weights (Eq. 13 before A^v)
SCORER_MODEL = "apron_scorer"  # (edited) profile weights -> top-K_MAX items, in-graph TopK
ITEM_ENCODER_MODEL = "apron_item_encoder"  # new items' features -> prototype weights (Eq. 12)
ENSEMBLE_MODEL = "apron_recommend"  # profile -> scorer, the no-edit no-cache path
MODELS = (PROFILE_MODEL, SCORER_MODEL, ITEM_ENCODER_MODEL, ENSEMBLE_MODEL)
ONNX_MODELS = (PROFILE_MODEL, SCORER_MODEL, ITEM_ENCODER_MODEL)  # the ensemble has no graph of its own

# Tensor names (identical for the onnxruntime and python-backend variants).
HISTORY_IDS = "history_ids"  # int64 (B, T), internal item indices, padded with PAD_ID
PROFILE_WEIGHTS = "profile_weights"  # fp32 (B, H, K)
HISTORY_LENGTH = "history_length"  # int64 (B, 1): distinct valid ids in the history
EXCLUDE_IDS = "exclude_ids"  # int64 (B, E), padded with PAD_ID
TOP_IDS = "top_ids"  # int64 (B, K_MAX), best first
TOP_SCORES = "top_scores"  # fp32 (B, K_MAX): log-softmax over the catalog; -inf for excluded items
ITEM_FEATURES = "item_features"  # fp32 (B, D)
ITEM_PROTOTYPE_WEIGHTS = "item_prototype_weights"  # fp32 (B, H, K)

PAD_ID = -1  # padding in history_ids / exclude_ids; ids outside [0, n_items) are ignored too
DEFAULT_K_MAX = 1000
ONNX_OPSET = 17
ONNX_FILENAME = "model.onnx"
PYTHON_BACKEND_FILENAME = "model.py"
METADATA_FILENAME = "apron_metadata.json"
METADATA_FORMAT = "apron-metadata/1"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "int64" | "float32"
    dims: tuple[int, ...]  # without the batch axis; -1 = variable


def model_io(n_heads: int, n_prototypes: int, feature_dim: int, k_max: int) -> dict[str, tuple]:
    """(inputs, outputs) per model, shapes without the batch axis (Triton's `dims`)."""
    h, k = n_heads, n_prototypes
    return {
        PROFILE_MODEL: (
            (TensorSpec(HISTORY_IDS, "int64", (-1,)),),
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
