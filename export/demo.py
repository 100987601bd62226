"""The demo model `apron serve` builds when its repository holds none, so the README's first
command works on a fresh clone: Last.fm 2K when a copy is on the machine (else a synthetic
dataset) -> a few epochs of APRON -> export.

Why it lives in `export/`: it is the whole offline pipeline (prepare, train, export) run end to end,
and `export` is the stage that already depends on training and writes what serving reads (a
model repository). Keeping it out of `serving/` keeps the gateway free of torch: `serving/cli.py`
imports this module only when a demo must actually be built.

It calls the stages' functions directly (no argv), in a temp dir beside the repository, and
exports into the repository last, which the export stages and renames, so an interrupted build
leaves no half-written repository. The processed dataset is kept in `artifacts/data/demo` beside
the repository: its test users are the simulated users of `make loadtest` against the demo.
The python-backend variant is exported: its `model.onnx` files serve the in-process backend, and
the bundled CPU tritonserver can serve the same repository.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.files import replace_dir

log = logging.getLogger("apron.demo")


DEMO_DATASETS = ("auto", "lastfm-2k", "synthetic")


@dataclass(frozen=True)
class DemoSettings:
    """`dataset`: lastfm-2k (real artists and Last.fm tags: "rock", "jazz", "80s", ...), synthetic
    (`tag00`.. and `item 7`: for a machine without the data), or auto (lastfm-2k when a copy is on
    this machine, see `lastfm_copy`; else synthetic, without going to the network)."""

    dataset: str = "auto"
    epochs: int = 8  # synthetic
    lastfm_epochs: int = 3  # ~10 s of CPU each (2,823 artists, 80 prototypes); validation NDCG@100 ~0.4 after 2
    k_max: int = 100
    seed: int = 0
    # APRON's named settings (training/models/apron.py PRESETS): "controllable" is the goal row of
    # RESULTS.md (heads read all features, tag-supervised attention, edit penalty), so the demo's
    # "less jazz" edits visibly remove jazz
    preset: str = "controllable"
    # lastfm-2k: collaborative content features (an SVD of the listening matrix, seconds on a CPU)
    # rather than sentence-encoded descriptions (minutes), so the demo builds fast on 2 cores.
    collab_dim: int = 64
    # synthetic
    n_items: int = 1_000
    n_users: int = 2_000
    n_tags: int = 20

    def __post_init__(self) -> None:
        if self.dataset not in DEMO_DATASETS:
            raise ValueError(f"demo dataset must be one of {', '.join(DEMO_DATASETS)}, got {self.dataset!r}")
        from training.models.apron import PRESETS

        if self.preset not in PRESETS:
            raise ValueError(f"demo preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")


def demo_dataset_dir(repository: str | Path) -> Path:
    return Path(repository).absolute().parent / "artifacts" / "data" / "demo"


def lastfm_copy() -> Path | None:
    """A Last.fm 2K copy already on this machine (../shared/data, or one `apron prepare` downloaded)."""
    from training.data.download import cached_lastfm, has_lastfm_files
    from training.data.sources import default_path

    return next((p for p in (default_path("lastfm-2k"), cached_lastfm()) if has_lastfm_files(p)), None)


def resolve_dataset(choice: str) -> str:
    return ("lastfm-2k" if lastfm_copy() else "synthetic") if choice == "auto" else choice


def prepare_data(out: Path, dataset: str, settings: DemoSettings) -> str:
    """The processed dataset in `out`; returns the content-feature kind to train with."""
    from training.data.sources import prepare
    from training.data.synthetic import SyntheticConfig

    if dataset == "synthetic":
        log.info("demo: generating the synthetic dataset")
        synthetic = SyntheticConfig(
            n_items=settings.n_items, n_users=settings.n_users, n_tags=settings.n_tags, seed=settings.seed
        )
        prepare("synthetic", out, synthetic_config=synthetic)
        return "synthetic"
    from training.data.dataset import write_features
    from training.features.collab import collab_features

    log.info("demo: preparing Last.fm 2K (downloaded first when there is no copy on this machine)")
    processed = prepare("lastfm-2k", out)  # a local copy, else GroupLens' zip (training/data/download.py)
    log.info("demo: collaborative item features (%d dims)", settings.collab_dim)
    features, meta = collab_features(processed.train, settings.collab_dim, settings.seed)
    write_features(out, "collab", features, meta, processed.fingerprint, processed.n_items)
    return "collab"


def train_model(data: Path, checkpoint: Path, features_kind: str, settings: DemoSettings) -> None:
    from training.checkpoint import save_checkpoint
    from training.data.dataset import ProcessedDataset
    from training.models.apron import PRESETS
    from training.train import train

    epochs = settings.epochs if features_kind == "synthetic" else settings.lastfm_epochs
    log.info("demo: training APRON for %d epochs (a line after each)", epochs)
    started = time.perf_counter()

    def on_epoch(record: dict[str, Any], planned: int) -> None:  # each epoch takes seconds: say so
        ndcg = next(value for key, value in record.items() if key.startswith("val_ndcg"))
        log.info(
            "demo: epoch %d/%d done (%.0f s so far, validation NDCG@100 %.3f)",
            record["epoch"], planned, time.perf_counter() - started, ndcg,
        )  # fmt: skip

    model, info = train(
        ProcessedDataset.load(data),
        "apron",
        features_kind=features_kind,
        epochs=epochs,
        seed=settings.seed,
        hyperparameters=PRESETS[settings.preset],
        device="cpu",
        progress=False,
        on_epoch=on_epoch,
    )
    save_checkpoint(checkpoint, model, info)


def build_demo_repository(repository: str | Path, settings: DemoSettings = DemoSettings()) -> Path:
    from export.pipeline import export_checkpoint
    from export.triton_repository import RepositorySettings

    repository = Path(repository).absolute()
    repository.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".apron-demo-", dir=repository.parent))
    try:
        data, checkpoint = workdir / "data", workdir / "apron.pt"
        dataset = resolve_dataset(settings.dataset)
        train_model(data, checkpoint, prepare_data(data, dataset, settings), settings)
        log.info("demo: exporting to %s", repository)
        export_checkpoint(checkpoint, repository, k_max=settings.k_max, settings=RepositorySettings(backend="python"))
        kept = demo_dataset_dir(repository)
        kept.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(data, kept, "dataset.json")  # a stale one would not match the new catalog
        log.info("demo: its dataset (the simulated users of `make loadtest`) is in %s", kept)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return repository
