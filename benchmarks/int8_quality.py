"""`python -m benchmarks.int8_quality`: what `apron export --int8` costs in ranking and buys in speed.

1. Ranking, on real data. APRON with the demo's settings (`export/demo.py`: the `controllable`
   preset, collaborative item features) is trained on Last.fm 2K (the synthetic dataset when no copy
   is on the machine) and exported twice, fp32 and int8. Each export answers the test split's users
   through its served graphs, as the gateway would (profile graph on the fold-in history, scorer
   graph with that history excluded, top 100). Per metric (Recall@20/50, NDCG@100), the table gives
   both models and the paired difference int8 - fp32 over the same users with its 95 % interval
   (`training.results.stats.paired_difference`). It also gives the share of fp32's top 10 that int8
   keeps, and the largest score difference.
2. The scorer alone, on a synthetic model of `--items` items: the p50 at batch 1 and 32, fp32 and
   int8 calls taking turns (`timing.time_alternating`), with the gateway's session settings.
3. Whole gateways on that model (`settings_ab.measure`: `apron serve`, auth on, a private Redis, the
   load generator on the same cores), fp32 and int8 repositories taking turns `--rounds` times.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import settings_ab
from benchmarks.model_bench import scorer_inputs, served_session
from benchmarks.synthetic import synthetic_apron
from benchmarks.timing import StandaloneRun, time_alternating
from export import contract
from export.contract import Precision
from export.onnx_export import TOLERANCES, check_parity, export_onnx, session, with_int8_scorer
from serving.backends.base import pad_rows
from training.metrics import ndcg_at_k, recall_at_k
from training.results.stats import Paired, paired_difference

PRECISIONS = (Precision.FP32, Precision.INT8)
METRICS: dict[str, tuple[Callable[..., np.ndarray], int]] = {
    "Recall@20": (recall_at_k, 20),
    "Recall@50": (recall_at_k, 50),
    "NDCG@100": (ndcg_at_k, 100),
}
TOP_N = 100  # the served top k the metrics read: NDCG@100's whole list
AGREEMENT_K = 10


@dataclass(frozen=True)
class Served:
    """One export's answers for the evaluated users."""

    top_ids: np.ndarray  # (U, TOP_N)
    top_scores: np.ndarray
    per_user: dict[str, np.ndarray]  # metric -> (U,)


def served_answers(onnx: dict[str, bytes], histories: list[np.ndarray], heldout: object, n_items: int) -> Served:
    """The served graphs' top TOP_N for each history (excluded from its own answer) and each user's
    metrics: the list is all that Recall@20/50 and NDCG@100 read, so its ranks stand in for scores."""
    ids, ends = contract.ragged_batch(histories)
    weights, _ = session(onnx[contract.PROFILE_MODEL]).run(None, {contract.HISTORY_IDS: ids, contract.HISTORY_ENDS: ends})
    feeds = {contract.PROFILE_WEIGHTS: weights, contract.EXCLUDE_IDS: pad_rows(histories)}
    top_ids, top_scores = session(onnx[contract.SCORER_MODEL]).run(None, feeds)
    ranked = np.full((len(histories), n_items), -np.inf, np.float32)
    np.put_along_axis(ranked, top_ids, np.arange(TOP_N, 0, -1, dtype=np.float32)[None, :], axis=1)
    per_user = {name: metric(ranked, heldout, k) for name, (metric, k) in METRICS.items()}
    return Served(top_ids, top_scores, per_user)


def agreement(a: np.ndarray, b: np.ndarray, k: int = AGREEMENT_K) -> float:
    """Mean share of each row's top k in `b` that `a`'s top k holds too."""
    return float(np.mean([len(set(x[:k]) & set(y[:k])) / k for x, y in zip(a, b, strict=True)]))


def ranking(work: Path, dataset: str, epochs: int) -> tuple[list[str], str]:
    """Part 1: train, export both ways, answer the test users; (Markdown lines, the dataset used)."""
    from export.demo import DemoSettings, prepare_data, resolve_dataset, train_model
    from export.pipeline import load_apron
    from training.data.dataset import ProcessedDataset

    dataset = resolve_dataset(dataset)
    settings = DemoSettings(dataset=dataset, epochs=epochs, lastfm_epochs=epochs)
    data, checkpoint = work / "data", work / "apron.pt"
    train_model(data, checkpoint, prepare_data(data, dataset, settings), settings)
    model, _ = load_apron(checkpoint)
    processed = ProcessedDataset.load(data)
    fold_in, heldout = processed.test_tr.tocsr(), processed.test_te.tocsr()
    users = [u for u in range(fold_in.shape[0]) if fold_in[u].nnz and heldout[u].nnz]
    histories = [fold_in[u].indices.astype(np.int64) for u in users]
    fp32_graphs = export_onnx(model, k_max=TOP_N)
    graphs = {Precision.FP32: fp32_graphs, Precision.INT8: with_int8_scorer(fp32_graphs)}
    served = {precision: served_answers(g.onnx, histories, heldout[users], model.config.n_items) for precision, g in graphs.items()}
    parity = max(r.max_abs_error for r in check_parity(graphs[Precision.INT8], model, Precision.INT8) if r.model == contract.SCORER_MODEL)
    fp32, int8 = served["fp32"], served["int8"]
    lines = [
        "| metric | fp32 | int8 | int8 − fp32, paired (95 % interval) |",
        "| --- | ---: | ---: | --- |",
    ]
    for name in METRICS:
        paired: Paired = paired_difference(int8.per_user[name], fp32.per_user[name])
        lines.append(
            f"| {name} | {np.nanmean(fp32.per_user[name]):.4f} | {np.nanmean(int8.per_user[name]):.4f} | "
            f"{paired.mean:+.4f} ({paired.low:+.4f} to {paired.high:+.4f}) |"
        )
    difference = np.abs(int8.top_scores[:, :AGREEMENT_K] - fp32.top_scores[:, :AGREEMENT_K])
    lines += [
        "",
        f"{len(users)} test users of {dataset} ({model.config.n_items:,} items), APRON `{settings.preset}` trained "
        f"{epochs} epochs. int8 keeps {agreement(int8.top_ids, fp32.top_ids):.1%} of fp32's top {AGREEMENT_K}; "
        f"the scores of the top {AGREEMENT_K} differ by {difference.mean():.3f} on average, {difference.max():.3f} at most "
        "(log-softmax, nats). The export's parity check (random histories of catalog items) found a largest "
        f"scorer error of {parity:.3f} (tolerance {TOLERANCES[Precision.INT8][0]:g} + {TOLERANCES[Precision.INT8][1]:.0%} of the score).",
    ]
    return lines, dataset


