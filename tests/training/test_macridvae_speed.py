"""MacridVAE's decoder mixture (`ConceptMixture`), rewritten for speed, pinned against the plain
expression it replaced: the same values and gradients, and the same model outputs."""

import pytest
import torch
import torch.nn.functional as F

from tests.training.model_helpers import SMALL, synthetic_dataset
from training.models.macridvae import ConceptMixture, concept_sums
from training.train import build_model


def reference_decode(z: torch.Tensor, items: torch.Tensor, log_concepts: torch.Tensor, tau: float) -> torch.Tensor:
    """MacridVAE.decode before the rewrite (commit 43f1424), verbatim."""
    similarity = torch.einsum("bkd,nd->bkn", F.normalize(z, dim=-1), F.normalize(items, dim=-1))
    return torch.logsumexp(similarity / tau + log_concepts.T[None], dim=1)


@pytest.mark.parametrize("batch", [1, 4, 7, 13])  # blocks of ConceptMixture.USERS users, and a remainder
def test_the_mixture_equals_the_plain_expression_with_its_gradients(batch: int) -> None:
    torch.manual_seed(batch)
    z = torch.randn(batch, 6, 5, dtype=torch.float64, requires_grad=True)
    items = torch.randn(30, 5, dtype=torch.float64, requires_grad=True)
    log_concepts = torch.log_softmax(3 * torch.randn(30, 6, dtype=torch.float64), -1).requires_grad_()
    z.data[0, 2] = 0.0  # a zeroed concept, as logits_without_tag makes
    tau = 0.1
    grad = torch.randn(batch, 30, dtype=torch.float64)
    fast = ConceptMixture.apply(F.normalize(z, dim=-1) / tau, F.normalize(items, dim=-1), log_concepts.T.contiguous())
    fast_grads = torch.autograd.grad(fast, (z, items, log_concepts), grad)
    slow = reference_decode(z, items, log_concepts, tau)
    slow_grads = torch.autograd.grad(slow, (z, items, log_concepts), grad)
    torch.testing.assert_close(fast, slow)
    for a, b in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(ConceptMixture.apply,
                                    (torch.randn(batch, 3, 4, dtype=torch.float64, requires_grad=True),
                                     torch.randn(9, 4, dtype=torch.float64, requires_grad=True),
                                     torch.randn(3, 9, dtype=torch.float64, requires_grad=True)))  # fmt: skip


def test_blocks_whose_terms_underflow_under_the_shared_bound_are_redone_exactly() -> None:
    """One concept far longer than the others sets the shared bound on the logits; it is masked by
    log c = -2000, so every other user's terms, shifted by that bound, underflow to 0 (float64):
    those blocks take the per-entry maximum, with the same values and gradients."""
    torch.manual_seed(0)
    q = torch.randn(10, 4, 3, dtype=torch.float64)
    q[0, 0] *= 1000.0
    q.requires_grad_()
    h = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    log_c = torch.randn(4, 7, dtype=torch.float64)
    log_c[0] = -2000.0
    log_c.requires_grad_()
    logits = torch.einsum("bkd,nd->bkn", q, h) + log_c
    bound = q.norm(dim=-1).max() * h.norm(dim=-1).max() + log_c.max()
    assert ((logits - bound).exp().sum(dim=1) == 0).any()  # the case is real
    grad = torch.randn(10, 7, dtype=torch.float64)
    fast = ConceptMixture.apply(q, h, log_c)
    slow = torch.logsumexp(logits, dim=1)
    torch.testing.assert_close(fast, slow)
    for a, b in zip(torch.autograd.grad(fast, (q, h, log_c), grad), torch.autograd.grad(slow, (q, h, log_c), grad),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(ConceptMixture.apply(q, h, log_c), slow)


def _loss_and_grads(model, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    torch.manual_seed(3)  # the same Gumbel noise, dropout and reparameterisation draws
    loss, _ = model.loss(x)
    return loss, list(torch.autograd.grad(loss, list(model.parameters()), allow_unused=True))


@pytest.mark.parametrize("name", ["macridvae", "sem-macridvae", "sem-macridvae-tags"])
def test_the_models_scores_loss_and_gradients_are_the_ones_before_the_rewrite(name: str, tmp_path) -> None:
    dataset = synthetic_dataset(tmp_path / "data")
    torch.manual_seed(0)
    model = build_model(dataset, name, "synthetic", dict(SMALL[name])).eval()
    x = torch.from_numpy(dataset.test_tr.toarray()).float()

    def reference(z: torch.Tensor, log_concepts: torch.Tensor) -> torch.Tensor:
        return reference_decode(z, model.items, log_concepts, model.config.tau)

    log_concepts = model.log_concepts()
    mu, _ = model.encode(x, log_concepts.exp())
    torch.testing.assert_close(model(x), reference(mu, log_concepts))
    concept = int(model.tag_concept[1]) if hasattr(model, "tag_concept") else 1
    dropped = mu.clone()
    dropped[:, concept] = 0.0
    torch.testing.assert_close(model.logits_without_tag(x, 1), reference(dropped, log_concepts))

    model.train()
    loss, grads = _loss_and_grads(model, x[:32])
    model.decode = reference  # type: ignore[method-assign]
    reference_loss, reference_grads = _loss_and_grads(model, x[:32])
    torch.testing.assert_close(loss, reference_loss)
    for a, b in zip(grads, reference_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:  # float32 sums in another order: errors scale with the tensor's largest entries, so
            # a small entry of a large gradient may differ relatively more (seen: 1.4e-4 on f_nn.bias, 5e-7 of its max)
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize("history", [3, 40])  # padded gather (short histories) and the sparse product
def test_concept_sums_equal_the_dense_sum_both_ways(history: int) -> None:
    torch.manual_seed(history)
    kept = torch.zeros(5, 60)
    for user in range(4):  # the last user has an empty history
        kept[user, torch.randperm(60)[: history - user]] = 2.0
    concepts = torch.softmax(torch.randn(60, 7), -1).requires_grad_()
    context = torch.randn(60, 6, requires_grad=True)
    fast = concept_sums(kept, concepts, context)
    dense = torch.einsum("bi,ik,id->bkd", kept, concepts, context)
    torch.testing.assert_close(fast, dense)
    grad = torch.randn_like(dense)
    for a, b in zip(torch.autograd.grad(fast, (concepts, context), grad),
                    torch.autograd.grad(dense, (concepts, context), grad), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b)
