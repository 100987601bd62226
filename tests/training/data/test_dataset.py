"""The processed dataset directory (DESIGN.md section 1): round trip, fingerprint, atomic writes, CLI errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import cli
from training.data import dataset as dataset_module
from training.data.dataset import SPLITS, ProcessedDataset, build_dataset, write_features
from training.data.raw import DataError
from training.data.splits import FilterConfig, SplitConfig
from training.data.synthetic import SyntheticConfig, generate


def _small() -> tuple[ProcessedDataset, dict[str, np.ndarray]]:
    raw = generate(SyntheticConfig(n_items=120, n_users=300, n_tags=5, feature_dim=8, seed=1)).raw
    return build_dataset(raw, FilterConfig(3, 0), SplitConfig(seed=2))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    dataset, features = _small()
    dataset.save(tmp_path / "d", {"synthetic": (features["synthetic"], {"encoder": "test"})})
    loaded = ProcessedDataset.load(tmp_path / "d", verify=True)
    assert loaded.path == tmp_path / "d"
    for name in (*SPLITS, "item_tags"):
        a, b = getattr(dataset, name), getattr(loaded, name)
        assert isinstance(b, sp.csr_matrix) and b.dtype == np.float32 and (a != b).nnz == 0, name
    assert loaded.fingerprint == dataset.fingerprint and len(loaded.fingerprint) == 64
    assert loaded.item_ids == dataset.item_ids and loaded.texts == dataset.texts
    assert loaded.tag_names == dataset.tag_names and loaded.tag_groups == dataset.tag_groups
    assert loaded.prototype_items.dtype == np.int64
    np.testing.assert_array_equal(loaded.prototype_items, dataset.prototype_items)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(loaded.users[name], dataset.users[name])
    np.testing.assert_array_equal(loaded.load_features("synthetic"), features["synthetic"])
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert meta["tags"][0].keys() == {"name", "group", "prototype_item"}
    assert meta["split"] == {"heldout_fraction": 0.1, "target_fraction": 0.2, "seed": 2}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left over


def test_fingerprint_detects_changed_matrices(tmp_path: Path) -> None:
    dataset, _ = _small()
    dataset.save(tmp_path / "d")
    train = dataset.train.tolil()
    train[0, 0] = 1 - train[0, 0]
    sp.save_npz(tmp_path / "d" / "train.npz", train.tocsr())
    ProcessedDataset.load(tmp_path / "d")  # without verify: trusts dataset.json
    with pytest.raises(DataError, match="do not match dataset.json's fingerprint"):
        ProcessedDataset.load(tmp_path / "d", verify=True)


def test_a_failed_save_leaves_the_previous_dataset_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, _ = _small()
    dataset.save(tmp_path / "d")
    before = {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()}

    calls = []

    def failing_save_npz(path: Path, matrix: sp.spmatrix) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        sp.save_npz(path, matrix)

    monkeypatch.setattr(dataset_module.sp, "save_npz", failing_save_npz)
    other, _ = build_dataset(
        generate(SyntheticConfig(n_items=60, n_users=200, n_tags=4)).raw, FilterConfig(3, 0), SplitConfig()
    )
    with pytest.raises(OSError, match="disk full"):
        other.save(tmp_path / "d")
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_features_are_checked_and_written_atomically(tmp_path: Path) -> None:
    dataset, _ = _small()
    dataset.save(tmp_path / "d")
    with pytest.raises(DataError, match=r"features/text\.npy not found: run `apron features"):
        dataset.load_features("text")
    with pytest.raises(ValueError, match=r"must be \[n_items=\d+, D\]"):
        write_features(tmp_path / "d", "text", np.zeros((3, 4), dtype=np.float32), {})
    bad = np.zeros((dataset.n_items, 4), dtype=np.float32)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_features(tmp_path / "d", "text", bad, {})
    with pytest.raises(ValueError, match="feature kind"):
        write_features(tmp_path / "d", "../x", bad, {})
    assert not (tmp_path / "d" / "features").exists() or not list((tmp_path / "d" / "features").iterdir())

    write_features(
        tmp_path / "d", "text", np.ones((dataset.n_items, 4), dtype=np.float32), {"encoder": "ones"}
    )
    assert sorted(p.name for p in (tmp_path / "d" / "features").iterdir()) == ["text.json", "text.npy"]
    assert dataset.load_features("text").shape == (dataset.n_items, 4)
    # features of another preparation of the dataset are refused
    meta_file = tmp_path / "d" / "features" / "text.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "dataset_fingerprint": "0" * 64}))
    with pytest.raises(DataError, match="another preparation"):
        dataset.load_features("text")


def test_load_of_a_directory_that_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a processed dataset .no dataset.json.: run `apron prepare`"):
        ProcessedDataset.load(tmp_path)


def test_cli_errors_exit_2_with_the_message_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert (
        cli.main(
            ["prepare", "--dataset", "lastfm-2k", "--path", str(tmp_path / "nowhere"), "--out", str(out)]
        )
        == 2
    )
    assert "nowhere is not a directory" in capsys.readouterr().err
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "ratings.dat").write_text("1::1::5\n")
    (tmp_path / "ml" / "movies.dat").write_text("1::A (1990)::Drama\n")
    assert (
        cli.main(["prepare", "--dataset", "movielens", "--path", str(tmp_path / "ml"), "--out", str(out)])
        == 2
    )
    assert "ratings.dat line 1: expected 4 '::'-separated fields, got 3" in capsys.readouterr().err
    assert cli.main(["features", str(tmp_path / "ml"), "--kind", "collab"]) == 2
    assert "not a processed dataset" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml"]
