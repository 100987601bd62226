"""A real tritonserver (nvidia-pytriton's binary, python-backend variant) serves the exported
repository: same numbers as in-process ONNX Runtime, dynamic batching visible in its statistics."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from export import contract
from export.onnx_export import history_multi_hot, ragged, random_histories, session
from export.triton_server import TritonServer, TritonServerError, run_triton_server
from tests.edit_penalty import edited_batches, reference_scores
from tests.export.fixtures import (
    REPOSITORY_README,
    TINY,
    TINY_K_MAX,
    export_tiny_repository,
    make_tiny_checkpoint,
)
from tests.polling import wait_until
from training.checkpoint import load_checkpoint

DTYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}
PROFILE_OUTPUTS = [contract.PROFILE_WEIGHTS, contract.HISTORY_LENGTH]


def infer(
    url: str, model: str, inputs: dict[str, np.ndarray], outputs: list[str], version: str = ""
) -> list[np.ndarray]:
    """One request; `version` "" is the one Triton's version policy picks (the latest loaded)."""
    client = grpcclient.InferenceServerClient(url)
    tensors = []
    for name, value in inputs.items():
        tensor = grpcclient.InferInput(name, list(value.shape), DTYPES[value.dtype])
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    requested = [grpcclient.InferRequestedOutput(n) for n in outputs]
    result = client.infer(model, tensors, model_version=version, outputs=requested)
    return [result.as_numpy(name) for name in outputs]


def local(repository: Path, model: str, version: str = "1") -> object:
    return session((repository / model / version / contract.ONNX_FILENAME).read_bytes())


def profile_each(url: str, histories: np.ndarray, workers: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """apron_profile takes one history per request, as long as it is (padding dropped, at least one
    entry): concurrent requests of different lengths, stacked back into (B, H, K), (B, 1)."""

    def one(row: np.ndarray) -> list[np.ndarray]:
        history = row[row != contract.PAD_ID]
        history = history if len(history) else np.array([contract.PAD_ID])
        return infer(url, contract.PROFILE_MODEL, {contract.HISTORY_IDS: history[None]}, PROFILE_OUTPUTS)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        answers = list(pool.map(one, histories))
    return np.concatenate([a[0] for a in answers]), np.concatenate([a[1] for a in answers])


def local_profile(repository: Path, histories: np.ndarray) -> list[np.ndarray]:
    ids, ends = ragged(histories)
    return local(repository, contract.PROFILE_MODEL).run(
        None, {contract.HISTORY_IDS: ids, contract.HISTORY_ENDS: ends}
    )


def model_stats(url: str, model: str) -> tuple[int, int, dict[int, int]]:
    """(inference_count, execution_count, {batch size: executions}) as Triton reports them."""
    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(model, as_json=True)[
        "model_stats"
    ][0]
    batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0)), batches


