"""The names of a processed dataset's content features (`features/<kind>.npy`) and the command
that writes each: one place for the train CLI's check, the missing-features hint and the goal's
"tag-free" test. No heavy imports, so any of those can use it."""

from __future__ import annotations

import argparse
import re

STRIPPED_KIND = "text-stripped"  # the kind `apron features --kind text --strip-tags` writes
COLLAB_DEFAULT_DIM = 64
FIXED_KINDS = ("text", STRIPPED_KIND, "audio", "collab", "synthetic")


def collab_kind(dim: int = COLLAB_DEFAULT_DIM) -> str:
    """The features' name: `collab` at the default rank, `collab-<dim>` otherwise (both tag-free)."""
    return "collab" if dim == COLLAB_DEFAULT_DIM else f"collab-{dim}"


def parse_collab_kind(kind: str) -> int | None:
    """`collab` -> 64, `collab-256` -> 256, anything else -> None."""
    if kind == "collab":
        return COLLAB_DEFAULT_DIM
    match = re.fullmatch(r"collab-([1-9][0-9]*)", kind)
    return int(match.group(1)) if match else None


def is_tag_free(kind: str | None) -> bool:
    """Features that cannot contain the tag names: text with them removed, or any collab SVD."""
    return kind is not None and (kind == STRIPPED_KIND or parse_collab_kind(kind) is not None)


def features_command(dataset_dir: object, kind: str) -> str:
    """The `apron features` command that writes `kind` for the dataset at dataset_dir."""
    if kind == STRIPPED_KIND:
        return f"apron features {dataset_dir} --kind text --strip-tags"
    dim = parse_collab_kind(kind)
    if dim is not None and dim != COLLAB_DEFAULT_DIM:
        return f"apron features {dataset_dir} --kind collab --dim {dim}"
    return f"apron features {dataset_dir} --kind {kind}"


def feature_kind(value: str) -> str:
    """argparse type of `--features`: a known kind or collab-<dim>, else a usage error naming them."""
    if value in FIXED_KINDS or parse_collab_kind(value) is not None:
        return value
    raise argparse.ArgumentTypeError(f"unknown features {value!r}: choose one of {', '.join(FIXED_KINDS)}, or collab-<dim>")
