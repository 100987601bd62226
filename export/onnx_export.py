"""APRON -> three ONNX graphs with the tensor names of `export/contract.py`, plus a parity check.

- `apron_profile`: the catalog's per-item prototype weights (Eq. 12) depend only on the item and
  the prototypes, so they are computed once here and stored as a constant (N, H*K) table; the graph
  turns padded history ids into a multi-hot row and sums the table's rows (Eq. 13 before the
  value projection). A multi-hot row, not a gather + sum, keeps duplicates counted once, exactly
  like the binary fold-in vector `APRON.profile_weights` is trained on.
- `apron_scorer`: `APRON.score` (shares, u, f: Eq. 13-14, 6) on possibly edited weights, then a
  log-softmax over the catalog, -inf at excluded ids and an in-graph TopK(K_MAX).
- `apron_item_encoder`: `APRON.encode_items` (Eq. 12) for items that are not in the catalog.

Graphs are exported to bytes and checked against PyTorch with ONNX Runtime before anything is
written (`check_parity`).
"""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from export import contract
from training.models.apron import APRON


def history_multi_hot(ids: torch.Tensor, n_items: int) -> torch.Tensor:
    """Padded ids (B, T) -> binary (B, N). Padding and ids outside [0, N) set nothing.

    Invalid ids are scattered into an extra column N that is dropped: ONNX has no masked scatter."""
    valid = (ids >= 0) & (ids < n_items)
    columns = torch.where(valid, ids, torch.full_like(ids, n_items))  # (B, T)
    rows = torch.zeros(ids.shape[0], n_items + 1, dtype=torch.float32, device=ids.device)
    return rows.scatter(1, columns, 1.0)[:, :n_items]  # (B, N)


