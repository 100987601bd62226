"""`apron evaluate CHECKPOINT`: accuracy (Recall@20/50, NDCG@100 with standard errors) and, for
models with tag prototypes, controllability (APRON Eq. 15-17: Δ@20 and %Δ@20) on a held-out split.

Protocol (Liang et al. 2018, strong generalisation): the split's `*_tr` matrix is the fold-in
history given to the model, `*_te` the held-out items to find; history items are never ranked.
Controllability: for tag τ, U_τ = users whose fold-in history has an item carrying τ; the model
scores them once in full and once with τ's prototype weight dropped (`logits_without_tag`).
Three readings of it (issue 21):
- `pct_delta@20`: as served, with APRON's edit penalty γ (a scoring term, not the paper's, that
  demotes items attending to a removed prototype; the gateway applies it to "less X");
- `pct_delta@20_intrinsic`: the same weights with γ = 0, the model's own controllability (equal to
  the served figure when γ = 0 or the model has no γ);
- `pct_delta@20_unlabelled` (and `_unlabelled_intrinsic`): counted over the items whose tag labels
  training did not see (`hidden_label_share`), only for models trained so.
Every record also keeps each evaluated user's NDCG@100, Recall@20 and Recall@50 (`per_user`), so
two models on the same users can be compared by a paired statistic (`training.results.stats`).
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
    Controllability,
    TagDelta,
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
PER_USER_METRICS = (("recall", recall_at_k, 20), ("recall", recall_at_k, 50), ("ndcg", ndcg_at_k, 100))


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

    `tag_min_share`: which tags an item carries in T(·) (`training.metrics.tag_membership`).
    `per_user`: the split's row index of every evaluated user and their values of each metric."""
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', not {split!r}")
    fold_in: sp.csr_matrix = getattr(dataset, f"{split}_tr")
    heldout: sp.csr_matrix = getattr(dataset, f"{split}_te")
    users = np.flatnonzero(np.asarray(heldout.sum(axis=1)).ravel() > 0)  # users with something to find
    fold_in, heldout = fold_in[users], heldout[users]
    scores = exclude_history(score_users(model, fold_in, device, batch_size), fold_in)

    result: dict[str, Any] = {"split": split, "n_users": len(users)}
    per_user: dict[str, Any] = {"users": users.tolist()}
    for name, metric, k in PER_USER_METRICS:
        values = metric(scores, heldout, k)
        result[f"{name}@{k}"], result[f"{name}@{k}_stderr"] = mean_stderr(values)
        per_user[f"{name}@{k}"] = [round(float(v), 6) for v in values]
    result["per_user"] = per_user

    if not getattr(model, "controllable", False):
        for name in ("delta", "pct_delta"):
            for reading in ("", "_intrinsic"):
                result[_control_key(name, reading)] = NOT_APPLICABLE
        return result
    tag_items = tag_membership(dataset.item_tags, tag_min_share)  # (N, K)
    unlabelled = model.unlabelled_items() if hasattr(model, "unlabelled_items") else None
    counted = {"": None} if unlabelled is None else {"": None, "_unlabelled": unlabelled}
    served = controllability_counted(model, fold_in, scores, tag_items, counted, device, batch_size)
    intrinsic_model = model.without_edit_penalty() if hasattr(model, "without_edit_penalty") else model
    if intrinsic_model is model:  # no scoring-time term: the model's own figures are the served ones
        intrinsic = served
    else:
        own_scores = exclude_history(score_users(intrinsic_model, fold_in, device, batch_size), fold_in)
        intrinsic = controllability_counted(intrinsic_model, fold_in, own_scores, tag_items, counted, device, batch_size)
    for suffix in counted:
        for reading, control in (("", served[suffix]), ("_intrinsic", intrinsic[suffix])):
            result[_control_key("delta", suffix + reading)] = control.delta
            result[_control_key("delta", suffix + reading) + "_stderr"] = control.delta_stderr
            result[_control_key("pct_delta", suffix + reading)] = control.pct_delta
    control = served[""]
    result[f"delta_eq16@{CONTROL_K}"] = control.delta_eq16  # Eq. 16 as printed: unnormalised DCG_t
    result[f"delta_eq16@{CONTROL_K}_stderr"] = control.delta_eq16_stderr
    if unlabelled is not None:
        result["n_unlabelled_items"] = int(unlabelled.sum())
    result["per_tag"] = [
        {**asdict(t), "tag": dataset.tag_names[t.tag], "tag_index": t.tag, "group": dataset.tag_groups[t.tag]}
        for t in control.per_tag
    ]
    return result


