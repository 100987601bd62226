"""What `make results` runs: the models' settings per dataset, the APRON ablations, the sweeps
(validation users) and the jobs they make. Pure data and functions; training happens in
`training.results.runner`, selection on validation users in `training.results.selection`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from training.data.hidden_labels import DEFAULT_HIDDEN_SHARE
from training.metrics import TAG_MIN_SHARE
from training.models.apron import PRESETS, APRONConfig, training_revision
from training.models.registry import model_class

MODELS = ("multidae", "multivae", "recvae", "macridvae", "sem-macridvae", "sem-macridvae-tags", "apron")
LABELS = {
    "multidae": "MultiDAE",
    "multivae": "MultiVAE",
    "recvae": "RecVAE",
    "macridvae": "MacridVAE",
    "sem-macridvae": "SEM-MacridVAE",
    "sem-macridvae-tags": "SEM-MacridVAE + tag prototypes, Eq. 11 (ours, earlier)",
    "apron": "APRON (ours)",
}
BASELINES = MODELS[:-1]
FINAL_SEEDS = 3
# The paper's Table 1 (MSD with MERT audio features), for reference.
PAPER = {
    "multidae": (0.253, 0.355, 0.300, None, None),
    "multivae": (0.264, 0.366, 0.315, None, None),
    "recvae": (0.275, 0.373, 0.325, None, None),
    "macridvae": (0.291, 0.385, 0.343, None, None),
    "sem-macridvae": (0.290, 0.383, 0.341, -0.00015, -0.05),
    "apron": (0.277, 0.377, 0.327, 0.05407, 33.80),
}
# Issue 21's goal, on each dataset: APRON on tag-free features, chosen on validation users, with the
# paired 95 % interval of (APRON − best tuned baseline) NDCG@100 reaching 0 and the model's own
# (γ = 0) %Δ@20 >= 40 (the paper: 33.8 at −5 % accuracy); `pct_delta@20_unlabelled` beside it.
GOAL_PCT_DELTA = 40.0
GOAL_METRIC = "pct_delta@20_intrinsic"
# main/ablations/sweep: the earlier tables (models at fixed settings, APRON switches, issue 10's
# APRON sweep on lastfm-2k); tune (validation users) then final (test users): issue 21's protocol.
PARTS = ("main", "ablations", "sweep", "tune", "final")
VALIDATION_PARTS = ("sweep", "tune")


@dataclass(frozen=True)
class Run:
    """One model's training settings on one dataset."""

    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 10
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    features: str = "text"  # content features of apron / sem-macridvae*
    tag_min_share: float = TAG_MIN_SHARE  # T(·) for Δ@20 (and for APRON's training, via its config)


