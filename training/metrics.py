"""Ranking and controllability metrics, vectorised over users.

Every function returns one value per user (np.ndarray) so that callers report the mean and its
standard error (`mean_stderr`). Scores are expected with the fold-in history already excluded
(`exclude_history`), as in Liang et al. (2018)'s strong-generalisation protocol.

Controllability follows APRON (`../shared/papers/apron.txt`, Eq. 15-17); the exact definitions
used here (the paper leaves the normalisation open) are written on each function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from training.data.prototypes import main_tags

# An item carries tag τ when τ is one of its main tags: given at least half as often as the item's
# most given tag (the rule `apron prepare` uses for prototypes). Last.fm artists collect ~8 of the
# 80 tags from single users ("seen live", "rock" on a pop act); their ~3 main tags are the item's
# tags in the sense of APRON's T(·). Binary tags (MovieLens genres) are all main tags.
TAG_MIN_SHARE = 0.5


def tag_membership(item_tags: sp.spmatrix, min_share: float = TAG_MIN_SHARE) -> np.ndarray:
    """Boolean (N, K): item i carries tag k (see TAG_MIN_SHARE)."""
    return main_tags(sp.csr_matrix(item_tags), min_share).toarray() > 0


def _dense(matrix: np.ndarray | sp.spmatrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def exclude_history(scores: np.ndarray, history: np.ndarray | sp.spmatrix) -> np.ndarray:
    """A copy of `scores` with the fold-in items set to -inf so they are never recommended."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    scores[_dense(history) > 0] = -np.inf
    return scores


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k highest scores, best first. (U, N) -> (U, k)"""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _discounts(k: int) -> np.ndarray:
    """1 / log2(rank + 1) for ranks 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2))


def recall_at_k(scores: np.ndarray, heldout: np.ndarray | sp.spmatrix, k: int) -> np.ndarray:
    """Liang et al. (2018)'s normalised Recall@k: hits in the top k / min(k, |held-out|).

    Users without held-out items get NaN (callers drop them)."""
    relevant = _dense(heldout) > 0  # (U, N)
    hits = np.take_along_axis(relevant, top_k(scores, k), axis=1).sum(axis=1)
    n_relevant = relevant.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_relevant > 0, hits / np.minimum(k, n_relevant), np.nan)


def ndcg_at_k(scores: np.ndarray, heldout: np.ndarray | sp.spmatrix, k: int) -> np.ndarray:
    """NDCG@k with binary relevance: DCG@k / IDCG, IDCG over min(|held-out|, k) ideal ranks.

    Users without held-out items get NaN."""
    relevant = _dense(heldout) > 0
    ranked = top_k(scores, k)
    discounts = _discounts(ranked.shape[1])
    dcg = (np.take_along_axis(relevant, ranked, axis=1) * discounts).sum(axis=1)
    ideal_cumulative = np.concatenate([[0.0], np.cumsum(_discounts(k))])
    idcg = ideal_cumulative[np.minimum(relevant.sum(axis=1), k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(idcg > 0, dcg / idcg, np.nan)


def tag_ndcg_at_k(scores: np.ndarray, tag_items: np.ndarray, k: int) -> np.ndarray:
    """APRON Eq. 15-16, per user: sum over the top k of I(τ ∈ T(item)) / log2(rank + 1).

    Normalised by the ideal DCG@k (every one of the k recommendations carries τ), so the value
    is in [0, 1]; the paper's Eq. 16 leaves this DCG unnormalised. `tag_items` is a boolean (N,)
    mask of the items carrying τ."""
    ranked = top_k(scores, k)
    discounts = _discounts(ranked.shape[1])
    return (np.asarray(tag_items, dtype=bool)[ranked] * discounts).sum(axis=1) / discounts.sum()


@dataclass(frozen=True)
class TagDelta:
    """Eq. 17 for one tag over the users that count for it."""

    tag: int
    delta: float  # mean over users of NDCG_t^F - NDCG_t^M
    full: float  # mean NDCG_t^F over the same users
    modified: float  # mean NDCG_t^M
    n_users: int


def tag_delta(full_ndcg: np.ndarray, modified_ndcg: np.ndarray, tag: int) -> TagDelta | None:
    """Δ@k(τ) = NDCG_t^F@k(τ) - NDCG_t^M@k(τ) (Eq. 17) over the users given (U_τ), after
    dropping the users with 0 in both terms, as the paper says. None when no user is left."""
    keep = (full_ndcg > 0) | (modified_ndcg > 0)
    if not keep.any():
        return None
    full, modified = full_ndcg[keep], modified_ndcg[keep]
    return TagDelta(tag, float((full - modified).mean()), float(full.mean()), float(modified.mean()), int(keep.sum()))


def ideal_tag_dcg(k: int) -> float:
    """DCG@k of a list whose k items all carry τ: sum_{i=1..k} 1 / log2(i + 1) (≈ 7.04 at k = 20).

    `tag_ndcg_at_k` divides Eq. 15 by it; multiplying back gives Eq. 16's DCG as the paper writes it."""
    return float(_discounts(k).sum())


@dataclass(frozen=True)
class Controllability:
    delta: float  # Δ@k: mean of Δ@k(τ) over the tags with at least one counted user (NDCG_t normalised)
    delta_stderr: float  # standard error of that mean over tags
    pct_delta: float  # %Δ@k = 100 · mean_τ Δ@k(τ) / mean_τ NDCG_t^F@k(τ)
    per_tag: list[TagDelta]
    delta_eq16: float = float("nan")  # Δ@k with Eq. 16 as written (unnormalised DCG_t): delta · ideal DCG@k
    delta_eq16_stderr: float = float("nan")


def summarize_controllability(per_tag: list[TagDelta], k: int | None = None) -> Controllability:
    """Averages Eq. 17 over tags: the project's definition of Δ@k and %Δ@k.

        Δ@k(τ)  = mean_{u ∈ U_τ'} [NDCG_t^F@k(τ, u) − NDCG_t^M@k(τ, u)]      (Eq. 17; U_τ' = U_τ less the
                                                                              users with 0 in both terms)
        Δ@k     = mean_τ Δ@k(τ)                                              (over tags with U_τ' ≠ ∅)
        %Δ@k    = 100 · mean_τ Δ@k(τ) / mean_τ NDCG_t^F@k(τ)                 (ratio of the two tag means)

    i.e. the share of the tag-wise NDCG that dropping a prototype removes. NDCG_t is normalised by
    the ideal DCG@k (so Δ@k ∈ [-1, 1]); Eq. 16 as printed is the unnormalised DCG_t, reported as
    `delta_eq16` = Δ@k · ideal_tag_dcg(k) when `k` is given. %Δ@k is the same under both, since the
    normalisation is one constant for every user and tag."""
    if not per_tag:
        return Controllability(float("nan"), float("nan"), float("nan"), [])
    deltas = np.array([t.delta for t in per_tag])
    fulls = np.array([t.full for t in per_tag])
    mean_delta, stderr = mean_stderr(deltas)
    mean_full = fulls.mean()
    pct = 100.0 * mean_delta / mean_full if mean_full > 0 else float("nan")
    scale = ideal_tag_dcg(k) if k is not None else float("nan")
    return Controllability(mean_delta, stderr, float(pct), per_tag, mean_delta * scale, stderr * scale)


def mean_stderr(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n)) ignoring NaN."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    if values.size == 1:
        return float(values[0]), 0.0
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size))
