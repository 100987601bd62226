"""`apron export`: repository layout, config.pbtxt, metadata, versions and refused input."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import cli
from export import contract
from export.cli import resolve_settings
from export.metadata import MetadataError, read_metadata
from export.onnx_export import ParityResult
from export.pipeline import ExportError
from export.triton_repository import (
    RepositoryError,
    RepositorySettings,
    check_configs,
    model_configs,
    parse_config,
    repository_settings,
)
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
        assert config.version_policy.latest.num_versions == RepositorySettings().keep_versions == 2
    for name in contract.ONNX_MODELS:
        config = parse_config(python_repository / name / "config.pbtxt")
        assert config.backend == "python"
        assert (python_repository / name / "1" / contract.ONNX_FILENAME).stat().st_size > 0
        model_py = python_repository / name / "1" / contract.PYTHON_BACKEND_FILENAME
        assert model_py.is_file()
        # its bytecode, valid by hash: the python stub never writes into the (polled) repository
        assert Path(importlib.util.cache_from_source(str(model_py))).is_file()
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
    assert meta.triton_max_batch_size == 16  # the export's --max-batch-size, for the gateway's check


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


def test_older_metadata_takes_triton_max_batch_size_from_the_config(python_repository: Path, tmp_path: Path) -> None:
    """Metadata written before `triton_max_batch_size` existed: read from the scorer's
    config.pbtxt, which every version shares; 0 (unknown) without one."""
    copy = tmp_path / "repo"
    shutil.copytree(python_repository, copy)
    path = copy / contract.METADATA_FILENAME
    data = json.loads(path.read_text())
    del data["triton_max_batch_size"]
    path.write_text(json.dumps(data))
    assert read_metadata(copy).triton_max_batch_size == 16
    shutil.rmtree(copy / contract.SCORER_MODEL)
    assert read_metadata(copy).triton_max_batch_size == 0


def test_export_is_readable_by_other_users_whatever_the_umask(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The gateway image runs as uid 10001 and Triton as its own user: folders 0755, files 0644,
    for a new repository (and the parents it creates) and for a version added to one."""
    repository = tmp_path / "new" / "parents" / "repo"
    previous = os.umask(0o077)
    try:
        export_tiny_repository(tiny_checkpoint, repository)
        export_tiny_repository(tiny_checkpoint, repository)  # merged into the existing repository
    finally:
        os.umask(previous)
    created = [tmp_path / "new", tmp_path / "new" / "parents", *repository.rglob("*"), repository]
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in created}
    assert {path for path, mode in modes.items() if mode != (0o755 if (tmp_path / path).is_dir() else 0o644)} == set()
    assert (repository / contract.PROFILE_MODEL / "2" / contract.ONNX_FILENAME).is_file()


def test_repository_readme_is_not_another_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """model_repository/README.md (committed) sits beside the models; an existing folder is added
    to in place, never replaced (a container mounts it)."""
    repository = tmp_path / "model_repository"
    repository.mkdir()
    (repository / "README.md").write_text("the layout\n")
    inode = repository.stat().st_ino
    assert export_tiny_repository(tiny_checkpoint, repository).version == 1
    assert repository.stat().st_ino == inode and (repository / "README.md").read_text() == "the layout\n"
    assert read_metadata(repository).model_version == 1


