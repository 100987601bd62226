"""Items whose tag labels training does not see: the catalog's real case, where new items arrive
without tags (issue 21). A fixed, seeded share of the items is hidden from every tag-driven loss;
evaluation then counts controllability over those items alone (`pct_delta@20_unlabelled`).

The prototypes are never hidden: a prototype is its tag's example item (chosen by `apron prepare`),
so its tag is what defines the prototype, not a label the model could learn from.
"""

from __future__ import annotations

import numpy as np

DEFAULT_HIDDEN_SHARE = 0.2  # the share `apron train --hide-tag-labels` and RESULTS.md's goal rows hide


def hidden_label_items(n_items: int, share: float, seed: int, keep: np.ndarray | None = None) -> np.ndarray:
    """Boolean (n_items,): round(share · n_items) items drawn with `seed` from those not in `keep`
    (item indices that must stay labelled). The draw depends on nothing but its arguments, so
    every training seed of a row hides the same items."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the hidden label share must be in [0, 1), got {share}")
    hidden = np.zeros(n_items, dtype=bool)
    candidates = np.setdiff1d(np.arange(n_items), np.asarray(keep if keep is not None else [], dtype=np.int64))
    count = min(len(candidates), round(share * n_items))
    if count:
        hidden[np.random.default_rng(seed).choice(candidates, size=count, replace=False)] = True
    return hidden
