"""RESULTS.md generation: per-run JSONs aggregated over seeds, the goal verdict computed from them."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tests.training.model_helpers import SMALL, synthetic_dataset
from training.results.catalogue import ABLATIONS, Job, Run, jobs, same_run_as
from training.results.report import SWEEP_DATASET, sweep_after_test, sweep_verdict, write_report
from training.results.runner import carry_over, execute, load_records, needs_run
from training.results.stats import (
    KEPT,
    LOST,
    NONINFERIORITY_MARGIN,
    NOT_SHOWN,
    Paired,
    accuracy,
    aggregate,
    paired_difference,
)

INFO = {"fingerprint": "f" * 64, "n_items": 2813, "n_tags": 80, "users": {"train": 1487, "val_tr": 186, "test_tr": 186}}


def _record(part: str, row: str, seed: int, ndcg: float, pct: float | str = "N/A", features: str | None = None,
            model: str | None = None, label: str = "label") -> dict:  # fmt: skip
    metrics = {
        "recall@20": ndcg * 0.9, "recall@20_stderr": 0.01, "recall@50": ndcg * 1.2, "recall@50_stderr": 0.01,
        "ndcg@100": ndcg, "ndcg@100_stderr": 0.02, "delta@20": "N/A", "pct_delta@20": pct,
    }  # fmt: skip
    if pct != "N/A":
        metrics.update({"delta@20": pct / 300, "delta@20_stderr": 0.004, "pct_delta@20_stderr": float("nan"),
                        "delta_eq16@20": pct / 50, "delta_eq16@20_stderr": 0.02})  # fmt: skip
    return {
        "part": part, "dataset": "lastfm-2k", "row": row, "label": label, "model": model or row, "seed": seed,
        "split": "test", "metrics": metrics, "features": features, "epochs_run": 12, "best_epoch": 7,
        "settings": {"epochs": 50, "batch_size": 128, "lr": 0.001, "patience": 10, "hyperparameters": {}},
        "train_wall_time_s": 42.0, "total_wall_time_s": 60.0, "machine": "test machine", "torch": "2.x",
        "python": "3.11", "date": f"2026-11-23 0{seed}:00 UTC", "dataset_info": INFO,
    }  # fmt: skip


def _records(goal_ndcg: float, goal_pct: float) -> list[dict]:
    out = []
    for seed, jitter in enumerate((-0.01, 0.0, 0.01)):
        out.append(_record("main", "multivae", seed, 0.42 + jitter))
        out.append(_record("main", "macridvae", seed, 0.45 + jitter))
        out.append(_record("main", "apron", seed, 0.41 + jitter, 25.0 + 10 * jitter, "text"))
        out.append(_record("ablations", "goal-collab", seed, goal_ndcg + jitter, goal_pct, "collab", "apron", "goal row"))
    return out


def test_the_sweeps_choice_finds_its_ablation_row_whichever_settings_layout_each_was_written_in(tmp_path: Path) -> None:
    """A record written after settings named the features matches one written before them."""
    records = _records(goal_ndcg=0.44, goal_pct=45.0)
    records.append({**_record("sweep", "collab:tagatt1-pen20", 0, 0.46, 50.0, "collab", "apron"), "split": "val"})
    for r in records:
        if r["row"] == "goal-collab":
            r["settings"] = {**r["settings"], "features": "collab"}
    assert "keep no per-user values: no paired figure yet" in write_report(records, tmp_path / "R.md").read_text()


def test_aggregate_gives_seed_and_per_user_standard_errors() -> None:
    cell = aggregate([r for r in _records(0.44, 45.0) if r["row"] == "macridvae"], "ndcg@100")
    assert cell.mean == pytest.approx(0.45) and cell.n_seeds == 3
    assert cell.seed_stderr == pytest.approx(0.01 / 3**0.5)  # std([-.01, 0, .01], ddof=1) = 0.01
    assert cell.user_stderr == pytest.approx(0.02)
    assert aggregate([_record("main", "multivae", 0, 0.4)], "pct_delta@20") is None  # N/A everywhere


def test_the_report_no_longer_draws_a_verdict_from_the_per_user_bar(tmp_path: Path) -> None:
    """Issue 10's rows (no per-user values) stay in the tables, with no 'met' drawn from them."""
    records = _records(goal_ndcg=0.44, goal_pct=45.0)
    records.append({**_record("sweep", "collab:tagatt1-pen20", 0, 0.46, 50.0, "collab", "apron"), "split": "val"})
    text = write_report(records, tmp_path / "RESULTS.md").read_text()
    assert "goal **met**" not in text and "**lastfm-2k: no verdict**" in text
    assert "Issue 10 called the goal met on lastfm-2k with the sweep's choice `collab:tagatt1-pen20`" in text
    assert "keep no per-user values: no paired figure yet" in text
    for r in records:  # now with per-user values: the old row against the best baseline, paired
        r["per_user"] = {"users": [0, 1, 2, 3], "ndcg@100": [r["metrics"]["ndcg@100"] + u for u in (0.1, -0.1, 0.2, -0.2)]}
    text = write_report(records, tmp_path / "RESULTS.md").read_text()
    assert "That row on test users against MacridVAE (main table), paired per user over 4 users: -0.0100, s.e. 0.0000" in text
    assert "(accuracy lost: upper end -0.0100 < −margin" in text and "goal **met**" not in text


