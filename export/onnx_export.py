"""APRON -> three ONNX graphs with the tensor names of `export/contract.py`, plus a parity check.

- `apron_profile` and `apron_scorer` are `export/served_model.py`'s modules (one definition of the
  serving math, which the torch backend runs too), built here from the trained APRON: the catalog's
  per-item prototype weights (Eq. 12) depend only on the item and the prototypes, so they are
  computed once into a constant (N, H*K) table that the profile gathers ragged histories from.
- `apron_item_encoder`: `APRON.encode_items` (Eq. 12) for items that are not in the catalog.

Graphs are exported to bytes, with each served module's weights (`model.safetensors`), and checked
against PyTorch with ONNX Runtime before anything is written (`check_parity`).
"""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass, replace

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from export import contract
from export.contract import Precision
from export.quantize import quantize_scorer
from export.served_model import (
    ServedProfile,
    ServedScorer,
    load_tensors,
    profile_from_tensors,
    profile_tensors,
    scorer_from_tensors,
    scorer_tensors,
    weights_bytes,
)
from training.models.apron import APRON


def history_multi_hot(ids: torch.Tensor, n_items: int) -> torch.Tensor:
    """Padded ids (B, T) -> binary (B, N): the fold-in vector APRON is trained on (parity reference).
    Padding and ids outside [0, N) set nothing."""
    valid = (ids >= 0) & (ids < n_items)
    columns = torch.where(valid, ids, torch.full_like(ids, n_items))  # (B, T)
    rows = torch.zeros(ids.shape[0], n_items + 1, dtype=torch.float32, device=ids.device)
    return rows.scatter(1, columns, 1.0)[:, :n_items]  # (B, N)


class UnservableModel(ValueError):
    """The model is one the served graphs cannot represent (an ablation's profile, an activation)."""


def activation_name(model: APRON) -> str:
    """f's hidden activation (training/models/common.py's `mlp`), by name for the weights file."""
    names = {nn.Tanh: "tanh", nn.ReLU: "relu"}
    found = {names.get(type(m)) for m in model.f if not isinstance(m, nn.Linear)}
    if len(found) > 1 or None in found:
        raise UnservableModel(f"f's activations {found} cannot be exported (known: {sorted(names.values())})")
    return found.pop() if found else "tanh"


def served_profile(model: APRON, dtype: torch.dtype = torch.float32) -> ServedProfile:
    cfg = model.config
    with torch.no_grad():
        table = model.item_prototype_weights().reshape(cfg.n_items, -1)  # (N, H*K), Eq. 12
    return ServedProfile(table.to(dtype), cfg.n_heads, cfg.n_tags).eval()


def served_scorer(model: APRON, k_max: int, f_dtype: torch.dtype = torch.float32) -> ServedScorer:
    cfg = model.config
    if getattr(cfg, "profile", "mean") != "mean":
        # the gateway's profiles and edits are shares (DESIGN.md section 2): a summed profile
        # (an ablation of Eq. 13) would be scored on other inputs than it was trained on
        raise UnservableModel(f"APRON with profile={cfg.profile!r} cannot be served: only 'mean' profiles can")
    with torch.no_grad():
        values = model.prototype_values()  # (K, H, D')
        layers = [(m.weight.detach(), m.bias.detach()) for m in model.f if isinstance(m, nn.Linear)]
        penalty = float(getattr(cfg, "edit_penalty", 0.0))
        item_weights = model.item_prototype_weights() if penalty > 0 else None  # (N, H, K)
        return ServedScorer(values, layers, k_max, activation_name(model), f_dtype, penalty, item_weights).eval()


class ItemEncoderGraph(nn.Module):
    """item_features (B, D) -> item_prototype_weights (B, H, K). Always fp32: it is small and new
    items' weights are stored and summed by the gateway, so fp16 would gain nothing."""

    def __init__(self, model: APRON):
        super().__init__()
        self.model = copy.deepcopy(model).eval()

    def forward(self, item_features: torch.Tensor) -> torch.Tensor:
        return self.model.encode_items(item_features)  # (B, H, K), Eq. 12


