"""The edit penalty's parity reference and the edited batches every runtime is checked on.

`reference_logits` is the penalty as it was computed before issue 19 (item 5): an einsum of the
batch's 0/1 removal mask with the whole (N, H, K) table of the items' prototype weights, on every
batch. The library now skips the work when nothing is removed and reads only the removed
prototypes' rows (export/served_model.py `edit_penalty`); the tests hold it to this formula. It
lives in the tests on purpose: the library keeps one definition of the math.
"""

from __future__ import annotations

import torch

from training.models.apron import APRON


def reference_logits(model: APRON, weights: torch.Tensor) -> torch.Tensor:
    """(B, H, K) profile weights -> (B, N) logits as `APRON.score` computed them before: shares, u,
    f(u), minus γ · einsum("bhk,nhk->bn", share == 0, W) / H over the whole catalog table W.
    Differentiable in the model's own parameters (wrap it in no_grad for values only)."""
    shares = model.shares(weights)
    logits = model.f(torch.einsum("bhk,khd->bhd", shares, model.prototype_values()).flatten(1))
    removed = (shares == 0).float()  # (B, H, K)
    on_removed = torch.einsum("bhk,nhk->bn", removed, model.item_prototype_weights()) / model.config.n_heads
    return logits - model.config.edit_penalty * on_removed


def reference_scores(model: APRON, weights: torch.Tensor, excluded: torch.Tensor | None = None) -> torch.Tensor:
    """The served scores of `reference_logits`: log-softmax over the catalog, excluded items (bool
    (B, N)) at -inf, sorted best first per row as `top_scores` with K_MAX = N holds them. (B, N)"""
    with torch.no_grad():
        scores = torch.log_softmax(reference_logits(model, weights), dim=-1)
    if excluded is not None:
        scores = scores.masked_fill(excluded, float("-inf"))
    return scores.sort(dim=-1, descending=True).values


def edited_batches(weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Unedited profile weights (B >= 5, H >= 4, K >= 6, every entry > 0) -> batches by case: no
    prototype removed; one removed (in every head, as an edit removes it) in some rows only; several
    removed per row; removed in some heads only (an fp32 share that underflowed, or a client's own
    profile), alone and mixed with whole removals; an empty history (every share 0) beside an edit."""
    assert weights.shape[0] >= 5 and weights.shape[1] >= 4 and weights.shape[2] >= 6 and bool((weights > 0).all())
    cases = {name: weights.clone() for name in ("none", "some rows", "several", "some heads", "empty row")}
    cases["some rows"][[1, 3], :, 2] = 0.0
    several = cases["several"]
    several[0][:, [0, 3]] = 0.0
    several[2][:, 5] = 0.0
    several[4][:, [1, 2, 4]] = 0.0
    heads = cases["some heads"]
    heads[1, 0, 2] = 0.0  # head 0 only
    heads[3, 1:, 4] = 0.0  # every head but head 0
    heads[2, :, 1] = 0.0  # in every head ...
    heads[2, 2, 0] = 0.0  # ... beside one removed in head 2 only
    cases["empty row"][0] = 0.0
    cases["empty row"][1, :, 3] = 0.0
    return cases
