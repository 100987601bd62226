"""The Triton model repository: config.pbtxt built from Triton's own `model_config.proto`, versions
side by side, and atomic writes (everything is built in a staging dir beside the target, then
renamed into place; nothing existing is ever overwritten).

Layout (Triton's contract: folder name = model name, numeric version folders):

    model_repository/
      README.md                      the layout for operators (committed; not a model)
      apron_metadata.json            newest version's metadata (export/metadata.py)
      apron_metadata.v<N>.json       every version's metadata, kept side by side
      apron_profile/config.pbtxt     + <N>/model.onnx + <N>/model.safetensors (+ <N>/model.py and its
                                       __pycache__/*.pyc for the python backend)
      apron_scorer/config.pbtxt      + <N>/model.onnx + <N>/model.safetensors (...)
      apron_item_encoder/config.pbtxt + <N>/model.onnx  (...)
      apron_recommend/config.pbtxt   + <N>/              the ensemble: profile -> scorer

A model's config.pbtxt is shared by all of its versions, so a new version must produce the same
config (same H, K, D, K_MAX, backend, batching, version policy); otherwise the export is refused
with each differing field and the flags that match the repository (`repository_settings` reads
them back: `apron export --like REPO`). Each config keeps the latest `keep_versions` versions
loaded (`version_policy`), so a Triton that polls the repository serves the new version beside
the old one while gateways move over.

Everything the export creates is world-readable (folders 0755, files 0644) whatever the umask:
the gateway image runs as its own user (uid 10001) and Triton as another.
"""

from __future__ import annotations

import importlib.util
import os
import py_compile
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from common.files import FILE_MODE
from export import contract
from export.contract import Precision, TensorSpec
from export.metadata import MetadataError, read_metadata, versioned_metadata_name

PYTHON_BACKEND_MODEL = Path(__file__).parent / "python_backend" / contract.PYTHON_BACKEND_FILENAME
BACKENDS = ("onnxruntime", "python")
GPU_ACCELERATORS = ("cuda", "tensorrt")
DATA_TYPES = {"int64": mc.TYPE_INT64, "float32": mc.TYPE_FP32, "int32": mc.TYPE_INT32}
RAGGED_ENDS_PARAMETER = "ragged_ends"  # python backend: the graph input it fills like Triton's batch_input
THREADS_PARAMETER = "intra_op_thread_count"  # python backend: ONNX Runtime intra-op threads
DIR_MODE = 0o755  # every folder the export creates; files get common.files.FILE_MODE (0644)
README = "README.md"  # model_repository/README.md (the layout, committed): not a model, Triton ignores it
TRITON_DEFAULT_KEEP_VERSIONS = 1  # what Triton loads for a config without version_policy (latest 1)
# Triton's batch limit: the one default (the metadata records each export's value,
# `triton_max_batch_size`, for the gateway to check its own batch size against)
DEFAULT_MAX_BATCH_SIZE = 64


class RepositoryError(ValueError):
    """The target repository cannot take this export (other models, existing version, ...)."""


