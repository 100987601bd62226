"""`python -m training.results --output RESULTS.md` (`make results`): APRON's Table 1 on our data.

Prepares lastfm-2k and ml-1m-implicit (+ their text features) when missing, trains the six
models on each with fixed seeds and the per-dataset settings in `RUNS`, evaluates them on the
test users, draws the per-tag Δ@20 figures (APRON's Figure 3) and writes RESULTS.md, including a
comparison with the targets that is computed from the numbers, not typed.

Checkpoints go to `artifacts/results/<dataset>/<model>.pt` and all metrics to
`artifacts/results/results.json`; `--report-only` rewrites RESULTS.md from that JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common.files import atomic_write_text
from training.checkpoint import save_checkpoint
from training.device import machine_description, resolve_device
from training.evaluate import CONTROL_K, evaluate_model
from training.metrics import TAG_MIN_SHARE
from training.plots import plot_tag_deltas
from training.train import train

MODELS = ("multidae", "multivae", "recvae", "macridvae", "sem-macridvae", "apron")
LABELS = {
    "multidae": "MultiDAE",
    "multivae": "MultiVAE",
    "recvae": "RecVAE",
    "macridvae": "MacridVAE",
    "sem-macridvae": "SEM-MacridVAE",
    "apron": "APRON (ours)",
}
BASELINES = MODELS[:-1]
# The paper's Table 1 (MSD with MERT audio features), for reference.
PAPER = {
    "multidae": (0.253, 0.355, 0.300, None, None),
    "multivae": (0.264, 0.366, 0.315, None, None),
    "recvae": (0.275, 0.373, 0.325, None, None),
    "macridvae": (0.291, 0.385, 0.343, None, None),
    "sem-macridvae": (0.290, 0.383, 0.341, -0.00015, -0.05),
    "apron": (0.277, 0.377, 0.327, 0.05407, 33.80),
}
NDCG_TOLERANCE = 0.10  # target: APRON's NDCG@100 within 10 % of the best baseline on lastfm-2k


@dataclass(frozen=True)
class Run:
    """One model's training settings on one dataset."""

    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 10
    hyperparameters: dict[str, Any] = field(default_factory=dict)


SEED = 0
FEATURES = "text"
# Per-dataset settings. Epoch caps keep the whole run well under an hour on 2 CPU cores; early
# stopping on validation NDCG@100 usually ends the runs before them.
RUNS: dict[str, dict[str, Run]] = {
    "lastfm-2k": {
        "multidae": Run(epochs=100),
        "multivae": Run(epochs=100),
        "recvae": Run(epochs=30, lr=5e-4, patience=6),  # 4 sweeps per epoch (3 encoder + 1 decoder)
        # K = 80 concepts: d = 50 per concept (Ma et al. use 100 with K = 7) halves the cost
        "macridvae": Run(epochs=40, patience=8, hyperparameters={"embedding_dim": 50}),
        "sem-macridvae": Run(epochs=40, patience=8, hyperparameters={"embedding_dim": 50}),
        # Chosen on the validation users (`apron train --set ...` then `apron evaluate --split val`):
        # the paper's H = 16, λ2 = 0.005 gave val NDCG@100 0.439 / %Δ@20 19.9; λ2 alone (0.05 to 50)
        # moved %Δ@20 by at most 2 points, H = 4 with λ2 = 10 gave 0.441 / 24.6.
        "apron": Run(epochs=60, lr=5e-4, hyperparameters={"n_heads": 4, "lambda_ctrl": 10.0}),
    },
    "ml-1m-implicit": {
        "multidae": Run(epochs=100, batch_size=256),
        "multivae": Run(epochs=100, batch_size=256),
        "recvae": Run(epochs=25, batch_size=256, lr=5e-4, patience=6),
        "macridvae": Run(epochs=40, batch_size=256, patience=8),
        "sem-macridvae": Run(epochs=40, batch_size=256, patience=8),
        "apron": Run(epochs=60, batch_size=256, lr=5e-4),
    },
}


