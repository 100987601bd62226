"""The scorer returns as many items as asked (export/contract.py TOP_K): the exported graph takes an
optional k, whose default is K_MAX, and the in-process backend asks for its batch's largest k
instead of sorting K_MAX items; a graph exported without it is still served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import pytest

from export import contract
from serving.backends.onnxruntime import (
    OnnxRuntimeScorer,
    load_session,
    onnx_path,
    session_signature,
    takes_top_k,
)
from serving.catalog import ServedModel


@pytest.fixture(scope="module")
def scorer_path(python_repository: Path) -> Path:
    return onnx_path(python_repository, contract.SCORER_MODEL, ServedModel.load(python_repository).version)


def _inputs(session, batch: int) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    heads, prototypes = (d for d in session.get_inputs()[0].shape[1:])
    rng = np.random.default_rng(3)
    weights = rng.random((batch, heads, prototypes)).astype(np.float32)
    exclude = np.array([[1, 2, 3]] * batch, np.int64)
    return {contract.PROFILE_WEIGHTS: weights, contract.EXCLUDE_IDS: exclude}


def test_the_graph_gives_k_max_unasked_and_the_first_k_when_asked(scorer_path: Path, python_repository: Path) -> None:
    session = load_session(scorer_path, threads=1)
    k_max = ServedModel.load(python_repository).k_max
    assert takes_top_k(session) and [t.name for t in session.get_inputs()] == [contract.PROFILE_WEIGHTS, contract.EXCLUDE_IDS]
    assert [t.shape[1] for t in session.get_outputs()] == [contract.TOP_K, contract.TOP_K]
    feeds = _inputs(session, 4)
    ids, scores = session.run([contract.TOP_IDS, contract.TOP_SCORES], feeds)
    assert ids.shape == scores.shape == (4, k_max)
    assert session_signature(session).outputs[contract.TOP_IDS] == (None, k_max)  # the metadata check still sees K_MAX
    for k in (1, 5, k_max):
        few_ids, few_scores = session.run([contract.TOP_IDS, contract.TOP_SCORES], {**feeds, contract.TOP_K: np.array([k])})
        assert few_ids.shape == (4, k)
        np.testing.assert_array_equal(few_ids, ids[:, :k])
        np.testing.assert_allclose(few_scores, scores[:, :k], rtol=1e-6)


async def test_a_batch_of_different_ks_gets_each_its_own_first_k(scorer_path: Path, python_repository: Path) -> None:
    """The backend runs the batch at its largest k and each caller keeps its own k, the same items
    and scores as the K_MAX graph gives."""
    profile_path = onnx_path(python_repository, contract.PROFILE_MODEL, ServedModel.load(python_repository).version)
    reference = load_session(scorer_path, threads=1)
    scorer = OnnxRuntimeScorer(load_session(profile_path, threads=1), load_session(scorer_path, threads=1))
    try:
        feeds = _inputs(reference, 3)
        all_ids, all_scores = reference.run([contract.TOP_IDS, contract.TOP_SCORES], feeds)
        ks = [2, 7, 4]
        answers = await asyncio.gather(*(
            scorer.top_k(feeds[contract.PROFILE_WEIGHTS][i], feeds[contract.EXCLUDE_IDS][i], k) for i, k in enumerate(ks)
        ))  # fmt: skip
        for i, (k, (ids, scores)) in enumerate(zip(ks, answers, strict=True)):
            np.testing.assert_array_equal(ids, all_ids[i, :k])
            np.testing.assert_allclose(scores, all_scores[i, :k], rtol=1e-6)
    finally:
        await scorer.close()


async def test_a_graph_exported_before_top_k_is_served_at_k_max(scorer_path: Path, python_repository: Path, tmp_path: Path) -> None:
    old = onnx.load(scorer_path)
    old.graph.input.remove(next(i for i in old.graph.input if i.name == contract.TOP_K))  # a plain constant again
    old_path = tmp_path / "model.onnx"
    onnx.save(old, old_path)
    profile_path = onnx_path(python_repository, contract.PROFILE_MODEL, ServedModel.load(python_repository).version)
    session = load_session(old_path, threads=1)
    assert not takes_top_k(session)
    scorer = OnnxRuntimeScorer(load_session(profile_path, threads=1), session)
    try:
        feeds = _inputs(session, 1)
        expected_ids, _ = load_session(scorer_path, threads=1).run([contract.TOP_IDS, contract.TOP_SCORES], feeds)
        ids, _ = await scorer.top_k(feeds[contract.PROFILE_WEIGHTS][0], feeds[contract.EXCLUDE_IDS][0], 3)
        np.testing.assert_array_equal(ids, expected_ids[0, :3])
    finally:
        await scorer.close()
