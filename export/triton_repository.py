"""The Triton model repository: config.pbtxt built from Triton's own `model_config.proto`, versions
side by side, and atomic writes (everything is built in a staging dir beside the target, then
renamed into place; nothing existing is ever overwritten).

Layout (Triton's contract: folder name = model name, numeric version folders):

    model_repository/
      apron_metadata.json            newest version's metadata (export/metadata.py)
      apron_metadata.v<N>.json       every version's metadata, kept side by side
      apron_profile/config.pbtxt     + <N>/model.onnx + <N>/model.safetensors (+ <N>/model.py for the python backend)
      apron_scorer/config.pbtxt      + <N>/model.onnx + <N>/model.safetensors (...)
      apron_item_encoder/config.pbtxt + <N>/model.onnx  (...)
      apron_recommend/config.pbtxt   + <N>/              the ensemble: profile -> scorer

A model's config.pbtxt is shared by all of its versions, so a new version must produce the same
config (same H, K, D, K_MAX, backend, batching); otherwise export into a new repository.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export import contract
from export.contract import TensorSpec
from export.metadata import versioned_metadata_name

PYTHON_BACKEND_MODEL = Path(__file__).parent / "python_backend" / contract.PYTHON_BACKEND_FILENAME
BACKENDS = ("onnxruntime", "python")
GPU_ACCELERATORS = ("cuda", "tensorrt")
DATA_TYPES = {"int64": mc.TYPE_INT64, "float32": mc.TYPE_FP32, "int32": mc.TYPE_INT32}
RAGGED_ENDS_PARAMETER = "ragged_ends"  # python backend: the graph input it fills like Triton's batch_input


class RepositoryError(ValueError):
    """The target repository cannot take this export (other models, existing version, ...)."""


@dataclass(frozen=True)
class RepositorySettings:
    backend: str = (
        "onnxruntime"  # "onnxruntime" (GPU serving) | "python" (ONNX Runtime in Triton's python backend, CPU)
    )
    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (16, 32, 64)
    max_queue_delay_us: int = 1000  # how long the dynamic batcher may hold a request to fill a batch
    instance_kind: str = "auto"  # "gpu" | "cpu" | "auto": gpu for onnxruntime, cpu for python
    instance_count: int = 1
    gpu_accelerator: str = "cuda"  # "cuda" | "tensorrt" (onnxruntime backend on GPU only)
    fp16: bool = False
    cpu_threads: int = 0  # python backend: ONNX Runtime intra-op threads per instance (0 = ORT default)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.gpu_accelerator not in GPU_ACCELERATORS:
            raise ValueError(
                f"gpu accelerator must be one of {GPU_ACCELERATORS}, got {self.gpu_accelerator!r}"
            )
        if self.instance_kind not in ("auto", "gpu", "cpu"):
            raise ValueError(f"instance kind must be auto, gpu or cpu, got {self.instance_kind!r}")
        if self.max_batch_size < 1 or any(
            not 1 <= s <= self.max_batch_size for s in self.preferred_batch_sizes
        ):
            raise ValueError(
                f"preferred batch sizes {self.preferred_batch_sizes} must lie in [1, max_batch_size={self.max_batch_size}]"
            )

    @property
    def kind(self) -> int:
        if self.instance_kind == "auto":
            return (
                mc.ModelInstanceGroup.KIND_CPU if self.backend == "python" else mc.ModelInstanceGroup.KIND_GPU
            )
        return (
            mc.ModelInstanceGroup.KIND_GPU if self.instance_kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU
        )


def _add_tensors(
    config: mc.ModelConfig, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]
) -> None:
    for spec in inputs:
        config.input.add(
            name=spec.name, data_type=DATA_TYPES[spec.dtype], dims=list(spec.dims), allow_ragged_batch=spec.ragged
        )
    for spec in outputs:
        config.output.add(name=spec.name, data_type=DATA_TYPES[spec.dtype], dims=list(spec.dims))


def onnx_model_config(
    name: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], settings: RepositorySettings
) -> mc.ModelConfig:
    """One of the three ONNX models, served by the onnxruntime or the python backend."""
    config = mc.ModelConfig(name=name, max_batch_size=settings.max_batch_size)
    if settings.backend == "python":
        config.backend = "python"
        config.parameters["onnx_file"].string_value = contract.ONNX_FILENAME
        config.parameters["intra_op_thread_count"].string_value = str(settings.cpu_threads)
    else:
        config.platform = "onnxruntime_onnx"
    _add_tensors(config, inputs, outputs)
    for batch_input in contract.BATCH_INPUTS.get(name, ()):
        if settings.backend == "python":  # the python backend gets each request on its own: model.py
            config.parameters[RAGGED_ENDS_PARAMETER].string_value = batch_input.name  # computes it
        else:  # the onnxruntime backend concatenates the ragged input and Triton adds the offsets
            config.batch_input.add(
                kind=mc.BatchInput.Kind.Value(batch_input.kind),
                target_name=[batch_input.name],
                data_type=DATA_TYPES[batch_input.dtype],
                source_input=[batch_input.source],
            )
    config.dynamic_batching.preferred_batch_size.extend(settings.preferred_batch_sizes)
    config.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_us
    config.instance_group.add(kind=settings.kind, count=settings.instance_count)
    if settings.backend == "onnxruntime" and settings.kind == mc.ModelInstanceGroup.KIND_GPU:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name=settings.gpu_accelerator
        )
        if settings.gpu_accelerator == "tensorrt":
            accelerator.parameters["precision_mode"] = "FP16" if settings.fp16 else "FP32"
            accelerator.parameters["max_workspace_size_bytes"] = str(1 << 30)
    return config


def ensemble_config(io: dict[str, tuple], settings: RepositorySettings) -> mc.ModelConfig:
    """apron_recommend: history -> apron_profile -> apron_scorer, excluding the history itself."""
    inputs, outputs = io[contract.ENSEMBLE_MODEL]
    config = mc.ModelConfig(
        name=contract.ENSEMBLE_MODEL, platform="ensemble", max_batch_size=settings.max_batch_size
    )
    _add_tensors(config, inputs, outputs)
    internal_weights = f"_{contract.PROFILE_WEIGHTS}"
    profile = config.ensemble_scheduling.step.add(model_name=contract.PROFILE_MODEL, model_version=-1)
    profile.input_map[contract.HISTORY_IDS] = contract.HISTORY_IDS
    profile.output_map[contract.PROFILE_WEIGHTS] = internal_weights
    scorer = config.ensemble_scheduling.step.add(model_name=contract.SCORER_MODEL, model_version=-1)
    scorer.input_map[contract.PROFILE_WEIGHTS] = internal_weights
    scorer.input_map[contract.EXCLUDE_IDS] = contract.HISTORY_IDS  # never recommend what was heard
    scorer.output_map[contract.TOP_IDS] = contract.TOP_IDS
    scorer.output_map[contract.TOP_SCORES] = contract.TOP_SCORES
    return config


def model_configs(
    n_heads: int, n_prototypes: int, feature_dim: int, k_max: int, settings: RepositorySettings
) -> dict[str, mc.ModelConfig]:
    io = contract.model_io(n_heads, n_prototypes, feature_dim, k_max)
    configs = {name: onnx_model_config(name, *io[name], settings) for name in contract.ONNX_MODELS}
    configs[contract.ENSEMBLE_MODEL] = ensemble_config(io, settings)
    return configs


def config_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_config(path: str | Path) -> mc.ModelConfig:
    """Parse a config.pbtxt with Triton's model_config.proto (raises text_format.ParseError)."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


