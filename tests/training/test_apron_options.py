"""APRON's config switches (ablations and controllability options) on a small synthetic dataset."""

import numpy as np
import pytest
import torch

from tests.edit_penalty import edited_batches, reference_logits
from tests.training.model_helpers import SMALL, synthetic_dataset
from training.models.apron import PROFILE_FLOOR, profile_shares, sparsemax, tag_groups
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
    for dropout in (1.0, -0.1):  # 1 drops every history, and a summed profile's 1 / (1 - p) divides by 0
        with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
            _model(dataset, profile="sum", dropout=dropout)


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


def test_tag_groups_cluster_tags_that_share_items() -> None:
    """Two blocks of tags given to disjoint items, plus a tag given to no item: k-means on the
    membership columns finds the blocks, every group is non-empty, and the result is deterministic."""
    membership = np.zeros((40, 7))
    membership[:20, [0, 2, 4]] = np.random.default_rng(0).random((20, 3)) < 0.7
    membership[20:, [1, 3, 5]] = np.random.default_rng(1).random((20, 3)) < 0.7
    membership[0, :] = membership[0, :] * 0  # an item with no tags
    groups = tag_groups(membership, 2)
    assert groups.shape == (7,)
    assert len(set(groups[[0, 2, 4]])) == 1 and len(set(groups[[1, 3, 5]])) == 1 and groups[0] != groups[1]
    np.testing.assert_array_equal(tag_groups(membership, 2), groups)
    assert sorted(set(tag_groups(membership, 7))) == list(range(7))  # as many groups as tags: one each


def test_heads_per_tag_group_attend_only_to_their_group(dataset) -> None:
    model = _model(dataset, tag_groups=2)
    assert model.config.n_heads >= 2
    mask = model.head_mask  # (H, K): head h may attend to prototype k
    assert bool(mask.any(-1).all()) and bool(mask.any(0).all())  # no empty head, no orphan prototype
    assert not bool((mask[0] & mask[1]).any())  # heads 0 and 1 see disjoint groups ...
    assert all(torch.equal(mask[h], mask[h % 2]) for h in range(mask.shape[0]))  # ... head h sees group h mod 2
    with torch.no_grad():
        weights = model.item_prototype_weights()  # (N, H, K)
    assert bool((weights[:, ~mask] == 0).all())  # exact zeros outside the head's group
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))
    x = torch.from_numpy(dataset.test_tr[:6].toarray())
    tag = 0
    with torch.no_grad():
        weights = model.profile_weights(x)
        dropped = weights.clone()
        dropped[:, :, tag] = 0.0
    untouched = ~mask[:, tag]  # the heads of other groups never saw tag 0
    torch.testing.assert_close(model.shares(dropped)[:, untouched], model.shares(weights)[:, untouched])
    assert "head_mask" in model.state_dict() and "head_mask" not in _model(dataset).state_dict()
    with pytest.raises(ValueError, match="tag_groups"):
        _model(dataset, tag_groups=model.config.n_heads + 1)


def test_full_head_features_let_every_head_read_every_feature(dataset) -> None:
    """head_features="chunk" (Eq. 12): head h reads only its D/H slice; "full": all D features."""
    chunked, full = _model(dataset), _model(dataset, head_features="full")
    assert full.item_projection.shape[1] == full.config.feature_dim > chunked.item_projection.shape[1]
    features = full.item_features[:3].clone()
    changed = features.clone()
    changed[:, 0] += 5.0 * full.feature_std[0]  # a feature of head 0's slice only
    with torch.no_grad():
        for model, heads_moved in ((chunked, {0}), (full, set(range(full.config.n_heads)))):
            before, after = model.encode_items(features), model.encode_items(changed)
            moved = {h for h in range(model.config.n_heads) if not torch.allclose(before[:, h], after[:, h])}
            assert moved == heads_moved
    with pytest.raises(ValueError, match="head_features"):
        _model(dataset, head_features="half")


def test_only_edits_make_a_share_zero_so_the_penalty_ignores_underflowed_attention(dataset) -> None:
    """Sharp attention underflows to exact 0 for most prototypes; profiles are floored, so an unedited
    profile has no zero share and the edit penalty leaves its scores alone, while a dropped
    prototype is still exactly 0 and still penalised. An empty history stays all 0."""
    plain, penalised = _model(dataset, attention_temperature=1e-3), _model(dataset, attention_temperature=1e-3, edit_penalty=50.0)
    penalised.load_state_dict(plain.state_dict())
    x = torch.zeros(3, dataset.n_items)
    x[0, 0] = x[1, 1] = x[1, 2] = 1.0  # one- and two-item histories; row 2 is empty
    with torch.no_grad():
        assert (plain.item_prototype_weights()[:2] == 0).float().mean() > 0.5  # underflow is real here
        weights = plain.profile_weights(x)
        assert (weights[:2] > 0).all() and (weights[2] == 0).all()
        assert weights[:2].min() == pytest.approx(PROFILE_FLOOR)
        torch.testing.assert_close(penalised(x[:2]), plain(x[:2]))  # unedited: no penalty at all
        tag = int(weights[0].sum(0).argmax())
        difference = plain.logits_without_tag(x[:1], tag) - penalised.logits_without_tag(x[:1], tag)
        on_tag = plain.item_prototype_weights()[:, :, tag].mean(-1)
    torch.testing.assert_close(difference[0], 50.0 * on_tag, rtol=1e-4, atol=1e-4)


