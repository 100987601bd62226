"""The trainer: seeding, early stopping, best-state restore, and the `apron train` CLI."""

import contextlib
import json
from pathlib import Path

import pytest
import torch

import cli
from common.errors import UserFacingError
from tests.training.model_helpers import SMALL, synthetic_dataset
from training.checkpoint import load_checkpoint
from training.results.catalogue import CAP_FREE_MODELS
from training.train import train, validation_ndcg


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(dataset, name: str = "multivae", **kwargs):
    options = {"epochs": 3, "batch_size": 64, "lr": 3e-3, "seed": 0, "patience": 5, "progress": False}
    options.update(kwargs)
    return train(dataset, name, features_kind="synthetic", device="cpu", hyperparameters=SMALL[name], **options)


def test_same_seed_same_model_other_seed_differs(dataset) -> None:
    first, first_info = _train(dataset, seed=3)
    again, again_info = _train(dataset, seed=3)
    other, _ = _train(dataset, seed=4)
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert first_info.train["history"] == again_info.train["history"]
    assert any(
        not torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("name", sorted(CAP_FREE_MODELS))
def test_a_cap_free_models_epochs_do_not_depend_on_the_cap(dataset, name: str) -> None:
    """What lets `make results` keep an early-stopped record when a cap is raised (`carries_over`)."""
    _, short = _train(dataset, name, epochs=2, patience=50)
    _, long = _train(dataset, name, epochs=4, patience=50)
    assert short.train["history"] == long.train["history"][:2]


def test_an_annealed_model_trains_differently_under_another_cap(dataset) -> None:
    # MultiVAE's β reaches its cap after 80 % of the planned updates: not in CAP_FREE_MODELS
    assert "multivae" not in CAP_FREE_MODELS
    _, short = _train(dataset, "multivae", epochs=2, patience=50)
    _, long = _train(dataset, "multivae", epochs=4, patience=50)
    assert short.train["history"][1] != long.train["history"][1]


def test_early_stopping_when_validation_stalls(dataset) -> None:
    # lr = 0: the model never changes, so epoch 1 stays the best and training stops after `patience` more
    _, info = _train(dataset, epochs=20, lr=0.0, patience=2)
    assert info.train["best_epoch"] == 1
    assert info.train["epochs_run"] == 3
    assert len(info.train["history"]) == 3


def test_returns_the_best_epoch_state(dataset) -> None:
    model, info = _train(dataset, epochs=6)
    history = info.train["history"]
    best = max(history, key=lambda epoch: epoch["val_ndcg@100"])
    assert info.train["best_epoch"] == best["epoch"]
    assert validation_ndcg(model, dataset, torch.device("cpu")) == pytest.approx(best["val_ndcg@100"])
    assert info.metrics["val_ndcg@100"] == pytest.approx(best["val_ndcg@100"])
    assert info.train["wall_time_s"] > 0 and info.train["device"] == "cpu"
    assert info.config["latent_dim"] == SMALL["multivae"]["latent_dim"]


def test_multivae_beta_is_annealed(dataset) -> None:
    _, info = _train(dataset, epochs=4, anneal_steps=20)
    betas = [epoch["beta"] for epoch in info.train["history"]]
    assert betas == sorted(betas) and betas[0] < betas[-1] <= 0.2 + 1e-9


def test_cli_train_writes_a_loadable_checkpoint(dataset, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model.pt"
    code = cli.main(
        ["train", str(dataset.path), "--model", "apron", "--features", "synthetic", "--epochs", "2",
         "--batch-size", "64", "--seed", "1", "--quiet", "--device", "cpu",
         "--set", "n_heads=4", "--set", "head_dim=8", "--set", "hidden_dims=32,", "--out", str(out),
         "--preset", "controllable", "--set", "edit_penalty=10"]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["checkpoint"] == str(out) and summary["epochs_run"] == 2
    model, info = load_checkpoint(out)
    assert model.config.n_heads == 4 and model.config.hidden_dims == (32,)
    # the preset's settings, except where --set overrides one
    assert (model.config.head_features, model.config.lambda_tag_attention) == ("full", 1.0)
    assert model.config.edit_penalty == 10
    assert info.train["seed"] == 1 and info.train["features_kind"] == "synthetic"


def test_cli_train_rejects_unknown_hyperparameter(dataset, tmp_path: Path, capsys) -> None:
    code = cli.main(
        ["train", str(dataset.path), "--model", "multidae", "--set", "n_heads=4", "--out", str(tmp_path / "m.pt")]
    )
    assert code == 2
    assert "multidae has no such hyperparameter" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(
    ("pair", "said"),
    [
        ("n_heads=abc", "apron's n_heads takes an integer, e.g. --set n_heads=16"),
        ("n_heads=4.5", "apron's n_heads takes an integer"),
        ("hidden_dims=a,b", "apron's hidden_dims takes integers separated by commas"),
        ("drop_renormalise=1", "apron's drop_renormalise takes True or False"),
        ("n_heads=-3", "APRON n_heads, head_dim and hidden_dims must be at least 1"),
        ("hidden_dims=600,0", "APRON n_heads, head_dim and hidden_dims must be at least 1"),
    ],
)
def test_cli_train_names_a_hyperparameter_of_the_wrong_type_or_range(dataset, tmp_path: Path, capsys, pair: str, said: str) -> None:
    code = cli.main(["train", str(dataset.path), "--model", "apron", "--features", "synthetic", "--set", pair, "--out", str(tmp_path / "m.pt")])
    assert code == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_set_takes_each_hyperparameter_as_its_declared_type() -> None:
    from training.cli import parse_overrides

    assert parse_overrides(["hidden_dims=600", "dropout=1", "head_dim=8"], "apron") == {"hidden_dims": (600,), "dropout": 1.0, "head_dim": 8}
    assert parse_overrides(["hidden_dims=()", "recsys_loss=bpr"], "apron") == {"hidden_dims": (), "recsys_loss": "bpr"}
    assert parse_overrides(["mixture_weights=0.1,0.2,0.7"], "recvae") == {"mixture_weights": (0.1, 0.2, 0.7)}
    with pytest.raises(UserFacingError, match="recvae's mixture_weights takes 3 numbers separated by commas"):
        parse_overrides(["mixture_weights=0.1,0.2"], "recvae")


def test_cli_train_refuses_a_preset_for_a_baseline(dataset, tmp_path: Path, capsys) -> None:
    code = cli.main(
        ["train", str(dataset.path), "--model", "multidae", "--preset", "controllable", "--out", str(tmp_path / "m.pt")]
    )
    assert code == 2
    assert "presets are APRON's" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_cli_train_reports_missing_features(dataset, tmp_path: Path, capsys) -> None:
    code = cli.main(["train", str(dataset.path), "--model", "apron", "--features", "audio", "--out", str(tmp_path / "m.pt")])
    assert code == 2
    assert "audio" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "says"), [
    (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--patience", "-1"], "argument --patience: must be at least 0, got -1"),
    (["--epochs", "x"], "argument --epochs: expected an integer, got 'x'"),
    (["--device", "banana"], "unknown device 'banana': auto, cpu, cuda or cuda:<index>"),
])  # fmt: skip
def test_cli_train_refuses_bad_settings_with_a_usage_error(dataset, tmp_path: Path, capsys, flags: list[str], says: str) -> None:
    """Before any training: --epochs 0 wrote an untrained checkpoint and exited 0; --batch-size 0
    and an unknown device ended in a traceback."""
    with contextlib.suppress(SystemExit):  # argparse's own usage errors exit 2
        assert cli.main(["train", str(dataset.path), "--model", "multidae", "--out", str(tmp_path / "m.pt"), *flags]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_cli_train_refuses_an_out_it_cannot_write_before_training(dataset, tmp_path: Path, capsys, monkeypatch) -> None:
    """--out was written only after training, so a directory (or a path that cannot be written)
    threw the whole run away with a traceback."""
    import training.train

    monkeypatch.setattr(training.train, "train", lambda *a, **k: pytest.fail("trained before --out was checked"))
    (tmp_path / "adir").mkdir()
    assert cli.main(["train", str(dataset.path), "--model", "multidae", "--out", str(tmp_path / "adir")]) == 2
    assert "--out" in (err := capsys.readouterr().err) and "is a directory" in err
    (tmp_path / "file").write_text("")
    assert cli.main(["train", str(dataset.path), "--model", "multidae", "--out", str(tmp_path / "file" / "m.pt")]) == 2
    assert "cannot write there" in capsys.readouterr().err
