"""Collaborative item features: a truncated SVD of the TRAINING users' interaction matrix.

X_train [train users, n_items] ~ U S V^T (rank `dim`); item i's feature is row i of V S^(1/2),
the item side of the best rank-`dim` factorisation. Validation and test users are never seen, so
the features leak nothing about the held-out targets. Signs are fixed (each component's largest
item loading is positive) so the same data and seed give the same features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from training.data.raw import DataError
from training.features.kinds import COLLAB_DEFAULT_DIM


def collab_features(train: sp.csr_matrix, dim: int = COLLAB_DEFAULT_DIM, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """float32 [n_items, dim] item factors of the train matrix, and their metadata."""
    if not 1 <= dim < min(train.shape):
        raise DataError(
            f"collab dim must be in [1, {min(train.shape) - 1}] for a {train.shape} train matrix, got {dim}"
        )
    _, singular, vt = svds(train.astype(np.float64), k=dim, random_state=seed)
    order = np.argsort(-singular)  # svds returns ascending singular values
    singular, vt = singular[order], vt[order]  # (dim,), (dim, n_items)
    largest = np.abs(vt).argmax(axis=1)
    vt *= np.sign(vt[np.arange(dim), largest])[:, None]
    features = (vt.T * np.sqrt(singular)).astype(np.float32)  # (n_items, dim)
    meta = {
        "encoder": "truncated SVD of the train matrix, V S^(1/2)",
        "seed": seed,
        "singular_values": singular.tolist(),
    }
    return features, meta