def _control_key(name: str, suffix: str = "") -> str:
    """'pct_delta', '_intrinsic' -> 'pct_delta@20_intrinsic'."""
    return f"{name}@{CONTROL_K}{suffix}"


def controllability(
    model: nn.Module,
    dataset: Any,
    fold_in: sp.csr_matrix,
    full_scores: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    k: int = CONTROL_K,
    tag_min_share: float = TAG_MIN_SHARE,
) -> Controllability:
    """Eq. 17 for every tag over every item carrying it (`dataset.item_tags`), as the model scores."""
    tag_items = tag_membership(dataset.item_tags, tag_min_share)
    return controllability_counted(model, fold_in, full_scores, tag_items, {"": None}, device, batch_size, k)[""]


def controllability_counted(
    model: nn.Module,
    fold_in: sp.csr_matrix,
    full_scores: np.ndarray,
    tag_items: np.ndarray,
    counted: dict[str, np.ndarray | None],
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    k: int = CONTROL_K,
) -> dict[str, Controllability]:
    """Eq. 17 for every tag, averaged (`training.metrics.summarize_controllability`), once per entry
    of `counted`: None counts every item carrying τ in NDCG_t, a boolean (N,) mask only those
    items (the unlabelled ones). `tag_items`: boolean (N, K) membership T(·). U_τ is the same for
    all: the users whose history has an item carrying τ."""
    listened = (fold_in @ sp.csr_matrix(tag_items.astype(np.float32))).toarray() > 0  # (U, K)
    per_tag: dict[str, list[TagDelta]] = {name: [] for name in counted}
    for tag in range(tag_items.shape[1]):
        users = np.flatnonzero(listened[:, tag])  # U_τ
        if users.size == 0:
            continue
        history = fold_in[users]
        modified = exclude_history(score_users(model, history, device, batch_size, drop_tag=tag), history)
        for name, mask in counted.items():
            items = tag_items[:, tag] if mask is None else tag_items[:, tag] & mask
            result = tag_delta(tag_ndcg_at_k(full_scores[users], items, k), tag_ndcg_at_k(modified, items, k), tag)
            if result is not None:
                per_tag[name].append(result)
    return {name: summarize_controllability(deltas, k) for name, deltas in per_tag.items()}


def load_dataset_for(info_dataset: dict[str, Any], dataset_dir: str | Path | None) -> Any:
    """The processed dataset a checkpoint was trained on: its recorded path unless `dataset_dir`
    is given, and in both cases with the same fingerprint."""
    from training.data.dataset import ProcessedDataset

    path = Path(dataset_dir) if dataset_dir is not None else Path(info_dataset.get("path", ""))
    if not (path / "dataset.json").is_file():
        where = "--dataset" if dataset_dir is not None else "the checkpoint's recorded path; pass --dataset DIR"
        raise FileNotFoundError(f"no processed dataset at {path} ({where})")
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
    # the tag membership the model was trained with (APRON's `tag_min_share`), as the results runner
    # evaluates it: another one would report a different Δ@20 under the same name
    tag_min_share = getattr(getattr(model, "config", None), "tag_min_share", TAG_MIN_SHARE)
    metrics = evaluate_model(model, dataset, split, torch_device, tag_min_share=tag_min_share)
    result = {"model": info.model, "dataset": info.dataset["name"], **metrics}
    if plot is not None and "per_tag" in result:
        from training.plots import plot_tag_deltas

        title = f"{info.model} on {info.dataset['name']} ({split}): Δ@{CONTROL_K} per tag"
        result["plot"] = str(plot_tag_deltas(result["per_tag"], plot, title=title))
    return result
