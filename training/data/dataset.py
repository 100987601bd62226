"""The processed dataset directory (DESIGN.md section 1), written by `apron prepare`, read by everything else.

    dataset.json                       name, source, fingerprint, items, tags (+ prototypes), filters, split, counts
    train.npz, val_{tr,te}.npz, test_{tr,te}.npz   CSR float32 [users_in_split, n_items], binary
    users.npz                          train / val / test: the source's user id of each matrix row
    item_tags.npz                      CSR float32 [n_items, n_tags] tag counts
    item_texts.json                    n_items strings for the text encoder
    features/<kind>.npy + .json        float32 [n_items, D] content features + metadata

Everything is written to a temporary sibling and renamed into place, so a reader never sees a
half-written dataset or feature file.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from common.files import atomic_path, atomic_write_text, replace_dir
from training.data.prototypes import choose_prototypes
from training.data.raw import DataError, RawDataset
from training.data.splits import (
    FilterConfig,
    SplitConfig,
    filter_interactions,
    interaction_matrix,
    split_users,
)
from training.features.kinds import features_command

FORMAT = "apron-dataset/1"
SPLITS = ("train", "val_tr", "val_te", "test_tr", "test_te")
_KIND = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass
class ProcessedDataset:
    name: str
    source: str
    item_ids: list[str]
    item_names: list[str]
    tag_names: list[str]
    tag_groups: list[str]
    prototype_items: np.ndarray  # (K,) int64 internal item index of each tag's prototype
    train: sp.csr_matrix  # (train users, n_items)
    val_tr: sp.csr_matrix
    val_te: sp.csr_matrix
    test_tr: sp.csr_matrix
    test_te: sp.csr_matrix
    item_tags: sp.csr_matrix  # (n_items, K)
    texts: list[str]
    # "train", "val", "test": the source's user id of each row of the matching matrices
    users: dict[str, np.ndarray] = field(default_factory=dict)
    filters: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    prototype_selection: dict[str, Any] = field(default_factory=dict)  # the rule's parameters
    fingerprint: str = ""  # computed from the matrices and item ids when empty
    path: Path | None = None

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = compute_fingerprint(self.matrices(), self.item_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_tags(self) -> int:
        return len(self.tag_names)

    def matrices(self) -> dict[str, sp.csr_matrix]:
        return {name: getattr(self, name) for name in SPLITS}

    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "n_items": self.n_items,
            "item_ids": self.item_ids,
            "item_names": self.item_names,
            "tags": [
                {"name": name, "group": group, "prototype_item": int(item)}
                for name, group, item in zip(
                    self.tag_names, self.tag_groups, self.prototype_items, strict=True
                )
            ],
            "prototype_selection": self.prototype_selection,
            "filters": self.filters,
            "split": self.split,
            "counts": self.counts,
        }

    def save(
        self, path: str | Path, features: dict[str, tuple[np.ndarray, dict[str, Any]]] | None = None
    ) -> Path:
        """Write the directory (and any `features` kind -> (array, metadata)) atomically, replacing `path`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
        try:
            staging.chmod(0o755)  # mkdtemp makes it private
            for name, matrix in self.matrices().items():
                sp.save_npz(staging / f"{name}.npz", matrix.astype(np.float32).tocsr())
            sp.save_npz(staging / "item_tags.npz", self.item_tags.astype(np.float32).tocsr())
            np.savez(
                staging / "users.npz", **{k: np.asarray(v, dtype=np.int64) for k, v in self.users.items()}
            )
            (staging / "item_texts.json").write_text(
                json.dumps(self.texts, ensure_ascii=False), encoding="utf-8"
            )
            for kind, (array, meta) in (features or {}).items():
                write_features(staging, kind, array, meta, fingerprint=self.fingerprint, n_items=self.n_items)
            # dataset.json last: its presence marks a complete directory
            (staging / "dataset.json").write_text(
                json.dumps(self.metadata(), ensure_ascii=False), encoding="utf-8"
            )
            replace_dir(staging, path, "dataset.json")
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path, verify: bool = False) -> ProcessedDataset:
        """Read a directory written by `save`; `verify` recomputes the fingerprint from the matrices."""
        path = Path(path)
        meta_file = path / "dataset.json"
        if not meta_file.is_file():
            raise DataError(f"{path} is not a processed dataset (no dataset.json): run `apron prepare` first")
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise DataError(f"{meta_file}: expected format {FORMAT!r}, got {meta.get('format')!r}")
        matrices = {name: _load_npz(path / f"{name}.npz") for name in SPLITS}
        item_tags = _load_npz(path / "item_tags.npz")
        texts = json.loads((path / "item_texts.json").read_text(encoding="utf-8"))
        users_file = path / "users.npz"
        users = dict(np.load(users_file)) if users_file.is_file() else {}
        n_items, tags = meta["n_items"], meta["tags"]
        for name, matrix in {**matrices, "item_tags": item_tags.T}.items():
            if matrix.shape[1] != n_items:
                raise DataError(
                    f"{path / (name + '.npz')}: has {matrix.shape[1]} items, dataset.json says {n_items}"
                )
        if item_tags.shape[1] != len(tags) or len(texts) != n_items:
            raise DataError(
                f"{path}: item_tags.npz or item_texts.json do not match dataset.json's items and tags"
            )
        dataset = cls(
            name=meta["name"],
            source=meta["source"],
            item_ids=meta["item_ids"],
            item_names=meta["item_names"],
            tag_names=[t["name"] for t in tags],
            tag_groups=[t["group"] for t in tags],
            prototype_items=np.array([t["prototype_item"] for t in tags], dtype=np.int64),
            item_tags=item_tags,
            texts=texts,
            users=users,
            filters=meta["filters"],
            split=meta["split"],
            counts=meta["counts"],
            prototype_selection=meta.get("prototype_selection", {}),
            fingerprint=meta["fingerprint"],
            path=path,
            **matrices,
        )
        if verify and compute_fingerprint(dataset.matrices(), dataset.item_ids) != dataset.fingerprint:
            raise DataError(
                f"{path}: the matrices do not match dataset.json's fingerprint (modified after prepare?)"
            )
        return dataset

    def load_features(self, kind: str) -> np.ndarray:
        """float32 [n_items, D] features of `kind` ("text", "audio", "collab", "synthetic")."""
        if self.path is None:
            raise DataError("this dataset has not been saved: features live in its directory")
        array_file, meta_file = _feature_files(self.path, kind)
        if not (array_file.is_file() and meta_file.is_file()):
            raise DataError(f"{array_file} not found: run `{features_command(self.path, kind)}` first")
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("dataset_fingerprint") != self.fingerprint:
            raise DataError(
                f"{array_file} was computed for another preparation of this dataset: recompute it"
            )
        array = np.load(array_file)
        if array.shape != (self.n_items, meta["dim"]):
            raise DataError(f"{array_file}: shape {array.shape}, expected ({self.n_items}, {meta['dim']})")
        return array