def ensure_dataset(name: str, root: Path, progress: bool) -> Any:
    """The processed dataset under root/<name>, prepared and featurised first when missing."""
    from training.data.dataset import ProcessedDataset, write_features
    from training.data.sources import prepare

    path = root / name
    if not (path / "dataset.json").is_file():
        print(f"[results] preparing {name} -> {path}", flush=True)
        prepare(name, path)
    dataset = ProcessedDataset.load(path)
    if not (path / "features" / f"{FEATURES}.npy").is_file():
        from training.features.text import text_features

        print(f"[results] text features for {name}", flush=True)
        features, meta = text_features(dataset.texts, progress=progress)
        write_features(path, FEATURES, features, meta, dataset.fingerprint, dataset.n_items)
    return dataset


def run_all(
    datasets: list[str], models: list[str], data_root: Path, work: Path, figures: Path, device: str, progress: bool
) -> dict[str, Any]:
    results: dict[str, Any] = {"datasets": {}, "device": str(resolve_device(device))}
    for name in datasets:
        dataset = ensure_dataset(name, data_root, progress)
        rows: dict[str, Any] = {}
        for model_name in models:
            run = RUNS[name][model_name]
            print(f"[results] {name}: training {model_name}", flush=True)
            start = time.perf_counter()
            model, info = train(
                dataset,
                model_name,
                features_kind=FEATURES,
                epochs=run.epochs,
                batch_size=run.batch_size,
                lr=run.lr,
                seed=SEED,
                patience=run.patience,
                device=device,
                hyperparameters=run.hyperparameters,
                progress=progress,
            )
            metrics = evaluate_model(model, dataset, "test", next(model.parameters()).device)
            info.metrics.update({k: v for k, v in metrics.items() if k != "per_tag"})
            checkpoint = save_checkpoint(work / name / f"{model_name}.pt", model, info)
            row = {
                **metrics,
                "checkpoint": str(checkpoint),
                "seed": SEED,
                "epochs_run": info.train["epochs_run"],
                "best_epoch": info.train["best_epoch"],
                "train_wall_time_s": info.train["wall_time_s"],
                "total_wall_time_s": round(time.perf_counter() - start, 1),
                "settings": {"epochs": run.epochs, "batch_size": run.batch_size, "lr": run.lr,
                             "patience": run.patience, "hyperparameters": run.hyperparameters},
            }  # fmt: skip
            if "per_tag" in metrics:
                figure = figures / f"{name}-{model_name}-tag-delta.png"
                title = f"{LABELS[model_name]} on {name}: Δ@{CONTROL_K} per tag (test users)"
                row["figure"] = str(plot_tag_deltas(metrics["per_tag"], figure, title))
            rows[model_name] = row
            print(f"[results] {name}/{model_name}: {_summary(row)}", flush=True)
        results["datasets"][name] = {
            "fingerprint": dataset.fingerprint,
            "n_items": dataset.n_items,
            "n_tags": dataset.n_tags,
            "users": {s: int(getattr(dataset, s).shape[0]) for s in ("train", "val_tr", "test_tr")},
            "models": rows,
        }
    results["machine"] = machine_description(resolve_device(device))
    results["torch"] = torch.__version__
    results["python"] = platform.python_version()
    return results


def _summary(row: dict[str, Any]) -> str:
    return (
        f"NDCG@100 {row['ndcg@100']:.4f}, Recall@20 {row['recall@20']:.4f}, %Δ@20 {_fmt(row['pct_delta@20'], 1)}, "
        f"{row['epochs_run']} epochs, {row['train_wall_time_s']:.0f}s"
    )


def _fmt(value: Any, digits: int = 4, stderr: Any = None) -> str:
    if not isinstance(value, int | float) or (isinstance(value, float) and math.isnan(value)):
        return "N/A"
    text = f"{value:.{digits}f}"
    if isinstance(stderr, int | float) and not math.isnan(stderr):
        text += f" ± {stderr:.{digits}f}"
    return text


