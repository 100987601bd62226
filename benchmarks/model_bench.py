"""The model on its own, no gRPC: ONNX Runtime vs PyTorch eager, catalog size, history length.

Both runtimes run the very graphs `apron export` writes (`export.onnx_export.build_graphs` and
`export_onnx`), so "eager" is the module that was traced and "ORT" is what Triton's onnxruntime
backend and the gateway's in-process scorer load.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import torch

from benchmarks.gateway_bench import K as SERVED_K
from benchmarks.synthetic import synthetic_apron
from benchmarks.timing import CacheEvictor, Timing, time_alternating, time_calls
from export import contract
from export.onnx_export import ExportedGraphs, export_onnx, ragged, random_histories, session
from serving.backends.base import scorer_threads
from serving.backends.onnxruntime import session_options
from serving.config import ServingConfig
from training.models.apron import APRON

Runner = Callable[[], object]
KMAX_BATCHES = (1, 256)  # also timed at K_MAX (bench_catalog)
# The scorer rows ask for the k the gateway benchmarks' requests ask for (its TOP_K), as the served
# scorer does; the ONNX Runtime vs torch and edit-penalty comparisons keep K_MAX on both sides.


@dataclass(frozen=True)
class CatalogResult:
    n_items: int
    export_s: float
    scorer_onnx_mb: float
    profile_onnx_mb: float
    timings: dict[str, Timing]  # "<graph>/<runtime>/b<batch>" -> timing
    histories: list[HistoryResult] = field(default_factory=list)  # bench_catalog's history_lengths


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


def served_session(onnx_model: bytes) -> ort.InferenceSession:
    """A session with the settings `apron serve` gives a scorer graph of this size by default
    (ServingConfig; `scorer_threads`)."""
    inference = ServingConfig().inference
    options = session_options(inference.ort_threads or scorer_threads(len(onnx_model)), inference.ort_spinning)
    return ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])


def ort_runner(
    onnx_model: bytes, feeds: dict[str, np.ndarray], make_session: Callable[[bytes], ort.InferenceSession] = session
) -> Runner:
    sess = make_session(onnx_model)
    return lambda: sess.run(None, feeds)


def eager_runner(module: torch.nn.Module, inputs: tuple[np.ndarray, ...], **options: object) -> Runner:
    tensors = tuple(torch.from_numpy(x) for x in inputs)

    def run() -> object:
        with torch.inference_mode():
            return module(*tensors, **options)

    return run


def bench_catalog(
    n_items: int,
    batches: Iterable[int],
    min_seconds: float,
    history_length: int = 50,
    eager: bool = True,
    served_batches: Iterable[int] = (),
    history_lengths: Iterable[int] = (),
) -> CatalogResult:
    """Export a synthetic model of `n_items` and time both graphs with ORT (and the scorer eager).

    ORT runs with its defaults (every core, spinning workers: the model alone at its fastest);
    `served_batches` also time the scorer with the gateway's own session settings
    ("scorer/ort-served/b<batch>": `served_session`, the threads serve gives a scorer of this size and no spinning), which is
    what the gateway's scorer can do at best on this machine. `history_lengths`: `bench_history_lengths`
    on the same export (half `min_seconds` each), which a model of this size takes seconds to make."""
    model = synthetic_apron(n_items)
    cfg = model.config
    start = time.perf_counter()
    graphs = export_onnx(model, contract.DEFAULT_K_MAX)
    export_s = time.perf_counter() - start
    timings: dict[str, Timing] = {}
    for batch in batches:
        weights, exclude = scorer_inputs(n_items, cfg.n_heads, cfg.n_tags, batch, history_length)
        feeds = {contract.PROFILE_WEIGHTS: weights, contract.EXCLUDE_IDS: exclude, contract.TOP_K: np.array([SERVED_K])}
        scorer = ort_runner(graphs.onnx[contract.SCORER_MODEL], feeds)
        timings[f"scorer/ort/b{batch}"] = time_calls(scorer, batch, min_seconds)
        if batch in KMAX_BATCHES:  # the same graph returning K_MAX (TOP_K not fed): what asking for k saves
            every = {name: value for name, value in feeds.items() if name != contract.TOP_K}
            timings[f"scorer/ort-kmax/b{batch}"] = time_calls(ort_runner(graphs.onnx[contract.SCORER_MODEL], every), batch, min_seconds)
        if batch == 1:  # the same with cold caches, as in a gateway, where other work runs between calls
            timings["scorer/ort-cold/b1"] = time_calls(scorer, 1, min_seconds, between=CacheEvictor())
        if batch in served_batches:
            served = ort_runner(graphs.onnx[contract.SCORER_MODEL], feeds, served_session)
            timings[f"scorer/ort-served/b{batch}"] = time_calls(served, batch, min_seconds)
        if eager:
            runner = eager_runner(graphs.modules[contract.SCORER_MODEL], (weights, exclude), top_k=SERVED_K)
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
        histories=bench_history_lengths(model, graphs, history_lengths, min_seconds / 2),
    )
    del graphs, model
    gc.collect()
    return result


def bench_history_lengths(model: APRON, graphs: ExportedGraphs, lengths: Iterable[int], min_seconds: float) -> list[HistoryResult]:
    """Batch-1 latency of `model`'s exported graphs as the history (and so the exclude list) grows."""
    lengths = list(lengths)
    if not lengths:
        return []
    cfg = model.config
    n_items = cfg.n_items
    profile_sess, scorer_sess = session(graphs.onnx[contract.PROFILE_MODEL]), session(graphs.onnx[contract.SCORER_MODEL])
    results = []
    for length in lengths:
        weights, exclude = scorer_inputs(n_items, cfg.n_heads, cfg.n_tags, 1, length)
        history = profile_feeds(exclude)
        profile = time_calls(lambda f=history: profile_sess.run(None, f), 1, min_seconds)
        feeds = {contract.PROFILE_WEIGHTS: weights, contract.EXCLUDE_IDS: exclude, contract.TOP_K: np.array([SERVED_K])}
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


