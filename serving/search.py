"""SearchItems: catalog items by name, so a client can pick a history without knowing ids.

Pure functions over the model's item names: `NameIndex` case-folds them once per model version
(`ServedModel.names`), `search` ranks names that start with the query before names that contain it
elsewhere, each group in catalog order. A linear scan: the demo's 2,813 names take well under a
millisecond, and a catalog of millions would want a real text index, not this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from serving.errors import InvalidArgument

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_QUERY_BYTES = 256


def validate_search(query: str, limit: int) -> tuple[str, int]:
    """The case-folded query and the limit to use; InvalidArgument naming the field otherwise."""
    text = query.strip()
    if not text:
        raise InvalidArgument("query is required: the text to find in item names")
    if len(text.encode()) > MAX_QUERY_BYTES:
        raise InvalidArgument(f"query is {len(text.encode())} bytes; at most {MAX_QUERY_BYTES} are accepted")
    if not 0 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be in [0, {MAX_LIMIT}] (0: {DEFAULT_LIMIT}), got {limit}")
    return text.casefold(), limit or DEFAULT_LIMIT


@dataclass(frozen=True)
class NameIndex:
    folded: tuple[str, ...]  # each item's name, case-folded, in catalog order

    @classmethod
    def of(cls, names: Sequence[str]) -> NameIndex:
        return cls(tuple(name.casefold() for name in names))

    def search(self, folded_query: str, limit: int) -> list[int]:
        """Item indices: prefix matches first, then other matches, each in catalog order."""
        prefix: list[int] = []
        inner: list[int] = []
        for index, name in enumerate(self.folded):
            position = name.find(folded_query)
            if position == 0:
                prefix.append(index)
                if len(prefix) == limit:
                    break
            elif position > 0 and len(inner) < limit:
                inner.append(index)
        return (prefix + inner)[:limit]