# Per-dataset settings. Caps were raised (issue 10) where the best epoch reached the cap in the
# single-seed run of 2026-11-22: MacridVAE on lastfm-2k (40, best 35), RecVAE (25, best 25) and
# both MacridVAEs (40, best 34 / 38) on ml-1m-implicit; and APRON on ml-1m-implicit (60 -> 150:
# nine of the 3-seed records of 2026-11-23 ran to 60 with their best at 53-59). Early stopping on
# validation NDCG@100 ends most runs before the caps; such records carry over to a raised cap
# (`carries_over`).
RUNS: dict[str, dict[str, Run]] = {
    "lastfm-2k": {
        "multidae": Run(epochs=100),
        "multivae": Run(epochs=100),
        "recvae": Run(epochs=30, lr=5e-4, patience=6),  # 4 sweeps per epoch (3 encoder + 1 decoder)
        # K = 80 concepts: d = 50 per concept (Ma et al. use 100 with K = 7) halves the cost
        "macridvae": Run(epochs=80, patience=8, hyperparameters={"embedding_dim": 50}),
        "sem-macridvae": Run(epochs=80, patience=8, hyperparameters={"embedding_dim": 50}),
        "sem-macridvae-tags": Run(epochs=80, patience=8, hyperparameters={"embedding_dim": 50}),
        # Chosen on the validation users (one seed, 2026-11-22): the paper's H = 16, λ2 = 0.005 gave
        # val NDCG@100 0.439 / %Δ@20 19.9; H = 4 with λ2 = 10 gave 0.441 / 24.6, on `text` features (that
        # sweep is not in RESULTS.md, whose sweep is over the tag-free features; there the paper's H = 16
        # is the more accurate base: see its `paper` rows).
        "apron": Run(epochs=60, lr=5e-4, hyperparameters={"n_heads": 4, "lambda_ctrl": 10.0}),
    },
    "ml-1m-implicit": {
        "multidae": Run(epochs=100, batch_size=256),
        "multivae": Run(epochs=100, batch_size=256),
        "recvae": Run(epochs=60, batch_size=256, lr=5e-4, patience=6),
        "macridvae": Run(epochs=80, batch_size=256, patience=8),
        "sem-macridvae": Run(epochs=80, batch_size=256, patience=8),
        "sem-macridvae-tags": Run(epochs=80, batch_size=256, patience=8),
        "apron": Run(epochs=150, batch_size=256, lr=5e-4),
    },
}
# Models whose training does not depend on the epoch cap: their loss ignores the trainer's β
# annealing, whose length is a share of the cap (MultiVAE and the MacridVAEs anneal). Until early
# stopping ends it, their run is the same under any cap (tests/training/test_train.py).
CAP_FREE_MODELS = frozenset({"apron", "multidae", "recvae"})

PAPER_APRON = {"n_heads": 16, "lambda_ctrl": 0.005}
# The controllability options chosen on lastfm-2k's validation users by the sweep below (issue 10's
# goal): attention supervised by the item's tags, plus the scorer's edit penalty.
CONTROLLABLE = {"lambda_tag_attention": 1.0, "edit_penalty": 20.0}


@dataclass(frozen=True)
class Variant:
    """A row: the dataset's run of a model with some settings changed (an APRON ablation or sweep
    option, or a configuration of a tuning sweep)."""

    key: str
    label: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    features: str | None = None
    tag_min_share: float | None = None
    lr: float | None = None

    def run(self, base: Run) -> Run:
        return replace(
            base,
            hyperparameters={**base.hyperparameters, **self.hyperparameters},
            features=self.features or base.features,
            tag_min_share=base.tag_min_share if self.tag_min_share is None else self.tag_min_share,
            lr=base.lr if self.lr is None else self.lr,
        )


ABLATIONS: tuple[Variant, ...] = (
    Variant("tuned", "tuned APRON (main table's row)"),
    Variant("random-init", "Aᵖ random init (paper) instead of a copy of Aˣ", {"prototype_init": "random"}),
    Variant("sum-profile", "profile = sum (Eq. 13) instead of mean", {"profile": "sum"}),
    Variant("no-renormalise", "drop without renormalisation", {"drop_renormalise": False}),
    Variant("any-tag", "tag membership: any count instead of ≥ 50 % of the top tag", tag_min_share=0.0),
    Variant("text-stripped", "features: text with tag words removed", features="text-stripped"),
    Variant("collab", "features: collab (SVD of train users)", features="collab"),
    Variant("paper-hparams", "paper settings H = 16, λ2 = 0.005", dict(PAPER_APRON)),
    Variant(
        "paper-all",
        "all paper choices (random init, sum, no renormalisation, any count, H = 16, λ2 = 0.005)",
        {"prototype_init": "random", "profile": "sum", "drop_renormalise": False, **PAPER_APRON},
        tag_min_share=0.0,
    ),
    # issue 10's goal: tag-free features with the controllability options chosen by the sweep
    Variant("goal-collab", "collab + tag-supervised attention + edit penalty", dict(CONTROLLABLE), "collab"),
    Variant("goal-collab-paper", "collab + paper H = 16, λ2 = 0.005 + tag-supervised attention + edit penalty",
            {**PAPER_APRON, **CONTROLLABLE}, "collab"),  # fmt: skip
    # chosen on lastfm-2k's validation users (sweep, second round): the most accurate option with val
    # %Δ@20 >= 40 was a rank-256 SVD with the paper's H and λ2, tag-supervised attention and γ = 50
    Variant("goal-collab256-paper", "collab-256 + paper H = 16, λ2 = 0.005 + tag-supervised attention + edit penalty γ = 50",
            {**PAPER_APRON, "lambda_tag_attention": 1.0, "edit_penalty": 50.0}, "collab-256"),  # fmt: skip
    # third round: every head reads all of the rank-64 SVD (head_features="full")
    Variant("goal-collab-full", "collab, heads read all features + paper H = 16, λ2 = 0.005 + tag-supervised attention + edit penalty γ = 50",
            {**PAPER_APRON, **PRESETS["controllable"]}, "collab"),  # fmt: skip
    Variant(
        "goal-text-stripped",
        "text-stripped + tag-supervised attention + edit penalty",
        dict(CONTROLLABLE),
        "text-stripped",
    ),
)

