"""Issue 21's evaluation: per-user values, %Δ@20 intrinsic (γ = 0) beside the served figure, and
hidden tag labels (no hidden item's label reaches a loss; %Δ@20 counted on those items)."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import cli
from tests.training.model_helpers import SMALL, synthetic_dataset
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data.hidden_labels import hidden_label_items
from training.evaluate import evaluate_model
from training.train import build_model, train

CONTROLLABLE = {"lambda_tag_attention": 1.0, "edit_penalty": 20.0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(scope="module")
def trained(dataset) -> torch.nn.Module:
    """A small APRON trained with γ = 20 and 20 % of the labels hidden."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, info = train(dataset, "apron", features_kind="synthetic", epochs=8, batch_size=64, lr=3e-3, seed=0,
                        patience=8, device="cpu", progress=False,
                        hyperparameters={**SMALL["apron"], **CONTROLLABLE, "hidden_label_share": 0.2})  # fmt: skip
    torch.set_num_threads(threads)
    model.info = info
    return model


def test_hidden_items_are_a_fixed_seeded_share_and_never_a_prototype() -> None:
    keep = np.array([0, 1, 2])
    hidden = hidden_label_items(100, 0.2, seed=3, keep=keep)
    assert hidden.sum() == 20 and not hidden[keep].any()
    assert np.array_equal(hidden, hidden_label_items(100, 0.2, seed=3, keep=keep))  # the same for every run
    assert not np.array_equal(hidden, hidden_label_items(100, 0.2, seed=4, keep=keep))
    assert not hidden_label_items(100, 0.0, seed=3).any()
    with pytest.raises(ValueError, match="share"):
        hidden_label_items(100, 1.0, seed=3)


def _relabelled(dataset, hidden: np.ndarray):
    """The dataset with every hidden item's tag labels replaced by others (prototypes unchanged)."""
    other = copy.copy(dataset)
    tags = dataset.item_tags.toarray()
    rng = np.random.default_rng(7)
    tags[hidden] = rng.integers(0, 3, size=(int(hidden.sum()), tags.shape[1])) * (rng.random((int(hidden.sum()), tags.shape[1])) < 0.5)
    other.item_tags = sp.csr_matrix(tags.astype(np.float32))
    return other


def test_no_hidden_items_label_reaches_any_loss(dataset) -> None:
    """Changing the hidden items' labels changes nothing the model trains on: the same buffers,
    the same loss (every term) and the same gradients; without hiding, the same change does."""
    options = {**SMALL["apron"], "lambda_tag_attention": 1.0, "tag_groups": 2, "hidden_label_share": 0.2}

    def loss_and_grads(data, **extra):
        torch.manual_seed(0)
        model = build_model(data, "apron", "synthetic", {**options, **extra}).train()
        x = torch.from_numpy(data.train[:64].toarray()).float()
        torch.manual_seed(1)  # the same dropout mask
        loss, parts = model.loss(x)
        loss.backward()
        return model, parts, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    model, parts, grads = loss_and_grads(dataset)
    hidden = model.unlabelled_items()
    assert hidden is not None and hidden.sum() == round(0.2 * dataset.n_items)
    assert not hidden[np.asarray(dataset.prototype_items)].any()
    assert model.item_tags[torch.from_numpy(hidden)].sum() == 0  # the buffer every tag-driven loss reads
    other = _relabelled(dataset, hidden)
    other_model, other_parts, other_grads = loss_and_grads(other)
    assert torch.equal(model.item_tags, other_model.item_tags) and torch.equal(model.head_mask, other_model.head_mask)
    assert parts == other_parts  # recsys, sep, ctrl (T(ŷ)) and tag attention
    for a, b in zip(grads, other_grads, strict=True):
        assert torch.equal(a, b)
    _, seen_parts, _ = loss_and_grads(dataset, hidden_label_share=0.0)
    _, changed_parts, _ = loss_and_grads(other, hidden_label_share=0.0)
    assert seen_parts["tag_attention"] != changed_parts["tag_attention"]  # the test can tell a leak