PENALTY_RUNTIMES = ("onnxruntime", "torch")
PENALTY_CASES = ("unedited", "edited")  # no share 0 / one prototype removed in every head of every row


@dataclass(frozen=True)
class PenaltyResult:
    """The `controllable` preset's scorer (edit penalty γ > 0) against the same weights with γ = 0,
    timed in one process: `timings[(runtime, "penalty" | "plain", case, batch)]`."""

    n_items: int
    gamma: float
    k_max: int
    timings: dict[tuple[str, str, str, int], Timing]
    # (runtime, "penalty" | "plain") -> the intra-op threads its runner got, read back from it: a
    # scorer graph's size decides them (`scorer_threads`), and the two graphs' sizes differ
    threads: dict[tuple[str, str], int]

    @property
    def batches(self) -> list[int]:
        return sorted({key[3] for key in self.timings})

    @property
    def runtimes(self) -> list[str]:
        return [r for r in PENALTY_RUNTIMES if any(key[0] == r for key in self.timings)]

    def ratio(self, runtime: str, case: str, batch: int) -> float:
        """p50 with the penalty over p50 without it (target: ≤ 1.2 at 41k items)."""
        return self.timings[(runtime, "penalty", case, batch)].p50_ms / self.timings[(runtime, "plain", case, batch)].p50_ms