class ProfileGraph(nn.Module):
    """history_ids (B, T) -> profile_weights (B, H, K), history_length (B, 1)."""

    def __init__(self, model: APRON, dtype: torch.dtype = torch.float32):
        super().__init__()
        cfg = model.config
        self.n_items, self.n_heads, self.n_prototypes = cfg.n_items, cfg.n_heads, cfg.n_tags
        self.dtype = dtype
        with torch.no_grad():
            table = model.item_prototype_weights().reshape(cfg.n_items, -1)  # (N, H*K), Eq. 12
        self.register_buffer("item_table", table.to(dtype))

    def forward(self, history_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        multi_hot = history_multi_hot(history_ids, self.n_items)  # (B, N)
        weights = multi_hot.to(self.dtype) @ self.item_table  # (B, H*K), Eq. 13's sum over the history
        weights = weights.float().view(-1, self.n_heads, self.n_prototypes)  # (B, H, K)
        return weights, multi_hot.sum(-1, keepdim=True).long()  # (B, H, K), (B, 1)


class HalfPrecision(nn.Module):
    """Runs `module` in fp16 between fp32 tensors: the heavy layers get fp16, the interface stays fp32."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(module).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.half()).float()


class ScorerGraph(nn.Module):
    """profile_weights (B, H, K), exclude_ids (B, E) -> top_ids (B, K_MAX), top_scores (B, K_MAX).

    With fp16 only f (Eq. 6, nearly all of the scorer's work) runs in half precision: shares of an
    empty history need the 1e-12 clamp of `profile_shares`, which fp16 rounds to 0 (0/0 = NaN)."""

    def __init__(self, model: APRON, k_max: int, fp16: bool = False):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        if fp16:
            self.model.f = HalfPrecision(self.model.f)
        self.n_items, self.k_max = model.config.n_items, k_max

    def scores(self, profile_weights: torch.Tensor, exclude_ids: torch.Tensor) -> torch.Tensor:
        """Log-softmax over the catalog, -inf where excluded. (B, N)"""
        logits = self.model.score(profile_weights)  # (B, N)
        excluded = history_multi_hot(exclude_ids, self.n_items) > 0  # (B, N)
        return F.log_softmax(logits, dim=-1).masked_fill(excluded, float("-inf"))

    def forward(
        self, profile_weights: torch.Tensor, exclude_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        top_scores, top_ids = self.scores(profile_weights, exclude_ids).topk(self.k_max, dim=-1)
        return top_ids, top_scores  # (B, K_MAX) each, best first


class ItemEncoderGraph(nn.Module):
    """item_features (B, D) -> item_prototype_weights (B, H, K). Always fp32: it is small and new
    items' weights are stored and summed by the gateway, so fp16 would gain nothing."""

    def __init__(self, model: APRON):
        super().__init__()
        self.model = copy.deepcopy(model).eval()

    def forward(self, item_features: torch.Tensor) -> torch.Tensor:
        return self.model.encode_items(item_features)  # (B, H, K), Eq. 12


@dataclass(frozen=True)
class ExportedGraphs:
    """Serialized ONNX models by model name, plus the PyTorch modules they came from."""

    onnx: dict[str, bytes]
    modules: dict[str, nn.Module]
    k_max: int  # effective: min(requested K_MAX, n_items)


def build_graphs(
    model: APRON, k_max: int = contract.DEFAULT_K_MAX, fp16: bool = False
) -> dict[str, nn.Module]:
    model = model.eval()
    return {
        contract.PROFILE_MODEL: ProfileGraph(model, torch.float16 if fp16 else torch.float32).eval(),
        contract.SCORER_MODEL: ScorerGraph(model, min(k_max, model.config.n_items), fp16).eval(),
        contract.ITEM_ENCODER_MODEL: ItemEncoderGraph(model).eval(),
    }


def export_onnx(model: APRON, k_max: int = contract.DEFAULT_K_MAX, fp16: bool = False) -> ExportedGraphs:
    """Trace the three graphs to ONNX bytes with a dynamic batch axis on every input."""
    if k_max < 1:
        raise ValueError(f"K_MAX must be at least 1, got {k_max}")
    cfg = model.config
    modules = build_graphs(model, k_max, fp16)
    examples = {  # batch 2 and lengths > 1 so that no axis is traced as a constant 1
        contract.PROFILE_MODEL: (torch.tensor([[0, 1, -1], [2, -1, -1]]),),
        contract.SCORER_MODEL: (torch.rand(2, cfg.n_heads, cfg.n_tags), torch.tensor([[0, -1], [1, 2]])),
        contract.ITEM_ENCODER_MODEL: (torch.randn(2, cfg.feature_dim),),
    }
    io_specs = contract.model_io(cfg.n_heads, cfg.n_tags, cfg.feature_dim, min(k_max, cfg.n_items))
    onnx_bytes = {}
    for name, module in modules.items():
        inputs, outputs = io_specs[name]
        dynamic_axes = {spec.name: {0: "batch"} for spec in (*inputs, *outputs)}
        for spec in inputs:
            for axis, dim in enumerate(spec.dims, start=1):
                if dim == -1:
                    dynamic_axes[spec.name][axis] = f"{spec.name}_length"
        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                module,
                examples[name],
                buffer,
                dynamo=False,  # the dynamo exporter needs onnxscript; dynamic_axes are all we need
                input_names=[spec.name for spec in inputs],
                output_names=[spec.name for spec in outputs],
                dynamic_axes=dynamic_axes,
                opset_version=contract.ONNX_OPSET,
                do_constant_folding=True,
            )
        onnx_bytes[name] = buffer.getvalue()
    return ExportedGraphs(onnx=onnx_bytes, modules=modules, k_max=min(k_max, cfg.n_items))


@dataclass(frozen=True)
class ParityResult:
    model: str
    tensor: str
    max_abs_error: float
    max_rel_error: float
    ok: bool

    def __str__(self) -> str:
        status = "ok" if self.ok else "FAILED"
        return (
            f"{self.model}.{self.tensor}: max abs error {self.max_abs_error:.3g}, "
            f"max rel error {self.max_rel_error:.3g} [{status}]"
        )


def tolerances(fp16: bool) -> tuple[float, float]:
    """(atol, rtol) of the parity check: |onnx - torch| <= atol + rtol * |torch|."""
    return (5e-2, 2e-2) if fp16 else (1e-4, 1e-4)


def compare(model: str, tensor: str, actual: np.ndarray, expected: np.ndarray, fp16: bool) -> ParityResult:
    """Errors over finite entries; infinities (excluded items) must sit in the same places."""
    atol, rtol = tolerances(fp16)
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    same_shape = actual.shape == expected.shape
    finite = np.isfinite(expected) if same_shape else np.zeros((), bool)
    if not same_shape or not np.array_equal(finite, np.isfinite(actual)) or not finite.any():
        same = same_shape and np.array_equal(actual, expected)
        return ParityResult(model, tensor, 0.0 if same else float("inf"), 0.0 if same else float("inf"), same)
    error = np.abs(actual[finite] - expected[finite])
    scale = np.abs(expected[finite])
    ok = bool(np.all(error <= atol + rtol * scale))
    rel = float((error / np.maximum(scale, 1e-12)).max())
    return ParityResult(model, tensor, float(error.max()), rel, ok)


def session(onnx_model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])


