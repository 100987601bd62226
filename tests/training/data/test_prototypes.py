"""Prototype choice (training/data/prototypes.py) on hand-made cases."""

import numpy as np
import pytest
import scipy.sparse as sp

from training.data.prototypes import choose_prototypes, listening_order
from training.data.raw import DataError


def _plays(listeners_and_plays: list[list[int]]) -> sp.csr_matrix:
    """Rows = users, columns = items, entries = play counts."""
    return sp.csr_matrix(np.array(listeners_and_plays, dtype=np.float32))


def test_listening_order_breaks_ties_by_plays_then_index() -> None:
    plays = _plays(
        [
            [1, 1, 5, 1, 0],
            [1, 1, 0, 9, 0],
            [0, 1, 0, 0, 1],
        ]
    )
    # listeners: 2, 3, 1, 2, 1; plays: 2, 3, 5, 10, 1
    rank = listening_order(plays)
    assert np.argsort(rank).tolist() == [1, 3, 0, 2, 4]


def test_each_tag_gets_its_most_listened_item_and_shared_items_go_to_the_stronger_tag() -> None:
    # 5 items, 3 tags. Item 0 is the most listened and carries tags 0 and 1: it was tagged 1 more
    # often, so tag 1 gets it and tag 0 falls back to its next most listened item (2). Tag 2's
    # items 3 and 4 have one listener each; item 4 has more plays.
    item_tags = sp.csr_matrix(
        np.array(
            [
                [6, 10, 0],
                [0, 8, 0],
                [5, 0, 0],
                [4, 0, 3],
                [0, 0, 9],
            ],
            dtype=np.float32,
        )
    )
    listeners = _plays(
        [
            [1, 1, 1, 1, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 0, 0, 5],
            [1, 0, 0, 0, 0],
        ]
    )  # item listeners: 4, 3, 2, 1, 1; items 3 and 4 tie on listeners, item 4 has more plays
    prototypes = choose_prototypes(item_tags, listeners, ["a", "b", "c"], min_tag_share=0.5)
    assert prototypes.tolist() == [2, 0, 4]
    assert len(set(prototypes.tolist())) == 3


def test_min_tag_share_excludes_items_where_the_tag_is_marginal() -> None:
    item_tags = sp.csr_matrix(np.array([[1, 20], [5, 0], [0, 3]], dtype=np.float32))
    listeners = _plays([[1, 1, 1], [1, 0, 1], [0, 0, 1]])  # item listeners: 2, 1, 3
    # Item 0 was tagged x once against 20 times y: not an x prototype at share 0.5 ...
    assert choose_prototypes(item_tags, listeners, ["x", "y"], min_tag_share=0.5).tolist() == [1, 2]
    # ... while the literal rule (any count) makes it x's, being more listened than item 1.
    assert choose_prototypes(item_tags, listeners, ["x", "y"], min_tag_share=0.0).tolist() == [0, 2]


def test_a_tag_that_is_nobodys_main_tag_falls_back_to_items_that_carry_it() -> None:
    item_tags = sp.csr_matrix(np.array([[9, 1], [4, 0]], dtype=np.float32))
    listeners = _plays([[1, 1], [1, 0]])
    # 'minor' is a marginal tag of item 0 only; item 0 is the most listened and 'major' wins it
    # (9 > 1), so 'minor' has nothing left.
    with pytest.raises(DataError, match="tag 'minor': all of its 1 items are prototypes of other tags"):
        choose_prototypes(item_tags, listeners, ["major", "minor"])
    # with item 1 more listened, 'major' takes item 1 and 'minor' falls back to item 0
    assert choose_prototypes(item_tags, _plays([[1, 1], [0, 1]]), ["major", "minor"]).tolist() == [1, 0]


def test_a_tag_without_items_is_named() -> None:
    item_tags = sp.csr_matrix(np.array([[1, 0], [1, 0]], dtype=np.float32))
    with pytest.raises(DataError, match="tag 'empty' has no items"):
        choose_prototypes(item_tags, _plays([[1, 1]]), ["full", "empty"])
