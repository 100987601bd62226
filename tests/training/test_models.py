"""Every model on small synthetic data: it trains (the loss decreases), its forward is
deterministic in eval mode, and its checkpoint round-trips without the training arguments."""

from pathlib import Path

import pytest
import torch

from tests.training.model_helpers import MODEL_NAMES, SMALL, synthetic_dataset
from training.checkpoint import load_checkpoint, save_checkpoint
from training.models.macridvae import MacridVAE
from training.models.registry import model_class
from training.train import build_model, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic")


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each model trained for a few epochs once, shared by the tests below."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add contention on shared CPUs
    out = {}
    for name in MODEL_NAMES:
        model, info = train(
            dataset,
            name,
            features_kind="synthetic",
            epochs=6,
            batch_size=64,
            lr=3e-3,
            seed=0,
            patience=6,
            device="cpu",
            hyperparameters=SMALL[name],
            progress=False,
        )
        out[name] = (model, info)
    torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_trains_and_loss_decreases(trained, name: str) -> None:
    _, info = trained[name]
    losses = [epoch["loss"] for epoch in info.train["history"]]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.95 * losses[0], losses
    assert info.metrics["val_ndcg@100"] > 0.2  # far above random on planted tags (~0.1)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_is_deterministic_logits(trained, dataset, name: str) -> None:
    model, _ = trained[name]
    model.eval()
    x = torch.from_numpy(dataset.test_tr[:5].toarray())
    with torch.no_grad():
        first, second = model(x), model(x)
    assert first.shape == (5, dataset.n_items) and first.dtype == torch.float32
    torch.testing.assert_close(first, second)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_checkpoint_round_trip(trained, dataset, name: str, tmp_path: Path) -> None:
    model, info = trained[name]
    path = save_checkpoint(tmp_path / f"{name}.pt", model, info)
    loaded, loaded_info = load_checkpoint(path)  # no training arguments needed
    x = torch.from_numpy(dataset.test_tr[:8].toarray())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    assert type(loaded) is model_class(name)
    assert loaded_info.model == name
    assert loaded_info.dataset["fingerprint"] == dataset.fingerprint
    assert loaded_info.dataset["tag_names"] == dataset.tag_names
    assert loaded_info.metrics["val_ndcg@100"] == info.metrics["val_ndcg@100"]
    assert {"seed", "epochs_run", "best_epoch", "wall_time_s", "device"} <= set(loaded_info.train)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_only_tag_models_are_controllable(trained, dataset, name: str) -> None:
    model, _ = trained[name]
    assert getattr(model, "controllable", False) == (name in ("apron", "sem-macridvae", "sem-macridvae-tags"))
    if not model.controllable:
        return
    x = torch.from_numpy(dataset.test_tr[:8].toarray())
    with torch.no_grad():
        full, dropped = model(x), model.logits_without_tag(x, 3)
    assert dropped.shape == full.shape
    assert (full - dropped).abs().max() > 1e-3


def test_tag_supervised_macridvae_concepts_are_tags(dataset) -> None:
    """`sem-macridvae-tags`: concept k starts as tag k, so most tagged items' likeliest concept is their tag."""
    model = build_model(dataset, "sem-macridvae-tags", "synthetic", SMALL["sem-macridvae-tags"]).eval()
    assert model.config.n_concepts == dataset.n_tags and model.config.semantic
    tagged = model.item_category >= 0
    with torch.no_grad():
        predicted = model.concept_logits().argmax(-1)
    agreement = (predicted[tagged] == model.item_category[tagged]).float().mean().item()
    assert agreement > 0.6, agreement
    assert "category" in model.loss(torch.ones(2, dataset.n_items))[1]
    # plain MacridVAE: random init, no supervision
    plain = build_model(dataset, "macridvae", None, SMALL["macridvae"])
    assert not plain.config.semantic and "category" not in plain.loss(torch.ones(2, dataset.n_items))[1]


def test_sem_macridvae_as_in_the_apron_paper_is_macridvae_with_kmeans_init_only(dataset) -> None:
    """The paper's SEM-MacridVAE: PCA items, k-means prototypes, no Eq. 11 term; tags matched 1:1 to concepts."""
    from training.models.macridvae import pca_embeddings

    model = build_model(dataset, "sem-macridvae", "synthetic", SMALL["sem-macridvae"]).eval()
    assert model.config.n_concepts == dataset.n_tags and not model.config.semantic
    assert set(model.loss(torch.ones(2, dataset.n_items))[1]) == {"nll", "kl", "beta"}
    items = pca_embeddings(dataset.load_features("synthetic"), 16)
    torch.testing.assert_close(model.items.detach(), torch.from_numpy(items))
    # every prototype is the mean of the items of its k-means cluster (a centroid)
    nearest = torch.cdist(model.items.detach(), model.prototypes.detach()).argmin(-1)
    for k in nearest.unique():
        torch.testing.assert_close(model.prototypes[k].detach(), model.items[nearest == k].detach().mean(0), atol=1e-4, rtol=0)
    assert sorted(model.tag_concept.tolist()) == list(range(dataset.n_tags))  # a 1:1 matching
    x = torch.from_numpy(dataset.test_tr[:4].toarray())
    with torch.no_grad():
        concept = int(model.tag_concept[2])
        torch.testing.assert_close(model.logits_without_tag(x, 2), MacridVAE.logits_without_tag(model, x, concept))


def test_recvae_prior_follows_encoder_after_encoder_phase(trained) -> None:
    model, _ = trained["recvae"]
    for old, new in zip(model.old_encoder.parameters(), model.encoder.parameters(), strict=True):
        # the last phase of an epoch is the decoder's, so the prior equals the final encoder
        torch.testing.assert_close(old, new)
        assert not old.requires_grad


def test_models_need_features_when_they_use_them(dataset) -> None:
    for name in ("apron", "sem-macridvae", "sem-macridvae-tags"):
        with pytest.raises(ValueError, match="features"):
            model_class(name).from_data(dataset, None)


def test_multidae_loss_has_liang_et_al_l2_term(dataset) -> None:
    """Mult-DAE's loss = multinomial NLL + λ·sum ||W||² over weight matrices (λ = 0.01 by default)."""
    model = build_model(dataset, "multidae", None, SMALL["multidae"]).eval()  # eval: no dropout
    assert model.config.l2 == 0.01
    x = torch.from_numpy(dataset.train[:8].toarray())
    weights = sum(m.weight.pow(2).sum() for m in model.autoencoder if isinstance(m, torch.nn.Linear))
    total, parts = model.loss(x)
    torch.testing.assert_close(total, torch.tensor(parts["nll"]) + 0.01 * weights, rtol=1e-5, atol=1e-5)
    assert parts["l2"] == pytest.approx(weights.item(), rel=1e-5)
