"""ONNX Runtime sessions as the gateway opens them: spinning off unless asked, threads as set or as
the graph's size asks (`scorer_threads`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export import contract
from serving.backends.base import WIDE_SCORER_BYTES, default_threads, scorer_threads
from serving.backends.onnxruntime import load_session


@pytest.fixture
def identity_model(tmp_path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize(("spinning", "entry"), [(False, "0"), (True, "1")])
def test_spinning_and_threads_reach_the_session(identity_model: Path, spinning: bool, entry: str) -> None:
    session = load_session(identity_model, threads=1, spinning=spinning)
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry
    assert options.intra_op_num_threads == 1
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x)


def test_missing_graph_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.onnx does not exist"):
        load_session(tmp_path / "model.onnx")


def test_default_threads_leave_a_core_to_the_event_loop(identity_model: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    options = load_session(identity_model).get_session_options()
    assert options.intra_op_num_threads == max(1, cores - 1)


def test_io_bound_runs_answer_as_plain_runs(python_repository: Path) -> None:
    """The IO-binding path (`run_bound`, what the CUDA provider uses) gives exactly `session.run`'s
    arrays for both served graphs, ragged histories and padded exclusions included."""
    from export import contract
    from serving.backends.onnxruntime import onnx_path, run_bound
    from serving.catalog import ServedModel

    version = ServedModel.load(python_repository).version
    profile, scorer = (load_session(onnx_path(python_repository, name, version)) for name in (contract.PROFILE_MODEL, contract.SCORER_MODEL))
    ids, ends = contract.ragged_batch([np.array([1, 2, 2, 7]), np.array([], np.int64), np.array([3])])
    feeds = {contract.HISTORY_IDS: ids, contract.HISTORY_ENDS: ends}
    outputs = [contract.PROFILE_WEIGHTS, contract.HISTORY_LENGTH]
    for bound, plain in zip(run_bound(profile, outputs, feeds), profile.run(outputs, feeds), strict=True):
        np.testing.assert_array_equal(bound, plain)
    weights = profile.run([contract.PROFILE_WEIGHTS], feeds)[0]
    feeds = {contract.PROFILE_WEIGHTS: weights, contract.EXCLUDE_IDS: np.array([[1, 2], [-1, -1], [3, -1]], np.int64)}
    outputs = [contract.TOP_IDS, contract.TOP_SCORES]
    for bound, plain in zip(run_bound(scorer, outputs, feeds), scorer.run(outputs, feeds), strict=True):
        np.testing.assert_array_equal(bound, plain)


def test_a_scorer_graph_from_the_threshold_up_gets_every_core() -> None:
    cores = len(os.sched_getaffinity(0))
    assert scorer_threads(WIDE_SCORER_BYTES - 1) == default_threads() == max(1, cores - 1)
    assert scorer_threads(WIDE_SCORER_BYTES) == scorer_threads(10 * WIDE_SCORER_BYTES) == cores


def test_from_config_gives_a_large_scorer_every_core_and_the_profile_graph_the_cores_less_one(
    python_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny repository's scorer is below the threshold: both graphs get the cores less one. With
    the threshold below it, the scorer gets every core and the profile graph (a gather of the
    history's rows, whatever the catalog) keeps the cores less one. A configured count wins."""
    import serving.backends.base as base
    from serving.backends.onnxruntime import OnnxRuntimeScorer
    from serving.catalog import ServedModel
    from serving.config import ServingConfig

    cores, narrow = len(os.sched_getaffinity(0)), default_threads()
    model = ServedModel.load(python_repository)

    def threads(**settings: object) -> dict[str, int]:
        config = ServingConfig(repository=str(python_repository), **settings)  # type: ignore[arg-type]
        return OnnxRuntimeScorer.from_config(config.inference, config.batching, str(python_repository), model).threads

    assert threads() == {contract.PROFILE_MODEL: narrow, contract.SCORER_MODEL: narrow}
    monkeypatch.setattr(base, "WIDE_SCORER_BYTES", 1)
    assert threads() == {contract.PROFILE_MODEL: narrow, contract.SCORER_MODEL: cores}
    assert threads(ort_threads=3) == {contract.PROFILE_MODEL: 3, contract.SCORER_MODEL: 3}


def test_a_single_threaded_cpu_session_tells_its_batcher_that_the_caller_does_all_the_work(python_repository: Path) -> None:
    """MicroBatcher's `runs_on_caller`: with one intra-op thread a run's CPU time on the calling
    thread is the whole run's (its inline choice may follow it); with helper threads it is not."""
    from serving.backends.onnxruntime import OnnxRuntimeScorer, onnx_path
    from serving.catalog import ServedModel

    version = ServedModel.load(python_repository).version
    for threads in (1, 2):
        profile, scorer = (load_session(onnx_path(python_repository, name, version), threads=threads)
                           for name in (contract.PROFILE_MODEL, contract.SCORER_MODEL))  # fmt: skip
        batched = OnnxRuntimeScorer(profile, scorer)
        assert (batched._profiles.runs_on_caller, batched._scores.runs_on_caller) == (threads == 1, threads == 1)
