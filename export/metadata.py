"""apron_metadata.json: what the gateway needs to know about an exported model version.

Written once per export (beside the models, see `export/triton_repository.py`) and read by the
gateway with `read_metadata`. No torch import: the gateway must stay light.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export import contract


class MetadataError(ValueError):
    """apron_metadata.json is missing, unreadable or not what this code understands."""


@dataclass(frozen=True)
class ExportMetadata:
    model_version: int
    created: str  # ISO 8601, UTC
    dataset_name: str
    dataset_fingerprint: str  # the checkpoint's dataset fingerprint (DESIGN.md section 1)
    n_items: int
    n_heads: int  # H
    n_prototypes: int  # K: one prototype per tag
    k_max: int  # top_ids / top_scores width (min(requested K_MAX, n_items))
    feature_dim: int  # D of apron_item_encoder's input
    tag_names: list[str]
    tag_groups: list[str]
    prototype_items: list[int]  # internal item index of each tag's prototype
    prototype_item_ids: list[str]  # the same items' original ids
    item_ids: list[str]  # original id of each internal item index
    item_names: list[str]
    tensors: dict[str, dict[str, list[dict[str, Any]]]]  # model -> inputs/outputs -> [{name, dtype, dims}]
    backend: str  # "onnxruntime" | "python"
    precision: str  # "fp32" | "fp16" | "int8" (the scorer's f: export/quantize.py)
    # Triton's max_batch_size in the models' config.pbtxt: a request of more rows is refused by
    # Triton, so a gateway batching rows toward Triton checks its own batch size against it.
    # Metadata written before this field: read_metadata takes it from the config.pbtxt; 0 = unknown.
    triton_max_batch_size: int = 0
    pad_id: int = contract.PAD_ID
    score: str = "log_softmax over the catalog; -inf for excluded items"
    checkpoint: dict[str, Any] = field(default_factory=dict)  # path, train info, metrics
    format: str = contract.METADATA_FORMAT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> ExportMetadata:
        if not isinstance(data, dict) or data.get("format") != contract.METADATA_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise MetadataError(
                f"{source}: format is {found!r}, expected {contract.METADATA_FORMAT!r}; "
                "export the checkpoint again with this version (`apron export`)"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - data.keys())
        if missing:
            raise MetadataError(f"{source}: missing field(s) {', '.join(missing)}")
        metadata = cls(**{k: v for k, v in data.items() if k in names})
        if len(metadata.item_ids) != metadata.n_items:
            raise MetadataError(
                f"{source}: item_ids has {len(metadata.item_ids)} entries, n_items is {metadata.n_items}"
            )
        for name in ("tag_names", "tag_groups", "prototype_items", "prototype_item_ids"):
            if len(getattr(metadata, name)) != metadata.n_prototypes:
                raise MetadataError(
                    f"{source}: {name} has {len(getattr(metadata, name))} entries, K is {metadata.n_prototypes}"
                )
        return metadata


def versioned_metadata_name(version: int) -> str:
    stem, suffix = contract.METADATA_FILENAME.rsplit(".", 1)
    return f"{stem}.v{version}.{suffix}"


def metadata_path(repository: str | Path, version: int | None = None) -> Path:
    """The newest version's file, or the given version's `apron_metadata.v<N>.json`."""
    name = contract.METADATA_FILENAME if version is None else versioned_metadata_name(version)
    return Path(repository) / name


def recorded_max_batch_size(repository: str | Path) -> int:
    """max_batch_size of the repository's scorer config.pbtxt (shared by every version), 0 when
    there is none: the value for metadata written before `triton_max_batch_size`. Imports
    Triton's config proto only here, for such older metadata."""
    path = Path(repository) / contract.SCORER_MODEL / "config.pbtxt"
    if not path.is_file():
        return 0
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig()).max_batch_size
    except text_format.ParseError as error:
        raise MetadataError(f"{path} does not parse ({error})") from error


def read_metadata(repository: str | Path, version: int | None = None) -> ExportMetadata:
    path = metadata_path(repository, version)
    if not path.is_file():
        raise MetadataError(
            f"{path} does not exist: run `apron export CHECKPOINT --repository {repository}` first"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MetadataError(
            f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from error
    if isinstance(data, dict) and "triton_max_batch_size" not in data:
        data["triton_max_batch_size"] = recorded_max_batch_size(repository)
    return ExportMetadata.from_dict(data, str(path))


def tensor_table(io: dict[str, tuple]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """contract.model_io(...) -> the JSON-friendly `tensors` field (dims include the batch axis as -1)."""
    return {
        model: {
            direction: [
                {"name": s.name, "dtype": s.dtype, "dims": [-1, *s.dims], **({"ragged": True} if s.ragged else {})}
                for s in specs
            ]
            for direction, specs in zip(("inputs", "outputs"), io[model], strict=True)
        }
        for model in io
    }
