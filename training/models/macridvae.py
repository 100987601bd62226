"""MacridVAE and SEM-MacridVAE: macro-micro disentangled VAEs with concept prototypes.

MacridVAE: Ma, Zhou, Cui, Yang, Zhu (2019), "Learning Disentangled Representations for
Recommendation" (NeurIPS). SEM-MacridVAE: Wang, Chen, Zhou, Ma, Zhu (2023), "Disentangled
Representation Learning for Recommendation" (TPAMI), Algorithm 1. Equation numbers refer to the
SEM-MacridVAE paper (`../shared/papers/sem-macridvae.txt`):
- Eq. 6: each item's concept c_i ~ Categorical(softmax(cos(h_i, m_k) / τ)) (Gumbel-softmax while
  training, the softmax itself at evaluation);
- Eq. 9: one Gaussian component z^(k) per concept, encoded from the history restricted to the
  concept's items, mean normalised to the unit sphere, σ = σ0·exp(-b/2);
- Eq. 7-8: p(i | z) ∝ sum_k c_{i,k} exp(cos(z^(k), h_i) / τ), a softmax over items;
- Eq. 5: the β-weighted ELBO (β annealed by the trainer, as in the authors' code).

SEM-MacridVAE (`sem-macridvae`) is, as in the APRON paper, the same model with a semantic
initialisation only (section 3.4): item embeddings h_i from a PCA of the items' content features
(Eq. 10), concept prototypes m_k from k-means on them; no extra loss term. `sem-macridvae-tags`
is this project's earlier, stronger variant: m_k the mean of tag k's items (concept k *is* tag k)
plus the categorical supervision of Eq. 11. K is the number of tags for both.

Controllability (APRON's Eq. 17 for SEM-MacridVAE): dropping tag τ zeroes its concept's component
z^(k) before decoding, so cos(z^(k), h_i) = 0 and concept k's items lose the user's preference for
them (their term becomes c_{i,k}·exp(0)) while all other concepts are unchanged.

Engineering choices: one input-dropout mask is shared by the K concept encoders (the authors' code
draws one per concept); it lets the encoder run as a single sparse product instead of K dense ones.
The decoder's (B, K, N) similarities are the model's cost (K = 80 concepts on lastfm-2k); the
mixture over concepts is computed one user at a time in cache and recomputed in the backward pass
(`ConceptMixture`), instead of autograd's several (B, K, N) tensors, and the encoder gathers each
user's items instead of a (N, K·d) table (`concept_sums`): the same functions
(tests/training/test_macridvae_speed.py pins them against the plain expressions), measured per
epoch in training/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.metrics import tag_membership
from training.models.common import multinomial_nll, reparameterize


@dataclass(frozen=True)
class MacridVAEConfig:
    n_items: int
    n_concepts: int  # K
    embedding_dim: int = 100  # d, per concept
    tau: float = 0.1  # temperature of every cosine similarity (Eq. 6, 8)
    std0: float = 0.075  # σ0: prior std and encoder std scale (Eq. 9)
    dropout: float = 0.5  # on each concept's normalised history
    beta: float = 0.2  # annealing cap of the KL weight (Eq. 5)
    gumbel: bool = True  # sample c_i with Gumbel-softmax while training (Eq. 6)
    semantic: bool = False  # SEM-MacridVAE: categorical supervision (Eq. 11)
    category_weight: float = 1.0  # weight of Eq. 11's mean cross-entropy over tagged items


class MacridVAE(nn.Module):
    name: ClassVar[str] = "macridvae"
    config_class: ClassVar[type] = MacridVAEConfig
    controllable: ClassVar[bool] = False  # its concepts are unnamed: Δ@k is not defined
    uses_features: ClassVar[bool] = False

    def __init__(self, config: MacridVAEConfig):
        super().__init__()
        self.config = config
        n, k, d = config.n_items, config.n_concepts, config.embedding_dim
        self.items = nn.Parameter(nn.init.xavier_normal_(torch.empty(n, d)))  # h_i (decoder)
        self.prototypes = nn.Parameter(nn.init.xavier_normal_(torch.empty(k, d)))  # m_k
        self.context = nn.Parameter(nn.init.xavier_normal_(torch.empty(n, d)))  # t_i (encoder)
        self.context_bias = nn.Parameter(torch.zeros(d))
        self.f_nn = nn.Linear(d, 2 * d)  # f_nn: R^d -> R^2d, shared by the concepts (Eq. 9)
        # Eq. 11's targets: each item's dominant tag, -1 for untagged items (SEM only).
        self.register_buffer("item_category", torch.full((n,), -1, dtype=torch.long))

    @classmethod
    def from_data(cls, dataset: Any, features: np.ndarray | None = None, **hyperparameters: Any) -> MacridVAE:
        hyperparameters.setdefault("n_concepts", dataset.n_tags)  # the same K as SEM-MacridVAE
        return cls(MacridVAEConfig(n_items=dataset.n_items, **hyperparameters))

    def concept_logits(self) -> torch.Tensor:
        """Eq. 6: s_{i,k} = cos(h_i, m_k) / τ. -> (N, K)"""
        return F.normalize(self.items, dim=-1) @ F.normalize(self.prototypes, dim=-1).T / self.config.tau

    def log_concepts(self) -> torch.Tensor:
        """log c_i: a Gumbel-softmax sample while training, the softmax (mode) at evaluation. (N, K)"""
        logits = self.concept_logits()
        if self.training and self.config.gumbel:
            logits = logits - torch.log(-torch.log(torch.rand_like(logits).clamp_min(1e-20)))
        return F.log_softmax(logits, dim=-1)

    def encode(self, x: torch.Tensor, concepts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 9 for every concept. x (B, N), concepts c (N, K) -> mu (B, K, d), log(σ²/σ0²) (B, K, d)"""
        kept = F.dropout(torch.ones_like(x), self.config.dropout, self.training) * x  # shared mask
        numerator = concept_sums(kept, concepts, self.context)  # sum_i x_i c_{i,k} t_i, (B, K, d)
        norm = torch.sqrt(x @ concepts.pow(2)).clamp_min(1e-8)  # (B, K)
        h = torch.tanh(numerator / norm[:, :, None] + self.context_bias)
        a, b = self.f_nn(h).chunk(2, dim=-1)
        return F.normalize(a, dim=-1), -b  # μ = a / ||a||; log σ² - log σ0² = -b

    def decode(self, z: torch.Tensor, log_concepts: torch.Tensor) -> torch.Tensor:
        """Eq. 7-8: log sum_k c_{i,k} exp(cos(z^(k), h_i) / τ). z (B, K, d) -> logits (B, N)"""
        scaled = F.normalize(z, dim=-1) / self.config.tau
        items = F.normalize(self.items, dim=-1)
        return ConceptMixture.apply(scaled, items, log_concepts.T.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_concepts = self.log_concepts()
        mu, log_var_ratio = self.encode(x, log_concepts.exp())
        std = self.config.std0 * torch.exp(0.5 * log_var_ratio)
        return self.decode(reparameterize(mu, 2 * torch.log(std), self.training), log_concepts)

    def logits_without_tag(self, x: torch.Tensor, tag: int) -> torch.Tensor:
        """The same scores with concept `tag`'s component z^(tag) zeroed before decoding."""
        log_concepts = self.log_concepts()
        mu, _ = self.encode(x, log_concepts.exp())
        mu = mu.clone()
        mu[:, tag] = 0.0
        return self.decode(mu, log_concepts)

    def loss(self, x: torch.Tensor, anneal: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        log_concepts = self.log_concepts()
        mu, log_var_ratio = self.encode(x, log_concepts.exp())
        std = cfg.std0 * torch.exp(0.5 * log_var_ratio)
        logits = self.decode(reparameterize(mu, 2 * torch.log(std), self.training), log_concepts)
        nll = multinomial_nll(logits, x)
        # KL(N(μ, σ²) || N(0, σ0²)) without the ||μ||² term: μ is on the unit sphere, so it is constant.
        kl = 0.5 * (-log_var_ratio + log_var_ratio.exp() - 1).sum(dim=(1, 2)).mean()
        beta = cfg.beta * anneal
        total = nll + beta * kl
        parts = {"nll": nll.item(), "kl": kl.item(), "beta": beta}
        if cfg.semantic:
            category = self.category_loss()  # Eq. 11
            total = total + cfg.category_weight * category
            parts["category"] = category.item()
        return total, parts

    def category_loss(self) -> torch.Tensor:
        """Eq. 11: cross-entropy between p(c_i) and the dominant tag of every tagged item."""
        tagged = self.item_category >= 0
        if not bool(tagged.any()):
            return torch.zeros((), device=self.items.device)
        return F.cross_entropy(self.concept_logits()[tagged], self.item_category[tagged])


class SemMacridVAE(MacridVAE):
    """SEM-MacridVAE as the APRON paper runs it: MacridVAE with semantic initialisation only.

    APRON's Table 1 note: "MacridVAE and SEM-MacridVAE are exact same methods except the
    initialization of item and prototype embeddings". Item embeddings h_i start from a PCA of the
    content features (Eq. 10), the K concept prototypes m_k from k-means centroids of those
    embeddings; the loss is MacridVAE's (no Eq. 11 term). K = the number of tags.

    Its concepts are unnamed clusters, so Δ@k needs a concept per tag: each tag is matched 1:1 to
    the concept its main-tag items fall into most often at initialisation (Hungarian matching of
    the tag x cluster co-occurrence), and dropping tag τ zeroes that concept's component z^(k)."""

    name: ClassVar[str] = "sem-macridvae"
    controllable: ClassVar[bool] = True
    uses_features: ClassVar[bool] = True

    def __init__(self, config: MacridVAEConfig):
        super().__init__(config)
        self.register_buffer("tag_concept", torch.arange(config.n_concepts))  # tag τ -> concept index

    @classmethod
    def from_data(
        cls, dataset: Any, features: np.ndarray | None = None, **hyperparameters: Any
    ) -> SemMacridVAE:
        from scipy.cluster.vq import kmeans2
        from scipy.optimize import linear_sum_assignment

        if features is None:
            raise ValueError(f"{cls.name} needs content features: run `apron features` first")
        if hyperparameters.get("n_concepts", dataset.n_tags) != dataset.n_tags:
            raise ValueError(f"{cls.name} has one concept per tag: n_concepts must equal the tag count")
        hyperparameters.update(n_concepts=dataset.n_tags, semantic=False)
        config = MacridVAEConfig(n_items=dataset.n_items, **hyperparameters)
        model = cls(config)
        items = pca_embeddings(features, config.embedding_dim, seed=0)  # Eq. 10
        centroids, cluster = kmeans2(items.astype(np.float64), config.n_concepts, seed=0, minit="++")
        membership = tag_membership(dataset.item_tags).astype(np.float64)  # (N, K) main tags
        co_occurrence = membership.T @ np.eye(config.n_concepts)[cluster]  # (tags, concepts)
        tags, concepts = linear_sum_assignment(-co_occurrence)
        with torch.no_grad():
            model.items.copy_(torch.from_numpy(items))
            model.prototypes.copy_(torch.from_numpy(centroids.astype(np.float32)))
            model.tag_concept[torch.from_numpy(tags)] = torch.from_numpy(concepts)
        return model

    def logits_without_tag(self, x: torch.Tensor, tag: int) -> torch.Tensor:
        return super().logits_without_tag(x, int(self.tag_concept[tag]))


class TagSupervisedMacridVAE(MacridVAE):
    """This project's earlier SEM-MacridVAE, kept under its own name (`sem-macridvae-tags`): concept
    k *is* tag k. Item embeddings from a PCA of the features (Eq. 10), prototype m_k the mean of the
    items carrying tag k as a main tag (`training.metrics.tag_membership`), plus the categorical
    supervision of the SEM-MacridVAE paper's Eq. 11 (each tagged item's concept distribution vs its
    dominant tag). Dropping tag τ zeroes z^(τ), which acts much like masking τ's items: a stronger
    edit than the APRON paper's SEM-MacridVAE (%Δ ≈ -0.05 there)."""

    name: ClassVar[str] = "sem-macridvae-tags"
    controllable: ClassVar[bool] = True
    uses_features: ClassVar[bool] = True

    @classmethod
    def from_data(
        cls, dataset: Any, features: np.ndarray | None = None, **hyperparameters: Any
    ) -> TagSupervisedMacridVAE:
        if features is None:
            raise ValueError(f"{cls.name} needs content features: run `apron features` first")
        if hyperparameters.get("n_concepts", dataset.n_tags) != dataset.n_tags:
            raise ValueError(f"{cls.name} has one concept per tag: n_concepts must equal the tag count")
        hyperparameters.update(n_concepts=dataset.n_tags, semantic=True)
        config = MacridVAEConfig(n_items=dataset.n_items, **hyperparameters)
        model = cls(config)
        tags = dataset.item_tags.toarray()  # (N, K) tag counts
        items = pca_embeddings(features, config.embedding_dim, seed=0)  # Eq. 10
        membership = tag_membership(dataset.item_tags).astype(np.float32)  # main tags, as in evaluation
        counts = membership.sum(0)
        prototypes = (membership.T @ items) / np.maximum(counts, 1)[:, None]  # mean item of each tag
        with torch.no_grad():
            model.items.copy_(torch.from_numpy(items))
            has_items = torch.from_numpy(counts > 0)
            model.prototypes[has_items] = torch.from_numpy(prototypes[counts > 0].astype(np.float32))
            dominant = np.where(tags.max(1) > 0, tags.argmax(1), -1)
            model.item_category.copy_(torch.from_numpy(dominant.astype(np.int64)))
        return model


def concept_sums(kept: torch.Tensor, concepts: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """sum_i kept[b, i] c[i, k] t[i, :] for every user and concept. (B, N), (N, K), (N, d) -> (B, K, d)

    Two exact ways, the cheaper for the batch: gather each user's items (padded to the longest
    history) and multiply (B, K, L) by (B, L, d); or one sparse product with the (N, K·d) table of
    c[i, k] t[i, :] (long histories, e.g. ml-1m-implicit, where padding would cost more)."""
    (n, k), d = concepts.shape, context.shape[1]
    rows, cols = kept.nonzero(as_tuple=True)  # row-major: each user's items are contiguous
    counts = torch.bincount(rows, minlength=kept.shape[0])
    longest = int(counts.max()) if rows.numel() else 0
    if kept.shape[0] * longest * (k + d) > n * k * d:
        table = (concepts[:, :, None] * context[:, None, :]).reshape(n, k * d)
        return torch.sparse.mm(kept.to_sparse(), table).view(-1, k, d)
    starts = torch.cumsum(counts, 0) - counts
    slots = torch.arange(rows.numel(), device=kept.device) - starts[rows]  # position in the user's list
    items = torch.zeros(kept.shape[0], longest, dtype=torch.long, device=kept.device)
    weights = kept.new_zeros(kept.shape[0], longest)  # padding: item 0 with weight 0
    items[rows, slots], weights[rows, slots] = cols, kept[rows, cols]
    return torch.matmul((concepts[items] * weights[..., None]).transpose(1, 2), context[items])


class ConceptMixture(torch.autograd.Function):
    """out[b, n] = log sum_k exp(q[b, k] · h[n] + log_c[k, n]): Eq. 7-8's mixture with q = z / (||z|| τ),
    h the unit item embeddings and log_c = log c^T. (B, K, d), (N, d), (K, N) -> (B, N)

    Equal to `torch.logsumexp(torch.einsum("bkd,nd->bkn", q, h) + log_c, dim=1)`, without ever
    holding the (B, K, N) terms: USERS users at a time (a block stays in cache), in place, shifted
    by one bound on every logit (max ||q|| · max ||h|| + max log_c, so no exp overflows) instead of
    a per-entry maximum; a block whose sum underflows (a bound far above its logits) is redone with
    the maximum. The backward pass recomputes each block's softmax over k as exp(logit − out)."""

    USERS = 1  # users per block: a (1, K, N) block stays in L2 (fastest of 1, 2, 4, 8, 16, 32 on lastfm-2k)

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, h: torch.Tensor, log_c: torch.Tensor) -> torch.Tensor:
        bound = q.norm(dim=-1).max() * h.norm(dim=-1).max() + log_c.max() if q.numel() else q.new_zeros(())
        shifted = log_c - bound  # every logit minus the bound is <= 0
        h_t = h.T.contiguous()
        out = q.new_empty(q.shape[0], h.shape[0])
        for start in range(0, q.shape[0], ConceptMixture.USERS):
            rows = slice(start, start + ConceptMixture.USERS)
            block = torch.baddbmm(shifted, q[rows], h_t.expand(len(q[rows]), -1, -1))  # (b, K, N) logits − bound
            total = block.exp_().sum(dim=1)
            if bool((total > 0).all()):
                out[rows] = total.log_().add_(bound)
                continue
            block = torch.matmul(q[rows], h_t).add_(log_c)  # underflow: the per-entry maximum
            peak = block.amax(dim=1, keepdim=True)
            out[rows] = block.sub_(peak).exp_().sum(dim=1).log_().add_(peak.squeeze(1))
        ctx.save_for_backward(q, h, log_c, out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, h, log_c, out = ctx.saved_tensors
        h_t = h.T.contiguous()
        grad_q, grad_h, grad_l = torch.empty_like(q), torch.zeros_like(h), torch.zeros_like(log_c)
        for start in range(0, q.shape[0], ConceptMixture.USERS):
            rows = slice(start, start + ConceptMixture.USERS)
            block = torch.baddbmm(log_c, q[rows], h_t.expand(len(q[rows]), -1, -1))
            block.sub_(out[rows, None]).exp_()  # softmax over k
            block.mul_(grad[rows, None])  # d out[b, n] / d logit[b, k, n] · grad[b, n]
            grad_l += block[0] if len(block) == 1 else block.sum(dim=0)
            grad_q[rows] = torch.matmul(block, h)
            grad_h.addmm_(block.flatten(0, 1).T, q[rows].flatten(0, 1))  # sum over (b, k): no copy of the block
        return grad_q, grad_h, grad_l


def pca_embeddings(features: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """Eq. 10: project centred features on their top `dim` principal axes. (N, D) -> (N, dim)

    When the features have fewer than `dim` informative axes, the remaining columns get small
    random values so that the cosine geometry stays defined."""
    centred = features.astype(np.float64) - features.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    rank = min(dim, vt.shape[0])
    projected = centred @ vt[:rank].T  # (N, rank)
    if rank < dim:
        rng = np.random.default_rng(seed)
        scale = projected.std() * 1e-2 if projected.size else 1e-2
        projected = np.hstack([projected, rng.normal(scale=scale, size=(len(features), dim - rank))])
    return projected.astype(np.float32)