SWEEP_DATASET = "lastfm-2k"
_SWEEP_OPTIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("tuned", "tuned (H=4, λ2=10)", {}),
    ("paper", "paper H=16, λ2=0.005", dict(PAPER_APRON)),
    ("temp0.25", "sharper attention: temperature 0.25", {"attention_temperature": 0.25}),
    ("sparsemax", "sparsemax attention", {"attention": "sparsemax"}),
    ("tagatt1", "tag-supervised attention λ=1", {"lambda_tag_attention": 1.0}),
    ("pen20", "edit penalty γ=20", {"edit_penalty": 20.0}),
    ("tagatt1-pen20", "tag attention λ=1 + edit penalty γ=20", {"lambda_tag_attention": 1.0, "edit_penalty": 20.0}),
    ("tagatt1-pen50", "tag attention λ=1 + edit penalty γ=50", {"lambda_tag_attention": 1.0, "edit_penalty": 50.0}),
    ("sparse-tagatt1-pen20", "sparsemax + tag attention λ=1 + penalty γ=20",
     {"attention": "sparsemax", "lambda_tag_attention": 1.0, "edit_penalty": 20.0}),
    ("paper-tagatt1-pen20", "paper H=16, λ2=0.005 + tag attention λ=1 + penalty γ=20",
     {**PAPER_APRON, "lambda_tag_attention": 1.0, "edit_penalty": 20.0}),
    # second round (2026-11-23): the paper's H = 16 was the most accurate base, but its heads spread
    # each item's attention thinner, so the same γ removes less; stronger γ or tag supervision
    ("tagatt1-pen100", "tag attention λ=1 + edit penalty γ=100", {"lambda_tag_attention": 1.0, "edit_penalty": 100.0}),
    ("paper-tagatt1-pen50", "paper H=16, λ2=0.005 + tag attention λ=1 + penalty γ=50",
     {**PAPER_APRON, "lambda_tag_attention": 1.0, "edit_penalty": 50.0}),
    ("paper-tagatt1-pen100", "paper H=16, λ2=0.005 + tag attention λ=1 + penalty γ=100",
     {**PAPER_APRON, "lambda_tag_attention": 1.0, "edit_penalty": 100.0}),
    ("paper-tagatt5-pen50", "paper H=16, λ2=0.005 + tag attention λ=5 + penalty γ=50",
     {**PAPER_APRON, "lambda_tag_attention": 5.0, "edit_penalty": 50.0}),
    ("h32-tagatt1-pen50", "H=32, λ2=0.005 + tag attention λ=1 + penalty γ=50",
     {"n_heads": 32, "lambda_ctrl": 0.005, "lambda_tag_attention": 1.0, "edit_penalty": 50.0}),
    ("paper-groups4-tagatt1-pen50", "paper H=16, λ2=0.005 + heads per tag group (G=4) + tag attention λ=1 + γ=50",
     {**PAPER_APRON, "tag_groups": 4, "lambda_tag_attention": 1.0, "edit_penalty": 50.0}),
    ("paper-groups8-tagatt1-pen50", "paper H=16, λ2=0.005 + heads per tag group (G=8) + tag attention λ=1 + γ=50",
     {**PAPER_APRON, "tag_groups": 8, "lambda_tag_attention": 1.0, "edit_penalty": 50.0}),
    # third round (2026-11-23, session 3): collab-256 made H = 16 controllable (each head reads 16
    # dimensions, not 4) but cost accuracy; let every head read all of the rank-64 SVD instead, and
    # check which of H and λ2 buys the paper settings' accuracy
    ("paper-full", "paper H=16, λ2=0.005, every head reads all features", {**PAPER_APRON, "head_features": "full"}),
    ("paper-full-tagatt1-pen50", "paper H=16, λ2=0.005, heads read all features + tag attention λ=1 + γ=50",
     {**PAPER_APRON, **PRESETS["controllable"]}),  # the preset is this row's settings (chosen here)
    ("h16-ctrl10-tagatt1-pen50", "H=16, λ2=10 + tag attention λ=1 + penalty γ=50",
     {"n_heads": 16, "lambda_ctrl": 10.0, "lambda_tag_attention": 1.0, "edit_penalty": 50.0}),
    ("h8-tagatt1-pen50", "H=8, λ2=0.005 + tag attention λ=1 + penalty γ=50",
     {"n_heads": 8, "lambda_ctrl": 0.005, "lambda_tag_attention": 1.0, "edit_penalty": 50.0}),
    ("paper-full-tagatt1-pen20", "paper H=16, λ2=0.005, heads read all features + tag attention λ=1 + γ=20",
     {**PAPER_APRON, "head_features": "full", "lambda_tag_attention": 1.0, "edit_penalty": 20.0}),
    ("paper-full-tagatt5-pen50", "paper H=16, λ2=0.005, heads read all features + tag attention λ=5 + γ=50",
     {**PAPER_APRON, "head_features": "full", "lambda_tag_attention": 5.0, "edit_penalty": 50.0}),
)  # fmt: skip
# Feature sets of the sweep, with the options each is swept over (None: all). collab-256: a rank-256
# SVD, so that each of H = 16 heads reads 16 feature dimensions instead of 64 / 16 = 4.
SWEEP_FEATURES: dict[str, tuple[str, ...] | None] = {
    "collab": None,
    "text-stripped": None,
    "collab-256": ("tuned", "paper", "paper-tagatt1-pen50", "paper-tagatt1-pen100"),
}
SWEEP: tuple[Variant, ...] = tuple(
    Variant(f"{features}:{key}", label, options, features)
    for features, keys in SWEEP_FEATURES.items()
    for key, label, options in _SWEEP_OPTIONS
    if keys is None or key in keys
)


