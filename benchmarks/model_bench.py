"""The model on its own, no gRPC: ONNX Runtime vs PyTorch eager, catalog size, history length.

Both runtimes run the very graphs `apron export` writes (`export.onnx_export.build_graphs` and
`export_onnx`), so "eager" is the module that was traced and "ORT" is what Triton's onnxruntime
backend and the gateway's in-process scorer load.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.synthetic import synthetic_apron
from benchmarks.timing import Timing, time_calls
from export import contract
from export.onnx_export import export_onnx, ragged, random_histories, session

Runner = Callable[[], object]


@dataclass(frozen=True)
class CatalogResult:
    n_items: int
    export_s: float
    scorer_onnx_mb: float
    profile_onnx_mb: float
    timings: dict[str, Timing]  # "<graph>/<runtime>/b<batch>" -> timing


@dataclass(frozen=True)
class HistoryResult:
    n_items: int
    history_length: int
    profile: Timing  # ORT, batch 1
    scorer: Timing  # ORT, batch 1, the history excluded


def scorer_inputs(n_items: int, n_heads: int, n_tags: int, batch: int, history_length: int, seed: int = 0):
    """Profile weights as the profile graph makes them (sums of per-item softmaxes: each head sums to
    the history length) and the history as exclude ids."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(n_tags), size=(batch, n_heads)).astype(np.float32) * history_length  # (B, H, K)
    exclude = full_histories(n_items, batch, history_length, rng)  # (B, T)
    return weights, exclude


