"""A seeded synthetic dataset with planted tags, for tests and for runs at the paper's scale.

Ground truth:
- each item has 1-3 distinct tags and a log-normal popularity;
- its content features are the sum of its tags' random unit directions plus Gaussian noise of
  norm ~`feature_noise` (so features carry the tags, as audio features carry genre and mood);
- each user likes 1-3 distinct tags with Dirichlet(1) weights; each of their draws picks one of
  those tags by weight and an item of that tag by popularity, except a `noise` share drawn from
  global popularity. Repeated draws of one item become its play count.

Everything is vectorised numpy: the paper's MSD scale (40,940 items, ~570k users, ~30 draws each)
takes seconds and a few GB. The features are saved as `features/synthetic.npy` by `apron prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from training.data.raw import RawDataset
from training.data.splits import FilterConfig

DEFAULT_FILTERS = FilterConfig(min_user_interactions=5, min_item_users=0)
GROUPS = ("genre", "mood", "era", "instrumentation")  # the paper's four tag groups, assigned in turn
MAX_TAGS = 3  # per item and per user


@dataclass(frozen=True)
class SyntheticConfig:
    n_items: int = 2_000
    n_users: int = 5_000
    n_tags: int = 20
    feature_dim: int = 64
    mean_draws: float = 30.0  # interactions drawn per user on average (before merging repeats)
    min_draws: int = 5
    noise: float = 0.1  # share of draws from global popularity instead of the user's tags
    feature_noise: float = 0.5  # norm of the features' noise; each tag direction has norm 1
    popularity_sigma: float = 1.0  # log-normal spread of item popularity
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_tags < MAX_TAGS or self.n_items < self.n_tags:
            raise ValueError(
                f"need n_tags >= {MAX_TAGS} and n_items >= n_tags, got {self.n_tags}, {self.n_items}"
            )
        if self.n_users < 1 or self.feature_dim < 1 or self.mean_draws < self.min_draws or self.min_draws < 1:
            raise ValueError("need n_users >= 1, feature_dim >= 1 and 1 <= min_draws <= mean_draws")


@dataclass
class SyntheticData:
    raw: RawDataset  # raw.features["synthetic"]: [n_items, feature_dim]
    user_tags: np.ndarray  # (n_users, 3) int64 each user's tags, -1 where the user has fewer
    user_tag_weights: np.ndarray  # (n_users, 3) float64, rows sum to 1
    tag_directions: np.ndarray  # (n_tags, feature_dim) unit vectors


def generate(config: SyntheticConfig) -> SyntheticData:
    rng = np.random.default_rng(config.seed)
    n_items, n_users, n_tags = config.n_items, config.n_users, config.n_tags

    # Items: 1-3 distinct tags; the first n_tags items cover every tag once so none is empty.
    first = rng.integers(0, n_tags, n_items)
    first[:n_tags] = rng.permutation(n_tags)
    item_tag_ids = _distinct_tags(rng, n_items, n_tags, first)  # (n_items, 3)
    n_item_tags = rng.integers(1, MAX_TAGS + 1, n_items)
    has = np.arange(MAX_TAGS) < n_item_tags[:, None]  # (n_items, 3)
    item_tags = sp.csr_matrix(
        (np.ones(has.sum(), dtype=np.float32), (np.nonzero(has)[0], item_tag_ids[has])),
        shape=(n_items, n_tags),
    )
    popularity = rng.lognormal(0.0, config.popularity_sigma, n_items)  # (n_items,)

    directions = rng.standard_normal((n_tags, config.feature_dim), dtype=np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    noise = rng.standard_normal((n_items, config.feature_dim), dtype=np.float32)
    features = item_tags @ directions + (config.feature_noise / np.sqrt(config.feature_dim)) * noise

    # Users: 1-3 distinct tags with Dirichlet(1) weights.
    user_tags = _distinct_tags(rng, n_users, n_tags)  # (n_users, 3)
    n_user_tags = rng.integers(1, MAX_TAGS + 1, n_users)
    weights = rng.gamma(1.0, size=(n_users, MAX_TAGS)) * (np.arange(MAX_TAGS) < n_user_tags[:, None])
    weights /= weights.sum(axis=1, keepdims=True)
    user_tags[weights == 0] = -1

    # Draws: which user, which of the user's tags, which item of that tag.
    n_draws = config.min_draws + np.floor(
        rng.exponential(config.mean_draws - config.min_draws, n_users)
    ).astype(np.int64)
    draw_user = np.repeat(np.arange(n_users), n_draws)  # (N,)
    cumulative = np.cumsum(weights, axis=1)
    u = rng.random(len(draw_user))
    slot = (u > cumulative[draw_user, 0]).astype(np.int64) + (u > cumulative[draw_user, 1])
    slot = np.minimum(slot, n_user_tags[draw_user] - 1)  # a cumsum may end a hair below 1
    draw_item = _sample_within_tags(rng, item_tags.tocsc(), popularity, user_tags[draw_user, slot])
    from_noise = rng.random(len(draw_user)) < config.noise
    draw_item[from_noise] = _sample(rng, np.cumsum(popularity), int(from_noise.sum()))

    names = [f"tag{k:02d}" for k in range(n_tags)]
    texts = [
        f"synthetic item {i} tagged " + ", ".join(names[k] for k in item_tag_ids[i, has[i]])
        for i in range(n_items)
    ]
    raw = RawDataset(
        name="synthetic",
        source=f"synthetic generator {config}",
        users=draw_user,
        items=draw_item,
        play_counts=np.ones(len(draw_user), dtype=np.float32),
        item_ids=[str(i) for i in range(n_items)],
        item_names=[f"item {i}" for i in range(n_items)],
        item_texts=texts,
        item_tags=item_tags,
        tag_names=names,
        tag_groups=[GROUPS[k % len(GROUPS)] for k in range(n_tags)],
        features={"synthetic": np.ascontiguousarray(features, dtype=np.float32)},
    )
    return SyntheticData(raw, user_tags, weights, directions)


def _distinct_tags(
    rng: np.random.Generator, n: int, n_tags: int, first: np.ndarray | None = None
) -> np.ndarray:
    """(n, 3) int64: per row three distinct tags, uniformly (given `first`, when passed)."""
    first = rng.integers(0, n_tags, n) if first is None else first
    second = rng.integers(1, n_tags, n)  # offsets from `first`: distinct, non-zero
    third = rng.integers(1, n_tags - 1, n)
    third += third >= second
    return np.stack([first, (first + second) % n_tags, (first + third) % n_tags], axis=1)


def _sample(rng: np.random.Generator, cumulative: np.ndarray, n: int) -> np.ndarray:
    """n indices drawn with probability proportional to the weights whose cumsum is `cumulative`."""
    index = np.searchsorted(cumulative, rng.random(n) * cumulative[-1], side="right")
    return np.minimum(index, len(cumulative) - 1)


def _sample_within_tags(
    rng: np.random.Generator, tag_items: sp.csc_matrix, popularity: np.ndarray, tags: np.ndarray
) -> np.ndarray:
    """For each entry of `tags`, one item carrying that tag, drawn proportionally to popularity.

    All tags' items sit in one array (CSC order), so each draw is a binary search inside its
    tag's segment of one global cumulative sum."""
    cumulative = np.cumsum(popularity[tag_items.indices])  # (nnz,)
    before = np.concatenate([[0.0], cumulative])[tag_items.indptr]  # (n_tags + 1,)
    start, total = before[tags], before[tags + 1] - before[tags]
    position = np.searchsorted(cumulative, start + rng.random(len(tags)) * total, side="right")
    position = np.minimum(position, tag_items.indptr[tags + 1] - 1)  # float round-off at a segment's end
    return tag_items.indices[position].astype(np.int64)
