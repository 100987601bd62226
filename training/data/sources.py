"""The datasets `apron prepare` knows: where each is read from and its default filters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.data import lastfm, movielens, synthetic
from training.data.dataset import ProcessedDataset, build_dataset
from training.data.raw import RawDataset
from training.data.splits import FilterConfig, SplitConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"  # ../shared/data beside the project


@dataclass(frozen=True)
class Source:
    load: Callable[..., RawDataset] | None  # (path, strict=...) -> raw; None: generated (synthetic)
    default_filters: FilterConfig


SOURCES: dict[str, Source] = {
    "lastfm-2k": Source(lastfm.load_lastfm, lastfm.DEFAULT_FILTERS),
    "ml-1m-implicit": Source(movielens.load_movielens, movielens.DEFAULT_FILTERS),
    "movielens": Source(movielens.load_movielens, movielens.DEFAULT_FILTERS),
    "synthetic": Source(None, synthetic.DEFAULT_FILTERS),
}


def default_path(name: str) -> Path:
    return SHARED_DATA / name


def prepare(
    name: str,
    out: str | Path,
    path: str | Path | None = None,
    filters: FilterConfig | None = None,
    split: SplitConfig | None = None,
    min_tag_share: float = 0.5,
    synthetic_config: synthetic.SyntheticConfig | None = None,
    strict: bool = False,
) -> ProcessedDataset:
    """Load `name` (from `path`, default ../shared/data/<name>), filter, split, save to `out`.

    `strict`: refuse interactions with item ids the item file lacks (default: drop them with a
    DataWarning giving their count)."""
    source = SOURCES[name]
    if source.load is None:
        raw = synthetic.generate(synthetic_config or synthetic.SyntheticConfig()).raw
    else:
        raw = source.load(Path(path) if path is not None else default_path(name), strict=strict)
    dataset, features = build_dataset(
        raw, filters or source.default_filters, split or SplitConfig(), min_tag_share
    )
    encoder = {"encoder": "synthetic generator (tag directions + noise)", "source": raw.source}
    dataset.save(out, {kind: (array, encoder) for kind, array in features.items()})
    return dataset
