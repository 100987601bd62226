"""Metric functions against cases computed by hand."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from training.metrics import (
    TagDelta,
    exclude_history,
    ideal_tag_dcg,
    mean_stderr,
    ndcg_at_k,
    recall_at_k,
    summarize_controllability,
    tag_delta,
    tag_ndcg_at_k,
    top_k,
)

# One user, five items ranked 0, 2, 4, 3, 1; held-out items 2 and 3 (ranks 2 and 4).
SCORES = np.array([[0.9, 0.1, 0.8, 0.3, 0.5]])
HELDOUT = sp.csr_matrix(np.array([[0, 0, 1, 1, 0]], dtype=np.float32))
LOG2_3 = math.log2(3)


def test_top_k_orders_best_first() -> None:
    assert top_k(SCORES, 3).tolist() == [[0, 2, 4]]
    assert top_k(SCORES, 10).tolist() == [[0, 2, 4, 3, 1]]  # k larger than the catalog


@pytest.mark.parametrize(("k", "expected"), [(1, 0.0), (2, 0.5), (3, 0.5), (4, 1.0)])
def test_recall_is_normalised_by_min_k_and_heldout(k: int, expected: float) -> None:
    # k=3: 1 hit / min(3, 2 held-out) = 0.5 (Liang et al.'s denominator, not |held-out| = 2 by luck)
    assert recall_at_k(SCORES, HELDOUT, k)[0] == pytest.approx(expected)


def test_recall_denominator_is_k_when_heldout_is_larger() -> None:
    scores = np.array([[4.0, 3.0, 2.0, 1.0]])
    heldout = np.array([[1, 0, 1, 1]])  # 3 held-out, top-2 = items 0, 1 -> 1 hit / min(2, 3)
    assert recall_at_k(scores, heldout, 2)[0] == pytest.approx(0.5)


def test_ndcg_by_hand() -> None:
    idcg = 1 + 1 / LOG2_3  # two relevant items at ranks 1 and 2
    assert ndcg_at_k(SCORES, HELDOUT, 1)[0] == pytest.approx(0.0)
    assert ndcg_at_k(SCORES, HELDOUT, 3)[0] == pytest.approx((1 / LOG2_3) / idcg)  # 0.386853
    assert ndcg_at_k(SCORES, HELDOUT, 5)[0] == pytest.approx((1 / LOG2_3 + 1 / math.log2(5)) / idcg)
    assert ndcg_at_k(SCORES, HELDOUT, 3)[0] == pytest.approx(0.386853, abs=1e-6)


def test_ndcg_ideal_is_truncated_at_k() -> None:
    # three held-out items, k = 2, both top-2 relevant -> perfect score 1 (IDCG over min(3, 2) ranks)
    scores = np.array([[5.0, 4.0, 3.0, 2.0]])
    heldout = np.array([[1, 1, 1, 0]])
    assert ndcg_at_k(scores, heldout, 2)[0] == pytest.approx(1.0)


def test_users_without_heldout_are_nan_and_mean_ignores_them() -> None:
    scores = np.vstack([SCORES, SCORES])
    heldout = np.vstack([HELDOUT.toarray(), np.zeros((1, 5))])
    values = ndcg_at_k(scores, heldout, 3)
    assert math.isnan(values[1]) and math.isnan(recall_at_k(scores, heldout, 3)[1])
    assert mean_stderr(values) == (pytest.approx(0.386853, abs=1e-6), 0.0)


def test_exclude_history_never_recommends_history() -> None:
    history = sp.csr_matrix(np.array([[1, 0, 0, 0, 0]], dtype=np.float32))
    masked = exclude_history(SCORES, history)
    assert top_k(masked, 2).tolist() == [[2, 4]]
    assert SCORES[0, 0] == 0.9  # the input is not modified


def test_mean_stderr_by_hand() -> None:
    mean, stderr = mean_stderr(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == pytest.approx(2.5)
    assert stderr == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)  # 1.290994 / 2


def test_tag_ndcg_is_normalised_by_ideal_dcg_at_k() -> None:
    tag_items = np.array([False, True, True, False, True])
    # top-3 = items 0, 2, 4 -> indicators 0, 1, 1
    expected = (1 / LOG2_3 + 1 / 2) / (1 + 1 / LOG2_3 + 1 / 2)  # 0.530721
    assert tag_ndcg_at_k(SCORES, tag_items, 3)[0] == pytest.approx(expected)
    assert tag_ndcg_at_k(SCORES, np.ones(5, dtype=bool), 3)[0] == pytest.approx(1.0)
    assert tag_ndcg_at_k(SCORES, np.zeros(5, dtype=bool), 3)[0] == 0.0


def test_tag_delta_filters_users_with_zero_in_both_terms() -> None:
    result = tag_delta(np.array([0.5, 0.0, 0.2]), np.array([0.1, 0.0, 0.4]), tag=7)
    assert result == TagDelta(tag=7, delta=pytest.approx(0.1), full=pytest.approx(0.35),
                              modified=pytest.approx(0.25), n_users=2)
    assert tag_delta(np.zeros(3), np.zeros(3), tag=0) is None


def test_controllability_summary_by_hand() -> None:
    per_tag = [TagDelta(0, 0.1, 0.35, 0.25, 2), TagDelta(1, 0.3, 0.25, -0.05, 4)]
    summary = summarize_controllability(per_tag)
    assert summary.delta == pytest.approx(0.2)
    assert summary.delta_stderr == pytest.approx(0.1)  # std([0.1, 0.3], ddof=1) / sqrt(2)
    assert summary.pct_delta == pytest.approx(100 * 0.2 / 0.3)
    assert math.isnan(summarize_controllability([]).delta)


def test_eq16_delta_is_the_unnormalised_dcg_and_leaves_pct_delta_unchanged() -> None:
    ideal = 1 + 1 / LOG2_3 + 1 / math.log2(4)  # k = 3
    assert ideal_tag_dcg(3) == pytest.approx(ideal)
    # one user, top 3 = items 0, 2, 4: tag on items 0 and 4 -> DCG_t = 1 + 1/log2(4)
    tag_items = np.array([1, 0, 0, 0, 1], dtype=bool)
    assert tag_ndcg_at_k(SCORES, tag_items, 3)[0] * ideal == pytest.approx(1.5)
    per_tag = [TagDelta(0, 0.1, 0.35, 0.25, 2), TagDelta(1, 0.3, 0.25, -0.05, 4)]
    summary = summarize_controllability(per_tag, k=3)
    assert summary.delta_eq16 == pytest.approx(0.2 * ideal)
    assert summary.delta_eq16_stderr == pytest.approx(0.1 * ideal)
    assert summary.pct_delta == pytest.approx(summarize_controllability(per_tag).pct_delta)