# ---- versions and atomic writes -------------------------------------------------------------


def _is_ours(name: str) -> bool:
    return name in contract.MODELS or (name.startswith("apron_metadata") and name.endswith(".json"))


def existing_versions(repository: Path) -> set[int]:
    """Version numbers present in any APRON model of the repository."""
    versions = set()
    for model in contract.MODELS:
        folder = repository / model
        if folder.is_dir():
            versions.update(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    return versions


def check_repository(repository: Path, allow_other_models: bool = False) -> set[int]:
    """Refuse a target that is a file or holds other models; return the APRON versions in it."""
    if not repository.exists():
        return set()
    if not repository.is_dir():
        raise RepositoryError(f"{repository} exists and is not a directory")
    others = sorted(p.name for p in repository.iterdir() if not _is_ours(p.name))
    if others and not allow_other_models:
        raise RepositoryError(
            f"{repository} already holds entries that are not APRON models ({', '.join(others[:5])}"
            f"{', ...' if len(others) > 5 else ''}); choose an empty or new directory, "
            "or pass --allow-other-models to add APRON beside them"
        )
    return existing_versions(repository)


def choose_version(existing: set[int], requested: int | None) -> int:
    if requested is None:
        return max(existing, default=0) + 1
    if requested < 1:
        raise RepositoryError(f"version must be a positive integer, got {requested}")
    if requested in existing:
        raise RepositoryError(f"version {requested} already exists; pick another with --version or omit it")
    return requested


def write_repository(
    repository: str | Path,
    onnx_models: dict[str, bytes],
    configs: dict[str, mc.ModelConfig],
    metadata_json: str,
    version: int,
    settings: RepositorySettings,
    allow_other_models: bool = False,
    *,
    weights: dict[str, bytes] | None = None,
) -> Path:
    """Add `version` of every model to the repository: staged beside it, then renamed into place.

    All checks (other models, existing version, a config.pbtxt that would change) run before the
    first rename, so a refused export leaves the repository exactly as it was."""
    repository = Path(repository).absolute()
    existing = check_repository(repository, allow_other_models)
    if version in existing:
        raise RepositoryError(f"version {version} already exists in {repository}")
    repository.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=repository.parent, prefix=f".{repository.name}.staging-"))
    try:
        _stage(staging, onnx_models, configs, metadata_json, version, settings, weights or {})
        if not repository.exists() or not any(repository.iterdir()):
            if repository.exists():
                repository.rmdir()  # empty: replaced by the staged tree in one rename
            os.rename(staging, repository)
            return repository
        _merge(staging, repository, version, existing)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return repository