def _penalised(record: dict, gamma: float, intrinsic_pct: float | None) -> dict:
    """`record` run with edit penalty γ; its γ = 0 %Δ@20 (and Δ@20) when measured."""
    record["settings"]["hyperparameters"] = {"edit_penalty": gamma}
    if intrinsic_pct is not None:
        record["metrics"].update({"pct_delta@20_intrinsic": intrinsic_pct, "delta@20_intrinsic": intrinsic_pct / 300,
                                  "delta@20_intrinsic_stderr": 0.003})  # fmt: skip
    return record


def test_rows_of_another_preparation_of_the_data_get_a_line_in_place_of_their_paired_comparison(tmp_path: Path) -> None:
    """Rows whose records carry other dataset fingerprints scored other people under the same row
    numbers: the report says so where their paired comparison would be, naming both rows, and the
    rest of it is written (not a traceback that names the cause but not the rows)."""
    records = _records(goal_ndcg=0.44, goal_pct=45.0) + [
        {**_record("sweep", row, 0, ndcg, pct, "collab", "apron"), "split": "val"}
        for row, ndcg, pct in (("collab:tagatt1-pen20", 0.46, 50.0), ("collab:tuned", 0.44, 12.0), ("collab:sparsemax", 0.40, 70.0))
    ]  # fmt: skip
    for r in records:
        r["per_user"] = {"users": [0, 1, 2, 3], "ndcg@100": [r["metrics"]["ndcg@100"] + u for u in (0.1, -0.1, 0.2, -0.2)]}
        if r["row"] in ("macridvae", "collab:tuned"):  # the best baseline and the sweep's tuned row: prepared again
            r["dataset_info"] = {**INFO, "fingerprint": "a" * 64}
    text = write_report(records, tmp_path / "RESULTS.md").read_text()
    why = "the two rows were scored on different preparations of the data (dataset fingerprint ffffffffffff against aaaaaaaaaaaa)"
    assert (f"- That row on test users against MacridVAE (main table): no paired comparison of `ablations/lastfm-2k/goal-collab` "
            f"with `main/lastfm-2k/macridvae`: {why}.") in text  # fmt: skip
    assert (f"sparsemax attention: val NDCG@100 0.4000 (tuned 0.4400), val %Δ@20, γ = 0: 70.0 (tuned 12.0); served, with γ: 70.0 "
            f"(tuned 12.0): no verdict: no paired "
            f"comparison of `sweep/lastfm-2k/collab:sparsemax` with `sweep/lastfm-2k/collab:tuned`: {why} (%Δ@20 +58.0 points).") in text  # fmt: skip
    assert "## Not run (yet)" in text  # the sections after them written too


