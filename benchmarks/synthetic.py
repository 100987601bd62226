"""Synthetic APRON models of any catalog size: random weights and features, real shapes.

Speed depends on shapes only (N items, K prototypes, H heads, D features, f's widths), so a
random model of the served shape measures what a trained one would. The defaults are the
project's: 80 tags (Last.fm's 80 most used, the paper's choice) and 384-d MiniLM text features.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from training.checkpoint import Checkpoint, dataset_summary, save_checkpoint
from training.models.apron import APRON

N_TAGS = 80
FEATURE_DIM = 384


def synthetic_dataset(n_items: int, n_tags: int = N_TAGS, seed: int = 0) -> SimpleNamespace:
    """The attributes `APRON.from_data` and `dataset_summary` read, with random values."""
    rng = np.random.default_rng(seed)
    tags = sp.random(n_items, n_tags, density=min(1.0, 3.0 / n_tags), format="csr", random_state=seed, dtype=np.float32)
    return SimpleNamespace(
        name=f"synthetic-{n_items}",
        path=Path(f"synthetic-{n_items}"),
        fingerprint=f"synthetic-{n_items}-seed{seed}",
        n_items=n_items,
        n_tags=n_tags,
        item_ids=[f"item{i}" for i in range(n_items)],
        item_names=[f"Item {i}" for i in range(n_items)],
        tag_names=[f"tag{k}" for k in range(n_tags)],
        tag_groups=["genre"] * n_tags,
        prototype_items=rng.choice(n_items, size=n_tags, replace=False).astype(np.int64),
        item_tags=tags,
    )


def synthetic_apron(
    n_items: int, n_tags: int = N_TAGS, feature_dim: int = FEATURE_DIM, seed: int = 0, **hyperparameters: Any
) -> APRON:
    """`hyperparameters`: APRON config fields (a preset of training/models/apron.py PRESETS, say)."""
    torch.manual_seed(seed)
    dataset = synthetic_dataset(n_items, n_tags, seed)
    features = np.random.default_rng(seed).normal(size=(n_items, feature_dim)).astype(np.float32)
    return APRON.from_data(dataset, features, **hyperparameters).eval()


def synthetic_checkpoint(path: Path, n_items: int, seed: int = 0) -> Path:
    """A loadable `apron-checkpoint/1` file of a random model (for export -> gateway benchmarks)."""
    dataset = synthetic_dataset(n_items, seed=seed)
    model = synthetic_apron(n_items, seed=seed)
    info = Checkpoint(model=APRON.name, config={}, dataset=dataset_summary(dataset), train={"seed": seed, "synthetic": True})
    return save_checkpoint(path, model, info)
