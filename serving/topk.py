"""Top-k post-processing of the scorer's `top_ids` / `top_scores` (best first, width K_MAX)."""

from __future__ import annotations

import numpy as np


def select_top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `k` real recommendations: (K_MAX,) ids and scores -> (<= k,) each.

    Excluded items carry a score of -inf and sort last. When fewer than K_MAX items are left
    unexcluded, they fill the tail of TopK and are dropped here, so the answer may hold fewer
    than k items. Ids outside the catalog (negative) are dropped too."""
    ids, scores = np.asarray(ids).reshape(-1), np.asarray(scores).reshape(-1)
    keep = np.isfinite(scores) & (ids >= 0)
    return ids[keep][:k], scores[keep][:k]
