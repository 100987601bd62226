"""`python -m benchmarks.scorer_ops`: where the scorer graph's time goes, operator by operator
(ONNX Runtime's own profiler, one thread, the gateway's session settings otherwise), asking for
`--k` items (the graph's `top_k` input, as the in-process backend feeds it) and for K_MAX (`top_k`
not fed), at each `--items` catalog size and `--batches` batch size. What `export/onnx_export.py`'s
`expose_top_k` rests on: TopK at K_MAX sorts min(1,000, N) items per row whatever the request asks.
Then two A/Bs, each pair taking turns on the same inputs: the log-softmax's two ONNX forms, and the
whole scorer graph with u folded into f's first layer (what is exported) and without
(`export/served_model.py`'s `fold_values`).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from benchmarks.gateway_bench import K
from benchmarks.synthetic import synthetic_apron
from benchmarks.timing import CacheEvictor, StandaloneRun, time_alternating
from export import contract
from export.onnx_export import ExportedGraphs, export_onnx, scorer_graph
from export.served_model import ServedScorer
from serving.backends.onnxruntime import session_options
from training.models.apron import APRON

# each --items size: the synthetic model and its export, built once for every measurement
Exported = dict[int, tuple[APRON, ExportedGraphs]]


def op_times(scorer_onnx: bytes, feeds: dict[str, np.ndarray], runs: int, directory: Path) -> dict[str, float]:
    """Kernel µs per run by operator type, over `runs` profiled runs."""
    options = session_options(1)
    options.enable_profiling = True
    options.profile_file_prefix = str(directory / "scorer")
    session = ort.InferenceSession(scorer_onnx, options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    return {op: us / runs for op, us in totals.items()}


def measure(exported: Exported, batches: list[int], k: int, runs: int) -> list[tuple[int, int, str, dict[str, float]]]:
    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as directory:
        for n_items, (model, graphs) in exported.items():
            cfg = model.config
            scorer = graphs.onnx[contract.SCORER_MODEL]
            for batch in batches:
                weights = rng.random((batch, cfg.n_heads, cfg.n_tags)).astype(np.float32)
                exclude = rng.integers(0, n_items, (batch, 50)).astype(np.int64)
                feeds = {contract.PROFILE_WEIGHTS: weights, contract.EXCLUDE_IDS: exclude}
                for label, extra in ((f"k = {k}", {contract.TOP_K: np.array([k])}), ("K_MAX", {})):
                    rows.append((n_items, batch, label, op_times(scorer, {**feeds, **extra}, runs, Path(directory))))
    return rows


NORMALISER_FORMS = ("ReduceLogSumExp, Sub", "LogSoftmax")


def normaliser_graph(form: str) -> bytes:
    """(B, N) logits -> (B, N) log-softmax in one of NORMALISER_FORMS."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "N"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "N"])
    if form == NORMALISER_FORMS[0]:
        nodes = [
            helper.make_node("ReduceLogSumExp", ["x"], ["normaliser"], axes=[1], keepdims=1),
            helper.make_node("Sub", ["x", "normaliser"], ["y"]),
        ]
    else:
        nodes = [helper.make_node("LogSoftmax", ["x"], ["y"], axis=-1)]
    model = helper.make_model(helper.make_graph(nodes, "normaliser", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every ONNX Runtime this project runs reads
    onnx.checker.check_model(model)
    return model.SerializeToString()


def normaliser_times(items: list[int], batches: list[int], runs: int) -> list[tuple[int, int, float, float]]:
    """(items, batch, p50 µs per form in NORMALISER_FORMS' order), one thread."""
    rng = np.random.default_rng(0)
    sessions = [ort.InferenceSession(normaliser_graph(form), session_options(1), providers=["CPUExecutionProvider"]) for form in NORMALISER_FORMS]
    rows = []
    for n_items in items:
        for batch in batches:
            feeds = {"x": (3 * rng.standard_normal((batch, n_items))).astype(np.float32)}
            [slow, fast] = [np.asarray(s.run(None, feeds)[0]) for s in sessions]
            np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-4)  # the same numbers either way
            timings = time_alternating({i: functools.partial(s.run, None, feeds) for i, s in enumerate(sessions)}, batch, 0.0, runs)
            rows.append((n_items, batch, timings[0].p50_ms * 1e3, timings[1].p50_ms * 1e3))
    return rows


FOLD_FORMS = ("Einsum, then f", "folded into f")


def fold_times(exported: Exported, batches: list[int], k: int, runs: int) -> dict[bool, list[tuple[int, int, float, float]]]:
    """Caches cold (False: back to back, True: 64 MB read before each call, as the gateway's one
    client sees it) -> (items, batch, p50 µs of the whole scorer graph per form in FOLD_FORMS'
    order), one thread, asking for `k` items; both graphs' scores are checked to agree first. The
    folded graph is the export's; the other is its module rebuilt with `fold=False`."""
    rng = np.random.default_rng(0)
    rows: dict[bool, list[tuple[int, int, float, float]]] = {False: [], True: []}
    evictor = CacheEvictor()
    for n_items, (model, graphs) in exported.items():
        cfg = model.config
        folded = graphs.modules[contract.SCORER_MODEL]
        unfolded = ServedScorer(folded.prototype_values, folded.layers(), folded.k_max, folded.activation, fold=False)
        forms = [scorer_graph(model, unfolded.eval()), graphs.onnx[contract.SCORER_MODEL]]
        sessions = [ort.InferenceSession(g, session_options(1), providers=["CPUExecutionProvider"]) for g in forms]
        for batch in batches:
            feeds = {
                contract.PROFILE_WEIGHTS: rng.random((batch, cfg.n_heads, cfg.n_tags)).astype(np.float32),
                contract.EXCLUDE_IDS: rng.integers(0, n_items, (batch, 50)).astype(np.int64),
                contract.TOP_K: np.array([k]),
            }
            [before, after] = [s.run([contract.TOP_SCORES], feeds)[0] for s in sessions]
            np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)  # the same scores either way
            runners = {i: functools.partial(s.run, None, feeds) for i, s in enumerate(sessions)}
            for cold in rows:
                timings = time_alternating(runners, batch, 0.0, runs, between=evictor if cold else None)
                rows[cold].append((n_items, batch, timings[0].p50_ms * 1e3, timings[1].p50_ms * 1e3))
    return rows


