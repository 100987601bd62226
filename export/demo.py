"""The demo model `apron serve` builds when its repository holds none, so the README's first
command works on a fresh clone: a dataset -> a few epochs of APRON -> export.

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
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("apron.demo")


@dataclass(frozen=True)
class DemoSettings:
    n_items: int = 1_000
    n_users: int = 2_000
    n_tags: int = 20
    epochs: int = 8
    k_max: int = 100
    seed: int = 0


def demo_dataset_dir(repository: str | Path) -> Path:
    return Path(repository).absolute().parent / "artifacts" / "data" / "demo"


def _prepare(out: Path, settings: DemoSettings) -> None:
    from training.data.sources import prepare
    from training.data.synthetic import SyntheticConfig

    log.info("demo: generating the synthetic dataset")
    synthetic = SyntheticConfig(
        n_items=settings.n_items, n_users=settings.n_users, n_tags=settings.n_tags, seed=settings.seed
    )
    prepare("synthetic", out, synthetic_config=synthetic)


def _train(data: Path, checkpoint: Path, settings: DemoSettings) -> None:
    from training.checkpoint import save_checkpoint
    from training.data.dataset import ProcessedDataset
    from training.train import train

    log.info("demo: training APRON for %d epochs", settings.epochs)
    model, info = train(
        ProcessedDataset.load(data),
        "apron",
        features_kind="synthetic",
        epochs=settings.epochs,
        seed=settings.seed,
        device="cpu",
        progress=False,
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
        _prepare(data, settings)
        _train(data, checkpoint, settings)
        log.info("demo: exporting to %s", repository)
        export_checkpoint(checkpoint, repository, k_max=settings.k_max, settings=RepositorySettings(backend="python"))
        dataset = demo_dataset_dir(repository)
        shutil.rmtree(dataset, ignore_errors=True)  # a stale one would not match the new catalog
        dataset.parent.mkdir(parents=True, exist_ok=True)
        data.rename(dataset)
        log.info("demo: its dataset (the simulated users of `make loadtest`) is in %s", dataset)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return repository
