"""A version's metadata against its graphs (serving/models.py), pure: each mismatch named, and the
signatures of the real exported graphs (ONNX Runtime sessions) match their own metadata."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from export import contract
from export.metadata import ExportMetadata, read_metadata
from serving.backends.base import GraphSignature
from serving.backends.onnxruntime import load_session, onnx_path, session_signature
from serving.models import graph_mismatches, metadata_mismatches


@pytest.fixture(scope="module")
def metadata(python_repository: Path) -> ExportMetadata:
    return read_metadata(python_repository, 1)


@pytest.fixture(scope="module")
def graphs(python_repository: Path) -> dict[str, GraphSignature]:
    return {
        name: session_signature(load_session(onnx_path(python_repository, name, 1), threads=1))
        for name in (contract.PROFILE_MODEL, contract.SCORER_MODEL)
    }


def test_an_exported_version_matches_its_graphs(metadata: ExportMetadata, graphs: dict[str, GraphSignature]) -> None:
    assert metadata_mismatches(metadata) == []
    assert graph_mismatches(metadata, graphs) == []
    assert graph_mismatches(metadata, {}) == []  # a backend without graphs (torch): nothing to compare


def test_swapped_graphs_are_named_both_ways(metadata: ExportMetadata, graphs: dict[str, GraphSignature]) -> None:
    swapped = {contract.PROFILE_MODEL: graphs[contract.SCORER_MODEL], contract.SCORER_MODEL: graphs[contract.PROFILE_MODEL]}
    found = graph_mismatches(metadata, swapped)
    assert len(found) == 2
    assert found[0].startswith("apron_profile's graph") and "it is the apron_scorer graph" in found[0]
    assert found[1].startswith("apron_scorer's graph") and "it is the apron_profile graph" in found[1]


def test_dimensions_the_metadata_fixes(metadata: ExportMetadata, graphs: dict[str, GraphSignature]) -> None:
    wider = dataclasses.replace(metadata, k_max=metadata.k_max + 5)
    assert any(f"top_ids is [{metadata.k_max}] per user, the metadata says [{metadata.k_max + 5}]" in m for m in graph_mismatches(wider, graphs))
    more_prototypes = dataclasses.replace(metadata, n_prototypes=metadata.n_prototypes + 1)
    found = graph_mismatches(more_prototypes, graphs)
    assert found and all("profile_weights" in m and f"n_prototypes {metadata.n_prototypes + 1}" in m for m in found)


def test_metadata_that_no_export_writes(metadata: ExportMetadata) -> None:
    assert metadata_mismatches(dataclasses.replace(metadata, k_max=10**9)) == [f"k_max 1000000000 is outside [1, n_items {metadata.n_items}]"]
    assert metadata_mismatches(dataclasses.replace(metadata, k_max=0))
    outside = dataclasses.replace(metadata, prototype_items=[*metadata.prototype_items[:-1], metadata.n_items])
    assert metadata_mismatches(outside) == [f"prototype_items [{metadata.n_items}] are outside the catalog of n_items {metadata.n_items}"]