def scorer_speed(n_items: int, seconds: float) -> list[str]:
    """Part 2: the scorer graph alone, fp32 and int8 calls taking turns, batch 1 and 32."""
    model = synthetic_apron(n_items)
    fp32_graphs = export_onnx(model)
    graphs = {Precision.FP32: fp32_graphs, Precision.INT8: with_int8_scorer(fp32_graphs)}
    sessions = {precision: served_session(graphs[precision].onnx[contract.SCORER_MODEL]) for precision in PRECISIONS}
    lines = [
        "| batch | fp32 p50 ms | int8 p50 ms | int8 speed-up |",
        "| ---: | ---: | ---: | ---: |",
    ]
    outputs = [contract.TOP_IDS, contract.TOP_SCORES]
    for batch in (1, 32):
        weights, exclude = scorer_inputs(n_items, model.config.n_heads, model.config.n_tags, batch, 10)
        feeds = {contract.PROFILE_WEIGHTS: weights, contract.EXCLUDE_IDS: exclude, contract.TOP_K: np.array([10])}
        runs = {p: (lambda s=s, feeds=feeds: s.run(outputs, feeds)) for p, s in sessions.items()}
        timings = time_alternating(runs, batch, seconds)
        fp32, int8 = timings["fp32"].p50_ms, timings["int8"].p50_ms
        lines.append(f"| {batch} | {fp32:.2f} | {int8:.2f} | {fp32 / int8:.1f}× |")
    threads = {p: s.get_session_options().intra_op_num_threads for p, s in sessions.items()}
    lines += [
        "",
        f"Intra-op threads as the gateway gives each graph by its size (`serving.backends.base.scorer_threads`): "
        f"fp32 {threads['fp32']}, int8 {threads['int8']}.",
    ]
    return lines


def gateways(n_items: int, work: Path, args: argparse.Namespace) -> list[str]:
    """Part 3: gateways serving the fp32 and the int8 export of one synthetic model, taking turns."""
    targets = {precision: settings_ab.Target.export(n_items, work / precision, int8=precision is Precision.INT8) for precision in PRECISIONS}
    samples = settings_ab.alternate(
        targets, {precision: {} for precision in PRECISIONS}, args.rounds, args.clients, args.seconds, args.load_processes, args.load_fraction
    )
    rows = [settings_ab.Row([str(precision)], samples[precision]) for precision in PRECISIONS]
    return settings_ab.settings_table(["scorer graph"], rows, args.clients, args.load_fraction)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("auto", "lastfm-2k", "synthetic"), default="auto", help="part 1's data")
    parser.add_argument("--epochs", type=int, default=20, help="part 1's training epochs")
    parser.add_argument("--items", type=int, default=41_000, help="parts 2 and 3: the synthetic model's catalog")
    parser.add_argument("--scorer-seconds", type=float, default=4.0, help="part 2: each batch size's timing")
    parser.add_argument("--skip-gateways", action="store_true", help="parts 1 and 2 only")
    settings_ab.add_arguments(parser, "part 3: gateways per precision (alternating)")
    parser.add_argument("--output", default="", help="write the Markdown here (default: print it)")
    args = parser.parse_args(argv)
    settings_ab.check_arguments(parser, args)
    if args.epochs < 1 or args.items <= TOP_N or args.scorer_seconds <= 0:
        parser.error(f"--epochs must be at least 1, --items above {TOP_N}, --scorer-seconds above 0")
    logging.basicConfig(level=logging.WARNING)
    run = StandaloneRun("int8_quality", argv)
    with tempfile.TemporaryDirectory(prefix="apron-int8-") as work:
        ranking_lines, dataset = ranking(Path(work) / "ranking", args.dataset, args.epochs)
        lines = [f"**Ranking** ({dataset}, the served graphs):", "", *ranking_lines, ""]
        lines += [f"**The scorer alone** ({args.items:,} synthetic items, the gateway's session settings):", ""]
        lines += [*scorer_speed(args.items, args.scorer_seconds), ""]
        if not args.skip_gateways:
            lines += [f"**Gateways** ({args.items:,} synthetic items; medians of {args.rounds} rounds, taking turns):", ""]
            lines += [*gateways(args.items, Path(work) / "gateways", args), ""]
    lines.append(settings_ab.where_and_when(run, "the benchmark alone" if args.skip_gateways else "the load generator"))
    run.publish(lines, args.output)


if __name__ == "__main__":
    main()
