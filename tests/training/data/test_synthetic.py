"""The seeded synthetic generator: its planted tags are recoverable from interactions and features."""

from pathlib import Path

import numpy as np
import pytest

import cli
from training.data.dataset import ProcessedDataset
from training.data.synthetic import SyntheticConfig, generate

CONFIG = SyntheticConfig(n_items=400, n_users=1500, n_tags=8, feature_dim=32, noise=0.1, seed=3)


def test_items_and_users_have_one_to_three_distinct_tags_covering_every_tag() -> None:
    data = generate(CONFIG)
    tags_per_item = data.raw.item_tags.getnnz(axis=1)
    assert tags_per_item.min() == 1 and tags_per_item.max() == 3
    assert set(np.bincount(tags_per_item)[1:] > 0) == {True}  # 1, 2 and 3 all occur
    assert (data.raw.item_tags.getnnz(axis=0) > 0).all()
    used = data.user_tags >= 0
    assert used[:, 0].all() and set(used.sum(axis=1).tolist()) == {1, 2, 3}
    for tags, weights in zip(data.user_tags[:50], data.user_tag_weights[:50], strict=True):
        assert len(set(tags[tags >= 0].tolist())) == (tags >= 0).sum()
        np.testing.assert_allclose(weights.sum(), 1.0)


def test_users_interact_with_items_of_their_tags() -> None:
    data = generate(CONFIG)
    item_tags = data.raw.item_tags.toarray() > 0  # (N, K)
    user_has = np.zeros((CONFIG.n_users, CONFIG.n_tags), dtype=bool)
    rows, slots = np.nonzero(data.user_tags >= 0)
    user_has[rows, data.user_tags[rows, slots]] = True
    on_tag = (item_tags[data.raw.items] & user_has[data.raw.users]).any(axis=1)
    # 90 % of draws come from the user's tags; a popularity draw lands on one by chance sometimes
    assert 0.9 <= on_tag.mean() <= 0.97
    assert len(data.raw.users) >= CONFIG.n_users * CONFIG.min_draws


def test_features_carry_the_item_tags() -> None:
    data = generate(CONFIG)
    features = data.raw.features["synthetic"]
    assert features.shape == (400, 32) and features.dtype == np.float32
    scores = features @ data.tag_directions.T  # (N, K)
    item_tags = data.raw.item_tags.toarray() > 0
    best = scores.argmax(axis=1)
    assert item_tags[np.arange(400), best].mean() > 0.95


def test_generation_is_seeded() -> None:
    first, again, other = (
        generate(CONFIG),
        generate(CONFIG),
        generate(SyntheticConfig(**{**vars(CONFIG), "seed": 4})),
    )
    np.testing.assert_array_equal(first.raw.items, again.raw.items)
    np.testing.assert_array_equal(first.raw.features["synthetic"], again.raw.features["synthetic"])
    assert (first.raw.item_tags != again.raw.item_tags).nnz == 0
    assert not np.array_equal(first.raw.features["synthetic"], other.raw.features["synthetic"])


def test_invalid_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="n_tags >= 3"):
        SyntheticConfig(n_tags=2)
    with pytest.raises(ValueError, match="n_items >= n_tags"):
        SyntheticConfig(n_items=5, n_tags=10)


def test_prepare_synthetic_writes_its_features_for_the_kept_items(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    argv = ["prepare", "--dataset", "synthetic", "--out", str(out), "--n-items", "300", "--n-users", "800"]
    assert cli.main([*argv, "--n-tags", "6", "--feature-dim", "16", "--generator-seed", "5"]) == 0
    dataset = ProcessedDataset.load(out, verify=True)
    features = dataset.load_features("synthetic")
    raw = generate(SyntheticConfig(n_items=300, n_users=800, n_tags=6, feature_dim=16, seed=5)).raw
    kept = np.array([int(i) for i in dataset.item_ids])
    np.testing.assert_array_equal(features, raw.features["synthetic"][kept])
    np.testing.assert_array_equal(dataset.item_tags.toarray(), raw.item_tags[kept].toarray())
    assert dataset.n_tags == 6 and dataset.tag_groups[:4] == ["genre", "mood", "era", "instrumentation"]
