"""RecVAE: a Mult-VAE with a densely connected encoder, a composite prior and alternating updates.

Shenbin, Alekseev, Tutubalina, Malykh, Nikolenko (2020), "RecVAE: a New Variational Autoencoder
for Top-N Recommendations with Implicit Feedback" (WSDM). Section numbers refer to that paper:
- 3.2 encoder: five dense layers (width 600) on the L2-normalised, dropout-corrupted history,
  each layer's input is the sum of all previous layers' outputs, with swish and LayerNorm;
- 3.3 composite prior: a mixture of N(0, I), the posterior of the *previous epoch's* encoder and
  a wide N(0, e^10 I) with weights 3/20, 3/4, 1/10;
- 3.4 β' = γ·|x_u|: the KL weight grows with the size of the user's history (no annealing);
- 3.5 alternating training: the encoder (with input dropout) for 3 passes, then the old encoder
  copied into the prior, then the decoder (without dropout) for one pass.
The KL term is a one-sample Monte-Carlo estimate, log q(z|x) - log p(z), as in the authors' code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.models.common import (
    TrainingPhase,
    log_normal_pdf,
    multinomial_nll,
    normalize_and_drop,
    reparameterize,
)


@dataclass(frozen=True)
class RecVAEConfig:
    n_items: int
    hidden_dim: int = 600
    latent_dim: int = 200
    n_layers: int = 5
    dropout: float = 0.5  # encoder phase only
    gamma: float = 0.005  # β' = γ·|x_u| (section 3.4)
    mixture_weights: tuple[float, float, float] = (3 / 20, 3 / 4, 1 / 10)  # standard, old posterior, wide
    wide_logvar: float = 10.0
    encoder_passes: int = 3  # encoder sweeps per decoder sweep (section 3.5)


class DenseEncoder(nn.Module):
    """Section 3.2: h_l = LayerNorm(swish(W_l h_{l-1} + sum_{j<l} h_j)), then mu and logvar."""

    def __init__(self, n_items: int, hidden_dim: int, latent_dim: int, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.Linear(n_items if i == 0 else hidden_dim, hidden_dim) for i in range(n_layers)]
        )
        # eps=0.1 as in the authors' code: the normalised inputs are tiny and sparse.
        self.norms = nn.ModuleList([nn.LayerNorm(hidden_dim, eps=0.1) for _ in range(n_layers)])
        self.mu = nn.Linear(hidden_dim, latent_dim)
        self.logvar = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: torch.Tensor, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
        h = normalize_and_drop(x, dropout, self.training)  # (B, N)
        skip = torch.zeros((), device=x.device)  # sum of all previous layers' outputs
        for layer, norm in zip(self.layers, self.norms, strict=True):
            h = norm(F.silu(layer(h) + skip))  # swish = silu
            skip = skip + h
        return self.mu(h), self.logvar(h)


class RecVAE(nn.Module):
    name: ClassVar[str] = "recvae"
    config_class: ClassVar[type] = RecVAEConfig
    controllable: ClassVar[bool] = False
    uses_features: ClassVar[bool] = False

    def __init__(self, config: RecVAEConfig):
        super().__init__()
        self.config = config
        dims = (config.n_items, config.hidden_dim, config.latent_dim, config.n_layers)
        self.encoder = DenseEncoder(*dims)
        self.old_encoder = DenseEncoder(*dims)  # the composite prior's previous-epoch encoder
        self.old_encoder.requires_grad_(False)
        self.old_encoder.load_state_dict(self.encoder.state_dict())
        self.decoder = nn.Linear(config.latent_dim, config.n_items)

    @classmethod
    def from_data(cls, dataset: Any, features: np.ndarray | None = None, **hyperparameters: Any) -> RecVAE:
        return cls(RecVAEConfig(n_items=dataset.n_items, **hyperparameters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.encoder(x, self.config.dropout)
        return self.decoder(reparameterize(mu, logvar, self.training))

    def composite_prior(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Section 3.3: log p(z | φ_old, x), element-wise; the old posterior without dropout. (B, latent)"""
        old_mu, old_logvar = self.old_encoder(x, 0.0)
        zeros = torch.zeros_like(z)
        components = torch.stack(
            [
                log_normal_pdf(z, zeros, zeros),
                log_normal_pdf(z, old_mu, old_logvar),
                log_normal_pdf(z, zeros, torch.full_like(z, self.config.wide_logvar)),
            ],
            dim=-1,
        )  # (B, latent, 3)
        log_weights = torch.tensor([math.log(w) for w in self.config.mixture_weights], device=z.device)
        return torch.logsumexp(components + log_weights, dim=-1)

    def loss(
        self, x: torch.Tensor, anneal: float = 1.0, dropout: float | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELBO with β' = γ|x_u|. `anneal` is ignored: RecVAE replaces annealing by β'."""
        mu, logvar = self.encoder(x, self.config.dropout if dropout is None else dropout)
        z = reparameterize(mu, logvar, self.training)
        nll = multinomial_nll(self.decoder(z), x)
        kl_per_user = (log_normal_pdf(z, mu, logvar) - self.composite_prior(x, z)).sum(-1)  # (B,)
        kl = (self.config.gamma * x.sum(-1) * kl_per_user).mean()  # β' = γ·|x_u|
        return nll + kl, {"nll": nll.item(), "kl": kl.item()}

    def update_prior(self) -> None:
        """Section 3.3: the prior's encoder becomes a copy of the current one."""
        self.old_encoder.load_state_dict(self.encoder.state_dict())

    def training_phases(self) -> list[TrainingPhase]:
        """Section 3.5: encoder passes (with dropout), prior update, one decoder pass (no dropout)."""
        return [
            TrainingPhase(
                "encoder",
                list(self.encoder.parameters()),
                passes=self.config.encoder_passes,
                after=self.update_prior,
            ),
            TrainingPhase("decoder", list(self.decoder.parameters()), loss_kwargs={"dropout": 0.0}),
        ]