def test_report_has_table_one_layout_seeds_and_missing_runs(tmp_path: Path) -> None:
    sweep = [_record("sweep", "collab:tuned", 0, 0.44, 12.0, "collab", "apron"),
             _penalised(_record("sweep", "collab:tagatt1-pen20", 0, 0.435, 60.0, "collab", "apron"), 20.0, 13.0),
             _record("sweep", "collab:sparsemax", 0, 0.40, 70.0, "collab", "apron"),
             _record("sweep", "collab:temp0.25", 0, 0.44, 14.0, "collab", "apron")]  # fmt: skip
    text = write_report(_records(0.44, 45.0) + sweep, tmp_path / "RESULTS.md").read_text()
    assert "## Issue 10's sweep: APRON options on lastfm-2k, VALIDATION users" in text
    # the verdict's gain is the model's own (γ = 0): the penalty's served +48 points stand apart
    assert ("collab, tag attention λ=1 + edit penalty γ=20: val NDCG@100 0.4350 (tuned 0.4400), val %Δ@20, γ = 0: 13.0 "
            "(tuned 12.0); served, with γ: 60.0 (tuned 12.0): no verdict") in text
    assert "so accuracy has no paired test (%Δ@20 +1.0 points)" in text
    # these records keep no per-user values: no paired accuracy test, so no verdict however far the means fell
    assert ("sparsemax attention: val NDCG@100 0.4000 (tuned 0.4400), val %Δ@20, γ = 0: 70.0 (tuned 12.0); served, with γ: "
            "70.0 (tuned 12.0): no verdict: its records or the tuned row's keep no per-user values, so accuracy has no "
            "paired test (%Δ@20 +58.0 points)") in text
    assert "temperature 0.25: val NDCG@100 0.4400 (tuned 0.4400), val %Δ@20, γ = 0: 14.0 (tuned 12.0); served, with γ: 14.0" in text
    assert ("| Method | Recall@20 (↑) | Recall@50 (↑) | NDCG@100 (↑) | APRON − row, NDCG@100 paired | Δ@20, γ = 0 (↑) "
            "| Δ@20 Eq. 16, γ = 0 (↑) | %Δ@20, γ = 0 (↑) | %Δ@20 served, with γ (↑) |") in text
    assert ("| MacridVAE | 0.4050 ± 0.0052 [0.0100] | 0.5400 ± 0.0069 [0.0100] | 0.4500 ± 0.0058 [0.0200] "
            "| APRON keeps no per-user values | N/A |") in text
    assert "| 0, 1, 2 |" in text and "test machine" in text
    assert "%Δ@20 = 100 · mean_τ Δ@20(τ) / mean_τ NDCG_t^F@20(τ)" in text
    assert "Recall@K = hits in the top K / min(K, the user's items to be found)" in text
    assert "Every Δ@20 and %Δ@20 headline column is the intrinsic one" in text
    assert "### APRON ablations on lastfm-2k" in text and "goal **met**" not in text
    assert "## Not run (yet)" in text and "main/ml-1m-implicit/recvae: 0 of 3 seeds" in text
    assert "tune/ml-1m-implicit/multidae:l2-liang: 0 of 1 seeds" in text
    assert "final/lastfm-2k/multidae: waits for its tune part" in text
    assert "**lastfm-2k: the tuned comparison has not been run**, so there is no paired verdict there: the tune part has 0 of 30" in text


def test_a_run_is_trained_evaluated_saved_and_reported(tmp_path: Path) -> None:
    """One real (tiny) APRON run through `execute`: its JSON is what the report aggregates."""
    dataset = synthetic_dataset(tmp_path / "data")
    run = Run(epochs=2, features="synthetic", hyperparameters={**SMALL["apron"], "edit_penalty": 5.0})
    job = Job("ablations", "lastfm-2k", "goal-collab", "tiny goal row", "apron", run, "test")
    runs = tmp_path / "runs"
    record = execute(job, 1, dataset, runs, tmp_path / "work", tmp_path / "figures", "cpu", progress=False)
    assert job.path(runs, 1).is_file()
    assert not (tmp_path / "work" / "runs").exists()  # records and checkpoints live apart
    assert record["metrics"]["n_users"] > 0 and 0 <= record["metrics"]["ndcg@100"] <= 1
    assert record["metrics"]["delta_eq16@20"] == pytest.approx(record["metrics"]["delta@20"] * 7.0403, rel=1e-3)
    assert record["settings"]["hyperparameters"]["edit_penalty"] == 5.0
    loaded = load_records(runs)
    assert [r["row"] for r in loaded] == ["goal-collab"]
    text = write_report(loaded, tmp_path / "RESULTS.md").read_text()
    assert "| tuned APRON" not in text and "collab + tag-supervised attention + edit penalty" in text