@dataclass(frozen=True)
class RepositorySettings:
    backend: str = (
        "onnxruntime"  # "onnxruntime" (GPU serving) | "python" (ONNX Runtime in Triton's python backend, CPU)
    )
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    preferred_batch_sizes: tuple[int, ...] = tuple(DEFAULT_MAX_BATCH_SIZE // d for d in (4, 2, 1))
    max_queue_delay_us: int = 1000  # how long the dynamic batcher may hold a request to fill a batch
    instance_kind: str = "auto"  # "gpu" | "cpu" | "auto": gpu for onnxruntime, cpu for python
    instance_count: int = 1
    gpu_accelerator: str = "cuda"  # "cuda" | "tensorrt" (onnxruntime backend on GPU only)
    fp16: bool = False
    int8: bool = False  # the scorer's f with int8 weights (export/quantize.py): ONNX Runtime on the CPU
    cpu_threads: int = 0  # python backend: ONNX Runtime intra-op threads per instance (0 = ORT default)
    keep_versions: int = 2  # version_policy: Triton keeps the latest N versions loaded (old + new during a rollout)

    def __post_init__(self) -> None:
        Precision.of(self.fp16, self.int8)  # refuses both at once
        if self.keep_versions < 1:
            raise ValueError(f"keep versions must be at least 1, got {self.keep_versions}")
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
    def precision(self) -> Precision:
        """The graphs' precision, as the metadata records it."""
        return Precision.of(self.fp16, self.int8)

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


def _base_config(name: str, settings: RepositorySettings, **kwargs: Any) -> mc.ModelConfig:
    """What every model's config shares: its name, the batch limit and the version policy."""
    config = mc.ModelConfig(name=name, max_batch_size=settings.max_batch_size, **kwargs)
    config.version_policy.latest.num_versions = settings.keep_versions
    return config


def onnx_model_config(
    name: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], settings: RepositorySettings
) -> mc.ModelConfig:
    """One of the three ONNX models, served by the onnxruntime or the python backend."""
    config = _base_config(name, settings)
    if settings.backend == "python":
        config.backend = "python"
        config.parameters["onnx_file"].string_value = contract.ONNX_FILENAME
        config.parameters[THREADS_PARAMETER].string_value = str(settings.cpu_threads)
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
    """apron_recommend: history -> apron_profile -> apron_scorer, excluding the history itself.
    Its steps run the latest loaded profile and scorer (model_version -1) whichever ensemble
    version is asked: the config is shared by its versions, so it cannot pin one per version."""
    inputs, outputs = io[contract.ENSEMBLE_MODEL]
    config = _base_config(contract.ENSEMBLE_MODEL, settings, platform="ensemble")
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


# ---- reading settings back, and what differs ------------------------------------------------


@dataclass(frozen=True)
class RepositoryProfile:
    """The export settings an existing repository was written with (`apron export --like REPO`)."""

    settings: RepositorySettings
    k_max: int


def settings_of_config(config: mc.ModelConfig, precision: str | None = None) -> RepositorySettings:
    """The RepositorySettings that `onnx_model_config` turns into `config` (an ONNX model's).
    `precision` (the metadata's) when known: the config records fp16 only for TensorRT, int8 not at all."""
    defaults = RepositorySettings()
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    policy = config.version_policy
    if policy.WhichOneof("policy_choice") not in (None, "latest"):
        raise RepositoryError(
            f"{config.name}: version_policy {policy.WhichOneof('policy_choice')} is not one `apron export` "
            "writes (latest); export into a new repository"
        )
    threads = config.parameters.get(THREADS_PARAMETER)
    return RepositorySettings(
        backend="python" if config.backend == "python" else "onnxruntime",
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=tuple(config.dynamic_batching.preferred_batch_size),
        max_queue_delay_us=config.dynamic_batching.max_queue_delay_microseconds,
        instance_kind=(
            "gpu" if config.instance_group and config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
            else "cpu"
        ),
        instance_count=config.instance_group[0].count if config.instance_group else defaults.instance_count,
        gpu_accelerator=accelerators[0].name if accelerators else defaults.gpu_accelerator,
        fp16=(
            precision == "fp16" if precision is not None
            else bool(accelerators) and accelerators[0].parameters.get("precision_mode") == "FP16"
        ),
        int8=precision == "int8",
        cpu_threads=int(threads.string_value) if threads is not None else defaults.cpu_threads,
        keep_versions=policy.latest.num_versions if policy.HasField("latest") else TRITON_DEFAULT_KEEP_VERSIONS,
    )  # fmt: skip


