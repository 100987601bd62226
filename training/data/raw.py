"""The common raw form every loader returns, and the small parsers they share.

A loader (`lastfm.py`, `movielens.py`, `synthetic.py`) reads its source files into a `RawDataset`;
`dataset.build_dataset` then filters, splits and picks prototypes the same way for all of them.
Every parse error names the file and line; a missing file names what it was needed for.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp


class DataError(ValueError):
    """Bad or missing input data; the message names the file (and line) at fault."""


class DataWarning(UserWarning):
    """Input the loader repaired (e.g. dropped rows); the message gives the count and the file."""


class UnknownIds:
    """Rows of an interactions file whose item id the item file lacks.

    Published MovieLens copies (and Last.fm 2K's play counts) sometimes rate ids that their item
    file does not list. By default such rows are dropped and `report()` warns once with their
    count; `strict=True` raises a DataError at the first one instead, naming its line."""

    def __init__(self, path: Path, item_file: str, what: str, strict: bool):
        self.path, self.item_file, self.what, self.strict = path, item_file, what, strict
        self.rows, self.ids = 0, set[int]()
        self.first_line: int | None = None

    def add(self, item: int, line: int) -> None:
        if self.strict:
            raise DataError(
                f"{self.path} line {line}: {self.what} {item} is not in {self.item_file} "
                "(without --strict such rows are dropped with a warning)"
            )
        self.rows += 1
        self.ids.add(item)
        if self.first_line is None:
            self.first_line = line

    def report(self) -> int:
        """Warn (DataWarning) when rows were dropped; returns how many."""
        if self.rows:
            warnings.warn(
                f"{self.path}: dropped {self.rows:,} rows whose {self.what} ({len(self.ids):,} distinct, first at "
                f"line {self.first_line}) is not in {self.item_file}; pass --strict to refuse such files",
                DataWarning,
                stacklevel=3,
            )
        return self.rows


@dataclass
class RawDataset:
    """Interactions and item metadata before filtering and splitting.

    `users[j], items[j]` is one (user, item) interaction with `play_counts[j]` plays (1 where the
    source has no counts); duplicated pairs are summed later. `items` indexes `item_ids`.
    """

    name: str
    source: str  # where it was read from (a directory, or the generator's parameters)
    users: np.ndarray  # (N,) int64 user codes
    items: np.ndarray  # (N,) int64 indices into item_ids
    play_counts: np.ndarray  # (N,) float32
    item_ids: list[str]
    item_names: list[str]
    item_texts: list[str]
    item_tags: sp.csr_matrix  # (n_items, n_tags) float32: how often each tag was given to each item
    tag_names: list[str]
    tag_groups: list[str]
    features: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> (n_items, D), e.g. synthetic

    def __post_init__(self) -> None:
        n_items, n_tags = len(self.item_ids), len(self.tag_names)
        if not (len(self.users) == len(self.items) == len(self.play_counts)):
            raise ValueError("users, items and play_counts must have one entry per interaction")
        if len(self.item_names) != n_items or len(self.item_texts) != n_items:
            raise ValueError("item_names and item_texts must have one entry per item")
        if self.item_tags.shape != (n_items, n_tags) or len(self.tag_groups) != n_tags:
            raise ValueError(
                f"item_tags must be [n_items, n_tags] = [{n_items}, {n_tags}], got {self.item_tags.shape}"
            )
        if len(self.items) and (self.items.min() < 0 or self.items.max() >= n_items):
            raise ValueError("item indices out of range")
        for kind, array in self.features.items():
            if array.shape[0] != n_items:
                raise ValueError(f"{kind} features have {array.shape[0]} rows for {n_items} items")


def require_file(path: Path, purpose: str) -> Path:
    """`path` if it is a file, else a DataError saying what the file was needed for."""
    if not path.is_file():
        raise DataError(f"{path} not found: it should hold {purpose}")
    return path


def read_rows(
    path: Path, purpose: str, sep: str, n_fields: int, header: bool, encoding: str = "utf-8"
) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of a delimited text file, checking the field count of each line.

    Lines are decoded one by one so an encoding error names its line. Blank lines are skipped.
    Fields beyond `n_fields` are an error too: a wrong separator shows up here, not later.
    """
    require_file(path, purpose)
    sep_name = {"\t": "tab", ",": "comma", "|": "pipe"}.get(sep, repr(sep))
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if header and number == 1:
                continue
            try:
                line = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise DataError(f"{path} line {number}: not valid {encoding} text ({error.reason})") from None
            if not line.strip():
                continue
            fields = line.split(sep)
            if len(fields) != n_fields:
                raise DataError(
                    f"{path} line {number}: expected {n_fields} {sep_name}-separated fields, got {len(fields)}"
                )
            yield number, fields


def where(path: Path, line: int | None) -> str:
    return f"{path} line {line}" if line is not None else str(path)


def parse_int(value: str, path: Path, line: int | None, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{where(path, line)}: {name} must be an integer, got {value!r}") from None


def parse_float(value: str, path: Path, line: int | None, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{where(path, line)}: {name} must be a number, got {value!r}") from None
    if not np.isfinite(number):
        raise DataError(f"{where(path, line)}: {name} must be finite, got {value!r}")
    return number


def read_text_map(path: Path, purpose: str) -> dict[str, str]:
    """A JSON object of id -> text (the description files)."""
    require_file(path, purpose)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path} line {error.lineno}: invalid JSON ({error.msg})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not valid UTF-8 ({error.reason})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DataError(f"{path}: expected a JSON object mapping ids to description strings")
    return data


def tag_matrix(
    rows: list[int], cols: list[int], counts: list[float], n_items: int, n_tags: int
) -> sp.csr_matrix:
    """CSR float32 [n_items, n_tags], summing repeated (item, tag) entries."""
    matrix = sp.csr_matrix(
        (
            np.asarray(counts, dtype=np.float32),
            (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)),
        ),
        shape=(n_items, n_tags),
    )
    matrix.sum_duplicates()
    return matrix