def _stage(
    staging: Path,
    onnx_models: dict[str, bytes],
    configs: dict[str, mc.ModelConfig],
    metadata_json: str,
    version: int,
    settings: RepositorySettings,
    weights: dict[str, bytes],
) -> None:
    for name, config in configs.items():
        version_dir = staging / name / str(version)
        version_dir.mkdir(parents=True)  # the ensemble's version folder stays empty
        (staging / name / "config.pbtxt").write_text(config_text(config))
        if name in onnx_models:
            (version_dir / contract.ONNX_FILENAME).write_bytes(onnx_models[name])
            if settings.backend == "python":
                shutil.copyfile(PYTHON_BACKEND_MODEL, version_dir / contract.PYTHON_BACKEND_FILENAME)
        if name in weights:  # the torch backend's weights; Triton ignores other files in a version
            (version_dir / contract.TORCH_WEIGHTS_FILENAME).write_bytes(weights[name])
    (staging / versioned_metadata_name(version)).write_text(metadata_json)
    (staging / contract.METADATA_FILENAME).write_text(metadata_json)


def _merge(staging: Path, repository: Path, version: int, existing: set[int]) -> None:
    """Move the staged version folders into an existing APRON repository."""
    for name in contract.MODELS:
        target_config = repository / name / "config.pbtxt"
        if target_config.exists():
            old, new = parse_config(target_config), parse_config(staging / name / "config.pbtxt")
            if old != new:
                raise RepositoryError(
                    f"{target_config} differs from this export's config (shapes, K_MAX, backend or batching "
                    "changed); a model's config is shared by its versions, so export into a new repository"
                )
        elif (repository / name).exists():
            raise RepositoryError(
                f"{repository / name} exists without a config.pbtxt; remove it or pick a new repository"
            )
    if (repository / versioned_metadata_name(version)).exists():
        raise RepositoryError(f"{repository / versioned_metadata_name(version)} already exists")
    for name in contract.MODELS:
        if (repository / name).exists():
            os.rename(staging / name / str(version), repository / name / str(version))
        else:
            os.rename(staging / name, repository / name)
    os.rename(staging / versioned_metadata_name(version), repository / versioned_metadata_name(version))
    if version > max(existing, default=0):  # the root metadata follows the version Triton serves (the latest)
        os.replace(staging / contract.METADATA_FILENAME, repository / contract.METADATA_FILENAME)