# ----------------------------------------------------------------------------- tune (issue 21)
# Every model gets a validation sweep on both datasets; `training.results.selection` picks each
# one's configuration on the validation users, and the `final` part trains that one on 3 seeds and
# scores the test users. Options change the dataset's RUNS entry (batch size, caps, patience stay).


def _macrid_options() -> tuple[Variant, ...]:
    # d = 100 is Ma et al.'s; d = 50 was this project's earlier choice on lastfm-2k (K = 80 concepts)
    return (
        Variant("d100", "d = 100 (Ma et al.)", {"embedding_dim": 100}),
        Variant("d50", "d = 50", {"embedding_dim": 50}),
        Variant("d100-lr5e-4", "d = 100, lr 5e-4", {"embedding_dim": 100}, lr=5e-4),
        Variant("d100-beta0.1", "d = 100, β cap 0.1", {"embedding_dim": 100, "beta": 0.1}),
    )


def baseline_options(model: str, base: Run) -> tuple[Variant, ...]:
    """The validation sweep of a baseline on a dataset whose run of it is `base`."""
    # Liang et al.'s Mult-DAE: lam = 0.01 / batch_size in their notebook (the loss is a batch mean)
    liang_l2 = 0.01 / base.batch_size
    options = {
        "multidae": (
            Variant("default", "λ = 0.01 (unscaled)"),
            Variant("l2-liang", f"λ = 0.01 / batch = {liang_l2:.3g} (Liang et al.)", {"l2": liang_l2}),
            Variant("l2-liang-lr5e-4", "Liang λ, lr 5e-4", {"l2": liang_l2}, lr=5e-4),
            Variant("l2-liang-drop0.2", "Liang λ, dropout 0.2", {"l2": liang_l2, "dropout": 0.2}),
        ),
        "multivae": (
            Variant("default", "β cap 0.2, dropout 0.5"),
            Variant("beta0.1", "β cap 0.1", {"beta": 0.1}),
            Variant("beta0.4", "β cap 0.4", {"beta": 0.4}),
            Variant("drop0.2", "dropout 0.2", {"dropout": 0.2}),
            Variant("lr5e-4", "lr 5e-4", lr=5e-4),
        ),
        "recvae": (
            Variant("default", "γ = 0.005, dropout 0.5"),
            Variant("lr1e-3", "lr 1e-3", lr=1e-3),
            Variant("drop0.3", "dropout 0.3", {"dropout": 0.3}),
            Variant("gamma0.01", "γ = 0.01 (β' = γ·|x_u|)", {"gamma": 0.01}),
        ),
        "macridvae": _macrid_options(),
        "sem-macridvae": _macrid_options(),
        "sem-macridvae-tags": _macrid_options(),
    }
    return options[model]