def comparison(results: dict[str, Any]) -> list[str]:
    """The issue's targets on lastfm-2k, checked against the measured numbers."""
    rows = results["datasets"].get("lastfm-2k", {}).get("models", {})
    if "apron" not in rows or not any(b in rows for b in BASELINES):
        return ["- lastfm-2k: APRON and at least one baseline are needed for the comparison (not run)."]
    apron = rows["apron"]
    best_name = max((b for b in BASELINES if b in rows), key=lambda b: rows[b]["ndcg@100"])
    best = rows[best_name]["ndcg@100"]
    gap = (best - apron["ndcg@100"]) / best
    lines = []
    verdict = "met" if gap <= NDCG_TOLERANCE else "NOT met"
    lines.append(
        f"- **Accuracy target {verdict}.** APRON's NDCG@100 is {apron['ndcg@100']:.4f} ± {apron['ndcg@100_stderr']:.4f}; "
        f"the best baseline is {LABELS[best_name]} with {best:.4f} ± {rows[best_name]['ndcg@100_stderr']:.4f}, "
        + (f"so APRON is {gap:.1%} below it" if gap > 0 else f"so APRON is {-gap:.1%} above it")
        + f" (target: within {NDCG_TOLERANCE:.0%})."
    )
    sem = rows.get("sem-macridvae", {}).get(f"pct_delta@{CONTROL_K}")
    ours = apron[f"pct_delta@{CONTROL_K}"]
    if isinstance(sem, float) and isinstance(ours, float):
        # "well above": at least twice SEM-MacridVAE's %Δ and at least 5 points more
        well_above = ours >= 2 * max(sem, 0.0) and ours - sem >= 5.0
        lines.append(
            f"- **Controllability target {'met' if well_above else 'NOT met'}.** APRON's %Δ@20 is {ours:.1f}% "
            f"(Δ@20 = {_fmt(apron['delta@20'], 4, apron.get('delta@20_stderr'))}); SEM-MacridVAE's is {sem:.1f}% "
            f"(Δ@20 = {_fmt(rows['sem-macridvae']['delta@20'], 4, rows['sem-macridvae'].get('delta@20_stderr'))}). "
            "Target: well above SEM-MacridVAE (we read this as at least twice its %Δ@20 and 5 points more; "
            "the paper reports 33.8% vs -0.05% on MSD)."
        )
        if not well_above:
            lines.append(
                "  Why: SEM-MacridVAE's concept k is supervised to be tag k (Eq. 11) and dropping a tag zeroes "
                "its concept component z^(k), which removes the user's preference for every item of that "
                "concept at once, a strong edit by construction; APRON's profile mixes each item over all "
                "prototypes (soft attention), so dropping one prototype removes only its share of the profile."
            )
    elif isinstance(ours, float):
        lines.append(f"- APRON's %Δ@20 is {ours:.1f}%; SEM-MacridVAE was not run.")
    return lines


