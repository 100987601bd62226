"""APRON's public pieces that export and serving rely on (DESIGN.md section 2)."""

from types import SimpleNamespace

import numpy as np
import scipy.sparse as sp
import torch

from training.models.apron import APRON, profile_shares


def _tiny_apron(seed: int = 0) -> APRON:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    dataset = SimpleNamespace(
        n_items=40,
        n_tags=5,
        prototype_items=np.arange(5),
        item_tags=sp.csr_matrix((rng.random((40, 5)) > 0.6).astype(np.float32)),
    )
    return APRON.from_data(dataset, rng.normal(size=(40, 30)).astype(np.float32), n_heads=4, head_dim=8)


def test_forward_is_score_of_profile_and_scale_invariant() -> None:
    model = _tiny_apron().eval()
    x = (torch.rand(6, 40) > 0.7).float()
    weights = model.profile_weights(x)
    assert weights.shape == (6, 4, 5)
    # each item's weights are a softmax over prototypes, so a head's weights sum to the history length
    torch.testing.assert_close(weights.sum(-1), x.sum(-1, keepdim=True).expand(6, 4))
    torch.testing.assert_close(model(x), model.score(weights))
    torch.testing.assert_close(model.score(weights), model.score(weights * 3.0), atol=1e-5, rtol=1e-5)


def test_dropping_a_tag_zeroes_its_share_and_changes_scores() -> None:
    model = _tiny_apron().eval()
    x = (torch.rand(6, 40) > 0.7).float()
    weights = model.profile_weights(x).clone()
    weights[:, :, 2] = 0
    assert profile_shares(weights)[:, :, 2].abs().max() == 0
    torch.testing.assert_close(model.logits_without_tag(x, 2), model.score(weights))
    assert (model.logits_without_tag(x, 2) - model(x)).abs().max() > 1e-4


def test_loss_is_finite_and_decreases() -> None:
    model = _tiny_apron()
    x = (torch.rand(16, 40) > 0.7).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with torch.no_grad():
        before = model.eval().loss(x)[0].item()
    model.train()
    for _ in range(40):
        loss, parts = model.loss(x)
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
    with torch.no_grad():
        after = model.eval().loss(x)[0].item()
    assert set(parts) == {"recsys", "sep", "ctrl"}
    assert after < 0.9 * before