def repository_settings(repository: str | Path) -> RepositoryProfile:
    """Read back the settings an APRON repository's config.pbtxt files (and its metadata's
    precision) were written with; RepositoryError when it is not an APRON repository."""
    repository = Path(repository)
    paths = {name: repository / name / "config.pbtxt" for name in (contract.PROFILE_MODEL, contract.SCORER_MODEL)}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise RepositoryError(f"{repository} is not an APRON model repository: {', '.join(missing)} missing")
    try:
        configs = {name: parse_config(path) for name, path in paths.items()}
    except text_format.ParseError as error:
        raise RepositoryError(f"{repository}: a config.pbtxt does not parse ({error})") from error
    try:
        precision: str | None = read_metadata(repository).precision
    except MetadataError:
        precision = None
    outputs = {output.name: list(output.dims) for output in configs[contract.SCORER_MODEL].output}
    try:
        settings = settings_of_config(configs[contract.PROFILE_MODEL], precision)
    except ValueError as error:  # RepositorySettings' own checks (a hand-edited config)
        raise RepositoryError(f"{paths[contract.PROFILE_MODEL]}: {error}") from error
    top_ids = outputs.get(contract.TOP_IDS)
    if not top_ids:
        raise RepositoryError(f"{paths[contract.SCORER_MODEL]} has no {contract.TOP_IDS} output with a width")
    return RepositoryProfile(settings, k_max=int(top_ids[0]))


@dataclass(frozen=True)
class ConfigDifference:
    field: str  # dotted path in model_config.proto; repeated tensors by name: output[top_ids].dims
    old: Any  # in the repository (None: not set)
    new: Any  # in this export


def _flatten(message: Any, prefix: str = "") -> dict[str, Any]:
    """Every set leaf field of a protobuf message by dotted path (enums by name)."""
    leaves: dict[str, Any] = {}
    for field, value in message.ListFields():
        path = prefix + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            is_message = field.message_type.fields_by_name["value"].message_type is not None
            for key in sorted(value):
                if is_message:
                    leaves.update(_flatten(value[key], f"{path}.{key}."))
                else:
                    leaves[f"{path}.{key}"] = value[key]
        elif field.is_repeated and field.message_type is not None:
            for index, item in enumerate(value):
                label = getattr(item, "name", "") if "name" in field.message_type.fields_by_name else ""
                leaves.update(_flatten(item, f"{path}[{label or index}]."))
        elif field.message_type is not None:
            leaves.update(_flatten(value, path + "."))
        elif field.enum_type is not None:
            names = field.enum_type.values_by_number
            leaves[path] = [names[v].name for v in value] if field.is_repeated else names[value].name
        else:
            leaves[path] = list(value) if field.is_repeated else value
    return leaves


def _with_policy(config: mc.ModelConfig) -> mc.ModelConfig:
    """`config` with Triton's default version policy written out (exports before version_policy)."""
    if config.HasField("version_policy"):
        return config
    explicit = mc.ModelConfig()
    explicit.CopyFrom(config)
    explicit.version_policy.latest.num_versions = TRITON_DEFAULT_KEEP_VERSIONS
    return explicit


def config_differences(old: mc.ModelConfig, new: mc.ModelConfig) -> list[ConfigDifference]:
    old_fields, new_fields = _flatten(_with_policy(old)), _flatten(_with_policy(new))
    return [
        ConfigDifference(path, old_fields.get(path), new_fields.get(path))
        for path in sorted(old_fields.keys() | new_fields.keys())
        if old_fields.get(path) != new_fields.get(path)
    ]


def _joined(values: Iterable[object]) -> str:
    return " ".join(str(v) for v in values)