def test_edit_penalty_equals_the_whole_table_formula_and_trains_alike(dataset) -> None:
    """The factorised penalty (only the removed prototypes' rows, nothing when none is removed)
    scores and back-propagates like the einsum over the whole (N, H, K) table it replaced."""
    plain = _model(dataset)
    penalised = _model(dataset, edit_penalty=50.0)
    penalised.load_state_dict(plain.state_dict())
    x = torch.from_numpy(dataset.test_tr[:6].toarray())
    with torch.no_grad():
        weights = penalised.profile_weights(x)
        for case, batch in edited_batches(weights).items():
            expected = reference_logits(penalised, batch)
            torch.testing.assert_close(penalised.score(batch), expected, rtol=1e-5, atol=1e-4, msg=case)
            if case == "none":
                torch.testing.assert_close(expected, plain.score(batch))  # no share is 0: no penalty
            else:
                assert not torch.allclose(expected, plain.score(batch)), case  # the case does remove
    batch = edited_batches(weights)["some heads"]
    gradients = []
    for logits in (lambda: penalised.score(batch), lambda: reference_logits(penalised, batch)):
        penalised.zero_grad()
        logits().square().mean().backward()
        gradients.append({name: p.grad.clone() for name, p in penalised.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys() and gradients[0]["item_projection"].abs().max() > 0
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradient, gradients[1][name], rtol=1e-4, atol=1e-6, msg=name)


def _loss_and_gradients(model, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(1)  # the same history dropout for every model
    model.train().zero_grad()
    loss, _ = model.loss(x)
    loss.backward()
    model.eval()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_the_edit_penalty_never_enters_the_training_loss(dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """γ is a scoring-time term: a training row whose history dropout removed every item (all
    shares 0, which reads as "every prototype removed") must not get the −γ shift, which moved
    float32 gradients and hence early stopping. Loss and gradients are bit-identical for γ = 0 and
    γ = 50."""
    import training.models.apron as apron

    x = torch.from_numpy(dataset.train[:64].toarray())
    assert x[0].sum() > 0  # items to be found, so the row's loss has gradients ...
    drop = apron.drop_history

    def drop_all_of_row_0(history: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        kept = drop(history, *args, **kwargs).clone()
        kept[0] = 0.0  # ... and an empty history after dropout, as p = 0.5 makes for a short one
        return kept

    monkeypatch.setattr(apron, "drop_history", drop_all_of_row_0)
    plain = _model(dataset, lambda_tag_attention=1.0)
    penalised = _model(dataset, lambda_tag_attention=1.0, edit_penalty=50.0)
    penalised.load_state_dict(plain.state_dict())
    with torch.no_grad():  # an empty history does reach the penalty when scoring: the test is not vacuous
        assert not torch.equal(plain(torch.zeros_like(x[:1])), penalised(torch.zeros_like(x[:1])))
    loss, gradients = _loss_and_gradients(plain, x)
    penalised_loss, penalised_gradients = _loss_and_gradients(penalised, x)
    assert torch.equal(loss, penalised_loss)
    assert gradients.keys() == penalised_gradients.keys() and gradients
    for name, gradient in gradients.items():
        assert torch.equal(gradient, penalised_gradients[name]), name


def _training_profile_mass(model, x: torch.Tensor) -> float:
    """The total profile mass f was trained on in one `loss` call (training mode, dropout drawn)."""
    seen: list[torch.Tensor] = []
    score = model.score

    def spy(weights: torch.Tensor, **options: bool) -> torch.Tensor:
        seen.append(weights.detach())
        return score(weights, **options)

    model.score = spy
    torch.manual_seed(1)
    model.train().loss(x)
    model.eval()
    del model.score
    return float(seen[0].sum())


@pytest.mark.parametrize("dropout", [0.5, 0.2])
def test_a_summed_profile_trains_on_inputs_the_size_it_is_evaluated_on(dataset, dropout: float) -> None:
    """Eq. 13's sum is unnormalised: with history dropout p and no rescaling, f trained on profiles
    (1 - p) times the size of those it scores at evaluation (half of them at p = 0.5)."""
    x = torch.from_numpy(dataset.train[:400].toarray())
    model = _model(dataset, profile="sum", dropout=dropout)
    with torch.no_grad():
        full = float(model.profile_weights(x).sum())  # what evaluation and serving feed f
        ratio = _training_profile_mass(model, x) / full
    assert ratio == pytest.approx(1.0, abs=0.05)
    mean = _model(dataset, dropout=dropout)  # shares: the scale cancels, so no rescaling is added
    with torch.no_grad():
        assert _training_profile_mass(mean, x) / float(mean.profile_weights(x).sum()) == pytest.approx(1 - dropout, abs=0.05)