def full_histories(n_items: int, batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """(B, T) histories of exactly `length` distinct ids: history-length costs need fixed lengths,
    unlike `random_histories`, whose rows have random lengths."""
    return np.stack([rng.choice(n_items, size=min(length, n_items), replace=False) for _ in range(batch)]).astype(np.int64)


def profile_feeds(histories: np.ndarray) -> dict[str, np.ndarray]:
    """Padded (B, T) rows -> apron_profile's ragged inputs (padding dropped)."""
    ids, ends = ragged(histories)
    return {contract.HISTORY_IDS: ids, contract.HISTORY_ENDS: ends}


def ort_runner(onnx_model: bytes, feeds: dict[str, np.ndarray]) -> Runner:
    sess = session(onnx_model)
    return lambda: sess.run(None, feeds)


def eager_runner(module: torch.nn.Module, inputs: tuple[np.ndarray, ...]) -> Runner:
    tensors = tuple(torch.from_numpy(x) for x in inputs)

    def run() -> object:
        with torch.inference_mode():
            return module(*tensors)

    return run


def bench_catalog(
    n_items: int, batches: Iterable[int], min_seconds: float, history_length: int = 50, eager: bool = True
) -> CatalogResult:
    """Export a synthetic model of `n_items` and time both graphs with ORT (and the scorer eager)."""
    model = synthetic_apron(n_items)
    cfg = model.config
    start = time.perf_counter()
    graphs = export_onnx(model, contract.DEFAULT_K_MAX)
    export_s = time.perf_counter() - start
    timings: dict[str, Timing] = {}
    for batch in batches:
        weights, exclude = scorer_inputs(n_items, cfg.n_heads, cfg.n_tags, batch, history_length)
        feeds = {contract.PROFILE_WEIGHTS: weights, contract.EXCLUDE_IDS: exclude}
        timings[f"scorer/ort/b{batch}"] = time_calls(ort_runner(graphs.onnx[contract.SCORER_MODEL], feeds), batch, min_seconds)
        if eager:
            runner = eager_runner(graphs.modules[contract.SCORER_MODEL], (weights, exclude))
            timings[f"scorer/eager/b{batch}"] = time_calls(runner, batch, min_seconds)
        histories = random_histories(n_items, batch, history_length, np.random.default_rng(1))
        profile = ort_runner(graphs.onnx[contract.PROFILE_MODEL], profile_feeds(histories))
        timings[f"profile/ort/b{batch}"] = time_calls(profile, batch, min_seconds)
    result = CatalogResult(
        n_items=n_items,
        export_s=export_s,
        scorer_onnx_mb=len(graphs.onnx[contract.SCORER_MODEL]) / 2**20,
        profile_onnx_mb=len(graphs.onnx[contract.PROFILE_MODEL]) / 2**20,
        timings=timings,
    )
    del graphs, model
    gc.collect()
    return result


def bench_history_lengths(n_items: int, lengths: Iterable[int], min_seconds: float) -> list[HistoryResult]:
    """Batch-1 latency of both graphs as the history (and so the exclude list) grows."""
    model = synthetic_apron(n_items)
    cfg = model.config
    graphs = export_onnx(model, contract.DEFAULT_K_MAX)
    profile_sess, scorer_sess = session(graphs.onnx[contract.PROFILE_MODEL]), session(graphs.onnx[contract.SCORER_MODEL])
    results = []
    for length in lengths:
        weights, exclude = scorer_inputs(n_items, cfg.n_heads, cfg.n_tags, 1, length)
        history = profile_feeds(exclude)
        profile = time_calls(lambda f=history: profile_sess.run(None, f), 1, min_seconds)
        feeds = {contract.PROFILE_WEIGHTS: weights, contract.EXCLUDE_IDS: exclude}
        scorer = time_calls(lambda f=feeds: scorer_sess.run(None, f), 1, min_seconds)
        results.append(HistoryResult(n_items, length, profile, scorer))
    return results


PROFILE_CATALOGS = (1_000, 10_000, 40_940, 100_000)


@dataclass(frozen=True)
class ProfileScaling:
    """apron_profile (ONNX Runtime, batch 1, one history of `history_length`) per catalog size."""

    history_length: int
    timings: dict[int, Timing]  # n_items -> timing

    def ratio(self, large: int, small: int) -> float:
        """p50 at `large` items over p50 at `small` items (target: ≤ 2 for 100k vs 1k)."""
        return self.timings[large].p50_ms / self.timings[small].p50_ms


def bench_profile_scaling(
    catalogs: Iterable[int] = PROFILE_CATALOGS, min_seconds: float = 1.0, history_length: int = 50
) -> ProfileScaling:
    """The exported profile graph over random tables of the project's width (H·K = 16·80): its
    cost must follow the history, not the catalog (the graph gathers the history's rows)."""
    from benchmarks.gpu_scorer import random_served
    from export.onnx_export import trace_graph

    timings = {}
    rng = np.random.default_rng(0)
    for n_items in catalogs:
        profile, _ = random_served(n_items, 1, seed=0)
        io_specs = contract.model_io(profile.n_heads, profile.n_prototypes, 1, 1)
        example = (torch.tensor([0, 1, 2, 1]), torch.tensor([2, 2, 4], dtype=torch.int32))
        sess = session(trace_graph(contract.PROFILE_MODEL, profile.eval(), example, io_specs))
        feeds = profile_feeds(full_histories(n_items, 1, history_length, rng))
        timings[n_items] = time_calls(lambda s=sess, f=feeds: s.run(None, f), 1, min_seconds)
        del profile, sess
        gc.collect()
    return ProfileScaling(history_length, timings)


def bench_profile_batches(
    n_items: int = 40_940, batches: Iterable[int] = (1, 32, 256), min_seconds: float = 1.0, history_length: int = 50
) -> dict[int, Timing]:
    """The exported profile graph at the gateway's batch sizes (random table of the served width,
    `history_length` distinct ids per row): how the per-row sums scale with the batch."""
    from benchmarks.gpu_scorer import random_served
    from export.onnx_export import trace_graph

    profile, _ = random_served(n_items, 1, seed=0)
    io_specs = contract.model_io(profile.n_heads, profile.n_prototypes, 1, 1)
    example = (torch.tensor([0, 1, 2, 1]), torch.tensor([2, 2, 4], dtype=torch.int32))
    sess = session(trace_graph(contract.PROFILE_MODEL, profile.eval(), example, io_specs))
    rng = np.random.default_rng(0)
    timings = {}
    for batch in batches:
        feeds = profile_feeds(full_histories(n_items, batch, history_length, rng))
        timings[batch] = time_calls(lambda f=feeds: sess.run(None, f), batch, min_seconds)
    return timings


def bench_torch_vs_ort(
    n_items: int, batches: Iterable[int], min_seconds: float, history_length: int = 50
) -> dict[str, Timing]:
    """The scorer as the two in-process backends run it on CPU, fp32, same exported model:
    ONNX Runtime's session vs the torch backend's `TorchModel.top_k` ("<backend>/b<batch>")."""
    from serving.backends.torch import TorchModel

    batches = list(batches)
    model = synthetic_apron(n_items)
    cfg = model.config
    graphs = export_onnx(model, contract.DEFAULT_K_MAX)
    scorer_sess = session(graphs.onnx[contract.SCORER_MODEL])
    torch_model = TorchModel(graphs.modules[contract.PROFILE_MODEL], graphs.modules[contract.SCORER_MODEL], "cpu", max(batches))
    torch_model.capture()
    timings: dict[str, Timing] = {}
    for batch in batches:
        weights, exclude = scorer_inputs(n_items, cfg.n_heads, cfg.n_tags, batch, history_length)
        feeds = {contract.PROFILE_WEIGHTS: weights, contract.EXCLUDE_IDS: exclude}
        timings[f"onnxruntime/b{batch}"] = time_calls(lambda f=feeds: scorer_sess.run(None, f), batch, min_seconds)
        rows = list(exclude)
        timings[f"torch/b{batch}"] = time_calls(lambda w=weights, r=rows: torch_model.top_k(w, r), batch, min_seconds)
    return timings


def main() -> int:
    """`python -m benchmarks.model_bench`: the profile's catalog scaling and ORT vs torch on CPU."""
    import os

    scaling = bench_profile_scaling()
    print(f"machine: {os.cpu_count()} cores; apron_profile, ONNX Runtime, batch 1, history {scaling.history_length}")
    for n_items, timing in scaling.timings.items():
        print(f"  {n_items:>7} items: p50 {timing.p50_ms:.3f} ms")
    ratio = scaling.ratio(max(scaling.timings), min(scaling.timings))
    print(f"  {max(scaling.timings)} / {min(scaling.timings)} items: {ratio:.2f}x (target <= 2: {'met' if ratio <= 2 else 'MISSED'})")
    print("apron_profile, ONNX Runtime, 40,940 items, 50-item histories, by batch size")
    for batch, timing in bench_profile_batches().items():
        print(f"  batch {batch:>4}: p50 {timing.p50_ms:.2f} ms, {timing.throughput:.0f} rows/s")
    print("scorer, 40,940 items, fp32 CPU: ONNX Runtime vs torch backend")
    for name, timing in bench_torch_vs_ort(40_940, (1, 32), 1.0).items():
        print(f"  {name:>16}: p50 {timing.p50_ms:.2f} ms, {timing.throughput:.0f} rows/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
