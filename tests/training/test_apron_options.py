"""APRON's config switches (ablations and controllability options) on a small synthetic dataset."""

import pytest
import torch

from tests.training.model_helpers import SMALL, synthetic_dataset
from training.models.apron import profile_shares, sparsemax
from training.train import build_model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic")


def _model(dataset, **options):
    torch.manual_seed(0)
    return build_model(dataset, "apron", "synthetic", {**SMALL["apron"], **options}).eval()


def test_sparsemax_is_a_sparse_distribution_and_softmax_like_on_ties() -> None:
    z = torch.tensor([[3.0, 1.0, 0.2, -1.0], [0.5, 0.5, 0.5, 0.5]])
    p = sparsemax(z)
    torch.testing.assert_close(p.sum(-1), torch.ones(2))
    assert p[0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])  # a clear winner takes all
    assert p[1].tolist() == pytest.approx([0.25] * 4)
    z = torch.tensor([[1.0, 0.8, -2.0]])
    assert sparsemax(z)[0].tolist() == pytest.approx([0.6, 0.4, 0.0])  # threshold (1.8 - 1) / 2


def test_defaults_are_the_current_model_and_bad_values_are_refused(dataset) -> None:
    model = _model(dataset)
    assert (model.config.prototype_init, model.config.profile, model.config.drop_renormalise) == ("copy", "mean", True)
    assert model.config.attention == "softmax" and model.config.edit_penalty == 0
    with pytest.raises(ValueError, match="profile"):
        _model(dataset, profile="median")


def test_prototype_init_copy_vs_random(dataset) -> None:
    copied, random = _model(dataset), _model(dataset, prototype_init="random")
    for k in range(dataset.n_tags):
        torch.testing.assert_close(copied.prototype_projection[k], copied.item_projection)
    assert not torch.allclose(random.prototype_projection[0], random.item_projection)


def test_sum_profile_and_drop_renormalisation(dataset) -> None:
    x = torch.from_numpy(dataset.test_tr[:6].toarray())
    tag = 2
    for profile in ("mean", "sum"):
        model = _model(dataset, profile=profile)
        weights = model.profile_weights(x)
        u_input = model.shares(weights)
        if profile == "sum":
            torch.testing.assert_close(u_input, weights)  # Eq. 13: the sum itself
        else:
            torch.testing.assert_close(u_input, profile_shares(weights))
        with torch.no_grad():
            renormalised = model.logits_without_tag(x, tag)
            kept = u_input.clone()
            kept[:, :, tag] = 0
            scaled = kept * (u_input.sum(-1, keepdim=True) / kept.sum(-1, keepdim=True))
            torch.testing.assert_close(renormalised, model.score_shares(scaled))
            plain = build_model(dataset, "apron", "synthetic", {**SMALL["apron"], "profile": profile,
                                                                "drop_renormalise": False})  # fmt: skip
            plain.load_state_dict(model.state_dict())
            torch.testing.assert_close(plain.eval().logits_without_tag(x, tag), model.score_shares(kept))


def test_tag_membership_any_count_vs_main_tags(dataset) -> None:
    main, any_count = _model(dataset), _model(dataset, tag_min_share=0.0)
    assert any_count.item_tags.sum() >= main.item_tags.sum()
    assert bool(((main.item_tags > 0) <= (any_count.item_tags > 0)).all())


def test_temperature_sharpens_and_sparsemax_zeroes_attention(dataset) -> None:
    base, sharp = _model(dataset), _model(dataset, attention_temperature=0.25)
    with torch.no_grad():
        entropy = [-(m.item_prototype_weights() * m.item_prototype_weights().log()).sum(-1).mean() for m in (base, sharp)]
        sparse = _model(dataset, attention="sparsemax").item_prototype_weights()
    assert entropy[1] < entropy[0]
    torch.testing.assert_close(sparse.sum(-1), torch.ones(sparse.shape[:2]))
    assert (sparse == 0).float().mean() > 0.1


def test_tag_attention_loss_is_trained_and_pulls_attention_to_tags(dataset) -> None:
    model = _model(dataset, lambda_tag_attention=1.0).train()
    x = torch.from_numpy(dataset.train[:32].toarray())
    first = model.tag_attention_loss(model.item_prototype_weights()).item()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss, parts = model.loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert "tag_attention" in parts
    assert model.tag_attention_loss(model.item_prototype_weights()).item() < first - 0.1


def test_edit_penalty_pushes_down_items_attending_to_a_removed_prototype(dataset) -> None:
    x = torch.from_numpy(dataset.test_tr[:6].toarray())
    plain, penalised = _model(dataset), _model(dataset, edit_penalty=50.0)
    penalised.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(penalised(x), plain(x))  # no share is 0: the same scores
        tag = 1
        drop = plain.logits_without_tag(x, tag), penalised.logits_without_tag(x, tag)
        on_tag = plain.item_prototype_weights()[:, :, tag].mean(-1)  # (N,)
    difference = drop[0] - drop[1]  # the penalty, per user and item
    torch.testing.assert_close(difference, 50.0 * on_tag.expand_as(difference), rtol=1e-4, atol=1e-4)