def write_report(results: dict[str, Any], output: Path, command: str) -> Path:
    lines = [
        "# Results: APRON and baselines (Table 1 layout)",
        "",
        "Generated by `make results` — do not edit by hand; rerun to update.",
        "",
        f"- Command: `{command}`",
        f"- Date: {results.get('date', '')} · total wall time {results.get('total_wall_time_s', 0) / 60:.1f} min",
        f"- Machine: {results['machine']} · torch {results['torch']} · Python {results['python']}",
        f"- Seed {SEED} for every run (weights, batch order, dropout); features: `{FEATURES}` (all-MiniLM-L6-v2 "
        "embeddings of the item descriptions, standing in for the paper's MERT audio features)",
        "- Test users only (strong generalisation, Liang et al. 2018): 80 % of each test user's items are the "
        "fold-in history, the other 20 % are to be found; history items are never ranked. ± is the standard "
        "error over test users (Δ@20: over tags).",
        f"- Δ@20 (Eq. 17): per tag τ, over test users whose history has an item carrying τ (users with "
        f"NDCG_t = 0 both ways dropped), NDCG_t@20 with all prototypes minus with τ's dropped; averaged over "
        f"tags. NDCG_t is normalised by the ideal DCG@20, so it lies in [0, 1]. %Δ@20 = 100 · mean Δ / mean "
        f"NDCG_t^F. An item carries τ when τ is one of its main tags (given ≥ {TAG_MIN_SHARE:.0%} as often as "
        "its most given tag). N/A: the model has no tag prototypes.",
        "- Hyperparameters other than the papers' defaults (the Settings tables) were chosen on the validation "
        "users, never on the test users.",
        "",
        "## Targets (computed from the numbers below)",
        "",
        *comparison(results),
        "",
    ]
    for name, data in results["datasets"].items():
        users = data["users"]
        lines += [
            f"## {name}",
            "",
            f"{data['n_items']:,} items, {data['n_tags']} tags, users train/val/test "
            f"{users['train']:,}/{users['val_tr']:,}/{users['test_tr']:,}; dataset fingerprint "
            f"`{data['fingerprint'][:12]}`.",
            "",
            "| Method | Recall@20 (↑) | Recall@50 (↑) | NDCG@100 (↑) | Δ@20 (↑) | %Δ@20 (↑) | epochs (best) | train time |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for model_name, row in data["models"].items():
            lines.append(
                f"| {LABELS[model_name]} | {_fmt(row['recall@20'], 4, row['recall@20_stderr'])} "
                f"| {_fmt(row['recall@50'], 4, row['recall@50_stderr'])} "
                f"| {_fmt(row['ndcg@100'], 4, row['ndcg@100_stderr'])} "
                f"| {_fmt(row['delta@20'], 4, row.get('delta@20_stderr'))} | {_fmt(row['pct_delta@20'], 1)} "
                f"| {row['epochs_run']} ({row['best_epoch']}) | {row['train_wall_time_s']:.0f} s |"
            )
        lines.append("")
        for model_name, row in data["models"].items():
            if "figure" in row:
                relative = os.path.relpath(row["figure"], output.parent)
                lines += [f"![{LABELS[model_name]} per-tag Δ@20 on {name}]({relative})", ""]
        lines += ["<details><summary>Settings</summary>", "", "| Method | epochs cap | batch | lr | patience | hyperparameters |",
                  "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for model_name, row in data["models"].items():
            s = row["settings"]
            hyper = ", ".join(f"{k}={v}" for k, v in s["hyperparameters"].items()) or "model defaults"
            lines.append(
                f"| {LABELS[model_name]} | {s['epochs']} | {s['batch_size']} | {s['lr']} | {s['patience']} | {hyper} |"
            )
        lines += ["", "</details>", ""]
    lines += [
        "## The paper's Table 1 (MSD, MERT audio features), for reference",
        "",
        "| Method | Recall@20 | Recall@50 | NDCG@100 | Δ@20 | %Δ@20 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for model_name, values in PAPER.items():
        r20, r50, ndcg, delta, pct = values
        lines.append(
            f"| {LABELS[model_name]} | {r20:.3f} | {r50:.3f} | {ndcg:.3f} | "
            f"{'N/A' if delta is None else f'{delta:.5f}'} | {'N/A' if pct is None else f'{pct:.2f}'} |"
        )
    lines.append("")
    return atomic_write_text(output, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.results", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("RESULTS.md"))
    parser.add_argument("--datasets", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--data-root", type=Path, default=Path("artifacts") / "data")
    parser.add_argument("--work", type=Path, default=Path("artifacts") / "results")
    parser.add_argument("--figures", type=Path, default=Path("docs") / "figures")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--report-only", action="store_true", help="rewrite OUTPUT from WORK/results.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    raw_argv = sys.argv[1:] if argv is None else argv
    command = "python -m training.results " + " ".join(shlex.quote(a) for a in raw_argv)
    store = args.work / "results.json"
    if args.report_only:
        results = json.loads(store.read_text(encoding="utf-8"))
    else:
        start = time.perf_counter()
        results = run_all(args.datasets, args.models, args.data_root, args.work, args.figures, args.device, not args.quiet)
        results["total_wall_time_s"] = round(time.perf_counter() - start, 1)
        results["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        results["command"] = command
        atomic_write_text(store, json.dumps(results, indent=1, default=_json_default))
    path = write_report(results, args.output, results.get("command", command))
    print(f"[results] wrote {path}")
    return 0


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


if __name__ == "__main__":
    sys.exit(main())
