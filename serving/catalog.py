"""What the gateway knows about the served model: read from `apron_metadata.json`, never retyped.

`ServedModel` maps the catalog's original item ids to the internal indices the graphs take, and tag
names to prototype indices.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from export.metadata import ExportMetadata, read_metadata
from serving.search import NameIndex
from serving.validation import check_catalog_names

HISTORY_MEMO = 1024  # histories ServedModel.history remembers (least recently used dropped first)
# and the ids their keys hold together: the key keeps a request's id strings alive, and 1,024
# histories of 10,000 ids (--max-history) pinned ~1 GB; this keeps it to a few MB whatever is sent
HISTORY_MEMO_IDS = 65_536


class HistoryMemo:
    """The history lookups seen last (`ServedModel.history`), bounded by entries and by ids."""

    def __init__(self, entries: int = HISTORY_MEMO, ids: int = HISTORY_MEMO_IDS):
        self.entries, self.ids = entries, ids
        self._found: OrderedDict[tuple[str, ...], History] = OrderedDict()
        self.held_ids = 0  # the ids the keys hold

    def __len__(self) -> int:
        return len(self._found)

    def get(self, key: tuple[str, ...]) -> History | None:
        found = self._found.get(key)
        if found is not None:
            self._found.move_to_end(key)
        return found

    def put(self, key: tuple[str, ...], found: History) -> None:
        if len(key) > self.ids or key in self._found:
            return
        self._found[key] = found
        self.held_ids += len(key)
        while len(self._found) > self.entries or self.held_ids > self.ids:
            dropped, _ = self._found.popitem(last=False)
            self.held_ids -= len(dropped)


@dataclass(frozen=True)
class ServedModel:
    metadata: ExportMetadata
    item_index: dict[str, int] = field(repr=False)
    tag_index: dict[str, int] = field(repr=False)
    _histories: HistoryMemo = field(default_factory=HistoryMemo, repr=False, compare=False)

    @classmethod
    def from_metadata(cls, metadata: ExportMetadata) -> ServedModel:
        check_catalog_names(metadata.item_ids, metadata.tag_names)  # what requests can name, and their size limit
        return cls(
            metadata=metadata,
            item_index={item: i for i, item in enumerate(metadata.item_ids)},
            tag_index={tag: k for k, tag in enumerate(metadata.tag_names)},
        )

    @classmethod
    def load(cls, repository: str | Path, version: int = 0) -> ServedModel:
        """The repository's newest model (`version` 0) or the given version's metadata."""
        return cls.from_metadata(read_metadata(repository, version or None))

    @property
    def version(self) -> int:
        return self.metadata.model_version

    @property
    def n_heads(self) -> int:
        return self.metadata.n_heads

    @property
    def n_prototypes(self) -> int:
        return self.metadata.n_prototypes

    @property
    def k_max(self) -> int:
        return self.metadata.k_max

    @property
    def tag_names(self) -> list[str]:
        return self.metadata.tag_names

    @functools.cached_property
    def names(self) -> NameIndex:
        """The item names, case-folded once, for SearchItems."""
        return NameIndex.of(self.metadata.item_names)

    def history_indices(self, history: Sequence[str]) -> tuple[np.ndarray, int]:
        """Original item ids -> (sorted distinct internal indices, number of unknown ids ignored).

        Duplicates count once, as in the binary fold-in vector the model was trained on."""
        found = self.history(history)
        return found.indices, found.ignored

    def history(self, history: Sequence[str]) -> History:
        """`history_indices` and the digest, remembered for the histories seen last (`HistoryMemo`: a
        client that sends its whole history on every call pays the lookup once). The arrays are
        shared: read-only."""
        key = tuple(history)
        found = self._histories.get(key)
        if found is not None:
            return found
        known = [self.item_index[item] for item in key if item in self.item_index]
        indices = np.unique(np.asarray(known, dtype=np.int64))
        indices.setflags(write=False)
        found = History(indices, len(key) - len(known), history_digest(indices))
        self._histories.put(key, found)
        return found


class History(NamedTuple):
    indices: np.ndarray  # (T,) sorted distinct internal indices
    ignored: int  # ids not in the catalog
    digest: str  # history_digest(indices)


def history_digest(indices: np.ndarray) -> str:
    """Identity of a history: sha256 of its sorted distinct internal indices (order and
    duplicates do not change the profile, so they do not change the digest either)."""
    canonical = np.unique(np.asarray(indices, dtype=np.int64))
    return hashlib.sha256(canonical.astype("<i8").tobytes()).hexdigest()