# APRON's goal options: tag-free features, the tag labels of 20 % of the items hidden from training,
# and the served edit penalty γ = 50 (the selection reads the γ = 0 figure, so γ does not choose).
GOAL_HIDDEN = {"hidden_label_share": DEFAULT_HIDDEN_SHARE}
APRON_OPTIONS: tuple[Variant, ...] = (
    Variant("collab-paper-full-tagatt1", "collab, H = 16, λ2 = 0.005, heads read all features, tag attention λ = 1",
           {**PAPER_APRON, **PRESETS["controllable"], **GOAL_HIDDEN}, features="collab"),
    Variant("collab-paper-full-tagatt5", "collab, H = 16, λ2 = 0.005, heads read all features, tag attention λ = 5",
           {**PAPER_APRON, **PRESETS["controllable"], "lambda_tag_attention": 5.0, **GOAL_HIDDEN}, features="collab"),
    Variant("collab-paper-full", "collab, H = 16, λ2 = 0.005, heads read all features, no tag attention",
           {**PAPER_APRON, "head_features": "full", "edit_penalty": 50.0, **GOAL_HIDDEN}, features="collab"),
    Variant("collab-paper-tagatt1", "collab, H = 16, λ2 = 0.005, tag attention λ = 1",
           {**PAPER_APRON, "lambda_tag_attention": 1.0, "edit_penalty": 50.0, **GOAL_HIDDEN}, features="collab"),
    Variant("text-stripped-paper-full-tagatt1", "text-stripped, H = 16, λ2 = 0.005, heads read all features, tag attention λ = 1",
           {**PAPER_APRON, **PRESETS["controllable"], **GOAL_HIDDEN}, features="text-stripped"),
)  # fmt: skip
TUNED_MODELS = (*BASELINES, "apron")


def tune_options(dataset: str, model: str) -> tuple[Variant, ...]:
    return APRON_OPTIONS if model == "apron" else baseline_options(model, RUNS[dataset][model])


def tune_row(model: str, option: str) -> str:
    return f"{model}:{option}"


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


