"""Self-describing checkpoints: everything needed to rebuild and interpret a model without the
training code's arguments (DESIGN.md section 3)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.files import atomic_path
from training.models.registry import model_class

FORMAT = "apron-checkpoint/1"


@dataclass
class Checkpoint:
    model: str  # registry name
    config: dict[str, Any]
    dataset: dict[str, Any]  # name, fingerprint, tag_names, tag_groups, prototype_items, item_ids
    metrics: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # seed, epochs, wall time, device, ...


def dataset_summary(dataset: Any) -> dict[str, Any]:
    """What a checkpoint records of its dataset: the facts export and serving read later."""
    return {
        "name": dataset.name,
        "path": str(dataset.path),
        "fingerprint": dataset.fingerprint,
        "tag_names": list(dataset.tag_names),
        "tag_groups": list(dataset.tag_groups),
        "prototype_items": [int(i) for i in dataset.prototype_items],
        "item_ids": list(dataset.item_ids),
        "item_names": list(dataset.item_names),
    }


def save_checkpoint(path: str | Path, model: nn.Module, info: Checkpoint) -> Path:
    """Write atomically (temp file + rename): a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model": info.model,
        "config": dataclasses.asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "dataset": info.dataset,
        "metrics": info.metrics,
        "train": info.train,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[nn.Module, Checkpoint]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"{path} is not a readable torch checkpoint: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an APRON project checkpoint (expected format {FORMAT!r})")
    cls = model_class(payload["model"])
    config_fields = {f.name for f in dataclasses.fields(cls.config_class)}
    config = cls.config_class(**{k: _tuples(v) for k, v in payload["config"].items() if k in config_fields})
    model = cls(config)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    info = Checkpoint(
        model=payload["model"],
        config=payload["config"],
        dataset=payload["dataset"],
        metrics=payload.get("metrics", {}),
        train=payload.get("train", {}),
    )
    return model, info


def _tuples(value: Any) -> Any:
    """asdict keeps tuples, but a config edited by hand or JSON may carry lists."""
    return tuple(value) if isinstance(value, list) else value
