"""Filters and the strong-generalisation split (training/data/splits.py)."""

import numpy as np
import pytest
import scipy.sparse as sp

from training.data.raw import DataError
from training.data.splits import (
    FilterConfig,
    SplitConfig,
    filter_interactions,
    interaction_matrix,
    split_users,
)


def _random_plays(
    n_users: int = 300, n_items: int = 80, density: float = 0.15, seed: int = 0
) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    plays = sp.random(n_users, n_items, density=density, format="csr", random_state=rng, dtype=np.float32)
    plays.data = np.ceil(plays.data * 10)  # play counts 1..10
    return plays


def test_interaction_matrix_sums_repeated_pairs_and_maps_user_ids() -> None:
    users = np.array([30, 10, 30, 30])
    items = np.array([2, 0, 2, 1])
    matrix, user_ids = interaction_matrix(users, items, np.array([1, 5, 2, 7], dtype=np.float32), n_items=3)
    assert user_ids.tolist() == [10, 30]
    assert matrix.toarray().tolist() == [[5, 0, 0], [0, 7, 3]]


def test_filters_are_iterated_until_stable() -> None:
    # Item 2 has 1 user -> removed; user 2 is then left with 1 item -> removed; that leaves item 3
    # with 1 user -> removed, and user 3 with 1 item -> removed. One pass would keep user 3, item 3.
    dense = np.array(
        [
            [1, 1, 0, 0],
            [1, 1, 0, 0],
            [0, 0, 1, 1],
            [1, 0, 0, 1],
        ]
    )
    rows, cols = filter_interactions(
        sp.csr_matrix(dense), FilterConfig(min_user_interactions=2, min_item_users=2)
    )
    assert rows.tolist() == [0, 1]
    assert cols.tolist() == [0, 1]
    kept = dense[np.ix_(rows, cols)]
    assert (kept.sum(axis=1) >= 2).all() and (kept.sum(axis=0) >= 2).all()


def test_zero_thresholds_still_drop_empty_users_and_items() -> None:
    dense = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 1]])
    rows, cols = filter_interactions(sp.csr_matrix(dense), FilterConfig(0, 0))
    assert rows.tolist() == [0, 2] and cols.tolist() == [0, 2]


def test_split_users_are_disjoint_and_fold_in_partitions_each_user() -> None:
    plays = _random_plays()
    split = split_users(plays, SplitConfig(heldout_fraction=0.1, target_fraction=0.2, seed=1))
    train, val, test = (set(split.users[k].tolist()) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(val) == len(test) == 30 and len(train) == 240  # nobody dropped at this density
    assert split.train.shape == (240, len(split.items)) and split.val_tr.shape == (30, len(split.items))
    np.testing.assert_array_equal(
        split.train.toarray(), (plays[split.users["train"]][:, split.items].toarray() > 0)
    )
    np.testing.assert_array_equal(
        split.train_plays.toarray(), plays[split.users["train"]][:, split.items].toarray()
    )

    for name, fold_in, targets in (
        ("val", split.val_tr, split.val_te),
        ("test", split.test_tr, split.test_te),
    ):
        full = (plays[split.users[name]][:, split.items].toarray() > 0).astype(np.float32)
        tr, te = fold_in.toarray(), targets.toarray()
        assert (tr * te).sum() == 0  # disjoint halves
        np.testing.assert_array_equal(tr + te, full)  # that together are the user's whole history
        n = full.sum(axis=1)
        np.testing.assert_array_equal(te.sum(axis=1), np.clip(np.floor(0.2 * n), 1, n - 1))


def test_split_is_reproducible_and_depends_on_the_seed() -> None:
    plays = _random_plays()
    first, again = split_users(plays, SplitConfig(seed=7)), split_users(plays, SplitConfig(seed=7))
    other = split_users(plays, SplitConfig(seed=8))
    for name in ("train", "val_tr", "val_te", "test_tr", "test_te"):
        a, b = getattr(first, name), getattr(again, name)
        assert (a != b).nnz == 0 and a.shape == b.shape
    assert not np.array_equal(first.users["test"], other.users["test"])


def test_heldout_interactions_on_items_no_train_user_has_are_dropped() -> None:
    rng = np.random.default_rng(0)
    dense = (rng.random((50, 12)) < 0.5).astype(np.float32)
    dense[:, 11] = 0
    dense[:, :3] = 1  # everyone has >= 3 items
    config = SplitConfig(heldout_fraction=0.1, seed=3)
    test_rows = split_users(sp.csr_matrix(dense), config).users["test"]
    dense[test_rows, 11] = 1  # item 11: only test users
    split = split_users(sp.csr_matrix(dense), config)
    assert 11 not in split.items.tolist()
    assert split.counts["test_unseen_item_interactions_dropped"] == len(test_rows)
    assert split.test_tr.shape[1] == len(split.items) == 11


def test_heldout_users_with_fewer_than_two_train_items_are_dropped() -> None:
    dense = np.ones((20, 4), dtype=np.float32)
    dense[:, 3] = 0
    config = SplitConfig(heldout_fraction=0.1, seed=0)
    val_rows = split_users(sp.csr_matrix(dense), config).users["val"]
    dense[val_rows[0]] = [0, 0, 1, 0]  # one item only
    split = split_users(sp.csr_matrix(dense), config)
    assert split.counts["val_users_dropped"] == 1
    assert val_rows[0] not in split.users["val"] and split.val_tr.shape[0] == len(val_rows) - 1


def test_too_few_users_for_a_split_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="4 users after filtering: too few"):
        split_users(sp.csr_matrix(np.ones((4, 3))), SplitConfig(heldout_fraction=0.1))
    with pytest.raises(ValueError, match="heldout_fraction"):
        SplitConfig(heldout_fraction=0.5)