def test_server_answers_like_in_process_onnxruntime(
    triton_server: TritonServer, python_repository: Path
) -> None:
    url = triton_server.grpc_url
    histories = random_histories(TINY["n_items"], 6, 25, np.random.default_rng(7))
    weights, lengths = profile_each(url, histories)
    expected = local_profile(python_repository, histories)
    np.testing.assert_allclose(weights, expected[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(lengths, expected[1])
    assert weights.shape == (6, TINY["n_heads"], TINY["n_tags"]) and weights[1:].sum() > 0

    edited = weights.copy()
    edited[:, :, 2] *= 0.0  # the gateway's edit path: profile -> edit -> scorer
    scorer_inputs = {contract.PROFILE_WEIGHTS: edited, contract.EXCLUDE_IDS: histories}
    top_ids, top_scores = infer(
        url, contract.SCORER_MODEL, scorer_inputs, [contract.TOP_IDS, contract.TOP_SCORES]
    )
    expected_ids, expected_scores = local(python_repository, contract.SCORER_MODEL).run(None, scorer_inputs)
    np.testing.assert_array_equal(top_ids, expected_ids)
    np.testing.assert_allclose(top_scores, expected_scores, rtol=1e-6, atol=1e-6)
    assert top_ids.shape == (6, TINY_K_MAX)

    # the ensemble (no edits) = profile -> scorer with the history excluded; one history per request
    ensemble = [
        infer(url, contract.ENSEMBLE_MODEL, {contract.HISTORY_IDS: row[None]}, [contract.TOP_IDS, contract.TOP_SCORES])
        for row in histories
    ]
    ens_ids, ens_scores = (np.concatenate([e[i] for e in ensemble]) for i in (0, 1))
    direct = local(python_repository, contract.SCORER_MODEL).run(
        None, {contract.PROFILE_WEIGHTS: expected[0], contract.EXCLUDE_IDS: histories}
    )
    np.testing.assert_array_equal(ens_ids, direct[0])
    np.testing.assert_allclose(ens_scores, direct[1], rtol=1e-6, atol=1e-6)

    features = np.random.default_rng(8).normal(size=(3, TINY["feature_dim"])).astype(np.float32)
    (encoded,) = infer(
        url,
        contract.ITEM_ENCODER_MODEL,
        {contract.ITEM_FEATURES: features},
        [contract.ITEM_PROTOTYPE_WEIGHTS],
    )
    (expected_encoded,) = local(python_repository, contract.ITEM_ENCODER_MODEL).run(
        None, {contract.ITEM_FEATURES: features}
    )
    np.testing.assert_allclose(encoded, expected_encoded, rtol=1e-6, atol=1e-7)


def test_concurrent_requests_are_dynamically_batched(
    triton_server: TritonServer, python_repository: Path
) -> None:
    url = triton_server.grpc_url
    histories = random_histories(TINY["n_items"], 32, 12, np.random.default_rng(9))
    histories[:, 0] = np.arange(32)  # every row non-empty; lengths differ: the input is ragged
    inferences_before, executions_before, batches_before = model_stats(url, contract.PROFILE_MODEL)
    weights, lengths = profile_each(url, histories)
    inferences, executions, batches = model_stats(url, contract.PROFILE_MODEL)
    expected = local_profile(python_repository, histories)
    np.testing.assert_allclose(weights, expected[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(lengths, expected[1])

    assert inferences - inferences_before == 32
    new_executions = executions - executions_before
    assert 1 <= new_executions < 32, f"32 concurrent requests ran in {new_executions} executions: no batching"
    merged = {size: count - batches_before.get(size, 0) for size, count in batches.items()}
    assert any(size > 1 and count > 0 for size, count in merged.items()), merged
    assert sum(size * count for size, count in merged.items()) == 32


def test_profile_request_with_several_rows_is_refused(triton_server: TritonServer) -> None:
    """A ragged input cannot tell rows apart inside one request (Triton's batch input counts
    requests), so a (2, T) request is an error that says what to send instead."""
    rows = np.array([[1, 2], [3, -1]], np.int64)
    with pytest.raises(InferenceServerException, match="one row per request"):
        infer(triton_server.grpc_url, contract.PROFILE_MODEL, {contract.HISTORY_IDS: rows}, PROFILE_OUTPUTS)


def test_server_that_fails_to_load_raises_with_its_log(tmp_path: Path) -> None:
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.py").write_text('raise RuntimeError("deliberately broken model")\n')
    (tmp_path / "broken" / "config.pbtxt").write_text(
        'name: "broken"\nbackend: "python"\nmax_batch_size: 0\n'
    )
    with (
        pytest.raises(TritonServerError, match="deliberately broken model"),
        run_triton_server(tmp_path, startup_timeout=60),
    ):
        pass


@pytest.mark.parametrize(("first_failure", "starts"), [
    ("terminate called after throwing an instance of 'boost::interprocess::lock_exception'", 2),  # tried again
    ("failed to load 'apron_scorer'", 1),  # the repository's fault: reported at once
])  # fmt: skip
def test_a_start_that_failed_for_a_reason_of_the_moment_is_tried_again(tmp_path: Path, first_failure: str, starts: int) -> None:
    """A stand-in tritonserver that prints `first_failure` and exits, then a second failure: only the
    python backend's abort at start (RETRIED_AT_START) earns a second start."""
    count = tmp_path / "starts"
    binary = tmp_path / "tritonserver"
    binary.write_text(
        f"#!/bin/sh\necho x >> {count}\n"
        f'if [ $(wc -l < {count}) -eq 1 ]; then echo "{first_failure}"; else echo "second start failed"; fi\nexit 134\n'
    )
    binary.chmod(0o755)
    expected = "second start failed" if starts == 2 else "failed to load"
    with (
        pytest.raises(TritonServerError, match=expected),
        run_triton_server(tmp_path, tritonserver=binary, backend_directory=tmp_path, startup_timeout=60),
    ):
        pass
    assert len(count.read_text().splitlines()) == starts


def test_what_a_failed_server_leaves_running_is_stopped_with_it(tmp_path: Path) -> None:
    """A python stub outlives a tritonserver that aborted (or was killed), waiting on its shared
    memory for good; the server runs in a process group of its own, and stopping it ends the group.
    Here a stand-in server leaves a child behind and exits."""
    import psutil

    binary, pid_file = tmp_path / "tritonserver", tmp_path / "child.pid"
    binary.write_text(f"#!/bin/sh\nsleep 1000 &\necho $! > {pid_file}\necho \"failed to load 'apron_scorer'\"\nexit 134\n")
    binary.chmod(0o755)
    with (
        pytest.raises(TritonServerError, match="failed to load"),
        run_triton_server(tmp_path, tritonserver=binary, backend_directory=tmp_path, startup_timeout=60),
    ):
        pass
    child = int(pid_file.read_text())

    def gone() -> bool:
        try:
            return psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(gone, "the server's child stopped with it")


def test_version_exported_while_serving_is_loaded_beside_the_old(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Triton polls the repository (export/triton_server.py, as deploy/ runs it): a version
    exported into the repository it serves is loaded beside the old one (version_policy keeps the
    latest 2), each answers when asked by number, and the old one answers throughout the load."""
    repository = tmp_path / "model_repository"
    repository.mkdir()
    shutil.copyfile(REPOSITORY_README, repository / "README.md")  # as in the project's model_repository/
    export_tiny_repository(tiny_checkpoint, repository)
    retrained = make_tiny_checkpoint(tmp_path / "retrained.pt", seed=1)
    rng = np.random.default_rng(11)
    weights = rng.random((3, TINY["n_heads"], TINY["n_tags"])).astype(np.float32)
    scorer_inputs = {contract.PROFILE_WEIGHTS: weights, contract.EXCLUDE_IDS: np.full((3, 1), contract.PAD_ID)}
    outputs = [contract.TOP_IDS, contract.TOP_SCORES]
    with run_triton_server(repository) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert not client.is_model_ready(contract.SCORER_MODEL, "2")
        export_tiny_repository(retrained, repository)
        versions = ("1", "2")

        def both_ready() -> bool:
            infer(server.grpc_url, contract.SCORER_MODEL, scorer_inputs, outputs, version="1")  # raises if v1 fails
            return all(client.is_model_ready(model, v) for model in contract.MODELS for v in versions)

        try:
            wait_until(both_ready, "versions 1 and 2 of every model READY", timeout=120)
        except AssertionError as error:
            raise AssertionError(f"{error}; Triton's log:\n{server.log_tail()}") from error
        index = client.get_model_repository_index(as_json=True)["models"]
        assert {(m["name"], m["version"]) for m in index if m.get("state") == "READY"} == {
            (model, v) for model in contract.MODELS for v in versions
        }
        answers = {}
        for version in versions:
            ids, scores = infer(server.grpc_url, contract.SCORER_MODEL, scorer_inputs, outputs, version=version)
            expected_ids, expected_scores = local(repository, contract.SCORER_MODEL, version).run(None, scorer_inputs)
            np.testing.assert_array_equal(ids, expected_ids)
            np.testing.assert_allclose(scores, expected_scores, rtol=1e-6, atol=1e-6)
            answers[version] = scores
        assert not np.allclose(answers["1"], answers["2"])  # two different models, each served by its number
        # the default (no version asked) is the latest, as the version policy orders them
        np.testing.assert_array_equal(infer(server.grpc_url, contract.SCORER_MODEL, scorer_inputs, outputs)[1], answers["2"])


@pytest.fixture(scope="module")
def penalised_server(penalised_repository: Path) -> Iterator[TritonServer]:
    with run_triton_server(penalised_repository) as server:
        yield server


def test_edit_penalty_is_served_like_the_whole_table_formula(
    penalised_server: TritonServer, penalised_repository: Path, penalised_checkpoint: Path
) -> None:
    """The python backend runs the scorer graph whose edit penalty skips unedited batches and reads
    only removed prototypes' rows: every edit case scores like the einsum reference over the whole
    (N, H, K) table and like in-process ONNX Runtime (K_MAX is the whole catalog here)."""
    model, _ = load_checkpoint(penalised_checkpoint)
    n_items = TINY["n_items"]
    histories = random_histories(n_items, 6, 30, np.random.default_rng(13))[1:]  # 5 non-empty rows
    with torch.no_grad():
        weights = model.profile_weights(history_multi_hot(torch.from_numpy(histories), n_items))
    excluded = history_multi_hot(torch.from_numpy(histories), n_items) > 0
    outputs = [contract.TOP_IDS, contract.TOP_SCORES]
    for case, batch in edited_batches(weights).items():
        inputs = {contract.PROFILE_WEIGHTS: batch.numpy(), contract.EXCLUDE_IDS: histories}
        top_ids, top_scores = infer(penalised_server.grpc_url, contract.SCORER_MODEL, inputs, outputs)
        expected_ids, expected_scores = local(penalised_repository, contract.SCORER_MODEL).run(None, inputs)
        np.testing.assert_array_equal(top_ids, expected_ids, err_msg=case)
        np.testing.assert_allclose(top_scores, expected_scores, rtol=1e-6, atol=1e-6, err_msg=case)
        reference = reference_scores(model, batch, excluded).numpy()
        np.testing.assert_allclose(top_scores, reference, rtol=1e-5, atol=1e-4, err_msg=case)