def test_the_final_seed_0_scores_the_tune_runs_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The final part's seed 0 takes the tune part's seed-0 model (same settings and seed) instead of
    training it again, and its test metrics are those of a fresh run: training is deterministic."""
    dataset = synthetic_dataset(tmp_path / "data")
    run = Run(epochs=2, hyperparameters=SMALL["multidae"])
    tune = Job("tune", "lastfm-2k", "multidae:x", "x", "multidae", run, "val")
    final = Job("final", "lastfm-2k", "multidae", "MultiDAE (x)", "multidae", run, "test", tuned_row="multidae:x")
    runs, work, figures = tmp_path / "runs", tmp_path / "work", tmp_path / "figures"
    tuned = execute(tune, 0, dataset, runs, work, figures, "cpu", progress=False)
    assert Path(tuned["checkpoint"]).is_file()
    reused = execute(final, 0, dataset, runs, work, figures, "cpu", progress=False)
    assert reused["trained_in"] == str(tune.path(runs, 0))
    assert (reused["epochs_run"], reused["best_epoch"]) == (tuned["epochs_run"], tuned["best_epoch"])
    import training.results.runner as runner

    trainings = []
    real_train = runner.train
    monkeypatch.setattr(runner, "train", lambda *a, **k: trainings.append(1) or real_train(*a, **k))
    other_seed = execute(final, 1, dataset, runs, work, figures, "cpu", progress=False)  # no tune run of seed 1
    assert "trained_in" not in other_seed and trainings == [1]
    Path(tuned["checkpoint"]).unlink()  # no checkpoint: trained afresh, to the same numbers
    fresh = execute(final, 0, dataset, runs, work, figures, "cpu", progress=False)
    assert "trained_in" not in fresh and trainings == [1, 1]
    assert fresh["metrics"] == reused["metrics"] and fresh["per_user"] == reused["per_user"]
    changed = Job("final", "lastfm-2k", "multidae", "MultiDAE (y)", "multidae", Run(epochs=3, hyperparameters=SMALL["multidae"]),
                  "test", tuned_row="multidae:x")  # fmt: skip
    execute(tune, 0, dataset, runs, work, figures, "cpu", progress=False)  # its checkpoint back
    assert "trained_in" not in execute(changed, 0, dataset, runs, work, figures, "cpu", progress=False)  # other settings
    assert trainings == [1, 1, 1, 1]


def test_a_record_is_reused_only_with_the_rows_current_settings(tmp_path: Path) -> None:
    job = Job("sweep", "lastfm-2k", "collab:x", "x", "apron", Run(epochs=3, hyperparameters={"edit_penalty": 20.0}), "val")
    path = job.path(tmp_path, 0)
    assert needs_run(job, path, force=False)  # no record
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"settings": job.settings()}))
    assert not needs_run(job, path, force=False)
    assert needs_run(job, path, force=True)
    changed = Job("sweep", "lastfm-2k", "collab:x", "x", "apron", Run(epochs=3, hyperparameters={"edit_penalty": 50.0}), "val")
    assert needs_run(changed, path, force=False)  # the row's settings changed since it was recorded
    path.write_text("{not json")
    assert needs_run(job, path, force=False)


def _write_record(path: Path, job: Job, epochs: int, epochs_run: int) -> None:
    settings = {**job.settings(), "epochs": epochs}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "epochs_run": epochs_run, "best_epoch": epochs_run - 3}))


@pytest.mark.parametrize(
    ("model", "epochs_run", "reused"),
    [
        ("apron", 40, True),  # early stopping ended it before its cap of 60: the same run under 150
        ("apron", 60, False),  # it ran to its cap: a higher cap would have trained on
        ("multivae", 40, False),  # β's annealing is stretched over the cap: another run under 150
    ],
)
def test_an_early_stopped_record_carries_over_to_a_raised_cap(tmp_path: Path, model: str, epochs_run: int, reused: bool) -> None:
    job = Job("main", "ml-1m-implicit", model, model, model, Run(epochs=150, batch_size=256), "test")
    path = job.path(tmp_path, 2)
    _write_record(path, job, epochs=60, epochs_run=epochs_run)
    assert needs_run(job, path, force=False) is not reused
    carry_over(job, path)
    record = json.loads(path.read_text())
    if reused:  # rewritten with the row's settings, keeping the cap it ran under
        assert record["settings"] == job.settings() and record["ran_under_cap"] == 60
        assert not needs_run(job, path, force=False)
    else:
        assert record["settings"]["epochs"] == 60 and "ran_under_cap" not in record


def test_a_record_with_a_lower_cap_and_other_settings_is_rerun(tmp_path: Path) -> None:
    job = Job("main", "ml-1m-implicit", "apron", "apron", "apron", Run(epochs=150, lr=5e-4), "test")
    path = job.path(tmp_path, 0)
    other = Job("main", "ml-1m-implicit", "apron", "apron", "apron", Run(epochs=150, lr=1e-3), "test")
    _write_record(path, other, epochs=60, epochs_run=40)
    assert needs_run(job, path, force=False)


def test_an_ablation_that_trains_the_tuned_model_is_reported_not_trained_twice(tmp_path: Path) -> None:
    by_key = {v.key: v for v in ABLATIONS}
    # ml-1m-implicit's tuned APRON has the model defaults, which are the paper's H and λ2
    assert same_run_as("ml-1m-implicit", by_key["paper-hparams"]) is by_key["tuned"]
    assert same_run_as("ml-1m-implicit", by_key["goal-collab-paper"]) is by_key["goal-collab"]
    assert same_run_as("lastfm-2k", by_key["paper-hparams"]) is None  # lastfm's tuned row is H = 4, λ2 = 10
    assert same_run_as("ml-1m-implicit", by_key["paper-all"]) is None
    assert "paper-hparams" not in {j.row for j in jobs("ablations", ["ml-1m-implicit"])}
    assert "paper-hparams" in {j.row for j in jobs("ablations", ["lastfm-2k"])}


def test_the_report_names_the_records_kept_under_a_raised_cap(tmp_path: Path) -> None:
    records = _records(0.44, 45.0)
    records[0] = {**records[0], "ran_under_cap": 30}
    text = write_report(records, tmp_path / "RESULTS.md").read_text()
    assert "Records kept when their cap was raised: 1." in text
    assert "main/lastfm-2k/multivae seed 0 (stopped at 12, cap 30 -> 50)" in text
    assert "kept when" not in write_report(_records(0.44, 45.0), tmp_path / "R2.md").read_text()


def test_not_run_counts_only_records_with_the_rows_current_settings(tmp_path: Path) -> None:
    """A record whose row's settings changed since is listed as not run, with its seeds named."""
    job = next(j for j in jobs("main", ["lastfm-2k"]) if j.row == "multivae")
    current = [{**_record("main", "multivae", seed, 0.42), "settings": job.settings()} for seed in (0, 1)]
    stale = {**_record("main", "multivae", 2, 0.42), "settings": {**job.settings(), "lr": 0.123}}
    text = write_report([*current, stale], tmp_path / "RESULTS.md").read_text()
    assert "- main/lastfm-2k/multivae: 2 of 3 seeds (run with other settings than the row has now: seed 2)" in text
    stale["settings"] = job.settings()
    assert "main/lastfm-2k/multivae:" not in write_report([*current, stale], tmp_path / "R2.md").read_text()