ACCELERATORS = "optimization.execution_accelerators.gpu_execution_accelerator["
# config.pbtxt field (path prefix) -> the `apron export` flag that sets it, given the repository's settings
_FLAGS: tuple[tuple[str, Any], ...] = (
    ("max_batch_size", lambda s, k: f"--max-batch-size {s.max_batch_size}"),
    ("dynamic_batching.preferred_batch_size", lambda s, k: f"--preferred-batch-sizes {_joined(s.preferred_batch_sizes)}"),
    ("dynamic_batching.max_queue_delay_microseconds", lambda s, k: f"--max-queue-delay-us {s.max_queue_delay_us}"),
    ("version_policy", lambda s, k: f"--keep-versions {s.keep_versions}"),
    ("instance_group[0].kind", lambda s, k: f"--instance-kind {s.instance_kind}"),
    ("instance_group[0].count", lambda s, k: f"--instance-count {s.instance_count}"),
    (f"parameters.{THREADS_PARAMETER}", lambda s, k: f"--cpu-threads {s.cpu_threads}"),
    ("backend", lambda s, k: f"--triton-backend {s.backend}"),
    ("platform", lambda s, k: f"--triton-backend {s.backend}"),
    ("parameters.", lambda s, k: f"--triton-backend {s.backend}"),
    ("batch_input", lambda s, k: f"--triton-backend {s.backend}"),
    (ACCELERATORS, lambda s, k: f"--gpu-accelerator {s.gpu_accelerator}"),
    (f"output[{contract.TOP_IDS}].dims", lambda s, k: f"--k-max {k}"),
    (f"output[{contract.TOP_SCORES}].dims", lambda s, k: f"--k-max {k}"),
)  # fmt: skip


def flag_for(difference: ConfigDifference, profile: RepositoryProfile) -> str | None:
    """The flag (with the repository's value) that makes this export match; "" when other flags
    decide it (an accelerator the repository lacks: --triton-backend, --instance-kind); None for
    a shape of the checkpoint's model (H, K, D), which no flag changes."""
    if difference.field.startswith(ACCELERATORS):
        if difference.old is None:
            return ""
        if difference.field.endswith(".precision_mode"):  # TensorRT's precision is --fp16
            return "--fp16" if profile.settings.fp16 else "--no-fp16"
    for prefix, flag in _FLAGS:
        if difference.field.startswith(prefix):
            return flag(profile.settings, profile.k_max)
    return None


def _shown(value: Any) -> str:
    return "(not set)" if value is None else repr(value) if isinstance(value, str) else str(value)


def differences_message(
    repository: Path, differences: dict[str, list[ConfigDifference]], profile: RepositoryProfile | None
) -> str:
    """What differs (each field once, with the models it differs in) and what to pass instead."""
    models_of: dict[tuple[str, str, str], list[str]] = {}
    for model, found in differences.items():
        for d in found:
            models_of.setdefault((d.field, _shown(d.old), _shown(d.new)), []).append(model)
    lines = [
        f"  {field}: {old} in the repository, {new} in this export ({', '.join(models)})"
        for (field, old, new), models in models_of.items()
    ]
    every = [d for found in differences.values() for d in found]
    flags = list(dict.fromkeys(f for d in every if profile and (f := flag_for(d, profile))))
    unmatched = [d.field for d in every if not profile or flag_for(d, profile) is None]
    advice = []
    if flags:
        advice.append(f"to match it pass {' '.join(flags)}, or --like {repository} (every setting from it)")
    if unmatched:
        advice.append(
            f"{', '.join(dict.fromkeys(unmatched))} come from the checkpoint's model (H, K, D) or cannot be set "
            "by a flag: export it into a new repository"
        )
    return (
        f"{repository}: this export's config.pbtxt differs from the repository's, and a model's config is "
        "shared by all of its versions:\n" + "\n".join(lines) + "\n" + ";\n".join(advice)
    )


def check_configs(repository: str | Path, configs: dict[str, mc.ModelConfig]) -> None:
    """Refuse configs that differ from the repository's (RepositoryError naming each field and the
    flags that match it); an absent repository or model passes."""
    repository = Path(repository)
    differences = {}
    for name, config in configs.items():
        path = repository / name / "config.pbtxt"
        if path.is_file():
            try:
                found = config_differences(parse_config(path), config)
            except text_format.ParseError as error:
                raise RepositoryError(f"{path} does not parse ({error}); fix it or pick a new repository") from error
            if found:
                differences[name] = found
        elif (repository / name).exists():
            raise RepositoryError(f"{repository / name} exists without a config.pbtxt; remove it or pick a new repository")
    if differences:
        try:
            profile: RepositoryProfile | None = repository_settings(repository)
        except RepositoryError:
            profile = None  # hand-edited beyond what the flags write: the fields alone
        raise RepositoryError(differences_message(repository, differences, profile))


