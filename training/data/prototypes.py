"""One prototype item per tag: "the most listened songs in the dataset for each tag" (APRON paper, Sec. 4).

Listened = number of training users who interacted with the item; ties are broken by the train
users' total play count, then by the lower item index.

An item "carries" a tag for this purpose when the tag is one of its main tags: given at least
`min_tag_share` times as often as the item's most given tag. Last.fm's user tags are noisy (one
user tagging Katy Perry "indie" would make her the indie prototype, being the most listened);
with the default 0.5 the prototypes are recognisable (classical -> Beethoven, folk -> Bob Dylan).
`min_tag_share=0` is the literal rule (any tag count). A tag that no free item has as a main tag
(a rare tag under strict filters) falls back to the items that carry it at all.

Each tag needs its own item (a prototype is the tag's listenable example and the model's key and
value for it), so when several tags' best items coincide, the item goes to the tag it was tagged
with most often (ties: the earlier, more used tag) and the other tags move on to their next item.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from training.data.raw import DataError


def listening_order(train_plays: sp.csr_matrix) -> np.ndarray:
    """rank[i] = position of item i when sorted by (listeners desc, total plays desc, index asc)."""
    listeners = train_plays.getnnz(axis=0)
    plays = np.asarray(train_plays.sum(axis=0)).ravel()
    order = np.lexsort((np.arange(len(listeners)), -plays, -listeners))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def main_tags(item_tags: sp.csr_matrix, min_tag_share: float) -> sp.csr_matrix:
    """The entries of `item_tags` [n_items, K] that are >= min_tag_share * their row's maximum."""
    item_tags = item_tags.tocsr()
    row_max = item_tags.max(axis=1).toarray().ravel()  # (n_items,)
    rows = np.repeat(np.arange(item_tags.shape[0]), np.diff(item_tags.indptr))
    keep = (item_tags.data > 0) & (item_tags.data >= min_tag_share * row_max[rows])
    return sp.csr_matrix((item_tags.data[keep], (rows[keep], item_tags.indices[keep])), shape=item_tags.shape)


def choose_prototypes(
    item_tags: sp.csr_matrix, train_plays: sp.csr_matrix, tag_names: list[str], min_tag_share: float = 0.5
) -> np.ndarray:
    """Distinct prototype item per tag, int64 [n_tags]; `item_tags` is [n_items, n_tags] tag counts."""
    rank = listening_order(train_plays)
    carried = main_tags(item_tags, min_tag_share)
    by_tag, main_by_tag = item_tags.tocsc(), carried.tocsc()
    candidates = []  # per tag: items with it as a main tag, then the other items with it; most listened first
    for k, name in enumerate(tag_names):
        items = by_tag.indices[by_tag.indptr[k] : by_tag.indptr[k + 1]]
        if len(items) == 0:
            raise DataError(f"tag {name!r} has no items")
        is_main = np.isin(items, main_by_tag.indices[main_by_tag.indptr[k] : main_by_tag.indptr[k + 1]])
        candidates.append(items[np.lexsort((rank[items], ~is_main))])

    prototypes = np.full(len(tag_names), -1, dtype=np.int64)
    next_candidate = np.zeros(len(tag_names), dtype=np.int64)
    taken: set[int] = set()
    while (prototypes < 0).any():
        wanted: dict[int, list[int]] = {}  # item -> unassigned tags whose best free item it is
        for k in np.flatnonzero(prototypes < 0):
            while next_candidate[k] < len(candidates[k]) and candidates[k][next_candidate[k]] in taken:
                next_candidate[k] += 1
            if next_candidate[k] == len(candidates[k]):
                raise DataError(
                    f"tag {tag_names[k]!r}: all of its {len(candidates[k])} items are prototypes of other tags"
                )
            wanted.setdefault(int(candidates[k][next_candidate[k]]), []).append(int(k))
        for item, tags in wanted.items():
            winner = max(tags, key=lambda k: (item_tags[item, k], -k))
            prototypes[winner] = item
            taken.add(item)
    return prototypes
