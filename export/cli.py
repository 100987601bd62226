"""`apron export CHECKPOINT --repository model_repository`: checkpoint -> ONNX -> Triton repository.

Order matters: load and validate the checkpoint, check the target repository, export the graphs
to memory, check ONNX Runtime against PyTorch, and only then write (staged + renamed).
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import torch

from cli import UserFacingError
from export import contract
from export.metadata import ExportMetadata, tensor_table
from export.onnx_export import ParityResult, check_parity, export_onnx
from export.triton_repository import (
    RepositoryError,
    RepositorySettings,
    check_repository,
    choose_version,
    model_configs,
    write_repository,
)
from training.checkpoint import FORMAT, Checkpoint, load_checkpoint
from training.models.apron import APRON


@dataclass(frozen=True)
class ExportResult:
    repository: Path
    version: int
    metadata: ExportMetadata
    parity: list[ParityResult]


def load_apron(path: str | Path) -> tuple[APRON, Checkpoint]:
    """The checkpoint's APRON model, or a UserFacingError that names the file and what it is."""
    path = Path(path)
    if not path.is_file():
        raise UserFacingError(f"checkpoint {path} does not exist")
    try:  # mmap: read the header fields without loading the tensors twice
        payload = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as error:  # torch raises many types for a file that is not a torch checkpoint
        raise UserFacingError(
            f"{path} is not a readable torch checkpoint ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserFacingError(f"{path} is not an APRON project checkpoint (expected format {FORMAT!r})")
    if payload.get("model") != APRON.name:
        raise UserFacingError(
            f"{path} holds a {payload.get('model')!r} model; only APRON checkpoints can be exported "
            "(the serving contract needs its prototype weights)"
        )
    try:
        model, info = load_checkpoint(path)
    except (ValueError, RuntimeError, KeyError, TypeError) as error:
        raise UserFacingError(f"{path}: cannot rebuild the APRON model ({error})") from error
    missing = [
        key for key in ("fingerprint", "tag_names", "tag_groups", "item_ids") if key not in info.dataset
    ]
    if missing:
        raise UserFacingError(f"{path}: the checkpoint's dataset record lacks {', '.join(missing)}")
    return model, info


def build_metadata(
    model: APRON,
    info: Checkpoint,
    checkpoint_path: Path,
    version: int,
    k_max: int,
    settings: RepositorySettings,
) -> ExportMetadata:
    cfg, dataset = model.config, info.dataset
    prototypes = [int(i) for i in model.prototype_items.tolist()]
    item_ids = [str(i) for i in dataset["item_ids"]]
    if len(item_ids) != cfg.n_items or len(dataset["tag_names"]) != cfg.n_tags:
        raise UserFacingError(
            f"{checkpoint_path}: dataset record has {len(item_ids)} items / {len(dataset['tag_names'])} tags, "
            f"the model {cfg.n_items} / {cfg.n_tags}"
        )
    return ExportMetadata(
        model_version=version,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        dataset_name=str(dataset.get("name", "")),
        dataset_fingerprint=str(dataset["fingerprint"]),
        n_items=cfg.n_items,
        n_heads=cfg.n_heads,
        n_prototypes=cfg.n_tags,
        k_max=k_max,
        feature_dim=cfg.feature_dim,
        tag_names=list(dataset["tag_names"]),
        tag_groups=list(dataset["tag_groups"]),
        prototype_items=prototypes,
        prototype_item_ids=[item_ids[i] for i in prototypes],
        item_ids=item_ids,
        item_names=[str(n) for n in dataset.get("item_names", item_ids)],
        tensors=tensor_table(contract.model_io(cfg.n_heads, cfg.n_tags, cfg.feature_dim, k_max)),
        backend=settings.backend,
        precision="fp16" if settings.fp16 else "fp32",
        checkpoint={"path": str(checkpoint_path), "train": info.train, "metrics": info.metrics},
    )


def export_checkpoint(
    checkpoint: str | Path,
    repository: str | Path,
    *,
    k_max: int = contract.DEFAULT_K_MAX,
    version: int | None = None,
    settings: RepositorySettings | None = None,
    allow_other_models: bool = False,
    report: bool = False,
) -> ExportResult:
    """The whole export; raises UserFacingError for bad input, nothing written in that case."""
    settings = settings or RepositorySettings()
    checkpoint, repository = Path(checkpoint), Path(repository)
    model, info = load_apron(checkpoint)
    try:
        version = choose_version(check_repository(repository, allow_other_models), version)
    except RepositoryError as error:
        raise UserFacingError(str(error)) from error
    if k_max < 1:
        raise UserFacingError(f"--k-max must be at least 1, got {k_max}")
    graphs = export_onnx(model, k_max=k_max, fp16=settings.fp16)
    parity = check_parity(graphs, model, fp16=settings.fp16)
    if report:
        for result in parity:
            print(f"parity {result}")
    failed = [str(r) for r in parity if not r.ok]
    if failed:
        raise UserFacingError(
            "ONNX Runtime disagrees with PyTorch; nothing written:\n  " + "\n  ".join(failed)
        )
    cfg = model.config
    metadata = build_metadata(model, info, checkpoint, version, graphs.k_max, settings)
    configs = model_configs(cfg.n_heads, cfg.n_tags, cfg.feature_dim, graphs.k_max, settings)
    try:
        write_repository(
            repository, graphs.onnx, configs, metadata.to_json(), version, settings, allow_other_models
        )
    except RepositoryError as error:
        raise UserFacingError(str(error)) from error
    return ExportResult(repository=repository, version=version, metadata=metadata, parity=parity)


def _handle(args: argparse.Namespace) -> int:
    try:
        settings = RepositorySettings(
            backend=args.triton_backend,
            max_batch_size=args.max_batch_size,
            preferred_batch_sizes=tuple(args.preferred_batch_sizes),
            max_queue_delay_us=args.max_queue_delay_us,
            instance_kind=args.instance_kind,
            instance_count=args.instance_count,
            gpu_accelerator=args.gpu_accelerator,
            fp16=args.fp16,
            cpu_threads=args.cpu_threads,
        )
    except ValueError as error:
        raise UserFacingError(str(error)) from error
    result = export_checkpoint(
        args.checkpoint,
        args.repository,
        k_max=args.k_max,
        version=args.version,
        settings=settings,
        allow_other_models=args.allow_other_models,
        report=True,
    )
    meta = result.metadata
    print(
        f"exported version {result.version} to {result.repository} ({settings.backend} backend, {meta.precision}): "
        f"{', '.join(contract.MODELS)}; H={meta.n_heads} K={meta.n_prototypes} K_MAX={meta.k_max} "
        f"items={meta.n_items}"
    )
    return 0


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    defaults = RepositorySettings()
    parser = subparsers.add_parser(
        "export",
        help="checkpoint -> ONNX -> Triton model repository + apron_metadata.json",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="an APRON checkpoint written by `apron train`")
    parser.add_argument(
        "--repository", type=Path, default=Path("model_repository"), help="target Triton repository"
    )
    parser.add_argument("--version", type=int, default=None, help="model version (default: next free number)")
    parser.add_argument(
        "--k-max", type=int, default=contract.DEFAULT_K_MAX, help="items returned by the scorer's TopK"
    )
    parser.add_argument(
        "--triton-backend",
        choices=("onnxruntime", "python"),
        default=defaults.backend,
        help="onnxruntime: Triton's ONNX Runtime backend (GPU); python: ONNX Runtime inside Triton's python backend (CPU)",
    )
    parser.add_argument(
        "--fp16", action="store_true", help="half-precision catalog table and f (GPU serving)"
    )
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument(
        "--preferred-batch-sizes", type=int, nargs="+", default=list(defaults.preferred_batch_sizes)
    )
    parser.add_argument("--max-queue-delay-us", type=int, default=defaults.max_queue_delay_us)
    parser.add_argument("--instance-kind", choices=("auto", "gpu", "cpu"), default=defaults.instance_kind)
    parser.add_argument("--instance-count", type=int, default=defaults.instance_count)
    parser.add_argument("--gpu-accelerator", choices=("cuda", "tensorrt"), default=defaults.gpu_accelerator)
    parser.add_argument(
        "--cpu-threads", type=int, default=defaults.cpu_threads, help="python backend: ORT threads"
    )
    parser.add_argument(
        "--allow-other-models",
        action="store_true",
        help="add APRON to a repository that already serves other models (refused by default)",
    )
    parser.set_defaults(func=_handle)