def ragged(histories: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Padded rows (B, T) -> (ids (T_total,), ends (B,) int32) without the padding: the graph's
    ragged inputs (padding would be ignored anyway; dropping it is what saves the work)."""
    return contract.ragged_batch([row[row != contract.PAD_ID] for row in histories])


@dataclass(frozen=True)
class ExportedGraphs:
    """Serialized ONNX models by model name, the PyTorch modules they came from, and the served
    modules' weights files (`model.safetensors`, fp32) for the torch backend."""

    onnx: dict[str, bytes]
    modules: dict[str, nn.Module]
    k_max: int  # effective: min(requested K_MAX, n_items)
    weights: dict[str, bytes]


def build_graphs(
    model: APRON, k_max: int = contract.DEFAULT_K_MAX, fp16: bool = False
) -> dict[str, nn.Module]:
    """With fp16 the catalog table and f (nearly all of the work) are half precision; every graph's
    inputs and outputs stay fp32."""
    model = model.eval()
    dtype = torch.float16 if fp16 else torch.float32
    return {
        contract.PROFILE_MODEL: served_profile(model, dtype),
        contract.SCORER_MODEL: served_scorer(model, k_max, dtype),
        contract.ITEM_ENCODER_MODEL: ItemEncoderGraph(model).eval(),
    }


def example_inputs(model: APRON) -> dict[str, tuple[torch.Tensor, ...]]:
    """Tracing inputs: batch 3 (one history empty) and lengths > 1, so no axis is traced as a constant."""
    cfg = model.config
    return {
        contract.PROFILE_MODEL: (torch.tensor([0, 1, 2, 1]), torch.tensor([2, 2, 4], dtype=torch.int32)),
        contract.SCORER_MODEL: (torch.rand(3, cfg.n_heads, cfg.n_tags), torch.tensor([[0, -1], [1, 2], [-1, -1]])),
        contract.ITEM_ENCODER_MODEL: (torch.randn(3, cfg.feature_dim),),
    }


def graph_axes(name: str, io_specs: dict[str, tuple]) -> tuple[list[str], list[str], dict[str, dict[int, str]]]:
    """(input names, output names, dynamic axes) of a graph: the request tensors of
    `contract.model_io`, except that ragged inputs are flat and the batch inputs are added."""
    inputs, outputs = io_specs[name]
    dynamic_axes: dict[str, dict[int, str]] = {spec.name: {0: "batch"} for spec in outputs}
    for spec in inputs:
        if spec.ragged:
            dynamic_axes[spec.name] = {0: f"{spec.name}_total"}
            continue
        dynamic_axes[spec.name] = {0: "batch"}
        for axis, dim in enumerate(spec.dims, start=1):
            if dim == -1:
                dynamic_axes[spec.name][axis] = f"{spec.name}_length"
    batch_inputs = contract.BATCH_INPUTS.get(name, ())
    for spec in batch_inputs:
        dynamic_axes[spec.name] = {0: "batch"}
    input_names = [spec.name for spec in inputs] + [spec.name for spec in batch_inputs]
    return input_names, [spec.name for spec in outputs], dynamic_axes


def trace_graph(name: str, module: nn.Module, example: tuple[torch.Tensor, ...], io_specs: dict[str, tuple]) -> bytes:
    """One graph to ONNX bytes, with the names and dynamic axes of `graph_axes`."""
    input_names, output_names, dynamic_axes = graph_axes(name, io_specs)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            example,
            buffer,
            dynamo=False,  # the dynamo exporter needs onnxscript; dynamic_axes are all we need
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=contract.ONNX_OPSET,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def expose_top_k(scorer_onnx: bytes, k_max: int) -> bytes:
    """The scorer graph with its TopK's k taken from `contract.TOP_K`, an initializer holding K_MAX
    that is also a graph input, and its outputs' second axis named `top_k` instead of K_MAX.

    A caller that does not feed TOP_K gets what the graph always returned; the in-process backend
    feeds the largest k of its batch: TopK at K_MAX sorts min(1,000, N) items per row whatever the
    request asks (`python -m benchmarks.scorer_ops`, figures in export/README.md: at batch 32, 56 %
    of the 1,000-item scorer and 35 % of the 41,000-item one, against 7-8 % asking for 10)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph_model = onnx.load_from_string(scorer_onnx)
    graph = graph_model.graph
    [top] = [node for node in graph.node if node.op_type == "TopK"]
    constant = [node for node in graph.node if node.op_type == "Constant" and top.input[1] in node.output]
    k_uses = sum(name == top.input[1] for node in graph.node for name in node.input)
    if constant and k_uses == 1:  # the traced constant only TopK used
        graph.node.remove(constant[0])
    top.input[1] = contract.TOP_K
    graph.initializer.append(numpy_helper.from_array(np.array([k_max], dtype=np.int64), contract.TOP_K))
    graph.input.append(helper.make_tensor_value_info(contract.TOP_K, TensorProto.INT64, [1]))
    for output in graph.output:
        output.type.tensor_type.shape.dim[1].ClearField("dim_value")
        output.type.tensor_type.shape.dim[1].dim_param = contract.TOP_K
    onnx.checker.check_model(graph_model)
    return graph_model.SerializeToString()


def scorer_graph(model: APRON, scorer: ServedScorer) -> bytes:
    """A scorer module for `model`'s shapes traced as `apron_scorer` is, its TopK's k exposed as
    `contract.TOP_K` (`expose_top_k`)."""
    cfg = model.config
    io_specs = contract.model_io(cfg.n_heads, cfg.n_tags, cfg.feature_dim, scorer.k_max)
    traced = trace_graph(contract.SCORER_MODEL, scorer, example_inputs(model)[contract.SCORER_MODEL], io_specs)
    return expose_top_k(traced, scorer.k_max)


def export_onnx(model: APRON, k_max: int = contract.DEFAULT_K_MAX, precision: Precision = Precision.FP32) -> ExportedGraphs:
    """Trace the three graphs to ONNX bytes with a dynamic batch axis on every input; INT8: the
    scorer graph's f with int8 weights (`export/quantize.py`; the weights files stay fp32)."""
    if k_max < 1:
        raise ValueError(f"K_MAX must be at least 1, got {k_max}")
    cfg = model.config
    modules = build_graphs(model, k_max, fp16=precision is Precision.FP16)
    examples = example_inputs(model)
    io_specs = contract.model_io(cfg.n_heads, cfg.n_tags, cfg.feature_dim, min(k_max, cfg.n_items))
    onnx_bytes = {
        name: scorer_graph(model, module) if name == contract.SCORER_MODEL else trace_graph(name, module, examples[name], io_specs)
        for name, module in modules.items()
    }
    weights = {
        contract.PROFILE_MODEL: weights_bytes(*profile_tensors(modules[contract.PROFILE_MODEL])),
        contract.SCORER_MODEL: weights_bytes(*scorer_tensors(modules[contract.SCORER_MODEL])),
    }
    graphs = ExportedGraphs(onnx=onnx_bytes, modules=modules, k_max=min(k_max, cfg.n_items), weights=weights)
    return with_int8_scorer(graphs) if precision is Precision.INT8 else graphs


def with_int8_scorer(graphs: ExportedGraphs) -> ExportedGraphs:
    """fp32 `graphs` with the scorer's f quantized to int8 (`export/quantize.py`), all else shared:
    what `export_onnx(..., precision=INT8)` returns, without tracing the model again."""
    scorer = graphs.modules[contract.SCORER_MODEL]
    onnx_bytes = {**graphs.onnx, contract.SCORER_MODEL: quantize_scorer(graphs.onnx[contract.SCORER_MODEL], bool(scorer.folded))}
    return replace(graphs, onnx=onnx_bytes)


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


# (atol, rtol) of the parity check by precision: |onnx - torch| <= atol + rtol * |torch|. The int8
# scorer's scores (log-softmax, in nats) against the fp32 model's: two items swap places only when
# their fp32 scores are this close. `python -m benchmarks.int8_quality`'s Last.fm 2K model showed at
# most 0.115 here, and no metric change its paired intervals could tell (export/README.md).
TOLERANCES = {Precision.FP32: (1e-4, 1e-4), Precision.FP16: (5e-2, 2e-2), Precision.INT8: (0.15, 0.02)}


def compare(model: str, tensor: str, actual: np.ndarray, expected: np.ndarray, precision: Precision) -> ParityResult:
    """Errors over finite entries, within `precision`'s TOLERANCES; infinities (excluded items) must
    sit in the same places."""
    atol, rtol = TOLERANCES[precision]
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


def noisy_histories(histories: np.ndarray, n_items: int, rng: np.random.Generator) -> np.ndarray:
    """The same histories with repeats, padding and out-of-catalog ids mixed in (all ignored):
    (B, 2T + 2), shuffled per row."""
    noisy = np.concatenate(
        [histories, histories, np.full((len(histories), 1), n_items), np.full((len(histories), 1), -7)], axis=1
    )
    return rng.permuted(noisy, axis=1)


def check_parity(
    graphs: ExportedGraphs,
    model: APRON,
    precision: Precision = Precision.FP32,
    batch: int = 16,
    max_length: int = 64,
    seed: int = 0,
) -> list[ParityResult]:
    """ONNX Runtime vs the PyTorch APRON model on random histories of real catalog items, and the
    torch backend's weights files (rebuilt from their bytes) vs ONNX Runtime, each graph held to
    its `precision.of_graph` TOLERANCES: with INT8 the scorer graph's scores to int8's of the fp32
    model's (its other graphs and the weights files, which the torch backend serves, stay fp32).

    The references are the model's own methods (`profile_weights`, `score`, `encode_items`), not
    the export wrappers, so a wrapper bug fails here too. The profile graph gets ragged histories
    with repeats, padding and invalid ids mixed in, which must change nothing."""
    cfg = model.config
    profile_precision, scorer_precision = precision.of_graph(contract.PROFILE_MODEL), precision.of_graph(contract.SCORER_MODEL)
    files_precision = Precision.FP16 if precision is Precision.FP16 else Precision.FP32  # the weights files: never int8
    rng = np.random.default_rng(seed)
    histories = random_histories(cfg.n_items, batch, max_length, rng)
    ids = torch.from_numpy(histories)
    flat, ends = ragged(noisy_histories(histories, cfg.n_items, rng))
    profile_inputs = {contract.HISTORY_IDS: flat, contract.HISTORY_ENDS: ends}
    results = []
    with torch.no_grad():
        x = history_multi_hot(ids, cfg.n_items)  # (B, N) binary fold-in rows
        weights = model.profile_weights(x)  # (B, H, K)
        profile = session(graphs.onnx[contract.PROFILE_MODEL]).run(None, profile_inputs)
        results.append(
            compare(contract.PROFILE_MODEL, contract.PROFILE_WEIGHTS, profile[0], weights.numpy(), profile_precision)
        )
        results.append(
            compare(
                contract.PROFILE_MODEL,
                contract.HISTORY_LENGTH,
                profile[1],
                x.sum(-1, keepdim=True).numpy(),
                Precision.FP32,
            )
        )

        scores = F.log_softmax(model.score(weights), dim=-1).masked_fill(x > 0, float("-inf"))  # (B, N)
        top_scores, _ = scores.topk(graphs.k_max, dim=-1)
        scorer_inputs = {contract.PROFILE_WEIGHTS: weights.numpy(), contract.EXCLUDE_IDS: histories}
        top_ids, onnx_scores = session(graphs.onnx[contract.SCORER_MODEL]).run(None, scorer_inputs)
        results.append(
            compare(contract.SCORER_MODEL, contract.TOP_SCORES, onnx_scores, top_scores.numpy(), scorer_precision)
        )
        # ids are compared through their PyTorch scores, so that tied items in either order pass
        at_ids = torch.gather(scores, 1, torch.from_numpy(top_ids)).numpy()
        results.append(
            compare(contract.SCORER_MODEL, "score_at_" + contract.TOP_IDS, onnx_scores, at_ids, scorer_precision)
        )

        # the torch backend's files, in the precision the graphs were exported with
        dtype = torch.float16 if precision is Precision.FP16 else torch.float32
        served = profile_from_tensors(*load_tensors(graphs.weights[contract.PROFILE_MODEL]), dtype)
        torch_weights, torch_lengths = served(torch.from_numpy(flat), torch.from_numpy(ends))
        results.append(
            compare("torch:" + contract.PROFILE_MODEL, contract.PROFILE_WEIGHTS, torch_weights.numpy(), profile[0], profile_precision)
        )
        results.append(
            compare("torch:" + contract.PROFILE_MODEL, contract.HISTORY_LENGTH, torch_lengths.numpy(), profile[1], Precision.FP32)
        )
        scorer = scorer_from_tensors(*load_tensors(graphs.weights[contract.SCORER_MODEL]), dtype)
        torch_ids, torch_scores = scorer(weights, ids)
        results.append(
            compare("torch:" + contract.SCORER_MODEL, contract.TOP_SCORES, torch_scores.numpy(), onnx_scores, scorer_precision)
        )
        results.append(
            compare(
                "torch:" + contract.SCORER_MODEL,
                "score_at_" + contract.TOP_IDS,
                torch_scores.numpy(),
                torch.gather(scores, 1, torch_ids).numpy(),
                files_precision,  # the torch scorer from its weights file against the model
            )
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
                precision.of_graph(contract.ITEM_ENCODER_MODEL),
            )
        )
    return results