def build_dataset(
    raw: RawDataset, filters: FilterConfig, split: SplitConfig, min_tag_share: float = 0.5
) -> tuple[ProcessedDataset, dict[str, np.ndarray]]:
    """Filter, split and choose prototypes; also returns raw.features restricted to the kept items.

    `min_tag_share`: see `prototypes.choose_prototypes`."""
    plays, user_ids = interaction_matrix(raw.users, raw.items, raw.play_counts, len(raw.item_ids))
    rows, cols = filter_interactions(plays, filters)
    parts = split_users(plays[rows][:, cols], split)
    kept = cols[parts.items]  # raw item index of each internal item

    item_tags = raw.item_tags[kept]
    tags_without_items = np.flatnonzero(item_tags.getnnz(axis=0) == 0)
    if len(tags_without_items):
        raw_counts = raw.item_tags.getnnz(axis=0)
        k = tags_without_items[0]
        reason = "after filtering and splitting" if raw_counts[k] else f"in {raw.source}"
        raise DataError(
            f"tag {raw.tag_names[k]!r} has no items {reason}"
            + (f" ({len(tags_without_items)} tags have none)" if len(tags_without_items) > 1 else "")
        )
    prototypes = choose_prototypes(item_tags, parts.train_plays, raw.tag_names, min_tag_share)
    counts = {
        "raw_users": len(user_ids),
        "raw_items": len(raw.item_ids),
        "raw_interactions": int(plays.nnz),
        "filtered_users": len(rows),
        "filtered_items": len(cols),
        **parts.counts,
        "tagged_items": int((item_tags.getnnz(axis=1) > 0).sum()),
    }
    dataset = ProcessedDataset(
        name=raw.name,
        source=raw.source,
        item_ids=[raw.item_ids[i] for i in kept],
        item_names=[raw.item_names[i] for i in kept],
        tag_names=list(raw.tag_names),
        tag_groups=list(raw.tag_groups),
        prototype_items=prototypes,
        train=parts.train,
        val_tr=parts.val_tr,
        val_te=parts.val_te,
        test_tr=parts.test_tr,
        test_te=parts.test_te,
        item_tags=item_tags,
        texts=[raw.item_texts[i] for i in kept],
        users={name: user_ids[rows[split_rows]] for name, split_rows in parts.users.items()},
        filters=vars(filters).copy(),
        split=vars(split).copy(),
        counts=counts,
        prototype_selection={"listened": "train users", "min_tag_share": min_tag_share},
    )
    return dataset, {kind: array[kept] for kind, array in raw.features.items()}


