"""`apron evaluate CHECKPOINT`: accuracy (Recall@20/50, NDCG@100 with standard errors) and, for
models with tag prototypes, controllability (APRON Eq. 15-17: Δ@20 and %Δ@20) on a held-out split.

Protocol (Liang et al. 2018, strong generalisation): the split's `*_tr` matrix is the fold-in
history given to the model, `*_te` the held-out items to find; history items are never ranked.
Controllability: for tag τ, U_τ = users whose fold-in history has an item carrying τ; the model
scores them once in full and once with τ's prototype weight dropped (`logits_without_tag`).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from training.metrics import (
    TAG_MIN_SHARE,
    exclude_history,
    mean_stderr,
    ndcg_at_k,
    recall_at_k,
    summarize_controllability,
    tag_delta,
    tag_membership,
    tag_ndcg_at_k,
)

CONTROL_K = 20
NOT_APPLICABLE = "N/A"


@torch.no_grad()
def score_users(
    model: nn.Module,
    history: sp.csr_matrix,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    drop_tag: int | None = None,
) -> np.ndarray:
    """Logits for every row of `history` in eval mode; with `drop_tag`, the scores with that
    tag's prototype dropped. (U, N) float32"""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, history.shape[0], batch_size):
        x = torch.from_numpy(history[start : start + batch_size].toarray()).float().to(device)
        logits = model(x) if drop_tag is None else model.logits_without_tag(x, drop_tag)
        out.append(logits.float().cpu().numpy())
    model.train(was_training)
    if not out:
        return np.zeros((0, history.shape[1]), dtype=np.float32)
    return np.concatenate(out)


def evaluate_model(
    model: nn.Module,
    dataset: Any,
    split: str = "test",
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    tag_min_share: float = TAG_MIN_SHARE,
) -> dict[str, Any]:
    """The metrics of one model on `split` ('test' or 'val'), as a JSON-ready dict.

    `tag_min_share`: which tags an item carries in T(·) (`training.metrics.tag_membership`)."""
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', not {split!r}")
    fold_in: sp.csr_matrix = getattr(dataset, f"{split}_tr")
    heldout: sp.csr_matrix = getattr(dataset, f"{split}_te")
    users = np.flatnonzero(np.asarray(heldout.sum(axis=1)).ravel() > 0)  # users with something to find
    fold_in, heldout = fold_in[users], heldout[users]
    scores = exclude_history(score_users(model, fold_in, device, batch_size), fold_in)

    result: dict[str, Any] = {"split": split, "n_users": len(users)}
    for name, metric, k in (("recall", recall_at_k, 20), ("recall", recall_at_k, 50), ("ndcg", ndcg_at_k, 100)):
        mean, stderr = mean_stderr(metric(scores, heldout, k))
        result[f"{name}@{k}"] = mean
        result[f"{name}@{k}_stderr"] = stderr

    if not getattr(model, "controllable", False):
        result.update({f"delta@{CONTROL_K}": NOT_APPLICABLE, f"pct_delta@{CONTROL_K}": NOT_APPLICABLE})
        return result
    control = controllability(model, dataset, fold_in, scores, device, batch_size, tag_min_share=tag_min_share)
    result[f"delta@{CONTROL_K}"] = control.delta
    result[f"delta@{CONTROL_K}_stderr"] = control.delta_stderr
    result[f"pct_delta@{CONTROL_K}"] = control.pct_delta
    result[f"delta_eq16@{CONTROL_K}"] = control.delta_eq16  # Eq. 16 as printed: unnormalised DCG_t
    result[f"delta_eq16@{CONTROL_K}_stderr"] = control.delta_eq16_stderr
    result["per_tag"] = [
        {**asdict(t), "tag": dataset.tag_names[t.tag], "tag_index": t.tag, "group": dataset.tag_groups[t.tag]}
        for t in control.per_tag
    ]
    return result


def controllability(
    model: nn.Module,
    dataset: Any,
    fold_in: sp.csr_matrix,
    full_scores: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    k: int = CONTROL_K,
    tag_min_share: float = TAG_MIN_SHARE,
):
    """Eq. 17 for every tag, averaged (see `training.metrics.summarize_controllability`)."""
    tag_items = tag_membership(dataset.item_tags, tag_min_share).T  # (K, N) boolean
    listened = (fold_in @ sp.csr_matrix(tag_items.T.astype(np.float32))).toarray() > 0  # (U, K)
    per_tag = []
    for tag in range(tag_items.shape[0]):
        users = np.flatnonzero(listened[:, tag])  # U_τ
        if users.size == 0:
            continue
        history = fold_in[users]
        modified = exclude_history(score_users(model, history, device, batch_size, drop_tag=tag), history)
        result = tag_delta(
            tag_ndcg_at_k(full_scores[users], tag_items[tag], k), tag_ndcg_at_k(modified, tag_items[tag], k), tag
        )
        if result is not None:
            per_tag.append(result)
    return summarize_controllability(per_tag, k)


def load_dataset_for(info_dataset: dict[str, Any], dataset_dir: str | Path | None) -> Any:
    """The processed dataset a checkpoint was trained on: its recorded path unless `dataset_dir`
    is given, and in both cases with the same fingerprint."""
    from training.data.dataset import ProcessedDataset

    path = Path(dataset_dir) if dataset_dir is not None else Path(info_dataset.get("path", ""))
    if not (path / "dataset.json").is_file():
        raise FileNotFoundError(
            f"no processed dataset at {path} (the checkpoint's recorded path); pass --dataset DIR"
        )
    dataset = ProcessedDataset.load(path)
    if dataset.fingerprint != info_dataset["fingerprint"]:
        raise ValueError(
            f"dataset {path} has fingerprint {dataset.fingerprint[:12]}…, but the checkpoint was trained on "
            f"{info_dataset.get('name')!r} with fingerprint {info_dataset['fingerprint'][:12]}…: "
            "re-run `apron prepare` with the same options or pass the matching --dataset"
        )
    return dataset


def evaluate_checkpoint(
    checkpoint: str | Path,
    dataset_dir: str | Path | None = None,
    split: str = "test",
    plot: str | Path | None = None,
    device: str | None = "cpu",
) -> dict[str, Any]:
    """Load, evaluate and (for controllable models) draw the per-tag Δ chart to `plot`."""
    from training.checkpoint import load_checkpoint
    from training.device import resolve_device

    model, info = load_checkpoint(checkpoint)
    torch_device = resolve_device(device)
    model.to(torch_device)
    dataset = load_dataset_for(info.dataset, dataset_dir)
    result = {"model": info.model, "dataset": info.dataset["name"], **evaluate_model(model, dataset, split, torch_device)}
    if plot is not None and "per_tag" in result:
        from training.plots import plot_tag_deltas

        title = f"{info.model} on {info.dataset['name']} ({split}): Δ@{CONTROL_K} per tag"
        result["plot"] = str(plot_tag_deltas(result["per_tag"], plot, title=title))
    return result
