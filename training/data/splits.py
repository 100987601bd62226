"""Filtering and the strong-generalisation split of Liang et al. 2018 (Mult-VAE), as in the APRON paper.

1. Keep users with >= `min_user_interactions` items and items with >= `min_item_users` users,
   repeating both filters until neither removes anything (one pass, as in Liang's notebook, can
   leave users under the threshold once items are gone).
2. Shuffle users with `seed`; `heldout_fraction` of them become test users, as many validation
   users, the rest train users (disjoint users: strong generalisation).
3. Items are the items train users interacted with; val/test interactions on other items are
   dropped (Liang: the model cannot score an item it has never seen).
4. Each val/test user's interactions are split at random into fold-in (`*_tr`, ~80 %) and held-out
   targets (`*_te`, ~20 %, at least one, never all).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from training.data.raw import DataError


@dataclass(frozen=True)
class FilterConfig:
    """Defaults are the paper's MSD thresholds (Liang et al. 2018): users >= 20 songs, songs >= 200 users.

    Smaller datasets override them (see each loader's DEFAULT_FILTERS). A threshold below 1 acts as
    1: a user or item without interactions is always removed."""

    min_user_interactions: int = 20
    min_item_users: int = 200


@dataclass(frozen=True)
class SplitConfig:
    # of the users, for validation and again for test (Liang et al.: 10k of ML-20M's 136k users each)
    heldout_fraction: float = 0.1
    target_fraction: float = 0.2  # of each val/test user's interactions held out as targets
    seed: int = 98765  # Liang et al.'s notebook seed

    def __post_init__(self) -> None:
        if not 0 < self.heldout_fraction < 0.5:
            raise ValueError(f"heldout_fraction must be in (0, 0.5), got {self.heldout_fraction}")
        if not 0 < self.target_fraction < 1:
            raise ValueError(f"target_fraction must be in (0, 1), got {self.target_fraction}")


@dataclass
class Split:
    items: np.ndarray  # (n_items,) int64: columns of the filtered matrix that train users touched
    train: sp.csr_matrix  # (n_train_users, n_items) binary
    val_tr: sp.csr_matrix
    val_te: sp.csr_matrix
    test_tr: sp.csr_matrix
    test_te: sp.csr_matrix
    train_plays: sp.csr_matrix  # the train matrix with play counts instead of ones (for prototypes)
    users: dict[str, np.ndarray]  # "train", "val", "test": the matrix rows of each split, in row order
    counts: dict[str, int]


def interaction_matrix(
    users: np.ndarray, items: np.ndarray, play_counts: np.ndarray, n_items: int
) -> tuple[sp.csr_matrix, np.ndarray]:
    """CSR [n_users, n_items] of play counts with one row per distinct user (repeated pairs summed),
    and the user of each row."""
    user_ids, rows = np.unique(users, return_inverse=True)
    matrix = sp.csr_matrix((play_counts.astype(np.float32), (rows, items)), shape=(len(user_ids), n_items))
    matrix.sum_duplicates()
    return matrix, user_ids


def filter_interactions(matrix: sp.csr_matrix, config: FilterConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of `matrix` that survive the iterated user/item thresholds."""
    min_users, min_items = max(1, config.min_item_users), max(1, config.min_user_interactions)
    rows, cols = np.arange(matrix.shape[0]), np.arange(matrix.shape[1])
    current = matrix
    while True:
        keep_cols = current.getnnz(axis=0) >= min_users
        current, cols = current[:, keep_cols], cols[keep_cols]
        keep_rows = current.getnnz(axis=1) >= min_items
        current, rows = current[keep_rows], rows[keep_rows]
        if keep_cols.all() and keep_rows.all():
            return rows, cols


def split_users(matrix: sp.csr_matrix, config: SplitConfig) -> Split:
    """Split the (filtered) play-count matrix into train / val / test users and fold-in / targets."""
    n_users = matrix.shape[0]
    n_heldout = int(round(config.heldout_fraction * n_users))
    if n_heldout < 1 or n_users - 2 * n_heldout < 1:
        raise DataError(
            f"{n_users} users after filtering: too few for a train/validation/test split "
            f"with heldout_fraction={config.heldout_fraction}"
        )
    user_rng, target_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(2))
    permutation = user_rng.permutation(n_users)
    train_users = np.sort(permutation[: n_users - 2 * n_heldout])
    val_users = np.sort(permutation[n_users - 2 * n_heldout : n_users - n_heldout])
    test_users = np.sort(permutation[n_users - n_heldout :])

    train_plays = matrix[train_users]
    items = np.flatnonzero(train_plays.getnnz(axis=0) > 0)
    train_plays = train_plays[:, items]
    val_tr, val_te, val_kept, val_counts = _fold_in_split(
        matrix[val_users], items, config.target_fraction, target_rng
    )
    test_tr, test_te, test_kept, test_counts = _fold_in_split(
        matrix[test_users], items, config.target_fraction, target_rng
    )
    users = {"train": train_users, "val": val_users[val_kept], "test": test_users[test_kept]}
    counts = {
        "users": n_users,
        "items": len(items),
        "train_users": len(train_users),
        "train_interactions": train_plays.nnz,
        **{f"val_{k}": v for k, v in val_counts.items()},
        **{f"test_{k}": v for k, v in test_counts.items()},
    }
    return Split(items, _binary(train_plays), val_tr, val_te, test_tr, test_te, train_plays, users, counts)


def _fold_in_split(
    plays: sp.csr_matrix, items: np.ndarray, target_fraction: float, rng: np.random.Generator
) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray, dict[str, int]]:
    """Fold-in / held-out halves of held-out users' rows, restricted to train items, and which rows
    were kept.

    A user keeps floor(target_fraction * n) targets, at least 1 and at most n - 1; users left with
    fewer than 2 interactions on train items cannot be both folded in and scored, so they are dropped.
    """
    seen = plays[:, items]
    counts = {"unseen_item_interactions_dropped": plays.nnz - seen.nnz}
    keep = seen.getnnz(axis=1) >= 2
    counts["users_dropped"] = int((~keep).sum())
    seen = _binary(seen[keep])
    seen.sort_indices()
    n_per_user = np.diff(seen.indptr)  # (U,)
    n_targets = np.clip(np.floor(target_fraction * n_per_user), 1, n_per_user - 1)
    row = np.repeat(np.arange(seen.shape[0]), n_per_user)  # (nnz,)
    order = np.lexsort((rng.random(seen.nnz), row))  # each user's entries in random order
    rank = np.empty(seen.nnz, dtype=np.int64)
    rank[order] = np.arange(seen.nnz) - seen.indptr[row[order]]
    is_target = rank < n_targets[row]
    fold_in, targets = (
        sp.csr_matrix((seen.data[mask], (row[mask], seen.indices[mask])), shape=seen.shape)
        for mask in (~is_target, is_target)
    )
    counts |= {"users": seen.shape[0], "tr_interactions": fold_in.nnz, "te_interactions": targets.nnz}
    return fold_in, targets, keep, counts


def _binary(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Ones where `matrix` has an entry (a play count of any size is one interaction), float32."""
    result = matrix.astype(np.float32, copy=True)
    result.data[:] = 1.0
    return result
