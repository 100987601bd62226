"""Mult-VAE^PR: variational autoencoder with a multinomial likelihood and partial regularisation.

Liang, Krishnan, Hoffman, Jebara (2018), "Variational Autoencoders for Collaborative Filtering":
q(z|x) from an MLP [I -> 600 -> 2·200] (tanh) on the L2-normalised, dropout-corrupted history
(section 2.2.1), decoder [200 -> 600 -> I] (tanh) with a multinomial likelihood (Eq. 2), and the
β-weighted ELBO (Eq. 6). β is annealed from 0 to `beta` (0.2 in the paper); the trainer owns the
schedule and passes its progress in [0, 1] as `anneal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from training.models.common import gaussian_kl, mlp, multinomial_nll, normalize_and_drop, reparameterize


@dataclass(frozen=True)
class MultiVAEConfig:
    n_items: int
    hidden_dims: tuple[int, ...] = (600,)
    latent_dim: int = 200
    dropout: float = 0.5  # on the L2-normalised input
    beta: float = 0.2  # the annealing cap of the KL weight (Eq. 6)


class MultiVAE(nn.Module):
    name: ClassVar[str] = "multivae"
    config_class: ClassVar[type] = MultiVAEConfig
    controllable: ClassVar[bool] = False
    uses_features: ClassVar[bool] = False

    def __init__(self, config: MultiVAEConfig):
        super().__init__()
        self.config = config
        dims = [config.n_items, *config.hidden_dims]
        # The encoder's last layer outputs mu and logvar together (no tanh on it).
        self.encoder = mlp([*dims, 2 * config.latent_dim])
        self.decoder = mlp([config.latent_dim, *dims[::-1]])

    @classmethod
    def from_data(cls, dataset: Any, features: np.ndarray | None = None, **hyperparameters: Any) -> MultiVAE:
        return cls(MultiVAEConfig(n_items=dataset.n_items, **hyperparameters))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) -> mu, logvar (B, latent)."""
        h = self.encoder(normalize_and_drop(x, self.config.dropout, self.training))
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.encode(x)
        return self.decoder(reparameterize(mu, logvar, self.training))

    def loss(self, x: torch.Tensor, anneal: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
        mu, logvar = self.encode(x)
        logits = self.decoder(reparameterize(mu, logvar, self.training))
        nll = multinomial_nll(logits, x)
        kl = gaussian_kl(mu, logvar)
        beta = self.config.beta * anneal  # Eq. 6 with the annealed β
        return nll + beta * kl, {"nll": nll.item(), "kl": kl.item(), "beta": beta}