def ab_table(title: str, forms: tuple[str, str], rows: list[tuple[int, int, float, float]]) -> list[str]:
    """An A/B's rows as Markdown: p50 µs of each form and their ratio (of the unrounded times)."""
    lines = [
        "",
        f"{title}, p50 µs per run of {forms[0]!r} and of {forms[1]!r} on the same inputs (taking turns):",
        "",
        f"| items | batch | {forms[0]} µs | {forms[1]} µs | ratio |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    return lines + [f"| {n:,} | {batch} | {slow:,.0f} | {fast:,.0f} | {slow / fast:.2f}× |" for n, batch, slow, fast in rows]


def render(
    rows: list[tuple[int, int, str, dict[str, float]]],
    normalisers: list[tuple[int, int, float, float]],
    folds: dict[bool, list[tuple[int, int, float, float]]],
    command: str,
    wall_s: float,
) -> list[str]:
    lines = [
        "| items | batch | asked | kernel µs per run | TopK µs | TopK share | largest three operators (share) |",
        "| ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for n_items, batch, label, ops in rows:
        total = sum(ops.values())
        top = ops.get("TopK", 0.0)
        largest = ", ".join(f"{op} {us / total:.0%}" for op, us in sorted(ops.items(), key=lambda kv: -kv[1])[:3])
        lines.append(f"| {n_items:,} | {batch} | {label} | {total:,.0f} | {top:,.0f} | {top / total:.0%} | {largest} |")
    lines += ab_table("The log-softmax over the catalog alone", NORMALISER_FORMS, normalisers)
    lines += ab_table("The whole scorer graph (its top_k input fed), back to back, u", FOLD_FORMS, folds[False])
    lines += ab_table("The whole scorer graph (its top_k input fed), its caches cold (`timing.CacheEvictor`), u", FOLD_FORMS, folds[True])
    lines += ["", f"`{command}`, {wall_s / 60:.1f} min on {os.cpu_count()} cores (one ONNX Runtime thread)."]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[1000, 41000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 32])
    parser.add_argument("--k", type=int, default=K, help="items asked for (default: the gateway benchmarks' k)")
    parser.add_argument("--runs", type=int, default=100, help="profiled runs per case")
    parser.add_argument("--output", default="", help="write the Markdown table here (default: print it)")
    args = parser.parse_args(argv)
    if min(*args.items, *args.batches, args.runs) < 1 or not 1 <= args.k <= min(min(args.items), contract.DEFAULT_K_MAX):
        parser.error("--items, --batches and --runs must be at least 1, --k in [1, min(K_MAX, the smallest catalog)]")
    run = StandaloneRun("scorer_ops", argv)
    models = {n_items: synthetic_apron(n_items) for n_items in args.items}
    exported = {n_items: (model, export_onnx(model, contract.DEFAULT_K_MAX)) for n_items, model in models.items()}
    rows = measure(exported, args.batches, args.k, args.runs)
    normalisers = normaliser_times(args.items, args.batches, args.runs)
    folds = fold_times(exported, args.batches, args.k, args.runs)
    run.publish(render(rows, normalisers, folds, run.command, run.wall_s), args.output)


if __name__ == "__main__":
    main()