def random_histories(n_items: int, batch: int, max_length: int, rng: np.random.Generator) -> np.ndarray:
    """Padded (B, T) histories of distinct catalog ids with random lengths (one empty row)."""
    max_length = min(max_length, n_items)
    histories = np.full((batch, max_length), contract.PAD_ID, dtype=np.int64)
    for row in range(1, batch):  # row 0 stays empty: an empty history must not produce NaN
        length = int(rng.integers(1, max_length + 1))
        histories[row, :length] = rng.choice(n_items, size=length, replace=False)
    return histories


def check_parity(
    graphs: ExportedGraphs,
    model: APRON,
    fp16: bool = False,
    batch: int = 16,
    max_length: int = 64,
    seed: int = 0,
) -> list[ParityResult]:
    """ONNX Runtime vs the PyTorch APRON model on random histories of real catalog items.

    The references are the model's own methods (`profile_weights`, `score`, `encode_items`), not
    the export wrappers, so a wrapper bug fails here too."""
    cfg = model.config
    rng = np.random.default_rng(seed)
    histories = random_histories(cfg.n_items, batch, max_length, rng)
    ids = torch.from_numpy(histories)
    results = []
    with torch.no_grad():
        x = history_multi_hot(ids, cfg.n_items)  # (B, N) binary fold-in rows
        weights = model.profile_weights(x)  # (B, H, K)
        profile = session(graphs.onnx[contract.PROFILE_MODEL]).run(None, {contract.HISTORY_IDS: histories})
        results.append(
            compare(contract.PROFILE_MODEL, contract.PROFILE_WEIGHTS, profile[0], weights.numpy(), fp16)
        )
        results.append(
            compare(
                contract.PROFILE_MODEL,
                contract.HISTORY_LENGTH,
                profile[1],
                x.sum(-1, keepdim=True).numpy(),
                False,
            )
        )

        scores = F.log_softmax(model.score(weights), dim=-1).masked_fill(x > 0, float("-inf"))  # (B, N)
        top_scores, _ = scores.topk(graphs.k_max, dim=-1)
        top_ids, onnx_scores = session(graphs.onnx[contract.SCORER_MODEL]).run(
            None, {contract.PROFILE_WEIGHTS: weights.numpy(), contract.EXCLUDE_IDS: histories}
        )
        results.append(
            compare(contract.SCORER_MODEL, contract.TOP_SCORES, onnx_scores, top_scores.numpy(), fp16)
        )
        # ids are compared through their PyTorch scores, so that tied items in either order pass
        at_ids = torch.gather(scores, 1, torch.from_numpy(top_ids)).numpy()
        results.append(
            compare(contract.SCORER_MODEL, "score_at_" + contract.TOP_IDS, onnx_scores, at_ids, fp16)
        )

        features = model.item_features[torch.from_numpy(rng.choice(cfg.n_items, size=batch))]
        features = features + 0.1 * torch.randn(features.shape, generator=torch.Generator().manual_seed(seed))
        encoded = session(graphs.onnx[contract.ITEM_ENCODER_MODEL]).run(
            None, {contract.ITEM_FEATURES: features.numpy()}
        )
        results.append(
            compare(
                contract.ITEM_ENCODER_MODEL,
                contract.ITEM_PROTOTYPE_WEIGHTS,
                encoded[0],
                model.encode_items(features).numpy(),
                fp16,
            )
        )
    return results