def compute_fingerprint(matrices: dict[str, sp.csr_matrix], item_ids: list[str]) -> str:
    """sha256 of the split matrices (canonical CSR) and the item ids: equal iff the data are equal."""
    digest = hashlib.sha256()
    for name in SPLITS:
        matrix = matrices[name].tocsr()
        matrix.sum_duplicates()  # also sorts indices: one canonical form per matrix
        digest.update(name.encode())
        digest.update(np.asarray(matrix.shape, dtype=np.int64).tobytes())
        for array, dtype in (
            (matrix.indptr, np.int64),
            (matrix.indices, np.int64),
            (matrix.data, np.float32),
        ):
            digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    digest.update("\n".join(item_ids).encode())
    return digest.hexdigest()


def write_features(
    dataset_dir: str | Path,
    kind: str,
    features: np.ndarray,
    meta: dict[str, Any],
    fingerprint: str | None = None,
    n_items: int | None = None,
) -> Path:
    """Write features/<kind>.npy and .json atomically (temp file + rename each, the .json last).

    `fingerprint` and `n_items` default to those of the dataset in `dataset_dir`."""
    dataset_dir = Path(dataset_dir)
    array_file, meta_file = _feature_files(dataset_dir, kind)
    if fingerprint is None or n_items is None:
        dataset = json.loads((dataset_dir / "dataset.json").read_text(encoding="utf-8"))
        fingerprint, n_items = dataset["fingerprint"], dataset["n_items"]
    if features.ndim != 2 or features.shape[0] != n_items:
        raise ValueError(f"{kind} features must be [n_items={n_items}, D], got {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"{kind} features contain NaN or infinite values")
    array_file.parent.mkdir(exist_ok=True)
    full_meta = {
        "kind": kind,
        **meta,
        "dim": int(features.shape[1]),
        "n_items": n_items,
        "dataset_fingerprint": fingerprint,
    }
    with atomic_path(array_file, suffix=".npy") as tmp:
        np.save(tmp, features.astype(np.float32))
    atomic_write_text(meta_file, json.dumps(full_meta, indent=1))
    return array_file


def _feature_files(dataset_dir: Path, kind: str) -> tuple[Path, Path]:
    if not _KIND.match(kind):
        raise ValueError(f"feature kind must be lowercase letters, digits, '-' or '_', got {kind!r}")
    return dataset_dir / "features" / f"{kind}.npy", dataset_dir / "features" / f"{kind}.json"




def _load_npz(path: Path) -> sp.csr_matrix:
    if not path.is_file():
        raise DataError(f"{path} not found: the processed dataset is incomplete, run `apron prepare` again")
    return sp.load_npz(path).tocsr()