def test_changed_config_refused_naming_each_field_and_flag(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    repository = tmp_path / "repo"
    export_tiny_repository(tiny_checkpoint, repository)
    before = snapshot(repository)
    with pytest.raises(ExportError, match="differs from the repository's") as refused:
        export_tiny_repository(tiny_checkpoint, repository, k_max=TINY_K_MAX + 1)
    assert f"output[top_ids].dims: [{TINY_K_MAX}] in the repository, [{TINY_K_MAX + 1}] in this export" in str(
        refused.value
    )
    assert f"--k-max {TINY_K_MAX}" in str(refused.value)
    assert snapshot(repository) == before

    # `apron export` with its defaults into the tests' repository (batch 16, python backend, ...)
    assert run_cli(str(tiny_checkpoint), "--repository", str(repository), "--keep-versions", "3") == 2
    err = capsys.readouterr().err
    for line in (
        "max_batch_size: 16 in the repository, 64 in this export (apron_profile, apron_scorer, apron_item_encoder, apron_recommend)",
        "dynamic_batching.preferred_batch_size: [4, 8, 16] in the repository, [16, 32, 64] in this export",
        "dynamic_batching.max_queue_delay_microseconds: 20000 in the repository, 1000 in this export",
        "version_policy.latest.num_versions: 2 in the repository, 3 in this export",
        "backend: 'python' in the repository, (not set) in this export",
        "instance_group[0].kind: 'KIND_CPU' in the repository, 'KIND_GPU' in this export",
        f"output[top_ids].dims: [{TINY_K_MAX}] in the repository, [{TINY['n_items']}] in this export",  # clamped K_MAX
    ):
        assert line in err, line
    flags = (
        "--max-batch-size 16", "--preferred-batch-sizes 4 8 16", "--max-queue-delay-us 20000", "--keep-versions 2",
        "--triton-backend python", "--instance-kind cpu", "--cpu-threads 1", f"--k-max {TINY_K_MAX}",
        f"--like {repository}",
    )  # fmt: skip
    assert all(flag in err for flag in flags), err
    assert "--gpu-accelerator" not in err  # the repository has none: the backend decides it
    assert snapshot(repository) == before

    # the flags it names make the export match; so does --like
    listed = [arg for flag in flags[:-1] for arg in flag.split()]
    assert run_cli(str(tiny_checkpoint), "--repository", str(repository), *listed) == 0
    assert run_cli(str(tiny_checkpoint), "--repository", str(repository), "--like", str(repository)) == 0
    assert read_metadata(repository).model_version == 3
    assert {k: v for k, v in snapshot(repository).items() if k.endswith("config.pbtxt")} == {
        k: v for k, v in before.items() if k.endswith("config.pbtxt")
    }


def test_shape_changes_are_named_as_needing_a_new_repository(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    settings = RepositorySettings(backend="python")
    for name, config in model_configs(4, 6, 48, 20, settings).items():
        (repository / name).mkdir(parents=True)
        (repository / name / "config.pbtxt").write_text(text_format.MessageToString(config))
    with pytest.raises(RepositoryError) as refused:
        check_configs(repository, model_configs(4, 7, 48, 20, settings))  # K: 6 -> 7 prototypes
    message = str(refused.value)
    assert "output[profile_weights].dims: [4, 6] in the repository, [4, 7] in this export (apron_profile)" in message
    assert "come from the checkpoint's model (H, K, D)" in message and "new repository" in message


def test_repository_without_version_policy_keeps_one_version(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """An export written before version_policy: Triton's default is the latest 1 version, and so
    is --like's reading of it; the default export (2) is refused with the flag to pass."""
    repository = tmp_path / "repo"
    export_tiny_repository(tiny_checkpoint, repository)
    for name in contract.MODELS:
        path = repository / name / "config.pbtxt"
        config = parse_config(path)
        config.ClearField("version_policy")
        path.write_text(text_format.MessageToString(config))
    profile = repository_settings(repository)
    assert profile.settings.keep_versions == 1 and profile.k_max == TINY_K_MAX
    with pytest.raises(ExportError, match=r"version_policy.latest.num_versions: 1 in the repository, 2 in this export(.|\n)*--keep-versions 1"):
        export_tiny_repository(tiny_checkpoint, repository)
    assert run_cli(str(tiny_checkpoint), "--repository", str(repository), "--like", str(repository)) == 0


def test_like_reads_every_setting_and_flags_override_it(tiny_checkpoint: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    export_tiny_repository(tiny_checkpoint, source)  # python backend, batch 16, 20 ms, 1 thread, K_MAX 20
    copy = tmp_path / "copy"
    assert run_cli(str(tiny_checkpoint), "--repository", str(copy), "--like", str(source)) == 0
    for name in contract.MODELS:
        assert parse_config(copy / name / "config.pbtxt") == parse_config(source / name / "config.pbtxt")
    assert read_metadata(copy).k_max == TINY_K_MAX and read_metadata(copy).triton_max_batch_size == 16

    args = cli.build_parser("export").parse_args(
        ["export", str(tiny_checkpoint), "--like", str(source), "--keep-versions", "4", "--k-max", "7"]
    )
    settings, k_max = resolve_settings(args)
    assert settings == dataclasses.replace(repository_settings(source).settings, keep_versions=4) and k_max == 7
    assert settings.backend == "python" and settings.instance_kind == "cpu" and settings.cpu_threads == 1
    assert run_cli(str(tiny_checkpoint), "--like", str(tmp_path / "nothing")) == 2  # not a repository


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
    empty, folder = tmp_path / "empty.pt", tmp_path / "folder"
    empty.write_bytes(b"")
    folder.mkdir()
    baseline = tmp_path / "multidae.pt"
    payload = torch.load(tiny_checkpoint, weights_only=False)
    torch.save({**payload, "model": "multidae"}, baseline)
    cases = {
        text: "is not a readable torch checkpoint",
        foreign: "is not an APRON project checkpoint",
        baseline: "holds a 'multidae' model; only APRON checkpoints",
        tmp_path / "missing.pt": "does not exist",
        empty: "is empty, not a checkpoint",
        folder: "is a directory, not a checkpoint file",
    }
    for path, message in cases.items():
        repository = tmp_path / f"repo-{path.stem}"
        assert run_cli(str(path), "--repository", str(repository)) == 2
        err = capsys.readouterr().err
        assert message in err and str(path) in err
        assert not repository.exists()


def test_a_model_the_served_graphs_cannot_represent_is_refused_in_a_line(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An ablation checkpoint (a summed profile, Eq. 13 without shares) exports to no graph the
    gateway could score with: a one-line error naming it (it was a ValueError's traceback)."""
    payload = torch.load(tiny_checkpoint, weights_only=False)
    summed = tmp_path / "summed.pt"
    torch.save({**payload, "config": {**payload["config"], "profile": "sum"}}, summed)
    repository = tmp_path / "repo"
    assert run_cli(str(summed), "--repository", str(repository)) == 2
    err = capsys.readouterr().err
    assert "profile='sum' cannot be served: only 'mean' profiles can; nothing written" in err and str(summed) in err
    assert "Traceback" not in err and not repository.exists()


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


def test_int8_is_recorded_read_back_by_like_and_refused_with_fp16(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    repository = tmp_path / "int8"
    assert run_cli(str(tiny_checkpoint), "--repository", str(repository), "--triton-backend", "python", "--int8") == 0
    out = capsys.readouterr().out
    assert "python backend, int8)" in out and "parity apron_scorer.top_scores" in out
    assert read_metadata(repository).precision == "int8"
    scorer = (repository / contract.SCORER_MODEL / "1" / contract.ONNX_FILENAME).read_bytes()
    assert b"MatMulInteger" in scorer
    assert b"MatMulInteger" not in (repository / contract.PROFILE_MODEL / "1" / contract.ONNX_FILENAME).read_bytes()
    assert repository_settings(repository).settings.int8 and not repository_settings(repository).settings.fp16

    copy = tmp_path / "copy"
    assert run_cli(str(tiny_checkpoint), "--repository", str(copy), "--like", str(repository)) == 0
    assert read_metadata(copy).precision == "int8"
    assert run_cli(str(tiny_checkpoint), "--repository", str(tmp_path / "both"), "--like", str(repository), "--fp16") == 2
    assert "--fp16 and --int8 exclude each other" in capsys.readouterr().err
    assert not (tmp_path / "both").exists()
    plain = tmp_path / "plain"
    assert run_cli(str(tiny_checkpoint), "--repository", str(plain), "--like", str(repository), "--no-int8") == 0
    assert read_metadata(plain).precision == "fp32"


def test_an_int8_quantization_that_fails_is_a_one_line_error_and_writes_nothing(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import export.onnx_export
    from export.quantize import QuantizationError

    def refuse(scorer_onnx: bytes, reads_shares: bool = True) -> bytes:
        raise QuantizationError("ONNX Runtime's quantizer made integer products [] of f's layers ['/f/f.0/Gemm']")

    monkeypatch.setattr(export.onnx_export, "quantize_scorer", refuse)
    assert run_cli(str(tiny_checkpoint), "--repository", str(tmp_path / "repo"), "--int8") == 2
    assert "--int8: ONNX Runtime's quantizer made integer products []" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()
