"""Evaluation: controllability on planted tags, the `apron evaluate` CLI, and dataset checks."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import cli
from tests.training.model_helpers import SMALL, synthetic_dataset
from training.checkpoint import save_checkpoint
from training.evaluate import evaluate_model
from training.train import train

KEYS = ("recall@20", "recall@50", "ndcg@100", "delta@20", "pct_delta@20")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(scope="module")
def checkpoints(dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out, directory = {}, tmp_path_factory.mktemp("checkpoints")
    for name, epochs in (("apron", 15), ("multivae", 10)):
        model, info = train(
            dataset, name, features_kind="synthetic", epochs=epochs, batch_size=64, lr=3e-3, seed=0,
            patience=epochs, device="cpu", hyperparameters=SMALL[name], progress=False,
        )  # fmt: skip
        out[name] = (model, save_checkpoint(directory / f"{name}.pt", model, info))
    torch.set_num_threads(threads)
    return out


def test_apron_is_controllable_on_planted_tags_and_multivae_is_not(checkpoints, dataset) -> None:
    apron = evaluate_model(checkpoints["apron"][0], dataset)
    multivae = evaluate_model(checkpoints["multivae"][0], dataset)
    # dropping a tag's prototype clearly lowers that tag's share of the top 20
    assert apron["delta@20"] > 0.05 and apron["delta@20"] > 4 * apron["delta@20_stderr"]
    assert apron["pct_delta@20"] > 15
    assert len(apron["per_tag"]) == dataset.n_tags
    assert sum(tag["delta"] > 0 for tag in apron["per_tag"]) >= dataset.n_tags - 1
    assert multivae["delta@20"] == "N/A" and multivae["pct_delta@20"] == "N/A" and "per_tag" not in multivae
    assert multivae["delta@20_intrinsic"] == "N/A" and multivae["pct_delta@20_intrinsic"] == "N/A"  # the report's names
    assert not [key for key in multivae if key.endswith("_intrinsic@20")]
    # both rank far better than chance on the planted structure
    for result in (apron, multivae):
        assert result["ndcg@100"] > 0.35 and 0 < result["ndcg@100_stderr"] < 0.1
        assert 0 <= result["recall@20"] <= result["recall@50"] <= 1


def test_evaluate_on_validation_split(checkpoints, dataset) -> None:
    result = evaluate_model(checkpoints["multivae"][0], dataset, split="val")
    assert result["split"] == "val" and result["n_users"] == dataset.val_te.shape[0]
    with pytest.raises(ValueError, match="split"):
        evaluate_model(checkpoints["multivae"][0], dataset, split="train")


def test_cli_evaluate_prints_json_and_writes_figure(checkpoints, tmp_path: Path, capsys) -> None:
    plot = tmp_path / "fig3.png"
    assert cli.main(["evaluate", str(checkpoints["apron"][1]), "--plot", str(plot)]) == 0  # dataset from checkpoint
    result = json.loads(capsys.readouterr().out)
    assert all(key in result for key in KEYS)
    assert result["model"] == "apron" and result["dataset"] == "synthetic"
    assert isinstance(result["delta@20"], float) and result["delta@20"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_evaluate_non_controllable_prints_na(checkpoints, capsys) -> None:
    assert cli.main(["evaluate", str(checkpoints["multivae"][1])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["delta@20"] == "N/A" and result["pct_delta@20"] == "N/A"
    assert np.isfinite(result["ndcg@100"])


def test_cli_evaluate_refuses_another_dataset(checkpoints, tmp_path: Path, capsys) -> None:
    other = synthetic_dataset(tmp_path / "other", seed=1)
    code = cli.main(["evaluate", str(checkpoints["multivae"][1]), "--dataset", str(other.path)])
    assert code == 2
    assert "fingerprint" in capsys.readouterr().err


def test_cli_evaluate_names_a_missing_dataset_as_the_one_given(checkpoints, tmp_path: Path, capsys) -> None:
    code = cli.main(["evaluate", str(checkpoints["multivae"][1]), "--dataset", str(tmp_path / "nowhere")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"no processed dataset at {tmp_path / 'nowhere'} (--dataset)" in err and "recorded path" not in err


def test_cli_evaluate_missing_checkpoint(tmp_path: Path, capsys) -> None:
    assert cli.main(["evaluate", str(tmp_path / "nope.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
