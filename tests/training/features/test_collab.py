"""Collaborative features: truncated SVD of the training users only."""

import argparse
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import cli
from training.data.dataset import ProcessedDataset
from training.data.raw import DataError
from training.features.collab import collab_features
from training.features.kinds import (
    collab_kind,
    feature_kind,
    features_command,
    is_tag_free,
    parse_collab_kind,
)


def test_features_are_the_item_side_of_the_best_rank_k_factorisation() -> None:
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((60, 25)) < 0.3).astype(np.float32))
    features, meta = collab_features(train, dim=5, seed=0)
    assert features.shape == (25, 5) and features.dtype == np.float32
    _, singular, vt = np.linalg.svd(train.toarray())
    np.testing.assert_allclose(meta["singular_values"], singular[:5], rtol=1e-6)
    # V S V^T is sign-free: compare it with the dense SVD's
    expected = vt[:5].T @ np.diag(singular[:5]) @ vt[:5]
    np.testing.assert_allclose(features @ features.T, expected, atol=1e-4)
    again, _ = collab_features(train, dim=5, seed=0)
    np.testing.assert_array_equal(features, again)
    with pytest.raises(DataError, match=r"collab dim must be in \[1, 24\]"):
        collab_features(train, dim=25)


def test_apron_features_collab_uses_training_users_and_groups_items_by_planted_tag(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    argv = ["prepare", "--dataset", "synthetic", "--out", str(out), "--n-items", "200", "--n-users", "2000"]
    assert cli.main([*argv, "--n-tags", "5", "--generator-seed", "1"]) == 0
    assert cli.main(["features", str(out), "--kind", "collab", "--dim", "8"]) == 0
    dataset = ProcessedDataset.load(out)
    features = dataset.load_features("collab-8")  # a rank other than 64 names its own features
    assert features.shape == (dataset.n_items, 8)
    expected, _ = collab_features(dataset.train, dim=8)  # from the train matrix alone
    np.testing.assert_array_equal(features, expected)

    # items that share a planted tag are more alike than items that share none
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    cosine = unit @ unit.T
    tags = dataset.item_tags.toarray() > 0
    share = (tags.astype(int) @ tags.T.astype(int)) > 0
    off_diagonal = ~np.eye(len(tags), dtype=bool)
    assert cosine[share & off_diagonal].mean() > cosine[~share].mean() + 0.2


def test_collab_kinds_name_their_rank() -> None:
    assert collab_kind() == "collab" and collab_kind(256) == "collab-256"
    assert [parse_collab_kind(k) for k in ("collab", "collab-256", "collab-0", "collab-x", "text")] == [64, 256, None, None, None]


def test_feature_kinds_are_checked_and_their_command_named() -> None:
    assert is_tag_free("collab") and is_tag_free("collab-256") and is_tag_free("text-stripped")
    assert not is_tag_free("text") and not is_tag_free(None)
    assert feature_kind("collab-256") == "collab-256" and feature_kind("text") == "text"
    with pytest.raises(argparse.ArgumentTypeError, match="unknown features 'colab'.*collab-<dim>"):
        feature_kind("colab")
    assert features_command("d", "collab-256") == "apron features d --kind collab --dim 256"
    assert features_command("d", "text-stripped") == "apron features d --kind text --strip-tags"
    assert features_command("d", "collab") == "apron features d --kind collab"


def test_missing_features_name_the_command_that_writes_them(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    argv = ["prepare", "--dataset", "synthetic", "--out", str(out), "--n-items", "60", "--n-users", "300"]
    assert cli.main([*argv, "--n-tags", "3", "--generator-seed", "1"]) == 0
    with pytest.raises(DataError, match=f"run `apron features {out} --kind collab --dim 16` first"):
        ProcessedDataset.load(out).load_features("collab-16")
    train = ["train", str(out), "--model", "apron", "--out", str(tmp_path / "m.pt"), "--features", "colab"]
    with pytest.raises(SystemExit) as usage:  # argparse's usage error, before any data is read
        cli.main(train)
    assert usage.value.code == 2