def test_without_edit_penalty_is_the_same_weights_with_gamma_zero(trained) -> None:
    twin = trained.without_edit_penalty()
    assert twin is not trained and twin.config.edit_penalty == 0 and trained.config.edit_penalty == 20.0
    for (name, a), (_, b) in zip(trained.state_dict().items(), twin.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert twin.without_edit_penalty() is twin  # γ = 0: itself


def test_intrinsic_is_the_gamma_zero_score_and_equals_served_at_gamma_zero(trained, dataset) -> None:
    served = evaluate_model(trained, dataset)
    twin = evaluate_model(trained.without_edit_penalty(), dataset)
    assert served["pct_delta@20_intrinsic"] == pytest.approx(twin["pct_delta@20"])
    assert served["delta@20_intrinsic"] == pytest.approx(twin["delta@20"])
    assert served["pct_delta@20_unlabelled_intrinsic"] == pytest.approx(twin["pct_delta@20_unlabelled"])
    assert served["pct_delta@20"] != pytest.approx(served["pct_delta@20_intrinsic"])  # γ does act
    # γ = 0: the two readings are one
    assert twin["pct_delta@20_intrinsic"] == twin["pct_delta@20"]
    assert twin["pct_delta@20_unlabelled_intrinsic"] == twin["pct_delta@20_unlabelled"]
    assert served["ndcg@100"] == pytest.approx(twin["ndcg@100"])  # no edit, no penalty: accuracy unchanged


def test_unlabelled_controllability_counts_only_hidden_items(trained, dataset) -> None:
    result = evaluate_model(trained, dataset)
    assert result["n_unlabelled_items"] == int(trained.unlabelled_items().sum())
    assert np.isfinite(result["pct_delta@20_unlabelled"]) and result["pct_delta@20_unlabelled"] != result["pct_delta@20"]
    torch.manual_seed(0)
    plain = build_model(dataset, "apron", "synthetic", dict(SMALL["apron"])).eval()
    plain_result = evaluate_model(plain, dataset)
    assert "pct_delta@20_unlabelled" not in plain_result and plain_result["pct_delta@20_intrinsic"] == plain_result["pct_delta@20"]


def test_per_user_values_are_kept_for_every_evaluated_user(trained, dataset) -> None:
    result = evaluate_model(trained, dataset)
    per_user = result["per_user"]
    assert len(per_user["users"]) == result["n_users"]
    for metric in ("ndcg@100", "recall@20", "recall@50"):
        assert len(per_user[metric]) == result["n_users"]
        assert np.mean(per_user[metric]) == pytest.approx(result[metric], abs=1e-6)


def test_apron_evaluate_prints_the_three_readings(trained, dataset, tmp_path: Path, capsys) -> None:
    path = save_checkpoint(tmp_path / "apron.pt", trained, trained.info)
    assert cli.main(["evaluate", str(path), "--dataset", str(dataset.path), "--plot", str(tmp_path / "p.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("pct_delta@20", "pct_delta@20_intrinsic", "pct_delta@20_unlabelled", "pct_delta@20_unlabelled_intrinsic"):
        assert isinstance(out[key], float), key
    assert "per_user" not in out  # only with --per-user


def test_apron_train_hides_labels_only_for_apron(dataset, tmp_path: Path, capsys) -> None:
    code = cli.main(["train", str(dataset.path), "--model", "multivae", "--out", str(tmp_path / "m.pt"), "--hide-tag-labels"])
    assert code == 2 and "only APRON" in capsys.readouterr().err
    out = tmp_path / "apron.pt"
    assert cli.main(["train", str(dataset.path), "--model", "apron", "--features", "synthetic", "--epochs", "1", "--quiet",
                     "--set", "n_heads=4", "--set", "head_dim=16", "--set", "hidden_dims=64,", "--out", str(out),
                     "--hide-tag-labels"]) == 0  # fmt: skip
    model, _ = load_checkpoint(out)
    assert model.config.hidden_label_share == 0.2 and model.unlabelled_items().sum() == round(0.2 * dataset.n_items)


def test_apron_evaluate_uses_the_tag_membership_the_model_was_trained_with(
    trained, dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint trained with tag_min_share 0 (any tag count) is evaluated with it, as the
    results runner evaluates it; the CLI used 0.5 whatever the model, a different Δ@20 by one name."""
    import dataclasses

    import training.evaluate

    model = copy.deepcopy(trained)
    model.config = dataclasses.replace(model.config, tag_min_share=0.0)
    path = save_checkpoint(tmp_path / "any-tag.pt", model, trained.info)
    seen: list[float] = []

    def recorded(*args: object, tag_min_share: float, **kwargs: object) -> dict:
        seen.append(tag_min_share)
        return {}

    monkeypatch.setattr(training.evaluate, "evaluate_model", recorded)
    training.evaluate.evaluate_checkpoint(path, dataset.path)
    assert seen == [0.0]
