"""Live controllability: Δ@20 through a real gateway (ONNX Runtime backend, real redis-server, gRPC
over sockets) equals the offline Δ@20 of the same model on the same users."""

from __future__ import annotations

from pathlib import Path

import pytest
import scipy.sparse as sp

from benchmarks.live_controllability import _measure, make_case, offline_controllability
from tests.export.fixtures import python_repository, tiny_checkpoint, tiny_dataset  # noqa: F401
from training.checkpoint import load_checkpoint


async def test_live_delta_matches_the_offline_delta(tiny_checkpoint: Path, python_repository: Path) -> None:  # noqa: F811
    model, _ = load_checkpoint(tiny_checkpoint)
    dataset, _, users = tiny_dataset(0)
    fold_in = sp.csr_matrix(users[:24])
    case = make_case(fold_in, dataset.item_ids, dataset.item_tags, dataset.tag_names)
    offline = offline_controllability(model.eval(), fold_in, dataset.item_tags)
    live = await _measure(python_repository, case, k=20)
    assert len(live.per_tag) == len(offline.per_tag) > 0
    assert offline.delta > 0.01  # dropping a prototype does something, so the comparison means something
    for live_tag, offline_tag in zip(live.per_tag, offline.per_tag, strict=True):
        assert live_tag.tag == offline_tag.tag and live_tag.n_users == offline_tag.n_users
        assert live_tag.full == pytest.approx(offline_tag.full, abs=1e-6)
        assert live_tag.modified == pytest.approx(offline_tag.modified, abs=0.02)  # ONNX vs torch near-ties
    assert live.delta == pytest.approx(offline.delta, abs=0.01)
    assert live.pct_delta == pytest.approx(offline.pct_delta, abs=2.0)
