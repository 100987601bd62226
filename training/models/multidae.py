"""Mult-DAE: denoising autoencoder with a multinomial likelihood.

Liang, Krishnan, Hoffman, Jebara (2018), "Variational Autoencoders for Collaborative Filtering",
section 2.3: the input history is L2-normalised and corrupted with dropout (p = 0.5), encoded by an
MLP [I -> 600 -> 200] and decoded by [200 -> 600 -> I] with tanh between layers; the loss is the
multinomial log-likelihood (Eq. 2) of the full history plus an L2 penalty λ·sum ||W||² on the
weight matrices (λ = 0.01 in the authors' code: `2 * l2_regularizer(lam)`, tf's l2_loss being
||W||²/2; biases are not penalised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from training.models.common import mlp, multinomial_nll, normalize_and_drop


@dataclass(frozen=True)
class MultiDAEConfig:
    n_items: int
    hidden_dims: tuple[int, ...] = (600,)  # encoder hidden layers; the decoder mirrors them
    latent_dim: int = 200
    dropout: float = 0.5  # on the L2-normalised input
    l2: float = 0.01  # λ of the weight penalty (Liang et al.'s Mult-DAE)


class MultiDAE(nn.Module):
    name: ClassVar[str] = "multidae"
    config_class: ClassVar[type] = MultiDAEConfig
    controllable: ClassVar[bool] = False
    uses_features: ClassVar[bool] = False

    def __init__(self, config: MultiDAEConfig):
        super().__init__()
        self.config = config
        dims = [config.n_items, *config.hidden_dims, config.latent_dim]
        # Liang et al. put tanh after every layer but the last, the bottleneck included.
        self.autoencoder = mlp(dims + dims[::-1][1:])

    @classmethod
    def from_data(cls, dataset: Any, features: np.ndarray | None = None, **hyperparameters: Any) -> MultiDAE:
        return cls(MultiDAEConfig(n_items=dataset.n_items, **hyperparameters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N) history -> (B, N) logits."""
        return self.autoencoder(normalize_and_drop(x, self.config.dropout, self.training))

    def loss(self, x: torch.Tensor, anneal: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
        nll = multinomial_nll(self(x), x)  # Eq. 2; dropout is active in train mode
        penalty = torch.stack([m.weight.pow(2).sum() for m in self.autoencoder if isinstance(m, nn.Linear)]).sum()
        return nll + self.config.l2 * penalty, {"nll": nll.item(), "l2": penalty.item()}
