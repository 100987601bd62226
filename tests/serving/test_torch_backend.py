"""The torch backend (`--backend torch --device cpu`) against in-process ONNX Runtime on the same
exported repository: the same ids, scores within fp32 rounding. Through the gateway it is covered by
test_gateway.py's backend parametrisation. Its CUDA path (fp16, CUDA graphs, pinned buffers) needs a
GPU, which CI lacks: it is run by benchmarks/gpu_scorer.py on a GPU machine, not here."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from export import contract
from export.onnx_export import history_multi_hot, random_histories, session
from serving.backends.torch import TorchModel, batch_buckets, weights_path
from tests.edit_penalty import edited_batches, reference_scores
from tests.export.fixtures import TINY, TINY_K_MAX
from training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def torch_model(python_repository: Path) -> TorchModel:
    model = TorchModel.load(python_repository, 1, "cpu", max_batch_size=8)
    model.capture()
    return model


def ort(repository: Path, name: str):
    return session((repository / name / "1" / contract.ONNX_FILENAME).read_bytes())


def test_buckets_cover_every_batch_size() -> None:
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_scorer_matches_onnxruntime(torch_model: TorchModel, python_repository: Path, batch: int) -> None:
    """Batches that fill a bucket exactly and one padded to its bucket (3 -> 4); exclusion lists of
    different lengths with padding, unknown ids and repeats."""
    rng = np.random.default_rng(batch)
    histories = random_histories(TINY["n_items"], batch, 30, rng)
    excludes = [row[row >= 0] for row in histories]
    excludes[-1] = np.concatenate([excludes[-1], [-1, TINY["n_items"] + 5, excludes[-1][0] if len(excludes[-1]) else 0]])
    weights = (rng.dirichlet(np.ones(TINY["n_tags"]), size=(batch, TINY["n_heads"])) * 7).astype(np.float32)
    weights[0] = 0.0  # an empty profile scores without NaN
    ids, scores = torch_model.top_k(weights, excludes)
    padded = np.full((batch, max(len(e) for e in excludes)), contract.PAD_ID, np.int64)
    for row, exclude in enumerate(excludes):
        padded[row, : len(exclude)] = exclude
    expected_ids, expected_scores = ort(python_repository, contract.SCORER_MODEL).run(
        None, {contract.PROFILE_WEIGHTS: weights, contract.EXCLUDE_IDS: padded}
    )
    assert ids.shape == scores.shape == (batch, TINY_K_MAX)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    for row, exclude in enumerate(excludes):
        assert not set(ids[row].tolist()) & set(exclude.tolist())


def test_profile_matches_onnxruntime(torch_model: TorchModel, python_repository: Path) -> None:
    rows = [np.array([], np.int64), np.array([5, 9, 5, -1, 400]), np.array([9]), np.arange(40)]
    weights, lengths = torch_model.profiles(rows)
    ids, ends = contract.ragged_batch(rows)
    expected = ort(python_repository, contract.PROFILE_MODEL).run(
        None, {contract.HISTORY_IDS: ids, contract.HISTORY_ENDS: ends}
    )
    np.testing.assert_allclose(weights, expected[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(lengths, expected[1][:, 0])
    assert lengths.tolist() == [0, 2, 1, 40] and weights[1].sum() > 0


def test_missing_weights_name_the_fix(python_repository: Path, tmp_path: Path) -> None:
    copy = tmp_path / "repository"
    shutil.copytree(python_repository, copy)
    weights_path(copy, contract.SCORER_MODEL, 1).unlink()
    with pytest.raises(FileNotFoundError, match="export the checkpoint again"):
        TorchModel.load(copy, 1, "cpu")


def test_edit_penalty_matches_the_whole_table_formula(penalised_checkpoint: Path, penalised_repository: Path) -> None:
    """The bucket step (what a CUDA graph captures) scores without the edit penalty; the rows with
    a removed prototype get it afterwards. Every edit case scores like the einsum reference over the
    whole (N, H, K) table and like ONNX Runtime, in a batch padded to its bucket (5 -> 8) and with
    the history excluded."""
    model, _ = load_checkpoint(penalised_checkpoint)
    assert model.config.edit_penalty > 0
    torch_model = TorchModel.load(penalised_repository, 1, "cpu", max_batch_size=8)
    torch_model.capture()
    n_items = TINY["n_items"]
    histories = random_histories(n_items, 6, 30, np.random.default_rng(11))[1:]  # 5 non-empty rows
    excludes = [row[row >= 0] for row in histories]
    with torch.no_grad():
        weights = model.profile_weights(history_multi_hot(torch.from_numpy(histories), n_items))
    excluded = history_multi_hot(torch.from_numpy(histories), n_items) > 0
    for case, batch in edited_batches(weights).items():
        _, scores = torch_model.top_k(batch.numpy(), excludes)
        expected = reference_scores(model, batch, excluded).numpy()
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-4, err_msg=case)
        _, onnx_scores = ort(penalised_repository, contract.SCORER_MODEL).run(
            None, {contract.PROFILE_WEIGHTS: batch.numpy(), contract.EXCLUDE_IDS: histories}
        )
        np.testing.assert_allclose(scores, onnx_scores, rtol=1e-5, atol=1e-5, err_msg=case)