@dataclass(frozen=True)
class Job:
    part: str
    dataset: str
    row: str  # model name (main) or variant key
    label: str
    model: str
    run: Run
    split: str  # "test", or "val" for the sweep
    # final part: the tune row whose seed-0 run trained this very model (same settings, same seed;
    # on one machine training is deterministic), so seed 0 scores that checkpoint instead of training it again
    tuned_row: str | None = None

    def settings(self) -> dict[str, Any]:
        """What a record stores of how it was trained; a record is reused only when they are equal."""
        run = self.run
        hyperparameters = dict(run.hyperparameters)
        if self.model == "apron" and run.tag_min_share != TAG_MIN_SHARE:
            hyperparameters["tag_min_share"] = run.tag_min_share
        settings = {"epochs": run.epochs, "batch_size": run.batch_size, "lr": run.lr, "patience": run.patience,
                    "hyperparameters": hyperparameters, "tag_min_share": run.tag_min_share,
                    "features": self.features}  # fmt: skip
        # Only when not 0, so the records of every configuration the training change left alone stay current.
        if self.model == "apron" and (revision := training_revision(hyperparameters)):
            settings["training_revision"] = revision
        return json.loads(json.dumps(settings, default=_json_default))  # as it reads back from JSON

    @property
    def features(self) -> str | None:
        """The content features the job's model trains on; None for a model that reads none (its
        run's `features` is then unused, so editing it changes nothing)."""
        return self.run.features if getattr(model_class(self.model), "uses_features", False) else None

    def path(self, runs: Path, seed: int) -> Path:
        return runs / self.part / self.dataset / self.row.replace(":", "_") / f"seed{seed}.json"

    def tuned_path(self, runs: Path, seed: int) -> Path | None:
        """The record of the tune run that trained this job's model, if there is one to reuse."""
        if self.tuned_row is None:
            return None
        return replace(self, part="tune", row=self.tuned_row).path(runs, seed)


def recorded_settings(record: dict[str, Any]) -> Any:
    """A record's settings in the current layout, to compare with `Job.settings()`. Settings name the
    job's features since 2026-12-05; a record written before has no "features" key there and reads
    as the features its run used, which every record stores beside its settings (`features`, None
    for a model that reads none, as `Job.features`). So the records made before stay current, and
    a row whose features are edited makes its records stale."""
    settings = record.get("settings")
    if not isinstance(settings, dict) or "features" in settings:
        return settings
    return {**settings, "features": record.get("features")}


def jobs(part: str, datasets: list[str], models: list[str] | None = None) -> list[Job]:
    """The runs of one part, in order (`models`: only these, in main and tune)."""
    out: list[Job] = []
    if part == "main":
        for name in datasets:
            for model in models or MODELS:
                out.append(Job("main", name, model, LABELS[model], model, RUNS[name][model], "test"))
    elif part == "ablations":
        for name in datasets:
            for variant in ABLATIONS[1:]:  # ABLATIONS[0] ("tuned") is the main part's APRON run
                if same_run_as(name, variant) is None:
                    out.append(Job("ablations", name, variant.key, variant.label, "apron", variant.run(RUNS[name]["apron"]), "test"))
    elif part == "sweep":
        base = RUNS[SWEEP_DATASET]["apron"]
        out = [Job("sweep", SWEEP_DATASET, v.key, v.label, "apron", v.run(base), "val") for v in SWEEP]
    elif part == "tune":
        for name in datasets:
            for model in [m for m in TUNED_MODELS if models is None or m in models]:
                for option in tune_options(name, model):
                    out.append(Job("tune", name, tune_row(model, option.key), f"{LABELS[model]}: {option.label}",
                                   model, option.run(RUNS[name][model]), "val"))  # fmt: skip
    else:  # "final" depends on the tune records: training.results.selection.final_jobs
        raise ValueError(f"unknown static part {part!r}; choose one of main, ablations, sweep, tune")
    return out


def same_run_as(dataset: str, variant: Variant) -> Variant | None:
    """The earlier ablation row (the tuned row first) that trains the same APRON on this dataset as
    `variant` does, if any: e.g. the paper's H and λ2 are ml-1m-implicit's tuned settings. Such a
    row is reported as that row, not trained twice."""
    defaults = {f.name: f.default for f in dataclasses.fields(APRONConfig) if f.default is not dataclasses.MISSING}

    def explicit(run: Run) -> Run:  # a hyperparameter set to APRON's default is no change
        return replace(run, hyperparameters={k: v for k, v in run.hyperparameters.items() if defaults.get(k) != v})

    base = RUNS[dataset]["apron"]
    for earlier in ABLATIONS[: ABLATIONS.index(variant)]:
        if explicit(earlier.run(base)) == explicit(variant.run(base)):
            return earlier
    return None


