"""`make results`: APRON's Table 1 on our data over several seeds, its ablations, the sweeps and
issue 21's protocol (every model tuned on validation users, the choices scored on test users).

Five parts, each runnable alone (so they can run in the background while others work):

    python -m training.results --part main      --seeds 0 1 2   # the six models + sem-macridvae-tags, test users
    python -m training.results --part ablations --seeds 0 1 2   # APRON switches, one row each, test users
    python -m training.results --part sweep     --seeds 0       # issue 10's APRON options on lastfm-2k, VALIDATION users
    python -m training.results --part tune      --seeds 0       # every model's configurations, both datasets, VALIDATION users
    python -m training.results --part final     --seeds 0 1 2   # each model's configuration chosen on validation, test users
    python -m training.results --report-only                    # RESULTS.md from the saved runs

Every (part, dataset, row, seed) writes one JSON record under `docs/results/runs/` (committed: it
is the measurement RESULTS.md is assembled from, so a later session adds seeds or rows instead of
retraining everything) and is skipped when that JSON exists with the row's current settings
(`--force` reruns it), so an interrupted run resumes and parts add up. The settings (`Job.settings`)
include the features and, for configurations a fix of APRON's training code changed, its
`training_revision`, so such a fix makes exactly their records stale. Checkpoints stay under
`artifacts/results/` (built, not committed). RESULTS.md is assembled from whatever runs exist;
rows or seeds that were not run are listed as such, never filled in. Datasets and their features
are prepared when missing. `final` runs a model once its own `tune` sweep is complete (its seed 0
scores the tune run's saved model of the chosen configuration when there is one: `tuned_model`),
and the report prints a verdict only when every validation record it chose from predates the test
records it must not see: every test record of the same model on the dataset, whatever its part,
and for APRON also any of `final` (`training.results.selection.protocol`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from common.files import atomic_write_text
from training.device import machine_description, resolve_device
from training.evaluate import CONTROL_K, evaluate_model
from training.features.kinds import STRIPPED_KIND, parse_collab_kind
from training.results.catalogue import (
    LABELS,
    MODELS,
    PARTS,
    RUNS,
    SWEEP_DATASET,
    Job,
    _json_default,
    jobs,
    recorded_settings,
)
from training.results.report import fmt, write_report
from training.results.selection import carries_over, final_jobs, is_current
from training.results.stats import record_time, shown_time
from training.train import train

DEFAULT_SEEDS = {"main": [0, 1, 2], "ablations": [0, 1, 2], "sweep": [0], "tune": [0], "final": [0, 1, 2]}


def ensure_dataset(name: str, root: Path, features: set[str], progress: bool) -> Any:
    """The processed dataset under root/<name>, prepared and featurised first when missing."""
    from training.data.dataset import ProcessedDataset, write_features
    from training.data.sources import prepare

    path = root / name
    if not (path / "dataset.json").is_file():
        print(f"[results] preparing {name} -> {path}", flush=True)
        prepare(name, path)
    dataset = ProcessedDataset.load(path)
    for kind in sorted(features):
        if (path / "features" / f"{kind}.npy").is_file():
            continue
        print(f"[results] {kind} features for {name}", flush=True)
        from training.features.collab import collab_features

        if (dim := parse_collab_kind(kind)) is not None:
            array, meta = collab_features(dataset.train, dim)
        else:
            from training.features.text import text_features

            strip = dataset.tag_names if kind == STRIPPED_KIND else None
            array, meta = text_features(dataset.texts, progress=progress, strip_tags=strip)
        write_features(path, kind, array, meta, dataset.fingerprint, dataset.n_items)
    return dataset


def tuned_model(job: Job, seed: int, dataset: Any, runs: Path, device: str) -> tuple[Any, Any, dict[str, Any]] | None:
    """The model the tune part trained for this final job's seed, when its record and checkpoint
    show the same settings, seed and dataset: (model, checkpoint info, what the record says of its
    training). On one machine training is deterministic for a seed and the same settings (the
    lastfm-2k finals stopped at the tune runs' epochs exactly), so this is the model a fresh run
    would train, at no cost. Settings that differ only in the edit penalty γ were not the same
    training until γ was kept out of the loss (`report.GAMMA_IN_LOSS_UNTIL`): on one machine,
    sweep rows `collab:tuned` and `collab:pen20` trained 38 and 35 epochs. (On
    another host floating-point sums differ slightly, which can move early stopping: of 122 runs
    repeated on 2026-12-05, most moved NDCG@100 by ~1e-5, the most 3e-3 at the same epochs, and 5
    stopped at other epochs.)"""
    from training.checkpoint import load_checkpoint

    path = job.tuned_path(runs, seed)
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    checkpoint = Path(record.get("checkpoint") or "")
    if (
        recorded_settings(record) != job.settings()
        or record.get("seed") != seed
        or record.get("dataset_info", {}).get("fingerprint") != dataset.fingerprint
        or not checkpoint.is_file()
    ):
        return None
    torch_device = resolve_device(device)
    model, info = load_checkpoint(checkpoint, map_location=str(torch_device))
    if info.dataset.get("fingerprint") != dataset.fingerprint or info.model != job.model:
        return None
    model.to(torch_device)
    trained = {key: record[key] for key in ("epochs_run", "best_epoch", "train_wall_time_s", "threads")}
    # when the model was trained: the tune record's (what `report.trained_with_gamma` reads)
    trained_at = record.get("trained_at", record_time(record))
    return model, info, {**trained, "trained_in": str(path), "trained_at": trained_at}


def execute(
    job: Job, seed: int, dataset: Any, runs: Path, work: Path, figures: Path, device: str, progress: bool
) -> dict[str, Any]:
    """Train (or take the tune part's model: `tuned_model`), evaluate on `job.split`, write the
    run's JSON record under runs (checkpoints under work)."""
    from training.checkpoint import save_checkpoint

    run = job.run
    settings = job.settings()
    hyperparameters = settings["hyperparameters"]
    start = time.perf_counter()
    reused = tuned_model(job, seed, dataset, runs, device)
    if reused is not None:
        model, info, trained = reused
    else:
        model, info = train(
            dataset,
            job.model,
            features_kind=run.features,
            epochs=run.epochs,
            batch_size=run.batch_size,
            lr=run.lr,
            seed=seed,
            patience=run.patience,
            device=device,
            hyperparameters=hyperparameters,
            progress=progress,
        )
        trained = {"epochs_run": info.train["epochs_run"], "best_epoch": info.train["best_epoch"],
                   "train_wall_time_s": info.train["wall_time_s"], "threads": torch.get_num_threads(),
                   "trained_at": round(time.time(), 3)}  # fmt: skip
    torch_device = next(model.parameters()).device
    metrics = evaluate_model(model, dataset, job.split, torch_device, tag_min_share=run.tag_min_share)
    per_tag = metrics.pop("per_tag", None)
    per_user = metrics.pop("per_user")  # the users' values, for the paired comparison (stats.paired_records)
    record: dict[str, Any] = {
        "part": job.part, "dataset": job.dataset, "row": job.row, "label": job.label, "model": job.model,
        "seed": seed, "split": job.split, "metrics": metrics,
        "features": job.features,
        "settings": settings,
        **trained, "total_wall_time_s": round(time.perf_counter() - start, 1),
        "machine": machine_description(torch_device), "torch": torch.__version__, "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "created_at": round(time.time(), 3),  # selection.protocol: validation records must precede test ones
        "dataset_info": {"fingerprint": dataset.fingerprint, "n_items": dataset.n_items, "n_tags": dataset.n_tags,
                         "users": {s: int(getattr(dataset, s).shape[0]) for s in ("train", "val_tr", "test_tr")}},
    }  # fmt: skip
    if seed == 0 and (job.split == "test" or job.part == "tune"):  # `apron export`, live_controllability, finals
        name = {"main": job.model, "final": f"final-{job.model}", "tune": f"tune-{job.row.replace(':', '_')}"}.get(
            job.part, f"apron-{job.row}"
        )
        record["checkpoint"] = str(save_checkpoint(work / "checkpoints" / job.dataset / f"{name}.pt", model, info))
    if job.part == "main" and seed == 0 and per_tag:
        from training.plots import plot_tag_deltas

        figure = figures / f"{job.dataset}-{job.model}-tag-delta.png"
        title = f"{LABELS[job.model]} on {job.dataset}: Δ@{CONTROL_K} per tag (test users, seed 0)"
        record["figure"] = str(plot_tag_deltas(per_tag, figure, title))
    if per_tag:
        record["per_tag"] = per_tag
    record["per_user"] = per_user
    record["first_created_at"] = first_shown(job.path(runs, seed), record["created_at"])
    atomic_write_text(job.path(runs, seed), json.dumps(record, indent=1, default=_json_default))
    return record


def first_shown(path: Path, now: float) -> float:
    """When a record at `path` was first written: a rerun (`--force`) replaces the record, but its
    numbers were in view from the first time on (`selection.first_test` reads this)."""
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return now
    return min(now, shown_time(earlier))


def run_part(
    part: str, datasets: list[str], models: list[str] | None, seeds: list[int], data_root: Path, runs: Path,
    work: Path, figures: Path, device: str, progress: bool, force: bool, rows: list[str] | None = None,
) -> None:  # fmt: skip
    if part == "final":  # the configurations chosen on the tune part's validation records
        selected, notes = final_jobs(datasets, load_records(runs))
        selected = [j for j in selected if models is None or j.model in models]
        for note in notes:
            print(f"[results] {note}", flush=True)
    else:
        selected = jobs(part, datasets, models)
    if rows:  # shell-style patterns on the row keys, e.g. 'collab:*' or 'multidae:*'
        selected = [j for j in selected if any(fnmatch.fnmatchcase(j.row, pattern) for pattern in rows)]
    for name in dict.fromkeys(j.dataset for j in selected):
        features = {j.run.features for j in selected if j.dataset == name and j.model.startswith(("apron", "sem"))}
        dataset = ensure_dataset(name, data_root, features, progress)
        for seed in seeds:  # seed-major: a partial run has every row for the first seeds
            for job in (j for j in selected if j.dataset == name):
                path = job.path(runs, seed)
                if not needs_run(job, path, force):
                    carry_over(job, path)
                    continue
                print(f"[results] {part} {name} {job.row} seed {seed}", flush=True)
                record = execute(job, seed, dataset, runs, work, figures, device, progress)
                print(f"[results]   {_summary(record)}", flush=True)


def needs_run(job: Job, path: Path, force: bool) -> bool:
    """A run is made unless its record exists with the job's settings, or `carries_over` to them: a
    row whose settings were changed in this file is rerun, so no report mixes records of two rows."""
    if force or not path.is_file():
        return True
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    if is_current(job, record):
        return False
    print(f"[results] {path} was recorded with other settings than the row has now: rerunning it", flush=True)
    return True


def carry_over(job: Job, path: Path) -> None:
    """Rewrite a record that `carries_over` with the job's settings, keeping the cap it ran under."""
    record = json.loads(path.read_text(encoding="utf-8"))
    if recorded_settings(record) == job.settings() or not carries_over(job, record):
        return
    record.setdefault("ran_under_cap", record["settings"]["epochs"])  # the first cap, if carried twice
    record["settings"] = job.settings()
    atomic_write_text(path, json.dumps(record, indent=1, default=_json_default))
    print(f"[results] {path}: stopped at epoch {record['epochs_run']} < its cap {record['ran_under_cap']}, "
          f"so it is the run under the cap of {job.run.epochs} too; kept", flush=True)  # fmt: skip


def _summary(record: dict[str, Any]) -> str:
    m = record["metrics"]
    return (
        f"NDCG@100 {m['ndcg@100']:.4f}, %Δ@20 {fmt(m.get('pct_delta@20'), 1)} (γ = 0: {fmt(m.get('pct_delta@20_intrinsic'), 1)}), {record['epochs_run']} epochs "
        f"(best {record['best_epoch']}), {record['total_wall_time_s']:.0f} s"
    )


def load_records(runs: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(runs.glob("*/*/*/seed*.json"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.results", description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all", help="which runs (default: all, in order)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 1 2 (sweep, tune: 0)")
    parser.add_argument("--output", type=Path, default=Path("RESULTS.md"))
    parser.add_argument("--datasets", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="only these models (main, tune, final)")
    parser.add_argument("--rows", nargs="+", default=None, help="only the rows whose key matches (e.g. 'collab:*')")
    parser.add_argument("--data-root", type=Path, default=Path("artifacts") / "data")
    parser.add_argument("--runs", type=Path, default=Path("docs") / "results" / "runs",
                        help="the runs' JSON records (committed; RESULTS.md is assembled from them)")  # fmt: skip
    parser.add_argument("--work", type=Path, default=Path("artifacts") / "results", help="checkpoints")
    parser.add_argument("--figures", type=Path, default=Path("docs") / "figures")
    parser.add_argument("--live", type=Path, default=Path("docs") / "results" / "live_controllability.json",
                        help="the live-controllability JSON to include when present")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--force", action="store_true", help="rerun runs whose JSON exists")
    parser.add_argument("--report-only", action="store_true", help="only rewrite OUTPUT from the saved runs")
    parser.add_argument("--no-report", action="store_true", help="run, but do not rewrite OUTPUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    resolve_device(args.device)  # fail early on --device cuda without CUDA
    if not args.report_only:
        for part in PARTS if args.part == "all" else (args.part,):
            seeds = args.seeds if args.seeds is not None else DEFAULT_SEEDS[part]
            datasets = [SWEEP_DATASET] if part == "sweep" else args.datasets
            run_part(part, datasets, args.models, seeds, args.data_root, args.runs, args.work, args.figures, args.device,
                     not args.quiet, args.force, args.rows)  # fmt: skip
    if args.no_report:
        return 0
    live = json.loads(args.live.read_text(encoding="utf-8")) if args.live.is_file() else None
    path = write_report(load_records(args.runs), args.output, live)
    print(f"[results] wrote {path} ({shlex.join(sys.argv[1:] if argv is None else argv)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
