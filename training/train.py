"""The trainer: seeded mini-batch training with validation NDCG@100, early stopping and a
self-describing checkpoint (DESIGN.md section 3).

Every model trains through the same loop: `model.loss(x, anneal)` on dense batches of training
users. Models with an alternating schedule (RecVAE) describe it with `training_phases()`; the loop
runs each phase with its own optimizer. Annealing and the update counter live here, not in models.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from training.checkpoint import Checkpoint, dataset_summary
from training.device import machine_description, resolve_device
from training.evaluate import score_users
from training.metrics import exclude_history, mean_stderr, ndcg_at_k
from training.models.common import TrainingPhase
from training.models.registry import model_class

VALIDATION_K = 100


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(dataset: Any, model_name: str, features_kind: str | None, hyperparameters: dict[str, Any]) -> nn.Module:
    """The registry's class built from the dataset (and its content features when it uses them)."""
    cls = model_class(model_name)
    features = None
    if getattr(cls, "uses_features", False):
        if features_kind is None:
            raise ValueError(f"model {model_name!r} needs content features: pass features_kind")
        features = dataset.load_features(features_kind)
    return cls.from_data(dataset, features, **hyperparameters)


def validation_ndcg(model: nn.Module, dataset: Any, device: torch.device, k: int = VALIDATION_K) -> float:
    """Mean NDCG@k of val_tr -> val_te with the fold-in history excluded."""
    scores = exclude_history(score_users(model, dataset.val_tr, device), dataset.val_tr)
    return mean_stderr(ndcg_at_k(scores, dataset.val_te, k))[0]


def train(
    dataset: Any,
    model_name: str,
    *,
    features_kind: str | None = "text",
    epochs: int = 50,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    patience: int = 10,
    device: str | None = "auto",
    hyperparameters: dict[str, Any] | None = None,
    anneal_steps: int | None = None,
    weight_decay: float = 0.0,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any], int], None] | None = None,
) -> tuple[nn.Module, Checkpoint]:
    """Train `model_name` on `dataset` and return the best-validation model and its checkpoint info.

    `anneal_steps`: updates over which `anneal` grows linearly from 0 to 1 (the models scale their
    own β cap by it). None reaches 1 after 80 % of the planned updates: Liang et al. reach their cap
    after ~40k of ~47k updates on ML-20M; a fixed 200k would keep β near 0 on small datasets.

    `on_epoch(record, epochs)`: after each epoch, its record (epoch, mean losses, validation NDCG)
    and the planned epochs (for callers that show progress without the tqdm bar)."""
    hyperparameters = dict(hyperparameters or {})
    torch_device = resolve_device(device)
    seed_everything(seed)
    model = build_model(dataset, model_name, features_kind, dict(hyperparameters)).to(torch_device)
    phases = model.training_phases() if hasattr(model, "training_phases") else [
        TrainingPhase("all", list(model.parameters()))
    ]
    optimizers = [torch.optim.Adam(p.parameters, lr=lr, weight_decay=weight_decay) for p in phases]
    n_users = dataset.train.shape[0]
    batches_per_pass = -(-n_users // batch_size)
    if anneal_steps is None:
        anneal_steps = max(1, int(0.8 * epochs * batches_per_pass * sum(p.passes for p in phases)))
    order_rng = np.random.default_rng(seed)

    best_ndcg, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    history: list[dict[str, Any]] = []
    step, epochs_run = 0, 0
    start = time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc=f"train {model_name}", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        sums: dict[str, float] = {}
        n_batches = 0
        for phase, optimizer in zip(phases, optimizers, strict=True):
            for _ in range(phase.passes):
                for rows in np.array_split(order_rng.permutation(n_users), batches_per_pass):
                    x = torch.from_numpy(dataset.train[rows].toarray()).float().to(torch_device)
                    anneal = min(1.0, step / anneal_steps)
                    loss, parts = model.loss(x, anneal, **phase.loss_kwargs)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"{model_name}: loss became {loss.item()} at epoch {epoch}")
                    model.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    step += 1
                    n_batches += 1
                    for key, value in {"loss": loss.item(), **parts}.items():
                        sums[key] = sums.get(key, 0.0) + float(value)
            if phase.after is not None:
                phase.after()
        ndcg = validation_ndcg(model, dataset, torch_device)
        epochs_run = epoch
        record = {"epoch": epoch, **{k: v / n_batches for k, v in sums.items()}, f"val_ndcg@{VALIDATION_K}": ndcg}
        history.append(record)
        if ndcg > best_ndcg:
            best_ndcg, best_epoch = ndcg, epoch
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{record['loss']:.3f}", ndcg=f"{ndcg:.4f}", best=f"{best_ndcg:.4f}@{best_epoch}")
        if on_epoch is not None:
            on_epoch(record, epochs)
        if epoch - best_epoch >= patience:
            break
    wall_time = time.perf_counter() - start

    model.load_state_dict(best_state)
    model.eval()
    info = Checkpoint(
        model=model_name,
        config=dataclasses.asdict(model.config),
        dataset=dataset_summary(dataset),
        metrics={f"val_ndcg@{VALIDATION_K}": best_ndcg},
        train={
            "seed": seed,
            "epochs": epochs,
            "epochs_run": epochs_run,
            "best_epoch": best_epoch,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "patience": patience,
            "anneal_steps": anneal_steps,
            "updates": step,
            "features_kind": features_kind if getattr(model, "uses_features", False) else None,
            "hyperparameters": hyperparameters,
            "device": str(torch_device),
            "wall_time_s": round(wall_time, 2),
            "machine": machine_description(torch_device),
            "torch": torch.__version__,
            "history": history,
        },
    )
    return model, info
