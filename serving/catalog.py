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

HISTORY_MEMO = 1024  # histories ServedModel.history remembers (least recently used dropped first)


@dataclass(frozen=True)
class ServedModel:
    metadata: ExportMetadata
    item_index: dict[str, int] = field(repr=False)
    tag_index: dict[str, int] = field(repr=False)
    _histories: OrderedDict[tuple[str, ...], History] = field(default_factory=OrderedDict, repr=False, compare=False)

    @classmethod
    def from_metadata(cls, metadata: ExportMetadata) -> ServedModel:
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
        """`history_indices` and the digest, remembered for the HISTORY_MEMO histories seen last (a
        client that sends its whole history on every call pays the lookup once). The arrays are
        shared: read-only."""
        key = tuple(history)
        found = self._histories.get(key)
        if found is not None:
            self._histories.move_to_end(key)
            return found
        known = [self.item_index[item] for item in key if item in self.item_index]
        indices = np.unique(np.asarray(known, dtype=np.int64))
        indices.setflags(write=False)
        found = self._histories[key] = History(indices, len(key) - len(known), history_digest(indices))
        while len(self._histories) > HISTORY_MEMO:
            self._histories.popitem(last=False)
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
