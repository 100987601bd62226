"""The export pipeline: APRON checkpoint -> ONNX graphs -> parity check -> Triton repository.

    result = export_checkpoint("artifacts/apron.pt", "model_repository")

Order matters: load and validate the checkpoint, check the target repository, export the graphs
to memory, check ONNX Runtime against PyTorch, and only then write (staged + renamed), so a bad
input raises `ExportError` with nothing written. `apron export` (export/cli.py), the demo builder
(export/demo.py) and the benchmarks call it; the CLI turns `ExportError` into a one-line error.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import torch

from export import contract
from export.metadata import ExportMetadata, tensor_table
from export.onnx_export import ParityResult, UnservableModel, check_parity, export_onnx
from export.quantize import QuantizationError
from export.triton_repository import (
    RepositoryError,
    RepositorySettings,
    check_configs,
    check_repository,
    choose_version,
    model_configs,
    write_repository,
)
from training.checkpoint import FORMAT, Checkpoint, load_checkpoint
from training.models.apron import APRON


class ExportError(Exception):
    """The checkpoint, the target repository or an option cannot be exported as asked (nothing
    was written); the message names the file or option."""


@dataclass(frozen=True)
class ExportResult:
    repository: Path
    version: int
    metadata: ExportMetadata
    parity: list[ParityResult]


def load_apron(path: str | Path) -> tuple[APRON, Checkpoint]:
    """The checkpoint's APRON model, or an ExportError that names the file and what it is."""
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a directory, not a checkpoint file (`apron train --out` writes one)")
    if not path.is_file():
        raise ExportError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise ExportError(f"{path} is empty, not a checkpoint (an interrupted copy?)")
    try:  # mmap: read the header fields without loading the tensors twice
        payload = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as error:  # torch raises many types for a file that is not a torch checkpoint
        raise ExportError(
            f"{path} is not a readable torch checkpoint ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ExportError(f"{path} is not an APRON project checkpoint (expected format {FORMAT!r})")
    if payload.get("model") != APRON.name:
        raise ExportError(
            f"{path} holds a {payload.get('model')!r} model; only APRON checkpoints can be exported "
            "(the serving contract needs its prototype weights)"
        )
    try:
        model, info = load_checkpoint(path)
    except (ValueError, RuntimeError, KeyError, TypeError) as error:
        raise ExportError(f"{path}: cannot rebuild the APRON model ({error})") from error
    missing = [
        key for key in ("fingerprint", "tag_names", "tag_groups", "item_ids") if key not in info.dataset
    ]
    if missing:
        raise ExportError(f"{path}: the checkpoint's dataset record lacks {', '.join(missing)}")
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
        raise ExportError(
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
        precision=settings.precision,
        triton_max_batch_size=settings.max_batch_size,
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
    """The whole export; raises ExportError for bad input, nothing written in that case."""
    settings = settings or RepositorySettings()
    checkpoint, repository = Path(checkpoint), Path(repository)
    model, info = load_apron(checkpoint)
    if k_max < 1:
        raise ExportError(f"--k-max must be at least 1, got {k_max}")
    cfg = model.config
    # K_MAX is clamped to the catalog (as export_onnx does): the configs are known before the
    # (slow) export, so a repository whose config.pbtxt differs is refused first
    configs = model_configs(cfg.n_heads, cfg.n_tags, cfg.feature_dim, min(k_max, cfg.n_items), settings)
    try:
        version = choose_version(check_repository(repository, allow_other_models), version)
        check_configs(repository, configs)
    except RepositoryError as error:
        raise ExportError(str(error)) from error
    try:
        graphs = export_onnx(model, k_max=k_max, precision=settings.precision)
    except QuantizationError as error:
        raise ExportError(f"--int8: {error}; nothing written") from error
    except UnservableModel as error:
        raise ExportError(f"{checkpoint}: {error}; nothing written") from error
    parity = check_parity(graphs, model, precision=settings.precision)
    if report:
        for result in parity:
            print(f"parity {result}")
    failed = [str(r) for r in parity if not r.ok]
    if failed:
        raise ExportError(
            "ONNX Runtime disagrees with PyTorch; nothing written:\n  " + "\n  ".join(failed)
        )
    metadata = build_metadata(model, info, checkpoint, version, graphs.k_max, settings)
    try:
        write_repository(
            repository,
            graphs.onnx,
            configs,
            metadata.to_json(),
            version,
            settings,
            allow_other_models,
            weights=graphs.weights,
        )
    except RepositoryError as error:
        raise ExportError(str(error)) from error
    return ExportResult(repository=repository, version=version, metadata=metadata, parity=parity)
