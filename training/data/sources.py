"""The datasets `apron prepare` knows: where each is read from and its default filters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.data import download, lastfm, movielens, synthetic
from training.data.dataset import ProcessedDataset, build_dataset
from training.data.raw import DataError, RawDataset
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


def source_path(
    name: str, path: str | Path | None = None, url: str | None = None, sha256: str | None = None, progress: bool = True
) -> Path:
    """Where `name` is read from: `path`; else for lastfm-2k a local copy or a download
    (training/data/download.py: `url` forces a download, `sha256` checks it); else ../shared/data/<name>."""
    if path is not None and url is not None:
        raise DataError("give either a local directory (--path) or a URL to download (--url), not both")
    if name == "lastfm-2k" and path is None:
        return download.lastfm_root(default_path(name), url, sha256, progress=progress)
    if url is not None or sha256 is not None:
        raise DataError(f"--url/--sha256 download lastfm-2k only; {name} is read from a directory (--path)")
    return Path(path) if path is not None else default_path(name)


def prepare(
    name: str,
    out: str | Path,
    path: str | Path | None = None,
    filters: FilterConfig | None = None,
    split: SplitConfig | None = None,
    min_tag_share: float = 0.5,
    synthetic_config: synthetic.SyntheticConfig | None = None,
    strict: bool = False,
    url: str | None = None,
    sha256: str | None = None,
) -> ProcessedDataset:
    """Load `name` (from `path`, default ../shared/data/<name>), filter, split, save to `out`.

    `strict`: refuse interactions with item ids the item file lacks (default: drop them with a
    DataWarning giving their count). `url`, `sha256`: see `source_path`."""
    source = SOURCES[name]
    if source.load is None:
        source_path(name, None, url, sha256)  # refuses a URL: only lastfm-2k is downloaded
        raw = synthetic.generate(synthetic_config or synthetic.SyntheticConfig()).raw
    else:
        raw = source.load(source_path(name, path, url, sha256), strict=strict)
    dataset, features = build_dataset(
        raw, filters or source.default_filters, split or SplitConfig(), min_tag_share
    )
    encoder = {"encoder": "synthetic generator (tag directions + noise)", "source": raw.source}
    dataset.save(out, {kind: (array, encoder) for kind, array in features.items()})
    return dataset
