"""APRON: Audio PROtotypical Network for controllable music recommendation.

Öncel, Penaloza, Wu, Gupta, Ravanelli, Charlin, Subakan (2025). Equation numbers below refer to
`../shared/papers/apron.txt`.

Each item's content features x_j are expressed as attention weights over K prototypes (the
features of one real item per tag), per head (Eq. 12). A user's profile is the sum of those
weights over the history (Eq. 13, before the value projection): an [H, K] matrix a person can
read ("40 % jazz") and edit. The scorer normalises each head's weights to shares, forms
u = concat_h sum_k share_{h,k} P~_{k,h} (Eq. 13-14) and maps u to item logits with f (Eq. 6).

The key and value of prototype k share one matrix A^p_{k,h} (the paper found this more
controllable); A^x_h projects the items' features in head h.

Switches (config fields; the default is this project's tuned behaviour unless marked "paper"):
- `prototype_init`: "copy" (default: A^p_{k,h} starts as a copy of A^x_h) or "random" (paper);
- `profile`: "mean" (default: each head's weights as shares, i.e. the history's mean) or "sum"
  (paper, Eq. 13 as printed; a training/evaluation ablation: the gateway's edits work on shares);
- `drop_renormalise`: True (default: dropping a prototype hands its mass to the others in
  proportion, as the gateway's scale-0 edit does) or False (its mass is just removed);
- `tag_min_share`: which tags an item carries for T(ŷ) (default 0.5 of its top tag; 0 = any count);
- `attention` / `attention_temperature`: "softmax" (paper) or "sparsemax" over prototypes, logits
  divided by temperature · sqrt(D') (1.0: paper);
- `lambda_tag_attention`: weight of a cross-entropy pulling each tagged item's attention (mean
  over heads) towards its tags (0: paper, off);
- `tag_groups`: G ≥ 0 (0: off, the paper): tags are clustered into G groups by the items they
  share (k-means on the tag-membership columns) and head h attends only to the prototypes of group
  h mod G, so a head is "the genre head" or "the era head" and dropping τ moves only its group's
  heads (the issue's "heads per tag group"; needs H ≥ G);
- `edit_penalty`: γ ≥ 0; the scorer subtracts γ · (the item's mean attention on prototypes whose
  share is exactly 0) from its logit, so "less τ" (a scale-0 edit) also pushes down the items that
  the model itself sees as τ. Only edits make a share 0: profiles are floored at PROFILE_FLOOR, so
  attention that underflows to 0 never counts as removed. Part of `score`, so export and serving
  run it too (0: paper, off); the math is export/served_model.py's `edit_penalty`, defined once for
  the model, the graphs and the torch backend: it costs nothing when no share is 0;
- `head_features`: "chunk" (paper: head h reads the h-th D/H slice of the features, Eq. 12's
  P_{k,h}) or "full" (every head reads all D: with a rank-64 SVD and H = 16 a slice is 4 numbers,
  too few to tell an item's tags apart, and the tag-supervised attention then stays diffuse);
- `hidden_label_share` / `hidden_label_seed`: the tag labels of this share of the items (drawn
  with the seed, never a prototype: `training.data.hidden_labels`) are withheld from training: the
  `item_tags` buffer, which every tag-driven loss and the tag groups read, has 0 rows for them, and
  the `labelled` buffer marks which items kept theirs, so evaluation can count controllability on
  the unlabelled items alone (new items arrive without tags). 0: every label is used.

The edit penalty γ is not the paper's: it acts only when scoring, never in training, so the same
weights score with and without it (`without_edit_penalty`); `apron evaluate` reports %Δ@20 both as
served (γ as configured: what the gateway applies to "less X") and intrinsic (γ = 0).

`PRESETS` names the combinations worth a name: "paper" (the config's defaults) and
"controllable" (chosen on lastfm-2k's validation users; RESULTS.md's goal rows): `apron train
--preset controllable`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.served_model import edit_penalty, penalty_table
from training.data.hidden_labels import hidden_label_items
from training.metrics import TAG_MIN_SHARE, tag_membership
from training.models.common import drop_history, mlp, multinomial_nll, standardize_stats

# Every prototype's weight in a non-empty history's profile is at least this, so a share of exactly
# 0 always means an edit removed the prototype (the edit penalty's signal), never that softmax
# attention underflowed to 0 (sharp heads, sparsemax, or an fp16 catalog table at serving time):
# without it the penalty also filtered unedited lists of short histories. A float32 normal number,
# far below any real attention mass; export/served_model.py repeats it (tests/export check both).
PROFILE_FLOOR = 1e-30

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # the option that issue 10's selection rule (training.results.goal_choice, on the sweep's
    # lastfm-2k validation users, tag-free features) picked; RESULTS.md prints the choice
    "controllable": {"head_features": "full", "lambda_tag_attention": 1.0, "edit_penalty": 50.0},
}


def training_revision(hyperparameters: dict[str, Any]) -> int:
    """The revision of APRON's training code that a configuration trains under. It is bumped for
    the configurations a change of the training code (not of their settings) trains differently,
    so that run records made before it no longer read as current (`training.results` stores it
    in a record's settings when it is not 0). 1: a summed profile's history dropout is rescaled
    by 1 / (1 - p) in training (inverted dropout, Eq. 13; `APRON.loss`). Keeping the edit penalty
    out of the loss (it shifted an emptied row's logits uniformly, which moved only float32
    rounding) is no bump: its records are kept and the report says which were trained with it
    (`training.results.report.GAMMA_IN_LOSS_UNTIL`)."""
    return 1 if hyperparameters.get("profile", APRONConfig.profile) == "sum" else 0


@dataclass(frozen=True)
class APRONConfig:
    n_items: int
    n_tags: int  # K: one prototype per tag
    feature_dim: int  # D of the raw content features
    n_heads: int = 16  # H (paper: 16)
    head_dim: int = 64  # D' of each head's key/value space
    hidden_dims: tuple[int, ...] = (600,)  # f's hidden layers
    dropout: float = 0.5  # input corruption of the history while training
    lambda_sep: float = 1.0  # λ1, Eq. 11
    lambda_ctrl: float = 0.005  # λ2, Eq. 11
    recsys_loss: str = "multinomial"  # Eq. 7's divergence: "multinomial" or "bce"
    eps: float = 1e-8  # inside Hellinger's square roots: sqrt'(0) is infinite
    prototype_init: str = "copy"  # "copy" of A^x (default) | "random" (paper)
    profile: str = "mean"  # "mean" (shares, default) | "sum" (Eq. 13)
    drop_renormalise: bool = True  # dropping a prototype renormalises the others (default)
    tag_min_share: float = TAG_MIN_SHARE  # tag membership for T(ŷ) (0: any count)
    attention: str = "softmax"  # "softmax" (paper) | "sparsemax" over the K prototypes
    attention_temperature: float = 1.0  # Eq. 12's logits / (temperature · sqrt(D'))
    lambda_tag_attention: float = 0.0  # weight of the item-attention tag supervision (off)
    edit_penalty: float = 0.0  # γ: logit − γ · attention on zero-share prototypes (off)
    tag_groups: int = 0  # G: head h attends only to the prototypes of tag group h mod G (0: off)
    head_features: str = "chunk"  # "chunk": head h reads the h-th D/H slice (Eq. 12) | "full": all D
    hidden_label_share: float = 0.0  # share of the items whose tag labels training never sees (0: none)
    hidden_label_seed: int = 0  # which items those are (fixed across training seeds)

    def __post_init__(self) -> None:
        choices = {"prototype_init": ("copy", "random"), "profile": ("mean", "sum"), "attention": ("softmax", "sparsemax"),
                   "head_features": ("chunk", "full")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"APRON {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.attention_temperature <= 0 or self.edit_penalty < 0 or self.lambda_tag_attention < 0:
            raise ValueError("APRON attention_temperature must be > 0, edit_penalty and lambda_tag_attention >= 0")
        if not 0 <= self.dropout < 1:  # 1 would drop every history (and a summed profile's rescale divide by 0)
            raise ValueError(f"APRON dropout must be in [0, 1), got {self.dropout}")
        if self.n_heads < 1 or self.head_dim < 1 or any(width < 1 for width in self.hidden_dims):
            raise ValueError(f"APRON n_heads, head_dim and hidden_dims must be at least 1, got {self.n_heads}, {self.head_dim}, {self.hidden_dims}")
        if not 0 <= self.tag_groups <= min(self.n_heads, self.n_tags):
            raise ValueError(f"APRON tag_groups must be in [0, min(n_heads, n_tags)], got {self.tag_groups}")
        if not 0 <= self.hidden_label_share < 1:
            raise ValueError(f"APRON hidden_label_share must be in [0, 1), got {self.hidden_label_share}")

    @property
    def chunk_dim(self) -> int:
        """What each head reads: D / H, rounding up (features are zero-padded to H equal chunks,
        Eq. 12's P_{k,h}), or all D ("full": with few feature dimensions, e.g. a rank-64 SVD and
        H = 16, a 4-dimensional slice is too little to tell which tag an item carries)."""
        if self.head_features == "full":
            return self.feature_dim
        return math.ceil(self.feature_dim / self.n_heads)


class APRON(nn.Module):
    name: ClassVar[str] = "apron"
    config_class: ClassVar[type] = APRONConfig
    controllable: ClassVar[bool] = True
    uses_features: ClassVar[bool] = True  # the trainer loads content features for it

    def __init__(self, config: APRONConfig):
        super().__init__()
        self.config = config
        n, k, h, c, d = config.n_items, config.n_tags, config.n_heads, config.chunk_dim, config.head_dim
        # Data-derived buffers: shapes from the config, values from from_data() or a checkpoint.
        self.register_buffer("item_features", torch.zeros(n, config.feature_dim))
        self.register_buffer("feature_mean", torch.zeros(config.feature_dim))
        self.register_buffer("feature_std", torch.ones(config.feature_dim))
        self.register_buffer("prototype_items", torch.zeros(k, dtype=torch.long))
        # binary tag membership as training sees it (T(ŷ), tag supervision): 0 rows for hidden labels
        self.register_buffer("item_tags", torch.zeros(n, k))
        if config.tag_groups:  # only then, so checkpoints without groups keep their state dict
            self.register_buffer("head_mask", torch.ones(h, k, dtype=torch.bool))  # may head h attend to k?
        if config.hidden_label_share:  # likewise: which items' labels training saw
            self.register_buffer("labelled", torch.ones(n, dtype=torch.bool))
        item_projection = torch.randn(h, c, d) / math.sqrt(c)
        self.item_projection = nn.Parameter(item_projection)  # A^x_h
        # "copy": A^p_{k,h} starts as a copy of A^x_h: each initial attention logit is then a
        # similarity between the item's and the prototype's feature chunks, so items start out
        # attending to the prototypes they resemble. "random" (the paper): independent random
        # A^p_{k,h} route items to prototypes at random (see RESULTS.md's ablation rows).
        if config.prototype_init == "copy":
            prototype_projection = item_projection.expand(k, h, c, d).clone()
        else:
            prototype_projection = torch.randn(k, h, c, d) / math.sqrt(c)
        self.prototype_projection = nn.Parameter(prototype_projection)  # A^p_{k,h}
        self.f = mlp([h * d, *config.hidden_dims, n])  # Eq. 6
        self.tag_classifier = nn.Linear(d, k)  # φ, Eq. 10

    @classmethod
    def from_data(cls, dataset: Any, features: np.ndarray | None, **hyperparameters: Any) -> APRON:
        if features is None:
            raise ValueError("APRON needs content features: run `apron features` first")
        config = APRONConfig(
            n_items=dataset.n_items, n_tags=dataset.n_tags, feature_dim=features.shape[1], **hyperparameters
        )
        model = cls(config)
        mean, std = standardize_stats(features)
        model.item_features.copy_(torch.from_numpy(features.astype(np.float32)))
        model.feature_mean.copy_(torch.from_numpy(mean))
        model.feature_std.copy_(torch.from_numpy(std))
        model.prototype_items.copy_(torch.as_tensor(dataset.prototype_items, dtype=torch.long))
        membership = tag_membership(dataset.item_tags, config.tag_min_share)
        if config.hidden_label_share:  # withheld before anything tag-driven reads the membership
            hidden = hidden_label_items(dataset.n_items, config.hidden_label_share, config.hidden_label_seed,
                                        keep=np.asarray(dataset.prototype_items))  # fmt: skip
            membership = membership & ~hidden[:, None]
            model.labelled.copy_(torch.from_numpy(~hidden))
        model.item_tags.copy_(torch.from_numpy(membership.astype(np.float32)))
        if config.tag_groups:
            groups = torch.from_numpy(tag_groups(membership, config.tag_groups))  # (K,)
            heads = torch.arange(config.n_heads) % config.tag_groups  # (H,)
            model.head_mask.copy_(heads[:, None] == groups[None, :])
        return model

    def unlabelled_items(self) -> np.ndarray | None:
        """Boolean (N,): the items whose tag labels training did not see; None when all were seen."""
        return None if not self.config.hidden_label_share else ~self.labelled.cpu().numpy()

    def without_edit_penalty(self) -> APRON:
        """The same weights scored with γ = 0: the model's own controllability, apart from the
        served demotion (γ acts only in `score_shares`, so training is unchanged). Self when γ = 0."""
        if self.config.edit_penalty == 0:
            return self
        twin = APRON(replace(self.config, edit_penalty=0.0))
        twin.load_state_dict(self.state_dict())
        return twin.to(self.item_features.device).train(self.training)

    def _chunks(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) raw features -> (N, H, chunk_dim) standardised chunks."""
        x = (features - self.feature_mean) / self.feature_std
        if self.config.head_features == "full":
            return x.unsqueeze(1).expand(-1, self.config.n_heads, -1)
        x = F.pad(x, (0, self.config.n_heads * self.config.chunk_dim - self.config.feature_dim))
        return x.view(-1, self.config.n_heads, self.config.chunk_dim)

    def prototype_values(self) -> torch.Tensor:
        """P~_{k,h} = P_{k,h} A^p_{k,h}, the keys and values of Eq. 12-13. -> (K, H, D')"""
        prototypes = self._chunks(self.item_features[self.prototype_items])  # (K, H, C)
        return torch.einsum("khc,khcd->khd", prototypes, self.prototype_projection)

    def encode_items(self, features: torch.Tensor) -> torch.Tensor:
        """Eq. 12: per-head softmax over prototypes of each item. (N, D) -> (N, H, K)"""
        queries = torch.einsum("nhc,hcd->nhd", self._chunks(features), self.item_projection)  # (N, H, D')
        logits = torch.einsum("nhd,khd->nhk", queries, self.prototype_values())
        logits = logits / (self.config.attention_temperature * math.sqrt(self.config.head_dim))
        if self.config.tag_groups:  # exact zeros outside the head's group, for softmax and sparsemax
            logits = logits.masked_fill(~self.head_mask, -1e4)
        return sparsemax(logits) if self.config.attention == "sparsemax" else torch.softmax(logits, dim=-1)

    def item_prototype_weights(self) -> torch.Tensor:
        """Eq. 12 for every catalog item. -> (N, H, K)"""
        return self.encode_items(self.item_features)

    def profile_weights(self, x: torch.Tensor, item_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 13 before the value projection: sum of the history's prototype weights. (B, N) -> (B, H, K)"""
        if item_weights is None:
            item_weights = self.item_prototype_weights()
        return floor_profile(torch.einsum("bn,nhk->bhk", x, item_weights))

    def shares(self, profile_weights: torch.Tensor) -> torch.Tensor:
        """What u is built from: per-head shares ("mean") or the summed weights themselves ("sum")."""
        return profile_shares(profile_weights) if self.config.profile == "mean" else profile_weights

    def score(self, profile_weights: torch.Tensor, penalise: bool = True) -> torch.Tensor:
        """Shares per head, u (Eq. 13-14), logits f(u) (Eq. 6). (B, H, K) -> (B, N)
        `penalise`: apply the edit penalty γ (scoring); `loss` passes False (`score_shares`)."""
        return self.score_shares(self.shares(profile_weights), penalise)

    def score_shares(self, shares: torch.Tensor, penalise: bool = True) -> torch.Tensor:
        """u = concat_h sum_k shares_{h,k} P~_{k,h} (Eq. 13-14), then f (Eq. 6), then the edit penalty.

        `penalise=False` leaves the penalty out: the training loss, where it has no place. There a
        row whose history dropout removed every item has all shares 0, which reads as "every
        prototype removed", and γ shifted all its logits by −γ: equal in exact arithmetic, but in
        float32 it moved the gradients (~1e-8) and with them early stopping, so options differing
        only in γ trained differently."""
        u = torch.einsum("bhk,khd->bhd", shares, self.prototype_values())  # (B, H, D')
        logits = self.f(u.flatten(1))  # Eq. 14 concatenates the heads
        removed = shares == 0  # (B, H, K): prototypes an edit set to 0 (profiles are floored)
        if penalise and self.config.edit_penalty > 0 and bool(removed.any()):  # the catalog's attention only when needed
            table = penalty_table(self.item_prototype_weights())  # (K + H*K, N)
            logits = edit_penalty(logits, removed, table, self.config.edit_penalty)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.profile_weights(x))

    def logits_without_tag(self, x: torch.Tensor, tag: int) -> torch.Tensor:
        """Eq. 17's modified model: tag's prototype weight dropped in every head.

        drop_renormalise=True: the remaining prototypes keep each head's total (the gateway's
        scale-0 edit); False: the dropped share is simply missing from u (Eq. 13 without it)."""
        weights = self.profile_weights(x)
        if not self.config.drop_renormalise:
            shares = self.shares(weights).clone()
            shares[:, :, tag] = 0.0
            return self.score_shares(shares)
        dropped = weights.clone()
        dropped[:, :, tag] = 0.0
        if self.config.profile == "sum":  # "mean" renormalises inside score
            dropped = dropped * (weights.sum(-1, keepdim=True) / dropped.sum(-1, keepdim=True).clamp_min(1e-12))
        return self.score(dropped)

    def loss(self, x: torch.Tensor, anneal: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 11: L = L_RecSys + λ1 L_prototype-sep + λ2 L_controllability."""
        cfg = self.config
        item_weights = self.item_prototype_weights()  # (N, H, K), once per batch
        # Eq. 13's sum is not normalised, so a history thinned by dropout p would train f on
        # profiles (1 - p) times the size of the full ones it scores at evaluation: the kept
        # interactions are scaled by 1 / (1 - p) in training only. "mean" normalises them away.
        history = drop_history(x, cfg.dropout, self.training, rescale=cfg.profile == "sum")
        weights = self.profile_weights(history, item_weights)
        # γ is a scoring-time term: the loss never applies it, so the weights trained are the
        # same for every γ, bit for bit (`without_edit_penalty` relies on it)
        logits = self.score(weights, penalise=False)
        if cfg.recsys_loss == "bce":
            recsys = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1).mean()
        else:
            recsys = multinomial_nll(logits, x)  # Eq. 7
        separability = self.separability_loss()
        controllability = self.controllability_loss(weights, logits)
        total = recsys + cfg.lambda_sep * separability + cfg.lambda_ctrl * controllability
        parts = {"recsys": recsys.item(), "sep": separability.item(), "ctrl": controllability.item()}
        if cfg.lambda_tag_attention > 0:
            tag_attention = self.tag_attention_loss(item_weights)
            total = total + cfg.lambda_tag_attention * tag_attention
            parts["tag_attention"] = tag_attention.item()
        return total, parts

    def tag_attention_loss(self, item_weights: torch.Tensor) -> torch.Tensor:
        """Cross-entropy from each tagged item's tag distribution (its tags, uniform) to its
        attention over prototypes (mean over heads): items attend to their own tags' prototypes."""
        tagged = self.item_tags.sum(-1) > 0  # (N,)
        target = self.item_tags[tagged] / self.item_tags[tagged].sum(-1, keepdim=True)  # (N', K)
        attention = item_weights[tagged].mean(dim=1)  # (N', K)
        return -(target * torch.log(attention + 1e-6)).sum(-1).mean()

    def separability_loss(self) -> torch.Tensor:
        """Eq. 10: φ(P~_{k,h}) classified as tag k, cross-entropy over all (k, h)."""
        values = self.prototype_values()  # (K, H, D')
        k, h = values.shape[:2]
        logits = self.tag_classifier(values).reshape(k * h, k)
        targets = torch.arange(k, device=values.device).repeat_interleave(h)
        return F.cross_entropy(logits, targets)

    def controllability_loss(self, weights: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Eq. 9: Hellinger distance between the profile's tag distribution and T(ŷ).

        T(ŷ) is made differentiable as the expected tag distribution of an item drawn from
        softmax(logits): sum_i ŷ_i · tags_i / |tags_i|, normalised over tags."""
        eps = self.config.eps
        profile = profile_shares(weights).mean(dim=1)  # (B, K): heads averaged
        tag_rows = self.item_tags / self.item_tags.sum(-1, keepdim=True).clamp_min(1.0)  # (N, K)
        tag_mass = torch.softmax(logits, dim=-1) @ tag_rows  # (B, K)
        target = tag_mass / tag_mass.sum(-1, keepdim=True).clamp_min(eps)
        squared = (torch.sqrt(profile + eps) - torch.sqrt(target + eps)).pow(2).sum(-1)
        return (torch.sqrt(squared + eps) / math.sqrt(2.0)).mean()


def tag_groups(membership: np.ndarray, n_groups: int, iterations: int = 50) -> np.ndarray:
    """Cluster the K tags into n_groups by the items they are given to: spherical k-means on the
    (N, K) membership's columns, seeded deterministically by farthest points. -> (K,) group ids,
    every group non-empty."""
    vectors = membership.T.astype(np.float64)  # (K, N)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    centres = [int(np.argmax(vectors.sum(1)))]  # the most shared tag, then the least similar ones
    while len(centres) < n_groups:
        similarity = (vectors @ vectors[centres].T).max(axis=1)
        similarity[centres] = np.inf
        centres.append(int(np.argmin(similarity)))
    means = vectors[centres]
    assignment = np.zeros(len(vectors), dtype=np.int64)
    for step in range(iterations):
        similarity = vectors @ means.T  # (K, G)
        for g in range(n_groups):  # no group may empty: seed it with its own centre tag
            similarity[centres[g], g] = np.inf
        new = similarity.argmax(axis=1)
        if step and np.array_equal(new, assignment):
            break
        assignment = new
        means = np.stack([vectors[assignment == g].mean(0) for g in range(n_groups)])
        means /= np.linalg.norm(means, axis=1, keepdims=True).clip(min=1e-12)
    return assignment


def sparsemax(logits: torch.Tensor) -> torch.Tensor:
    """Sparsemax over the last dimension (Martins & Astudillo 2016): the Euclidean projection onto
    the simplex, so weak prototypes get exactly 0. (..., K) -> (..., K)"""
    sorted_logits, _ = torch.sort(logits, dim=-1, descending=True)
    cumulative = sorted_logits.cumsum(dim=-1)
    ranks = torch.arange(1, logits.shape[-1] + 1, device=logits.device, dtype=logits.dtype)
    support = (1 + ranks * sorted_logits > cumulative).to(logits.dtype)  # (..., K), a prefix of ones
    size = support.sum(dim=-1, keepdim=True)  # (..., 1)
    threshold = (torch.gather(cumulative, -1, size.long() - 1) - 1) / size
    return torch.clamp(logits - threshold, min=0.0)


def floor_profile(weights: torch.Tensor) -> torch.Tensor:
    """(..., H, K) summed weights -> the same, at least PROFILE_FLOOR in every head that has mass
    (an empty history stays all 0)."""
    has_mass = weights.sum(dim=-1, keepdim=True) > 0
    return torch.where(has_mass, weights.clamp_min(PROFILE_FLOOR), weights)


def profile_shares(weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each head's weights as shares summing to 1 over prototypes. (..., H, K) -> (..., H, K)

    Edits act on weights; the scorer only sees shares, so scaling one prototype re-normalises the
    others (its mass is redistributed proportionally) and an empty history maps to zeros."""
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(eps)
