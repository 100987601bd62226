"""Pieces shared by several models: written once here and imported (never pasted per model)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def mlp(dims: list[int], activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """Linear layers of the given widths with `activation` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def multinomial_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mult-VAE/DAE likelihood (Liang et al. 2018, Eq. 2): -sum_i x_i log softmax(logits)_i, batch mean."""
    return -(F.log_softmax(logits, dim=-1) * x).sum(dim=-1).mean()


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, training: bool) -> torch.Tensor:
    """z = mu + eps * sigma while training; the mean at evaluation (deterministic forward)."""
    if not training:
        return mu
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) summed over latent dims, batch mean."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=-1)).mean()


def drop_history(x: torch.Tensor, p: float, training: bool, rescale: bool = False) -> torch.Tensor:
    """Denoising input corruption: each interaction is dropped with probability p while training.

    A model that normalises its input afterwards needs no 1/(1-p) rescaling; one that does not
    (APRON's summed profile) passes rescale=True, so that what it reads in training has the
    expected size of the full history it reads at evaluation (inverted dropout)."""
    if not training or p <= 0:
        return x
    kept = x * (torch.rand_like(x) >= p).to(x.dtype)
    return kept / (1.0 - p) if rescale else kept


def standardize_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std over items.

    Raw (L2-normalised) sentence embeddings left the prototype attention uniform in an earlier
    prototype; z-scoring each dimension gives the attention logits a usable scale."""
    mean = features.mean(axis=0).astype(np.float32)
    std = features.std(axis=0).astype(np.float32)
    return mean, np.where(std > 1e-6, std, 1.0).astype(np.float32)


def normalize_and_drop(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Liang et al. 2018's encoder input: L2-normalise each user's history, then dropout p.

    Unlike `drop_history`, this is standard (rescaling) dropout on the normalised vector, as in
    the Mult-DAE/VAE and RecVAE reference code."""
    return F.dropout(F.normalize(x, dim=-1), p=p, training=training)


def log_normal_pdf(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(z; mu, exp(logvar))."""
    return -0.5 * (logvar + math.log(2 * math.pi) + (z - mu).pow(2) / logvar.exp())


@dataclass(frozen=True)
class TrainingPhase:
    """One step of a model's alternating schedule (RecVAE updates encoder and decoder in turn).

    The trainer runs `passes` sweeps over the training users with an optimizer over `parameters`
    only, calling `model.loss(x, anneal, **loss_kwargs)`, then `after()` if given. Models without
    `training_phases()` get one phase over all parameters."""

    name: str
    parameters: list[nn.Parameter]
    passes: int = 1
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    after: Callable[[], None] | None = None
