"""Small synthetic datasets and model sizes shared by the model/trainer/evaluation tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.data.dataset import ProcessedDataset
from training.data.sources import prepare
from training.data.synthetic import SyntheticConfig

MODEL_NAMES = ("multidae", "multivae", "recvae", "macridvae", "sem-macridvae", "sem-macridvae-tags", "apron")

# Small widths so that every model trains in seconds on 2 CPU cores.
SMALL: dict[str, dict[str, Any]] = {
    "multidae": {"hidden_dims": (64,), "latent_dim": 16},
    "multivae": {"hidden_dims": (64,), "latent_dim": 16},
    "recvae": {"hidden_dim": 64, "latent_dim": 16, "n_layers": 3},
    "macridvae": {"embedding_dim": 16},
    "sem-macridvae": {"embedding_dim": 16},
    "sem-macridvae-tags": {"embedding_dim": 16},
    "apron": {"n_heads": 4, "head_dim": 16, "hidden_dims": (64,)},
}


def synthetic_dataset(directory: Path, seed: int = 0, **overrides: Any) -> ProcessedDataset:
    """`apron prepare --dataset synthetic` at test scale (planted tags), loaded back from disk."""
    config = SyntheticConfig(
        **{"n_items": 150, "n_users": 800, "n_tags": 8, "feature_dim": 32, "seed": seed, **overrides}
    )
    prepare("synthetic", directory, synthetic_config=config)
    return ProcessedDataset.load(directory)
