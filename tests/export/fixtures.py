"""Reusable export fixtures: a tiny trained APRON checkpoint, exported repositories, and a running
tritonserver (python-backend variant) on free ports.

Other stages import them into their conftest.py:

    from tests.export.fixtures import (  # noqa: F401  (pytest finds fixtures by name)
        tiny_checkpoint, python_repository, triton_server,
    )

or call the plain builders (`make_tiny_checkpoint`, `export_tiny_repository`) themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from export.pipeline import ExportResult, export_checkpoint
from export.triton_repository import RepositorySettings
from export.triton_server import TritonServer, run_triton_server
from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.models.apron import APRON

TINY = {"n_items": 150, "n_tags": 6, "feature_dim": 48, "n_heads": 4, "head_dim": 8, "hidden_dims": (32,)}
TINY_K_MAX = 20
# the committed README of the project's model_repository/, which exports and Triton must skip
REPOSITORY_README = Path(__file__).resolve().parents[2] / "model_repository" / "README.md"


def tiny_dataset(seed: int = 0) -> tuple[SimpleNamespace, np.ndarray, np.ndarray]:
    """(dataset-like record, item features (N, D), user histories (U, N)) with tag structure:
    items carry tags, features cluster by their first tag, users like one or two tags."""
    rng = np.random.default_rng(seed)
    n, k, d = TINY["n_items"], TINY["n_tags"], TINY["feature_dim"]
    main_tag = rng.integers(0, k, size=n)
    main_tag[:k] = np.arange(k)  # item k is tag k's prototype (the "most-listened" one here)
    item_tags = np.zeros((n, k), np.float32)
    item_tags[np.arange(n), main_tag] = 1 + rng.integers(0, 5, size=n)
    item_tags[rng.random((n, k)) > 0.9] += 1  # a few secondary tags
    centers = rng.normal(size=(k, d)) * 2
    features = (centers[main_tag] + rng.normal(size=(n, d))).astype(np.float32)
    users = np.zeros((200, n), np.float32)
    for u in range(users.shape[0]):
        liked = rng.choice(k, size=rng.integers(1, 3), replace=False)
        pool = np.flatnonzero(np.isin(main_tag, liked))
        users[u, rng.choice(pool, size=min(len(pool), rng.integers(3, 15)), replace=False)] = 1
    dataset = SimpleNamespace(
        name="tiny-synthetic",
        path="<memory>",
        fingerprint=f"tiny-synthetic-seed{seed}",
        n_items=n,
        n_tags=k,
        item_ids=[f"track-{i:04d}" for i in range(n)],
        item_names=[f"Track {i}" for i in range(n)],
        tag_names=[f"tag{t}" for t in range(k)],
        tag_groups=["genre", "genre", "genre", "mood", "mood", "era"],
        prototype_items=np.arange(k, dtype=np.int64),
        item_tags=sp.csr_matrix(item_tags),
    )
    return dataset, features, users


def make_tiny_checkpoint(path: Path, seed: int = 0, steps: int = 30) -> Path:
    """Train a tiny APRON for a few steps and save it with the project's checkpoint format."""
    torch.manual_seed(seed)
    dataset, features, users = tiny_dataset(seed)
    hyper = {key: TINY[key] for key in ("n_heads", "head_dim", "hidden_dims")}
    model = APRON.from_data(dataset, features, **hyper)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.from_numpy(users)
    model.train()
    for step in range(steps):
        batch = x[(step * 50) % len(x) :][:50]
        loss, _ = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    info = Checkpoint(
        model="apron",
        config={},  # save_checkpoint writes the model's own config
        dataset={
            "name": dataset.name,
            "path": dataset.path,
            "fingerprint": dataset.fingerprint,
            "tag_names": dataset.tag_names,
            "tag_groups": dataset.tag_groups,
            "prototype_items": [int(i) for i in dataset.prototype_items],
            "item_ids": dataset.item_ids,
            "item_names": dataset.item_names,
        },
        train={"seed": seed, "steps": steps, "device": "cpu"},
    )
    return save_checkpoint(path, model, info)


def export_tiny_repository(
    checkpoint: Path, repository: Path, backend: str = "python", k_max: int = TINY_K_MAX, int8: bool = False, **kwargs: object
) -> ExportResult:
    """Export with small batching settings fit for tests (max batch 16, 20 ms queue delay so that
    concurrent test requests really meet in one batch)."""
    settings = RepositorySettings(
        backend=backend,
        int8=int8,
        max_batch_size=16,
        preferred_batch_sizes=(4, 8, 16),
        max_queue_delay_us=20_000,
        cpu_threads=1,
    )
    return export_checkpoint(checkpoint, repository, k_max=k_max, settings=settings, **kwargs)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "apron.pt")


@pytest.fixture(scope="session")
def python_repository(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A python-backend repository (version 1) of the tiny checkpoint. Treat as read-only."""
    repository = tmp_path_factory.mktemp("repository") / "model_repository"
    export_tiny_repository(tiny_checkpoint, repository)
    return repository


EDIT_PENALTY = 10.0  # γ of `penalised_checkpoint`


def with_options(checkpoint: Path, path: Path, **options: object) -> Path:
    """The checkpoint's weights under an APRON config with `options` changed, saved to `path`."""
    import dataclasses

    model, info = load_checkpoint(checkpoint)
    changed = APRON(dataclasses.replace(model.config, **options))
    changed.load_state_dict(model.state_dict())
    return save_checkpoint(path, changed.eval(), info)


@pytest.fixture(scope="session")
def penalised_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with APRON's edit penalty on (γ = EDIT_PENALTY)."""
    return with_options(tiny_checkpoint, tmp_path_factory.mktemp("penalised") / "apron.pt", edit_penalty=EDIT_PENALTY)


@pytest.fixture(scope="session")
def penalised_repository(penalised_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A python-backend repository of `penalised_checkpoint` whose K_MAX is the whole catalog, so
    every item's score comes back. Treat as read-only."""
    repository = tmp_path_factory.mktemp("penalised_repository") / "model_repository"
    export_tiny_repository(penalised_checkpoint, repository, k_max=TINY["n_items"])
    return repository


@pytest.fixture(scope="session")
def triton_server(python_repository: Path) -> Iterator[TritonServer]:
    """A real tritonserver serving `python_repository` on free ports, ready."""
    with run_triton_server(python_repository) as server:
        yield server