def bench_edit_penalty(
    n_items: int,
    batches: Iterable[int] = (1, 32),
    min_seconds: float = 1.0,
    runtimes: Iterable[str] = PENALTY_RUNTIMES,
    k_max: int = contract.DEFAULT_K_MAX,
    history_length: int = 50,
) -> PenaltyResult:
    """The scorer of APRON's `controllable` preset (training/models/apron.py PRESETS: edit penalty
    γ = 50) vs the same synthetic weights exported with γ = 0, on unedited profiles (no share 0) and
    on edited ones (one tag removed in every head of every row, the gateway's "less τ"). Both run as
    `apron serve` runs them: "onnxruntime" the exported scorer graph in the in-process backend's
    session (`load_scorer_session`: the threads serve gives a scorer of its size; no
    spinning; Triton's python backend runs the same graph), "torch" the torch backend's
    `TorchModel.top_k` on CPU with the cores less one, as the torch backend sets them. Every runner
    is called in turn, call after call (`time_alternating`), so load from other processes falls on
    penalised and plain alike."""
    import dataclasses
    import tempfile
    from pathlib import Path

    from serving.backends.base import default_threads
    from serving.backends.onnxruntime import load_scorer_session
    from serving.backends.torch import TorchModel
    from training.models.apron import PRESETS

    batches, runtimes = list(batches), list(runtimes)
    penalised = synthetic_apron(n_items, **PRESETS["controllable"])
    plain = APRON(dataclasses.replace(penalised.config, edit_penalty=0.0))
    plain.load_state_dict(penalised.state_dict())
    cfg = penalised.config
    runners: dict[tuple[str, str], Callable[[np.ndarray, np.ndarray], object]] = {}
    runner_threads: dict[tuple[str, str], int] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(default_threads())
    try:
        with tempfile.TemporaryDirectory() as directory:
            for variant, model in (("penalty", penalised), ("plain", plain.eval())):
                graphs = export_onnx(model, k_max)
                if "onnxruntime" in runtimes:
                    path = Path(directory) / f"{variant}.onnx"
                    path.write_bytes(graphs.onnx[contract.SCORER_MODEL])
                    sess = load_scorer_session(path)
                    runner_threads[("onnxruntime", variant)] = sess.get_session_options().intra_op_num_threads
                    runners[("onnxruntime", variant)] = lambda w, e, s=sess: s.run(
                        None, {contract.PROFILE_WEIGHTS: w, contract.EXCLUDE_IDS: e}
                    )
                if "torch" in runtimes:
                    modules = graphs.modules
                    torch_model = TorchModel(modules[contract.PROFILE_MODEL], modules[contract.SCORER_MODEL], "cpu", max(batches))
                    torch_model.capture()
                    runners[("torch", variant)] = lambda w, e, m=torch_model: m.top_k(w, list(e))
                    runner_threads[("torch", variant)] = torch.get_num_threads()  # process-wide, set above
                del graphs
                gc.collect()
        timings: dict[tuple[str, str, str, int], Timing] = {}
        for batch in batches:
            weights, exclude = scorer_inputs(n_items, cfg.n_heads, cfg.n_tags, batch, history_length)
            edited = weights.copy()
            edited[:, :, 0] = 0.0  # tag 0 removed in every head: the scale-0 edit
            for runner in runners.values():
                runner(edited, exclude)  # both branches warm before either is timed
            for case, profile in (("unedited", weights), ("edited", edited)):
                calls = {key: (lambda r=runner, w=profile, e=exclude: r(w, e)) for key, runner in runners.items()}
                for (runtime, variant), timing in time_alternating(calls, batch, min_seconds).items():
                    timings[(runtime, variant, case, batch)] = timing
    finally:
        torch.set_num_threads(threads)
    return PenaltyResult(n_items, cfg.edit_penalty, min(k_max, n_items), timings, runner_threads)


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
    for n_items, batches, k_max in ((41_000, (1, 32), contract.DEFAULT_K_MAX), (2_813, (1,), 100)):
        result = bench_edit_penalty(n_items, batches, 1.5, k_max=k_max)
        print(f"scorer of the controllable preset (γ = {result.gamma:g}) vs γ = 0, {n_items:,} items, K_MAX {result.k_max}")
        for runtime in result.runtimes:
            for batch in result.batches:
                for case in PENALTY_CASES:
                    penalty = result.timings[(runtime, "penalty", case, batch)].p50_ms
                    plain = result.timings[(runtime, "plain", case, batch)].p50_ms
                    print(f"  {runtime:>11} b{batch:<3} {case:>8}: p50 {penalty:.2f} vs {plain:.2f} ms = "
                          f"{result.ratio(runtime, case, batch):.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