def test_a_sweep_options_verdict_says_what_was_measured() -> None:
    """The verdict follows the numbers: a drop of %Δ@20 is a drop (it read "moved < 5 points"
    for a 7-point fall), an unmeasured one is N/A, accuracy lost outranks the rest, an accuracy
    not shown is said (a gain with it is 'not shown', not 'helped'), and without per-user values
    there is no accuracy test, so no verdict. Reference 0.5: margin 0.01."""
    kept, fell = Paired(-0.002, 0.003, -0.008, 0.004, 186), Paired(-0.02, 0.001, -0.03, -0.012, 186)
    wide = Paired(-0.002, 0.006, -0.014, 0.010, 186)  # reaches 0, but also below −margin
    interval = "paired per-user Δ val NDCG@100 -0.0020, 95% interval [-0.0080, +0.0040] over 186 users"
    reading = "accuracy kept: lower end -0.0080 ≥ −margin -0.0100"
    assert sweep_verdict(kept, 7.7, 0.5) == f"helped (%Δ@20 +7.7 points; {reading}; {interval})"
    assert sweep_verdict(kept, -7.1, 0.5) == f"failed: %Δ@20 fell -7.1 points ({interval}; {reading})"
    assert sweep_verdict(kept, 2.0, 0.5) == f"failed: %Δ@20 moved +2.0 points, under 5 ({interval}; {reading})"
    assert sweep_verdict(kept, float("nan"), 0.5).startswith(f"no verdict: %Δ@20 with γ = 0 not measured (N/A); {reading} (")
    assert sweep_verdict(fell, 12.0, 0.5) == ("failed: accuracy lost: upper end -0.0120 < −margin -0.0100 (paired per-user "
                                              "Δ val NDCG@100 -0.0200, 95% interval [-0.0300, -0.0120] over 186 users)")  # fmt: skip
    assert sweep_verdict(wide, 12.0, 0.5).startswith(
        "not shown: %Δ@20 +12.0 points, but accuracy not shown: lower end -0.0140 < −margin -0.0100 ≤ upper end "
        "+0.0100, more users needed")  # fmt: skip
    assert sweep_verdict(None, 12.0, 0.5).startswith("no verdict: its records or the tuned row's keep no per-user values")


def test_accuracy_is_kept_only_when_non_inferiority_is_shown() -> None:
    """Failing to reject is not equivalence: a 4.8 % deficit read on few users reaches 0 (the old
    rule kept accuracy there); the margin test says 'not shown' on few users and 'lost' on many."""
    rng = np.random.default_rng(0)
    reference = rng.uniform(0.2, 0.8, 4000)
    row = reference * (1 - 0.048) + rng.normal(0, 0.15, 4000)  # 4.8 % below, noisy per user
    few, many = paired_difference(row[:30], reference[:30]), paired_difference(row, reference)
    assert few.high >= 0  # what the old rule read as "accuracy kept"
    assert accuracy(few, reference.mean()).outcome == NOT_SHOWN
    assert accuracy(many, reference.mean()).outcome == LOST
    tied = paired_difference(reference + rng.normal(0, 0.01, 4000), reference)
    kept = accuracy(tied, reference.mean())
    assert kept.outcome == KEPT and kept.margin == pytest.approx(NONINFERIORITY_MARGIN * reference.mean())


