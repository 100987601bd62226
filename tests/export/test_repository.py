"""`apron export`: repository layout, config.pbtxt, metadata, versions and refused input."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import cli
from export import contract
from export.metadata import MetadataError, read_metadata
from export.onnx_export import ParityResult
from export.pipeline import ExportError
from export.triton_repository import RepositorySettings, model_configs, parse_config
from tests.export.fixtures import TINY, TINY_K_MAX, export_tiny_repository


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root -> sha256: equal snapshots mean nothing was touched."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def run_cli(*argv: str) -> int:
    return cli.main(["export", *argv])


def test_python_repository_layout_and_configs_parse(python_repository: Path) -> None:
    for name in contract.MODELS:
        config = parse_config(python_repository / name / "config.pbtxt")  # Triton's model_config.proto
        assert config.name == name
        assert (python_repository / name / "1").is_dir()
        assert config.max_batch_size == 16
    for name in contract.ONNX_MODELS:
        config = parse_config(python_repository / name / "config.pbtxt")
        assert config.backend == "python"
        assert (python_repository / name / "1" / contract.ONNX_FILENAME).stat().st_size > 0
        assert (python_repository / name / "1" / contract.PYTHON_BACKEND_FILENAME).is_file()
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    scorer = parse_config(python_repository / contract.SCORER_MODEL / "config.pbtxt")
    assert [t.name for t in scorer.input] == [contract.PROFILE_WEIGHTS, contract.EXCLUDE_IDS]
    assert [(t.name, list(t.dims)) for t in scorer.output] == [
        (contract.TOP_IDS, [TINY_K_MAX]),
        (contract.TOP_SCORES, [TINY_K_MAX]),
    ]
    profile = parse_config(python_repository / contract.PROFILE_MODEL / "config.pbtxt")
    assert [(t.name, t.allow_ragged_batch) for t in profile.input] == [(contract.HISTORY_IDS, True)]
    assert profile.parameters["ragged_ends"].string_value == contract.HISTORY_ENDS  # model.py fills it
    assert not profile.batch_input  # the python backend does not use Triton's batch inputs
    for name in (contract.PROFILE_MODEL, contract.SCORER_MODEL):  # the torch backend's weights
        assert (python_repository / name / "1" / contract.TORCH_WEIGHTS_FILENAME).stat().st_size > 0
    ensemble = parse_config(python_repository / contract.ENSEMBLE_MODEL / "config.pbtxt")
    assert ensemble.platform == "ensemble"
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [contract.PROFILE_MODEL, contract.SCORER_MODEL]
    assert steps[1].input_map[contract.EXCLUDE_IDS] == contract.HISTORY_IDS  # history never recommended


def test_onnxruntime_gpu_configs() -> None:
    configs = model_configs(4, 6, 48, 100, RepositorySettings(gpu_accelerator="tensorrt", fp16=True))
    for name in contract.ONNX_MODELS:
        text = text_format.MessageToString(configs[name])
        config = text_format.Parse(text, mc.ModelConfig())  # round trip through Triton's proto
        assert config.platform == "onnxruntime_onnx"
        assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        assert config.dynamic_batching.max_queue_delay_microseconds == 1000
        (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    profile = text_format.Parse(text_format.MessageToString(configs[contract.PROFILE_MODEL]), mc.ModelConfig())
    assert profile.input[0].name == contract.HISTORY_IDS and profile.input[0].allow_ragged_batch
    (ends,) = profile.batch_input  # Triton computes the graph's second input from the formed batch
    assert ends.kind == mc.BatchInput.BATCH_ACCUMULATED_ELEMENT_COUNT and ends.data_type == mc.TYPE_INT32
    assert list(ends.target_name) == [contract.HISTORY_ENDS] and list(ends.source_input) == [contract.HISTORY_IDS]
    cuda = model_configs(4, 6, 48, 100, RepositorySettings())[contract.SCORER_MODEL]
    assert cuda.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "cuda"
    with pytest.raises(ValueError, match="preferred batch sizes"):
        RepositorySettings(max_batch_size=8, preferred_batch_sizes=(16,))


def test_metadata_describes_the_export(python_repository: Path, tiny_checkpoint: Path) -> None:
    meta = read_metadata(python_repository)
    dataset = torch.load(tiny_checkpoint, weights_only=False)["dataset"]
    assert meta.model_version == 1 and read_metadata(python_repository, version=1) == meta
    assert (meta.n_items, meta.n_heads, meta.n_prototypes, meta.feature_dim, meta.k_max) == (
        TINY["n_items"],
        TINY["n_heads"],
        TINY["n_tags"],
        TINY["feature_dim"],
        TINY_K_MAX,
    )
    assert meta.dataset_fingerprint == dataset["fingerprint"]
    assert meta.tag_names == dataset["tag_names"] and meta.tag_groups == dataset["tag_groups"]
    assert meta.prototype_items == dataset["prototype_items"]
    assert meta.prototype_item_ids == [dataset["item_ids"][i] for i in dataset["prototype_items"]]
    assert meta.item_ids == dataset["item_ids"]
    scorer = meta.tensors[contract.SCORER_MODEL]
    assert [t["name"] for t in scorer["inputs"]] == [contract.PROFILE_WEIGHTS, contract.EXCLUDE_IDS]
    assert scorer["outputs"][0] == {"name": contract.TOP_IDS, "dtype": "int64", "dims": [-1, TINY_K_MAX]}
    assert meta.backend == "python" and meta.precision == "fp32"


def test_read_metadata_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="does not exist"):
        read_metadata(tmp_path)
    (tmp_path / contract.METADATA_FILENAME).write_text('{"format": "apron-metadata/1",\n "n_items": }')
    with pytest.raises(MetadataError, match=r"apron_metadata.json: not valid JSON \(line 2"):
        read_metadata(tmp_path)
    (tmp_path / contract.METADATA_FILENAME).write_text('{"format": "apron-metadata/1", "n_items": 3}')
    with pytest.raises(MetadataError, match="apron-metadata/1.*export the checkpoint again"):
        read_metadata(tmp_path)  # an older export: its profile graph takes padded histories
    (tmp_path / contract.METADATA_FILENAME).write_text(f'{{"format": "{contract.METADATA_FORMAT}", "n_items": 3}}')
    with pytest.raises(MetadataError, match="missing field"):
        read_metadata(tmp_path)


def test_versions_side_by_side_and_existing_version_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    assert export_tiny_repository(tiny_checkpoint, repository).version == 1
    v1 = snapshot(repository)
    assert export_tiny_repository(tiny_checkpoint, repository).version == 2
    after = snapshot(repository)
    for path, digest in v1.items():
        if path != contract.METADATA_FILENAME:
            assert after[path] == digest, f"{path} changed when version 2 was added"
    for name in contract.ONNX_MODELS:
        assert (repository / name / "2" / contract.ONNX_FILENAME).is_file()
    assert read_metadata(repository).model_version == 2
    assert read_metadata(repository, version=1).model_version == 1
    assert not list(tmp_path.glob(".repo.staging-*"))  # staging directories are cleaned up

    before = snapshot(repository)
    code = run_cli(
        str(tiny_checkpoint),
        "--repository",
        str(repository),
        "--triton-backend",
        "python",
        "--k-max",
        str(TINY_K_MAX),
        "--max-batch-size",
        "16",
        "--preferred-batch-sizes",
        "4",
        "8",
        "16",
        "--max-queue-delay-us",
        "20000",
        "--cpu-threads",
        "1",
        "--version",
        "1",
    )
    assert code == 2
    assert snapshot(repository) == before

    # an older version number forced in later does not take over the root metadata
    export_tiny_repository(tiny_checkpoint, repository, version=7)
    export_tiny_repository(tiny_checkpoint, repository, version=5)
    assert read_metadata(repository).model_version == 7
    assert read_metadata(repository, version=5).model_version == 5


def test_changed_config_refused_without_touching_repository(tiny_checkpoint: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    export_tiny_repository(tiny_checkpoint, repository)
    before = snapshot(repository)
    with pytest.raises(ExportError, match="differs from this export's config"):
        export_tiny_repository(tiny_checkpoint, repository, k_max=TINY_K_MAX + 1)
    assert snapshot(repository) == before


def test_repository_with_other_models_refused(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    repository = tmp_path / "repo"
    (repository / "resnet50" / "1").mkdir(parents=True)
    (repository / "resnet50" / "config.pbtxt").write_text('name: "resnet50"\n')
    before = snapshot(repository)
    assert run_cli(str(tiny_checkpoint), "--repository", str(repository), "--triton-backend", "python") == 2
    assert "not APRON models (resnet50)" in capsys.readouterr().err
    assert snapshot(repository) == before
    result = export_tiny_repository(tiny_checkpoint, repository, allow_other_models=True)
    assert result.version == 1 and (repository / "resnet50" / "config.pbtxt").is_file()
    assert (repository / contract.PROFILE_MODEL / "1" / contract.ONNX_FILENAME).is_file()


def test_non_apron_checkpoints_refused(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    baseline = tmp_path / "multidae.pt"
    payload = torch.load(tiny_checkpoint, weights_only=False)
    torch.save({**payload, "model": "multidae"}, baseline)
    cases = {
        text: "is not a readable torch checkpoint",
        foreign: "is not an APRON project checkpoint",
        baseline: "holds a 'multidae' model; only APRON checkpoints",
        tmp_path / "missing.pt": "does not exist",
    }
    for path, message in cases.items():
        repository = tmp_path / f"repo-{path.stem}"
        assert run_cli(str(path), "--repository", str(repository)) == 2
        err = capsys.readouterr().err
        assert message in err and str(path) in err
        assert not repository.exists()


def test_parity_failure_writes_nothing(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import export.pipeline

    failing = [ParityResult(contract.SCORER_MODEL, contract.TOP_SCORES, 0.5, 0.1, False)]
    monkeypatch.setattr(export.pipeline, "check_parity", lambda *args, **kwargs: failing)
    with pytest.raises(ExportError, match="ONNX Runtime disagrees with PyTorch; nothing written"):
        export_tiny_repository(tiny_checkpoint, tmp_path / "repo")
    assert list(tmp_path.iterdir()) == []


def test_cli_prints_parity_and_summary(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    repository = tmp_path / "model_repository"
    assert run_cli(str(tiny_checkpoint), "--repository", str(repository), "--k-max", "25") == 0
    out = capsys.readouterr().out
    assert "parity apron_profile.profile_weights: max abs error" in out and "[ok]" in out
    assert f"exported version 1 to {repository}" in out and "K_MAX=25" in out
    config = parse_config(repository / contract.SCORER_MODEL / "config.pbtxt")
    assert config.platform == "onnxruntime_onnx"  # the default variant: Triton's ONNX Runtime backend
    assert not (repository / contract.SCORER_MODEL / "1" / contract.PYTHON_BACKEND_FILENAME).exists()