# ---- versions and atomic writes -------------------------------------------------------------


def _is_ours(name: str) -> bool:
    return name in contract.MODELS or name == README or (name.startswith("apron_metadata") and name.endswith(".json"))


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


def make_dirs(path: Path) -> None:
    """mkdir -p, each folder it creates 0755 whatever the umask."""
    created = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for folder in reversed(created):
        folder.chmod(DIR_MODE)


def make_readable(root: Path) -> None:
    """Folders 0755 and files 0644 under `root` (root included): the staged tree leaves mkdtemp's
    0700 and the umask behind before it is renamed into the repository."""
    root.chmod(DIR_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), DIR_MODE)
        for name in files:
            os.chmod(os.path.join(folder, name), FILE_MODE)


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
    first rename, so a refused export leaves the repository exactly as it was. An existing
    repository folder is never replaced, only added to (a Triton or gateway container mounts it)."""
    repository = Path(repository).absolute()
    existing = check_repository(repository, allow_other_models)
    if version in existing:
        raise RepositoryError(f"version {version} already exists in {repository}")
    if (repository / versioned_metadata_name(version)).exists():
        raise RepositoryError(f"{repository / versioned_metadata_name(version)} already exists")
    check_configs(repository, configs)
    make_dirs(repository.parent)
    staging = Path(tempfile.mkdtemp(dir=repository.parent, prefix=f".{repository.name}.staging-"))
    try:
        _stage(staging, onnx_models, configs, metadata_json, version, settings, weights or {})
        make_readable(staging)
        if not repository.exists():
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
                _add_python_model(version_dir / contract.PYTHON_BACKEND_FILENAME)
        if name in weights:  # the torch backend's weights; Triton ignores other files in a version
            (version_dir / contract.TORCH_WEIGHTS_FILENAME).write_bytes(weights[name])
    (staging / versioned_metadata_name(version)).write_text(metadata_json)
    (staging / contract.METADATA_FILENAME).write_text(metadata_json)


def _add_python_model(target: Path) -> None:
    """model.py and its bytecode: the python backend's stub imports model.py, and a stub that
    finds no valid .pyc writes one into the version folder, which a polling Triton takes for a
    change of the model and reloads it. A checked-hash .pyc stays valid through copies and
    renames (it holds the source's hash, not its mtime). It is this interpreter's (cpython-311,
    the stub `export/triton_server.py` runs); a stub of another Python writes its own unless the
    repository is mounted read-only, as deploy/ mounts it."""
    shutil.copyfile(PYTHON_BACKEND_MODEL, target)
    py_compile.compile(
        str(target),
        cfile=importlib.util.cache_from_source(str(target)),
        doraise=True,
        invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
    )


def _merge(staging: Path, repository: Path, version: int, existing: set[int]) -> None:
    """Move the staged version folders into an existing repository (checked by write_repository):
    models first, then this version's metadata, the root metadata last, so a gateway that reads
    the root metadata finds every model of the version it names."""
    for name in contract.MODELS:
        if (repository / name).exists():
            os.rename(staging / name / str(version), repository / name / str(version))
        else:
            os.rename(staging / name, repository / name)
    os.rename(staging / versioned_metadata_name(version), repository / versioned_metadata_name(version))
    if version > max(existing, default=0):  # the root metadata follows the version Triton serves (the latest)
        os.replace(staging / contract.METADATA_FILENAME, repository / contract.METADATA_FILENAME)