def _sweep_record(row: str, ndcg: np.ndarray, pct: float) -> dict:
    users = list(range(len(ndcg)))
    return {**_record("sweep", row, 0, float(ndcg.mean()), pct, "collab", "apron"), "split": "val",
            "per_user": {"users": users, "ndcg@100": ndcg.tolist()}}  # fmt: skip


def test_a_sweep_option_keeps_accuracy_by_the_paired_per_user_interval(tmp_path: Path) -> None:
    """Not by a fixed 0.01 slack on the means, nor by an interval that merely reaches 0: a fall
    of 0.02 that every user shares is lost, the same fall as noise across users is not shown (the
    old rule kept it), a fall of 0.002 that every user shares is within the margin; the report
    says the interval and the bound it read."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, 200)  # mean ≈ 0.41: margin ≈ 0.0083
    consistent = base - 0.02 + rng.normal(0, 0.001, 200)
    noisy = base - 0.02 + rng.normal(0, 0.3, 200)  # the interval reaches 0 and below −margin
    small = base - 0.002 + rng.normal(0, 0.001, 200)  # below 0 for sure, but within the margin
    records = [_sweep_record("collab:tuned", base, 20.0), _sweep_record("collab:pen20", consistent, 40.0),
               _sweep_record("collab:tagatt1", noisy, 40.0), _sweep_record("collab:sparsemax", small, 40.0)]  # fmt: skip
    text = write_report(records, tmp_path / "RESULTS.md").read_text()
    line = {key: next(x for x in text.splitlines() if x.startswith(f"- collab, {label}:"))
            for key, label in (("pen20", "edit penalty γ=20"), ("tagatt1", "tag-supervised attention λ=1"),
                               ("sparsemax", "sparsemax attention"))}  # fmt: skip
    assert ": failed: accuracy lost: upper end -0.0199 < −margin -0.0083 (paired per-user Δ val NDCG@100 -0.0201" in line["pen20"]
    assert ": not shown: %Δ@20 +20.0 points, but accuracy not shown: lower end" in line["tagatt1"]
    assert ": helped (%Δ@20 +20.0 points; accuracy kept: lower end -0.0022 ≥ −margin -0.0083;" in line["sparsemax"]
    without = [{k: v for k, v in r.items() if k != "per_user"} for r in records]
    text = write_report(without, tmp_path / "R2.md").read_text()
    assert "keep no per-user values, so accuracy has no paired test (%Δ@20 +20.0 points)" in text
    assert "accuracy kept" not in text and "accuracy lost" not in text


def test_the_sweep_after_test_clause_is_read_from_the_records() -> None:
    """Said only when the records show sweep rows run after the first ablation row was scored on
    test users, with their count and dates (it was one fixed sentence)."""
    def record(part: str, date: str) -> dict:
        return {"part": part, "dataset": SWEEP_DATASET, "date": date}

    before = [record("sweep", "2026-11-23 11:00 UTC"), record("ablations", "2026-11-23 12:08 UTC")]
    assert sweep_after_test(before) == ""
    after = [*before, record("sweep", "2026-11-23 12:40 UTC"), record("sweep", "2026-11-24 09:00 UTC")]
    assert sweep_after_test(after) == (
        ", and 2 of its sweep's 3 rows were run after the first ablation row was scored on test users "
        "(2026-11-23 12:08 UTC; those sweep rows from 2026-11-23 12:40 UTC)"
    )
    assert sweep_after_test([record("sweep", "2026-11-23 12:40 UTC")]) == ""  # no test scores at all


def test_records_of_a_summed_profile_made_before_its_dropout_fix_are_rerun(tmp_path: Path) -> None:
    """The inverted-dropout fix of `profile="sum"` changed training, not settings: those rows'
    records from before it are stale (their settings lack the training revision); others stay."""
    ablations = {j.row: j for j in jobs("ablations", ["lastfm-2k"])}
    for row, stale in (("sum-profile", True), ("paper-all", True), ("random-init", False), ("collab", False)):
        job = ablations[row]
        before = {k: v for k, v in job.settings().items() if k != "training_revision"}
        path = job.path(tmp_path, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"settings": before, "features": "text", "epochs_run": 30}))
        assert needs_run(job, path, force=False) is stale, row
        path.write_text(json.dumps({"settings": job.settings(), "features": "text", "epochs_run": 30}))
        assert not needs_run(job, path, force=False), row


def test_a_rows_features_are_part_of_its_records_settings(tmp_path: Path) -> None:
    """Editing a row's features makes its records stale; records written before settings named
    the features (no "features" key there) read as the features stored beside them, so they stay
    current, and a model that reads no features is not rerun for an edit it ignores."""
    text = Job("ablations", "lastfm-2k", "x", "x", "apron", Run(epochs=3, features="text"), "test")
    collab = Job("ablations", "lastfm-2k", "x", "x", "apron", Run(epochs=3, features="collab"), "test")
    path = text.path(tmp_path, 0)
    path.parent.mkdir(parents=True)
    before = {k: v for k, v in text.settings().items() if k != "features"}  # the layout before the key
    path.write_text(json.dumps({"settings": before, "features": "text", "epochs_run": 2}))
    assert not needs_run(text, path, force=False)
    assert needs_run(collab, path, force=False)
    path.write_text(json.dumps({"settings": text.settings(), "features": "text", "epochs_run": 2}))
    assert not needs_run(text, path, force=False) and needs_run(collab, path, force=False)
    baseline = Job("main", "lastfm-2k", "multidae", "MultiDAE", "multidae", Run(epochs=3), "test")
    path = baseline.path(tmp_path, 0)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"settings": {k: v for k, v in baseline.settings().items() if k != "features"},
                                "features": None, "epochs_run": 2}))  # fmt: skip
    assert not needs_run(baseline, path, force=False)
    assert not needs_run(dataclasses.replace(baseline, run=Run(epochs=3, features="collab")), path, force=False)


def test_the_headline_controllability_is_the_models_own_and_served_stands_apart(tmp_path: Path) -> None:
    """Δ@20, its Eq. 16 form and %Δ@20 are read with γ = 0; a penalised row measured before γ = 0
    was shows N/A there, never its served figure; the served %Δ@20 has its own column."""
    from training.metrics import ideal_tag_dcg

    records = _records(goal_ndcg=0.44, goal_pct=45.0)
    for r in records:
        if r["row"] == "apron":
            _penalised(r, 50.0, 30.0)
        elif r["row"] == "goal-collab":
            _penalised(r, 20.0, None)
    text = write_report(records, tmp_path / "RESULTS.md").read_text()
    apron = next(line for line in text.splitlines() if line.startswith("| APRON (ours) |"))
    cells = [c.strip() for c in apron.split("|")[1:-1]]
    assert cells[4] == "-"  # APRON − itself
    assert cells[5] == "0.1000 ± 0.0000 [0.0030]"  # Δ@20 = 30 / 300, γ = 0 (3 equal seeds)
    eq16 = ideal_tag_dcg(20)  # Eq. 16: Δ@20 × the ideal DCG@20
    assert cells[6] == f"{0.1 * eq16:.3f} ± 0.000 [{0.003 * eq16:.3f}]"
    assert cells[7] == "30.0 ± 0.0" and cells[8].startswith("25.0 ± ")  # γ = 0, then served
    goal = next(line for line in text.splitlines() if line.startswith("| collab + tag-supervised attention + edit penalty |"))
    assert [c.strip() for c in goal.split("|")[1:-1]][3:8] == ["no per-user values", "0.3960 ± 0.0052 [0.0100]", "N/A", "N/A", "45.0 ± 0.0"]


def test_each_ablation_row_is_paired_with_the_tuned_row_user_by_user(tmp_path: Path) -> None:
    records = _records(goal_ndcg=0.44, goal_pct=45.0)
    for r in records:  # the goal row beats the tuned (main) row by 0.03 on every user
        r["per_user"] = {"users": [0, 1, 2, 3], "ndcg@100": [r["metrics"]["ndcg@100"] + u for u in (0.1, -0.1, 0.2, -0.2)]}
    text = write_report(records, tmp_path / "RESULTS.md").read_text()
    goal = next(line for line in text.splitlines() if line.startswith("| collab + tag-supervised attention + edit penalty |"))
    tuned = next(line for line in text.splitlines() if line.startswith("| tuned APRON"))
    assert goal.split("|")[4].strip() == "+0.0300 [+0.0300, +0.0300]" and tuned.split("|")[4].strip() == "-"
    for r in records:  # the tuned row prepared again: not the same people under the same row numbers
        if r["row"] == "apron":
            r["dataset_info"] = {**INFO, "fingerprint": "a" * 64}
    text = write_report(records, tmp_path / "RESULTS.md").read_text()
    assert "| not paired (below) |" in text
    assert "- no paired comparison of `ablations/lastfm-2k/goal-collab` with `main/lastfm-2k/apron`: the two rows" in text


def test_a_row_whose_seeds_scored_other_users_costs_its_comparison_not_the_report(tmp_path: Path) -> None:
    records = _records(goal_ndcg=0.44, goal_pct=45.0)
    for r in records:
        r["per_user"] = {"users": [0, 1, 2, 3], "ndcg@100": [r["metrics"]["ndcg@100"] + u for u in (0.1, -0.1, 0.2, -0.2)]}
        if r["row"] == "goal-collab" and r["seed"] == 2:
            r["per_user"]["users"] = [0, 1, 2, 5]
    text = write_report(records, tmp_path / "RESULTS.md").read_text()
    assert ("- no paired comparison of `ablations/lastfm-2k/goal-collab` with `main/lastfm-2k/apron`: ablations/lastfm-2k/"
            "goal-collab seed 2 scored other users than its row's other seeds.") in text
    assert "## Not run (yet)" in text  # the report went on


def test_the_ablation_pairing_says_which_row_lacks_per_user_values(tmp_path: Path) -> None:
    records = _records(goal_ndcg=0.44, goal_pct=45.0)
    for r in records:
        if r["row"] == "goal-collab":  # only the ablation row keeps them: the tuned row is what lacks them
            r["per_user"] = {"users": [0, 1], "ndcg@100": [0.4, 0.5]}
    goal = next(line for line in write_report(records, tmp_path / "R.md").read_text().splitlines() if line.startswith("| collab +"))
    assert goal.split("|")[4].strip() == "the tuned row keeps no per-user values"



def test_the_main_table_pairs_apron_with_each_row_user_by_user(tmp_path: Path) -> None:
    records = _records(goal_ndcg=0.44, goal_pct=45.0)
    for r in records:  # APRON 0.41, MultiVAE 0.42, MacridVAE 0.45 (+ the same user offsets)
        if r["row"] != "macridvae":  # MacridVAE's records predate per-user values
            r["per_user"] = {"users": [0, 1, 2, 3], "ndcg@100": [r["metrics"]["ndcg@100"] + u for u in (0.1, -0.1, 0.2, -0.2)]}
    lines = write_report(records, tmp_path / "RESULTS.md").read_text().splitlines()
    cell = {name: next(line for line in lines if line.startswith(f"| {name} |")).split("|")[5].strip()
            for name in ("MultiVAE", "MacridVAE", "APRON (ours)")}  # fmt: skip
    assert cell == {"MultiVAE": "-0.0100 [-0.0100, -0.0100]", "MacridVAE": "no per-user values", "APRON (ours)": "-"}


def test_records_trained_with_gamma_in_the_loss_are_told_by_when_the_model_was_trained() -> None:
    """The defect's cutoff reads when the model was trained: a final record written after the fix
    that reuses a tune model trained before it (`trained_at`, carried by the runner) still counts."""
    from training.results.report import GAMMA_IN_LOSS_UNTIL, gamma_in_loss_lines, trained_with_gamma

    before, after = GAMMA_IN_LOSS_UNTIL.timestamp() - 60, GAMMA_IN_LOSS_UNTIL.timestamp() + 60
    written_after = {**_penalised(_record("final", "apron", 0, 0.4), 50.0, 30.0), "created_at": after}
    assert not trained_with_gamma(written_after)  # trained when written: after the fix
    assert trained_with_gamma({**written_after, "trained_at": before})  # a reused pre-fix model
    assert not trained_with_gamma({**written_after, "trained_at": after})
    assert not trained_with_gamma({**_record("final", "apron", 0, 0.4), "created_at": before})  # γ = 0
    # twins that differ only in γ: named as moved by the defect only when trained on one host alike
    tuned = {**_penalised(_record("sweep", "collab:tuned", 0, 0.4), 0.0, 20.0), "created_at": before,
             "machine": "m", "threads": 1, "torch": "t"}  # fmt: skip
    pen = {**_penalised(_record("sweep", "collab:pen20", 0, 0.4), 20.0, 20.0), "created_at": before,
           "machine": "m", "threads": 1, "torch": "t", "epochs_run": 9}  # fmt: skip
    (line,) = gamma_in_loss_lines([tuned, pen])
    assert "1 records with γ > 0 were trained so" in line and "`sweep/lastfm-2k/collab:pen20`" in line
    assert "multinomial loss, which every one of them uses" in line
    (line,) = gamma_in_loss_lines([tuned, {**pen, "machine": "other"}])  # another host: not the defect's doing
    assert "trained differently because of it" not in line
    bce = {**pen, "settings": {**pen["settings"], "hyperparameters": {"edit_penalty": 20.0, "recsys_loss": "bce"}}}
    (line,) = gamma_in_loss_lines([tuned, bce])
    assert "the bce loss of 1 of them does not" in line
    assert gamma_in_loss_lines([tuned]) == []  # none trained with γ: nothing said
