"""The demo model `apron serve` builds when its repository holds none, so the README's first
command works on a fresh clone: synthetic data -> a few epochs of APRON -> export.

It runs the project's own commands in-process (`apron prepare`, `apron train`, then the export
function), in a temp dir beside the repository, and exports into the repository last, which
`export` itself stages and renames, so an interrupted build leaves no half-written repository.
The synthetic dataset is kept in `artifacts/data/demo` beside the repository: its test users are
the simulated users of `make loadtest` against the demo.
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


def _run(argv: list[str]) -> None:
    import cli

    code = cli.main(argv)
    if code:
        raise RuntimeError(f"demo build: `apron {' '.join(argv)}` exited with {code}")


def demo_dataset_dir(repository: str | Path) -> Path:
    return Path(repository).absolute().parent / "artifacts" / "data" / "demo"


def build_demo_repository(repository: str | Path, settings: DemoSettings = DemoSettings()) -> Path:
    from export.cli import export_checkpoint
    from export.triton_repository import RepositorySettings

    repository = Path(repository).absolute()
    repository.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".apron-demo-", dir=repository.parent))
    try:
        data, checkpoint = workdir / "data", workdir / "apron.pt"
        log.info("demo: generating the synthetic dataset")
        _run([
            "prepare", "--dataset", "synthetic", "--out", str(data),
            "--n-items", str(settings.n_items), "--n-users", str(settings.n_users),
            "--n-tags", str(settings.n_tags), "--generator-seed", str(settings.seed),
        ])  # fmt: skip
        log.info("demo: training APRON for %d epochs", settings.epochs)
        _run([
            "train", str(data), "--model", "apron", "--features", "synthetic", "--out", str(checkpoint),
            "--epochs", str(settings.epochs), "--seed", str(settings.seed), "--device", "cpu", "--quiet",
        ])  # fmt: skip
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
